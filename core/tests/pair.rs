//! Client and server connections talking to each other in memory: handshake, messages,
//! close, timers; and property tests that any chopping of a valid stream gives the same
//! messages.

mod util;

use std::time::Duration;

use proptest::prelude::*;
use util::*;
use wsrpc_core::Xoshiro256;
use wsrpc_core::ws::frame::OpCode;
use wsrpc_core::ws::{
    ClientRequest, CloseCode, Config, Connection, Error, Event, HandshakeError, Initiator, Message,
    MessageKind, SendError, SharedFrame,
};

#[test]
fn handshake_then_messages_both_ways() {
    for chop in [usize::MAX, 7, 1] {
        let mut p = Pair::with(config(), config(), chop);
        p.client.send_text(p.now, "hello server").unwrap();
        p.client.send_binary(p.now, &[0, 1, 2, 255]).unwrap();
        p.server.send_text(p.now, "hello client").unwrap();
        p.drive();
        assert_eq!(
            p.server_messages(),
            vec![Message::text("hello server"), Message::binary(vec![0, 1, 2, 255])]
        );
        assert_eq!(p.client_messages(), vec![Message::text("hello client")]);
    }
}

#[test]
fn subprotocol_is_negotiated_in_server_preference_order() {
    let mut server_cfg = config();
    server_cfg.subprotocols = vec!["v2".into(), "v1".into()];
    let now = origin();
    let req = ClientRequest::new("localhost", "/rpc").protocol("v1").protocol("v2");
    let mut p = Pair::new(config(), server_cfg, usize::MAX);
    p.client = Connection::client(config(), &req, Box::new(Xoshiro256::from_seed(3)), now);
    p.drive();
    let protocols: Vec<_> = [&p.client_events[0], &p.server_events[0]]
        .iter()
        .map(|e| match e {
            Event::Connected(c) => c.protocol.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(protocols, [Some("v2".to_string()), Some("v2".to_string())]);
    let Event::Connected(c) = &p.server_events[0] else { unreachable!() };
    assert_eq!(c.request.as_ref().unwrap().path(), "/rpc");
}

#[test]
fn handshake_request_one_byte_at_a_time_with_frames_in_the_same_read() {
    let now = origin();
    let mut server = Connection::server(config(), now);
    let mut wire = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    wire.extend(text(b"first message"));
    // All at once: the head and the frame behind it.
    let mut events = Vec::new();
    server.handle_all_input(now, &wire, |_, e| events.push(e));
    assert!(matches!(events[0], Event::Connected(_)));
    assert!(matches!(&events[1], Event::Message(m) if m.data == b"first message"));
    // One byte at a time.
    let mut server = Connection::server(config(), now);
    let mut events = Vec::new();
    for b in &wire {
        server.handle_all_input(now, std::slice::from_ref(b), |_, e| events.push(e));
    }
    assert_eq!(events.len(), 2);
    assert!(server.poll_transmit().unwrap().starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
}

fn server_answer(request: &[u8], cfg: Config) -> (String, Connection) {
    let now = origin();
    let mut server = Connection::server(cfg, now);
    let mut at = 0;
    while at < request.len() && !server.is_finished() && !server.wants_shutdown_write() {
        at += server.handle_input(now, &request[at..]);
        while server.poll_event().is_some() {}
        if server.poll_transmit().is_some() {
            break;
        }
    }
    let mut out = Vec::new();
    while let Some(b) = server.poll_transmit() {
        out.extend_from_slice(b);
        let n = b.len();
        server.advance_transmit(n);
    }
    (String::from_utf8(out).unwrap(), server)
}

#[test]
fn bad_handshakes_get_a_status_and_a_lingering_close() {
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 505),
        (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n".to_vec(), 426),
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), 426),
    ];
    for (req, status) in cases {
        let (answer, server) = server_answer(&req, config());
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
        assert!(answer.contains("Connection: close\r\n"));
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            !body.is_empty() && answer.contains(&format!("Content-Length: {}\r\n", body.len()))
        );
        assert!(server.wants_shutdown_write());
        assert!(matches!(server.error(), Some(Error::Handshake(_))));
    }
}

#[test]
fn oversized_headers_get_431_before_the_head_ends() {
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let (answer, server) = server_answer(&req, config());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(server.error(), Some(&Error::Handshake(HandshakeError::HeadersTooLarge)));
}

#[test]
fn handshake_timeout_answers_408_and_finishes() {
    let now = origin();
    let mut server = Connection::server(config(), now);
    server.handle_input(now, b"GET / HTTP/1.1\r\nHost: slow");
    let deadline = server.poll_timeout().unwrap();
    assert_eq!(deadline - now, Duration::from_secs(10));
    server.handle_timeout(deadline - Duration::from_millis(1));
    assert!(server.is_handshaking(), "an early timeout call is a no-op");
    server.handle_timeout(deadline);
    assert!(server.poll_transmit().unwrap().starts_with(b"HTTP/1.1 408 "));
    assert_eq!(server.error(), Some(&Error::Handshake(HandshakeError::Timeout)));
    // The client never reads or closes: the close timer ends the lingering.
    let t = server.poll_timeout().unwrap();
    server.handle_timeout(t);
    assert!(server.is_finished());
}

#[test]
fn client_rejects_a_bad_accept_and_a_non_101() {
    for response in [
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"[..],
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    ] {
        let now = origin();
        let mut client = Connection::client(config(), &ClientRequest::new("h", "/"), Box::new(Xoshiro256::from_seed(9)), now);
        let n = client.poll_transmit().unwrap().len();
        client.advance_transmit(n);
        client.handle_input(now, response);
        assert!(client.is_finished());
        assert!(matches!(client.error(), Some(Error::Handshake(HandshakeError::BadAccept | HandshakeError::Rejected { status: 403 }))));
        assert!(matches!(client.poll_event(), Some(Event::Closed(_))));
    }
}

#[test]
fn client_masks_every_frame_with_a_fresh_key() {
    let mut p = Pair::connected();
    p.client.send_text(p.now, "aaaa").unwrap();
    p.client.send_text(p.now, "aaaa").unwrap();
    let wire = p.client.poll_transmit().unwrap().to_vec();
    assert_eq!(wire.len(), 2 * (2 + 4 + 4));
    assert!(wire[1] & 0x80 != 0 && wire[11] & 0x80 != 0);
    assert_ne!(wire[2..6], wire[12..16], "mask keys differ");
    assert_ne!(&wire[6..10], b"aaaa");
}

#[test]
fn close_initiated_by_client() {
    let mut p = Pair::connected();
    p.client.close(p.now, CloseCode::NORMAL, "done").unwrap();
    p.drive();
    let s = closed_event(&p.server_events).unwrap().clone();
    let c = closed_event(&p.client_events).unwrap().clone();
    assert_eq!(
        (s.code, s.reason.as_str(), s.initiator, s.clean),
        (CloseCode::NORMAL, "done", Initiator::Remote, true)
    );
    assert_eq!(
        (c.code, c.reason.as_str(), c.initiator, c.clean),
        (CloseCode::NORMAL, "done", Initiator::Local, true)
    );
    // The server closes TCP first once its close frame is written (RFC 6455 §7.1.1); the
    // client waits for that end of file, so the TIME_WAIT stays on the server.
    assert!(p.server.is_finished());
    assert!(p.client.is_finished());
}

#[test]
fn close_initiated_by_server_while_client_sends() {
    let mut p = Pair::connected();
    p.server.close(p.now, CloseCode::GOING_AWAY, "restart").unwrap();
    p.client.send_text(p.now, "crossing").unwrap();
    p.drive();
    assert_eq!(p.server_messages(), vec![Message::text("crossing")]);
    assert_eq!(closed_event(&p.client_events).unwrap().code, CloseCode::GOING_AWAY);
    assert!(p.client.is_finished());
}

#[test]
fn heartbeat_pings_a_silent_peer_and_drops_it_without_a_pong() {
    let mut cfg = config();
    cfg.ping_interval = Some(Duration::from_secs(30));
    cfg.pong_timeout = Duration::from_secs(10);
    let mut rc = RawClient::new(cfg);
    rc.advance(Duration::from_secs(29));
    assert!(rc.frames.is_empty());
    rc.advance(Duration::from_secs(1));
    let ping = rc.take_frames();
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].opcode, OpCode::Ping);
    rc.advance(Duration::from_secs(10));
    assert!(rc.server.is_finished());
    assert_eq!(rc.server.error(), Some(&Error::PongTimeout));
}

#[test]
fn heartbeat_is_satisfied_by_the_pong() {
    let mut cfg = config();
    cfg.pong_timeout = Duration::from_secs(10);
    let mut p = Pair::with(config(), cfg, usize::MAX);
    for _ in 0..10 {
        p.advance(Duration::from_secs(31));
    }
    assert!(p.server.is_open() && p.client.is_open(), "{:?}", p.server);
    assert!(p.server.stats().bytes_out > 0);
}

#[test]
fn traffic_postpones_the_heartbeat() {
    let mut rc = RawClient::default_config();
    for _ in 0..10 {
        rc.advance(Duration::from_secs(20));
        rc.send(&text(b"keepalive"));
    }
    assert!(rc.frames.iter().all(|f| f.opcode != OpCode::Ping));
}

#[test]
fn idle_timeout_closes_with_1001() {
    let mut cfg = config();
    cfg.idle_timeout = Some(Duration::from_secs(60));
    cfg.ping_interval = None;
    let mut p = Pair::with(config(), cfg, usize::MAX);
    p.advance(Duration::from_secs(59));
    assert!(p.server.is_open());
    p.advance(Duration::from_secs(2));
    let c = closed_event(&p.client_events).unwrap();
    assert_eq!((c.code, c.reason.as_str()), (CloseCode::GOING_AWAY, "idle timeout"));
}

#[test]
fn spurious_timeouts_are_no_ops() {
    let mut p = Pair::connected();
    for _ in 0..5 {
        p.server.handle_timeout(p.now);
        p.client.handle_timeout(p.now);
    }
    p.drive();
    assert!(p.server.is_open() && p.client.is_open());
    assert!(p.server_events.is_empty() && p.client_events.is_empty());
}

#[test]
fn shared_frames_go_out_identically_and_clients_re_mask_them() {
    let frame = SharedFrame::new(MessageKind::Text, b"broadcast");
    let mut a = Pair::connected();
    let mut b = Pair::connected();
    a.server.send_shared(a.now, &frame).unwrap();
    b.server.send_shared(b.now, &frame).unwrap();
    assert_eq!(a.server.poll_transmit().unwrap(), &frame.wire_bytes()[..]);
    a.drive();
    b.drive();
    assert_eq!(a.client_messages(), vec![Message::text("broadcast")]);
    assert_eq!(b.client_messages(), vec![Message::text("broadcast")]);
    a.client.send_shared(a.now, &frame).unwrap();
    a.drive();
    assert_eq!(a.server_messages(), vec![Message::text("broadcast")]);
}

#[test]
fn send_errors_name_the_state() {
    let now = origin();
    let mut client = Connection::client(
        config(),
        &ClientRequest::new("h", "/"),
        Box::new(Xoshiro256::from_seed(1)),
        now,
    );
    assert_eq!(client.send_text(now, "early"), Err(SendError::NotOpen));
    let mut p = Pair::connected();
    assert_eq!(p.server.ping(&[0; 126]), Err(SendError::ControlTooLong));
    assert_eq!(
        p.server.close(p.now, CloseCode::NORMAL, &"r".repeat(124)),
        Err(SendError::ControlTooLong)
    );
    p.server.close(p.now, CloseCode::NORMAL, "").unwrap();
    assert_eq!(p.server.send_text(p.now, "late"), Err(SendError::Closing));
}

#[test]
fn large_messages_are_sent_without_copy_and_arrive_whole() {
    let mut p = Pair::with(config(), config(), 65536);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    p.server.send(p.now, Message::binary(big.clone())).unwrap();
    p.client.send(p.now, Message::binary(big.clone())).unwrap();
    p.drive();
    assert_eq!(p.client_messages(), vec![Message::binary(big.clone())]);
    assert_eq!(p.server_messages(), vec![Message::binary(big)]);
}

#[test]
fn fragmented_sending_with_send_frame() {
    let mut p = Pair::connected();
    p.client.send_frame(p.now, OpCode::Text, false, b"frag").unwrap();
    p.client.ping(b"interleaved").unwrap();
    p.client.send_frame(p.now, OpCode::Continuation, true, b"ments").unwrap();
    p.drive();
    assert_eq!(p.server_messages(), vec![Message::text("fragments")]);
}

#[test]
fn transport_eof_mid_message_reports_1006() {
    let mut rc = RawClient::default_config();
    let wire = text(b"cut short");
    rc.send(&wire[..5]);
    rc.server.handle_eof(rc.now);
    let c = rc.server.poll_event();
    let Some(Event::Closed(c)) = c else { panic!("{c:?}") };
    assert_eq!(
        (c.code, c.clean, c.initiator, c.error),
        (CloseCode::ABNORMAL, false, Initiator::Remote, Some(Error::Eof))
    );
    assert!(rc.server.is_finished());
}

/// A valid client stream: messages of random kind and size, randomly fragmented, with pings
/// between frames.
fn stream_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<Message>)> {
    let message =
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 1usize..5, any::<bool>());
    proptest::collection::vec(message, 1..12).prop_map(|messages| {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (is_text, bytes, pieces, ping) in messages {
            let (opcode, data) = if is_text {
                (0x1u8, String::from_utf8_lossy(&bytes).into_owned().into_bytes())
            } else {
                (0x2, bytes)
            };
            let per = data.len().div_ceil(pieces).max(1);
            let chunks: Vec<&[u8]> =
                if data.is_empty() { vec![&[][..]] } else { data.chunks(per).collect() };
            for (i, c) in chunks.iter().enumerate() {
                wire.extend(cframe(i == chunks.len() - 1, if i == 0 { opcode } else { 0 }, c));
                if ping && i == 0 {
                    wire.extend(cframe(true, 0x9, b"p"));
                }
            }
            let kind = if is_text { MessageKind::Text } else { MessageKind::Binary };
            expected.push(Message { kind, data });
        }
        (wire, expected)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_chopping_of_a_valid_stream_yields_the_same_messages(
        (wire, expected) in stream_strategy(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        points.dedup();
        let mut rc = RawClient::default_config();
        for w in points.windows(2) {
            rc.send(&wire[w[0]..w[1]]);
        }
        let got: Vec<Message> = rc.events.iter().filter_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        }).collect();
        prop_assert_eq!(got, expected);
        prop_assert!(rc.server.is_open());
        prop_assert!(rc.server.error().is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_failure_is_final(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
    ) {
        let mut rc = RawClient::default_config();
        let mut failed = false;
        for c in &chunks {
            rc.send(c);
            if failed {
                prop_assert!(rc.server.error().is_some());
                prop_assert!(!rc.server.is_open());
            }
            failed |= rc.server.error().is_some();
        }
    }
}
