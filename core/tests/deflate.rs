//! permessage-deflate (RFC 7692) on the virtual clock: every negotiation outcome for both
//! roles, every RSV1 rule, and the bounds on inflation. The peer's compressor and inflater
//! are `flate2` used directly, not our code.

mod util;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use util::*;
use wsrpc_core::Xoshiro256;
use wsrpc_core::ws::deflate::{self, DeflateConfig};
use wsrpc_core::ws::frame::OpCode;
use wsrpc_core::ws::{
    AssemblyBudget, ClientRequest, CloseCode, Config, Connection, Error, Event,
    ExtensionResponseError, HandshakeError, Message, ProtocolError, SharedFrame,
};

const RSV1: u8 = 0x40;

/// A config with compression on; `min_size` 0 so every message is compressed.
fn on() -> Config {
    let mut c = Config::default();
    c.enable_compression().min_size = 0;
    c
}

/// Raw deflate of `data` as one message: sync flush, tail removed (RFC 7692 §7.2.1).
fn compress(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, 15);
    compress_with(&mut c, data)
}

fn compress_with(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let start = c.total_in();
    loop {
        let done = (c.total_in() - start) as usize;
        c.compress_vec(&data[done..], &mut out, FlushCompress::Sync).unwrap();
        if (c.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates one compressed message's payload.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 8 + 1024);
    loop {
        let before = d.total_in() as usize;
        d.decompress_vec(&input[before..], &mut out, FlushDecompress::Sync).unwrap();
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// The data messages the server sent, inflated where compressed (single-frame messages).
fn received(rc: &RawClient) -> Vec<Vec<u8>> {
    rc.frames
        .iter()
        .filter(|f| matches!(f.opcode, OpCode::Text | OpCode::Binary))
        .map(|f| if f.rsv == 4 { inflate(&f.payload) } else { f.payload.clone() })
        .collect()
}

/// A masked client frame with RSV bits given in `b0`.
fn cframe_rsv(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(b0, Some(KEY), payload, 0)
}

fn json(n: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"price\":\"{}.{}\",\"side\":\"{}\"}},",
            40000 + (i * 7919) % 1000,
            i % 100,
            if i % 2 == 0 { "buy" } else { "sell" }
        ));
        i += 1;
    }
    s.truncate(n);
    s.into_bytes()
}

fn extension_line(head: &str) -> Option<&str> {
    head.lines().find_map(|l| {
        l.strip_prefix("Sec-WebSocket-Extensions: ")
            .or_else(|| l.strip_prefix("sec-websocket-extensions: "))
    })
}

mod server_negotiation {
    use super::*;

    #[test]
    fn default_offer_gets_the_default_answer_and_compressed_echoes() {
        let (mut rc, head) =
            RawClient::offering(on(), "permessage-deflate; client_max_window_bits");
        assert_eq!(
            extension_line(&head),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12"
            )
        );
        let n = rc.server.compression().expect("negotiated");
        assert!(n.server_no_context_takeover && n.client_no_context_takeover);
        assert_eq!((n.server_max_window_bits, n.client_max_window_bits), (12, 12));
        let text = json(3000);
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x1, &compress(&text)));
        let frames = rc.take_frames();
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].rsv, frames[0].opcode, frames[0].fin), (4, OpCode::Text, true));
        assert!(frames[0].payload.len() < text.len() / 2);
        assert_eq!(inflate(&frames[0].payload), text);
        // An uncompressed message is fine too, and small ones are echoed as they are.
        let mut cfg = on();
        cfg.enable_compression().min_size = 128;
        let (mut rc, _) = RawClient::offering(cfg, "permessage-deflate");
        rc.send(&text_frame(b"short"));
        assert_eq!(rc.take_frames()[0].rsv, 0);
    }

    fn text_frame(p: &[u8]) -> Vec<u8> {
        text(p)
    }

    #[test]
    fn off_or_no_offer_means_no_extension() {
        let (rc, head) = RawClient::offering(Config::default(), "permessage-deflate");
        assert_eq!(extension_line(&head), None);
        assert!(rc.server.compression().is_none());
        let (rc, head) = RawClient::with_headers(on(), "");
        assert_eq!(extension_line(&head), None);
        assert!(rc.server.compression().is_none());
    }

    #[test]
    fn offers_that_cannot_be_honoured_are_declined_not_refused() {
        for offer in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=07",
            "permessage-deflate; client_no_context_takeover=yes",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
            "permessage-deflate;; x",
            "x-webkit-deflate-frame",
        ] {
            let (mut rc, head) = RawClient::offering(on(), offer);
            assert_eq!(extension_line(&head), None, "{offer}");
            rc.send(&text(b"still served"));
            assert_eq!(received(&rc), vec![b"still served".to_vec()], "{offer}");
        }
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        let (_, head) = RawClient::offering(
            on(),
            "x-foo; bar=1, permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits=9",
        );
        assert_eq!(
            extension_line(&head),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"
            )
        );
    }

    #[test]
    fn context_takeover_when_configured_and_not_refused() {
        let mut cfg = on();
        let d = cfg.enable_compression();
        d.server_no_context_takeover = false;
        d.client_no_context_takeover = false;
        d.server_max_window_bits = 15;
        let (mut rc, head) = RawClient::offering(cfg.clone(), "permessage-deflate");
        assert_eq!(extension_line(&head), Some("permessage-deflate"));
        // The client keeps its context: the second message refers back to the first.
        let mut c = Compress::new_with_window_bits(Compression::default(), false, 15);
        let text = json(2000);
        let first = compress_with(&mut c, &text);
        let second = compress_with(&mut c, &text);
        assert!(second.len() < first.len() / 4, "back-references: {}", second.len());
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x1, &first));
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x1, &second));
        assert_eq!(rc.echoed().len(), 2, "{:?}", rc.closed());
        // The server keeps its context too: one inflater for both of its messages.
        let frames = rc.take_frames();
        let mut d = Decompress::new(false);
        for f in &frames {
            assert_eq!(f.rsv, 4);
            let mut input = f.payload.clone();
            input.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::with_capacity(8192);
            d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
            assert_eq!(out, text);
        }
        assert!(frames[1].payload.len() < frames[0].payload.len() / 4);
        assert!(rc.server.compression_context_len() > 0, "kept between messages");
        // A client that asks for no context takeover gets it.
        let (rc, head) = RawClient::offering(cfg, "permessage-deflate; server_no_context_takeover");
        assert_eq!(extension_line(&head), Some("permessage-deflate; server_no_context_takeover"));
        assert!(rc.server.compression().unwrap().server_no_context_takeover);
    }

    #[test]
    fn contexts_are_released_between_messages_by_default() {
        let (mut rc, _) = RawClient::offering(on(), "permessage-deflate");
        assert_eq!(rc.server.compression_context_len(), 0);
        let text = json(5000);
        let wire = cframe_rsv(RSV1 | 0x1, &compress(&text)[..10]);
        rc.send(&wire);
        assert!(rc.server.compression_context_len() > 0, "an inflater while the message is open");
        let mut rest = compress(&text)[10..].to_vec();
        rest = cframe(true, 0x0, &rest);
        rc.send(&rest);
        assert!(received(&rc) == vec![text], "echoed after inflating");
        assert_eq!(rc.server.compression_context_len(), 0);
    }
}

mod rsv1_rules {
    use super::*;

    fn negotiated() -> RawClient {
        RawClient::offering(on(), "permessage-deflate").0
    }

    #[test]
    fn rsv1_without_the_extension_is_a_protocol_error() {
        let mut rc = RawClient::new(on());
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x1, &compress(b"hello")));
        rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
        assert!(matches!(
            rc.closed().unwrap().error,
            Some(Error::Protocol(ProtocolError::ReservedBits(4)))
        ));
    }

    #[test]
    fn rsv1_on_a_continuation_is_a_protocol_error() {
        let mut rc = negotiated();
        let c = compress(&json(500));
        rc.send(&cframe_rsv(RSV1 | 0x1, &c[..20]));
        rc.send(&cframe_rsv(0x80 | RSV1, &c[20..])); // a final continuation with RSV1
        rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
        assert!(matches!(
            rc.closed().unwrap().error,
            Some(Error::Protocol(ProtocolError::CompressedContinuation))
        ));
    }

    #[test]
    fn rsv1_on_a_control_frame_is_a_protocol_error() {
        for opcode in [0x8u8, 0x9, 0xA] {
            let mut rc = negotiated();
            let payload: &[u8] = if opcode == 0x8 { &[0x03, 0xe8] } else { b"x" };
            rc.send(&cframe_rsv(0x80 | RSV1 | opcode, payload));
            assert_eq!(rc.sent_close(), Some(1002), "opcode {opcode}");
            assert!(matches!(
                rc.closed().unwrap().error,
                Some(Error::Protocol(ProtocolError::CompressedControl))
            ));
        }
    }

    #[test]
    fn rsv2_and_rsv3_stay_reserved() {
        for bits in [0x20u8, 0x10, 0x60] {
            let mut rc = negotiated();
            rc.send(&cframe_rsv(0x80 | bits | 0x1, b"x"));
            rc.assert_failed_with(CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn a_fragmented_compressed_message_with_pings_between() {
        let text = json(4000);
        let c = compress(&text);
        for chop in [usize::MAX, 7, 1] {
            let mut rc = negotiated();
            let mut wire = cframe_rsv(RSV1 | 0x1, &c[..c.len() / 3]);
            wire.extend(cframe(true, 0x9, b"ping"));
            wire.extend(cframe(false, 0x0, &c[c.len() / 3..2 * c.len() / 3]));
            wire.extend(cframe(true, 0x9, b"ping2"));
            wire.extend(cframe(true, 0x0, &c[2 * c.len() / 3..]));
            rc.send_chopped(&wire, chop);
            let frames = rc.take_frames();
            let pongs: Vec<_> = frames.iter().filter(|f| f.opcode == OpCode::Pong).collect();
            assert_eq!(pongs.len(), 2);
            assert!(pongs.iter().all(|p| p.rsv == 0), "control frames are never compressed");
            let data: Vec<_> = frames.iter().filter(|f| f.opcode == OpCode::Text).collect();
            assert_eq!(data.len(), 1);
            assert_eq!(inflate(&data[0].payload), text, "chop {chop}");
        }
    }

    #[test]
    fn our_frames_set_rsv1_only_on_compressed_data() {
        let mut rc = negotiated();
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x2, &compress(&[7u8; 3000])));
        rc.send(&cframe(true, 0x9, b"p"));
        rc.server.close(rc.now, CloseCode::NORMAL, "bye").unwrap();
        rc.collect();
        let frames = rc.take_frames();
        let rsv: Vec<_> = frames.iter().map(|f| (f.opcode, f.rsv)).collect();
        assert_eq!(rsv, [(OpCode::Binary, 4), (OpCode::Pong, 0), (OpCode::Close, 0)]);
    }

    #[test]
    fn an_empty_compressed_message() {
        let mut rc = negotiated();
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x1, &[0x00]));
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x2, &[]));
        assert_eq!(received(&rc), vec![Vec::<u8>::new(), Vec::new()]);
    }
}

mod bounds {
    use super::*;

    #[test]
    fn a_bomb_is_closed_with_1009_before_the_memory_is_spent() {
        let mut cfg = on();
        cfg.max_message_size = 64 << 10;
        let (mut rc, _) = RawClient::offering(cfg, "permessage-deflate");
        let bomb = compress(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 32 << 10, "{}", bomb.len());
        // Chopped to see the buffer at every step.
        let wire = cframe_rsv(0x80 | RSV1 | 0x2, &bomb);
        for piece in wire.chunks(1024) {
            rc.send(piece);
            assert!(
                rc.server.receive_buffer_len() <= (64 << 10) + 1 + 64,
                "{}",
                rc.server.receive_buffer_len()
            );
            if !rc.server.is_open() {
                break;
            }
        }
        rc.assert_failed_with(CloseCode::MESSAGE_TOO_BIG);
        assert!(matches!(
            rc.closed().unwrap().error,
            Some(Error::Protocol(ProtocolError::MessageTooLarge { max: 65536, .. }))
        ));
    }

    #[test]
    fn inflated_bytes_count_against_the_shared_budget() {
        let budget = AssemblyBudget::new(256 << 10);
        let mut cfg = on();
        cfg.assembly_budget = Some(budget.clone());
        let (mut a, _) = RawClient::offering(cfg.clone(), "permessage-deflate");
        let (mut b, _) = RawClient::offering(cfg, "permessage-deflate");
        // a holds an unfinished compressed message that inflated to 1 MiB... of which only
        // the budget's share can be held.
        let c = compress(&vec![b'a'; 1 << 20]);
        a.send(&cframe_rsv(RSV1 | 0x2, &c));
        a.assert_failed_with(CloseCode::TRY_AGAIN_LATER);
        assert_eq!(budget.used(), 0, "given back when the message is dropped");
        // Within the budget, messages pass.
        b.send(&cframe_rsv(0x80 | RSV1 | 0x2, &compress(&vec![b'b'; 200 << 10])));
        assert!(received(&b) == vec![vec![b'b'; 200 << 10]], "echoed after inflating");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_byte_as_it_is_inflated() {
        let mut text = json(20_000);
        text[10_000] = 0xff;
        let c = compress(&text);
        let (mut rc, _) = RawClient::offering(on(), "permessage-deflate");
        // The first frame holds all of it but is not final: the failure cannot wait for the end.
        rc.send(&cframe_rsv(RSV1 | 0x1, &c));
        rc.assert_failed_with(CloseCode::INVALID_PAYLOAD);
        assert!(matches!(
            rc.closed().unwrap().error,
            Some(Error::Protocol(ProtocolError::InvalidUtf8))
        ));
        // A sequence cut at the end of the message is caught at its end.
        let (mut rc, _) = RawClient::offering(on(), "permessage-deflate");
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x1, &compress("ab€".as_bytes()[..4].as_ref())));
        rc.assert_failed_with(CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn corrupt_deflate_data_is_1007() {
        for bad in
            [&[0xffu8, 0xff, 0xff][..], &[0x01, 0x05, 0x00, 0xfa, 0xff, 1, 2, 3, 4, 5, 9][..]]
        {
            let (mut rc, _) = RawClient::offering(on(), "permessage-deflate");
            rc.send(&cframe_rsv(0x80 | RSV1 | 0x2, bad));
            rc.assert_failed_with(CloseCode::INVALID_PAYLOAD);
            assert!(matches!(
                rc.closed().unwrap().error,
                Some(Error::Protocol(ProtocolError::InvalidCompressedData))
            ));
        }
    }

    #[test]
    fn a_final_block_ends_the_message() {
        // RFC 7692 §7.2.3.3: a message may end with BFINAL set ("Hello" with a fixed block).
        let (mut rc, _) = RawClient::offering(on(), "permessage-deflate");
        rc.send(&cframe_rsv(0x80 | RSV1 | 0x1, &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
        assert_eq!(received(&rc), vec![b"Hello".to_vec()]);
    }
}

mod client_role {
    use super::*;

    /// A client with `cfg` against a canned server answer with `extensions` lines.
    fn answered(cfg: Config, extensions: &[&str]) -> (Connection, Vec<Event>) {
        let now = origin();
        let mut client = Connection::client(
            cfg,
            &ClientRequest::new("localhost", "/"),
            Box::new(Xoshiro256::from_seed(5)),
            now,
        );
        let request = String::from_utf8(client.poll_transmit().unwrap().to_vec()).unwrap();
        let n = request.len();
        client.advance_transmit(n);
        let key =
            request.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap().to_owned();
        let mut response = Vec::new();
        let lines: Vec<(&str, &str)> =
            extensions.iter().map(|e| ("Sec-WebSocket-Extensions", *e)).collect();
        wsrpc_core::ws::handshake::write_accept(&mut response, &key, None, &lines);
        client.handle_input(now, &response);
        let mut events = Vec::new();
        while let Some(e) = client.poll_event() {
            events.push(e);
        }
        (client, events)
    }

    fn failure(events: &[Event]) -> Option<HandshakeError> {
        closed_event(events).and_then(|c| match &c.error {
            Some(Error::Handshake(e)) => Some(e.clone()),
            _ => None,
        })
    }

    #[test]
    fn the_offer_carries_every_parameter() {
        let now = origin();
        let mut client = Connection::client(
            on(),
            &ClientRequest::new("localhost", "/"),
            Box::new(Xoshiro256::from_seed(5)),
            now,
        );
        let request = String::from_utf8_lossy(client.poll_transmit().unwrap()).into_owned();
        assert!(request.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12\r\n"), "{request}");
        let mut cfg = on();
        let d = cfg.enable_compression();
        d.server_no_context_takeover = false;
        d.client_no_context_takeover = false;
        d.server_max_window_bits = 15;
        d.client_max_window_bits = 15;
        let mut client = Connection::client(
            cfg,
            &ClientRequest::new("localhost", "/"),
            Box::new(Xoshiro256::from_seed(5)),
            now,
        );
        let request = String::from_utf8_lossy(client.poll_transmit().unwrap()).into_owned();
        assert!(request.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        ));
        // Off: no offer at all.
        let mut client = Connection::client(
            Config::default(),
            &ClientRequest::new("localhost", "/"),
            Box::new(Xoshiro256::from_seed(5)),
            now,
        );
        let request = String::from_utf8_lossy(client.poll_transmit().unwrap()).into_owned();
        assert!(!request.to_ascii_lowercase().contains("extensions"));
    }

    #[test]
    fn valid_answers_are_taken() {
        let (client, events) = answered(
            on(),
            &[
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_max_window_bits=10",
            ],
        );
        assert!(client.is_open(), "{events:?}");
        let n = client.compression().unwrap();
        assert_eq!((n.server_max_window_bits, n.client_max_window_bits), (9, 10));
        assert!(n.client_no_context_takeover, "the offer's hint binds the client");
        let Event::Connected(c) = &events[0] else { panic!("{events:?}") };
        assert_eq!(c.compression, Some(n));
        // A server may ignore the client window we offered and answer a larger one; our
        // offer's value still binds us (RFC 7692 §7.1.2.2; Autobahn 13.4 and 13.6 answer 15).
        let (client, _) = answered(
            on(),
            &[
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=15",
            ],
        );
        assert!(client.is_open());
        assert_eq!(client.compression().unwrap().client_max_window_bits, 12);
        // Declined: no extension, plain messages.
        let (client, _) = answered(on(), &[]);
        assert!(client.is_open() && client.compression().is_none());
    }

    #[test]
    fn answers_that_do_not_fit_the_offer_fail_the_handshake() {
        use ExtensionResponseError as E;
        let ok = "permessage-deflate; server_no_context_takeover; server_max_window_bits=12";
        let cases: Vec<(Vec<&str>, E)> = vec![
            (vec!["x-foo"], E::NotOffered("x-foo".into())),
            (vec![ok, ok], E::Repeated),
            (
                vec!["permessage-deflate; server_no_context_takeover; server_max_window_bits=14"],
                E::WindowAboveOffer("server_max_window_bits"),
            ),
            (
                vec!["permessage-deflate; server_no_context_takeover"],
                E::Missing("server_max_window_bits"),
            ),
            (
                vec!["permessage-deflate; server_max_window_bits=12"],
                E::Missing("server_no_context_takeover"),
            ),
            (
                vec![
                    "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits",
                ],
                E::InvalidValue("client_max_window_bits"),
            ),
            (
                vec![
                    "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; x=1",
                ],
                E::UnknownParameter("x".into()),
            ),
            (
                vec!["permessage-deflate; server_no_context_takeover=1; server_max_window_bits=12"],
                E::InvalidValue("server_no_context_takeover"),
            ),
            (
                vec!["permessage-deflate; server_no_context_takeover; server_max_window_bits=7"],
                E::InvalidValue("server_max_window_bits"),
            ),
        ];
        for (lines, want) in cases {
            let (client, events) = answered(on(), &lines);
            assert!(!client.is_open());
            assert_eq!(
                failure(&events),
                Some(HandshakeError::BadExtensionResponse(want)),
                "{lines:?}"
            );
        }
        let (_, events) = answered(on(), &["permessage-deflate;"]);
        assert!(matches!(
            failure(&events),
            Some(HandshakeError::BadExtensionResponse(E::Syntax(_)))
        ));
        // Nothing offered, something answered.
        let (_, events) = answered(Config::default(), &["permessage-deflate"]);
        assert_eq!(failure(&events), Some(HandshakeError::UnexpectedExtension));
    }

    #[test]
    fn an_8_bit_client_window_is_honoured_by_not_compressing() {
        let (mut client, _) = answered(
            on(),
            &[
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=8",
            ],
        );
        assert_eq!(client.compression().unwrap().client_max_window_bits, 8);
        let now = origin();
        client.send(now, Message::binary(vec![0u8; 5000])).unwrap();
        let wire = client.poll_transmit().unwrap();
        assert_eq!(wire[0], 0x82, "a plain final binary frame, no RSV1");
    }
}

mod pairs {
    use super::*;

    #[test]
    fn both_ends_compress_and_inflate_in_any_chop() {
        for chop in [usize::MAX, 1000, 3] {
            let mut p = Pair::with(on(), on(), chop);
            assert!(p.client.compression().is_some() && p.server.compression().is_some());
            let text = json(10_000);
            p.client.send_text(p.now, std::str::from_utf8(&text).unwrap()).unwrap();
            p.server.send(p.now, Message::binary(text.clone())).unwrap();
            p.drive();
            assert_eq!(
                p.server_messages(),
                vec![Message { kind: wsrpc_core::ws::MessageKind::Text, data: text.clone() }]
            );
            assert_eq!(p.client_messages(), vec![Message::binary(text.clone())]);
            // Fewer bytes went over the wire than the two messages hold.
            let wire = p.client.stats().bytes_out + p.server.stats().bytes_out;
            assert!(wire < text.len() as u64, "{wire}");
        }
    }

    #[test]
    fn either_end_off_means_plain() {
        for (c, s) in [(on(), Config::default()), (Config::default(), on())] {
            let mut p = Pair::with(c, s, usize::MAX);
            assert!(p.client.compression().is_none() && p.server.compression().is_none());
            p.client.send_text(p.now, "plain").unwrap();
            p.drive();
            assert_eq!(p.server_messages(), vec![Message::text("plain")]);
        }
    }

    #[test]
    fn context_takeover_both_ways_keeps_working_over_many_messages() {
        let mut cfg = on();
        let d = cfg.enable_compression();
        d.server_no_context_takeover = false;
        d.client_no_context_takeover = false;
        let mut p = Pair::with(cfg.clone(), cfg, 17);
        let n = p.client.compression().unwrap();
        assert!(!n.server_no_context_takeover && !n.client_no_context_takeover);
        for i in 0..50 {
            let msg = json(500 + i * 37);
            p.client.send_binary(p.now, &msg).unwrap();
            p.server.send_binary(p.now, &msg).unwrap();
            p.drive();
            assert_eq!(p.server_messages(), vec![Message::binary(msg.clone())]);
            assert_eq!(p.client_messages(), vec![Message::binary(msg)]);
        }
    }

    #[test]
    fn a_shared_frame_is_compressed_once_for_every_subscriber() {
        let cfg = on();
        let counters = cfg.compression.as_ref().unwrap().counters().clone();
        let mut pairs: Vec<Pair> =
            (0..5).map(|_| Pair::with(on_sharing(&cfg), on_sharing(&cfg), usize::MAX)).collect();
        let payload = json(2000);
        let frame = SharedFrame::new(wsrpc_core::ws::MessageKind::Text, &payload);
        for p in &mut pairs {
            p.server.send_shared(p.now, &frame).unwrap();
            p.drive();
            assert_eq!(
                p.client_messages(),
                vec![Message { kind: wsrpc_core::ws::MessageKind::Text, data: payload.clone() }]
            );
        }
        let t = counters.totals();
        assert_eq!(t.compressions, 1, "{t:?}");
        assert_eq!(t.messages_sent, 5);
        assert!(frame.compressed_len().unwrap() < payload.len() / 2);
        // A peer that limits the server's window below the shared copy's gets its own.
        let (mut rc, _) =
            RawClient::offering(on_sharing(&cfg), "permessage-deflate; server_max_window_bits=9");
        rc.server.send_shared(rc.now, &frame).unwrap();
        rc.collect();
        let f = rc.take_frames();
        assert_eq!(inflate(&f[0].payload), payload);
        assert_eq!(counters.totals().compressions, 2);
        // So does one that uses context takeover.
        let mut takeover = on_sharing(&cfg);
        takeover.enable_compression().server_no_context_takeover = false;
        let (mut rc, _) = RawClient::offering(takeover, "permessage-deflate");
        rc.server.send_shared(rc.now, &frame).unwrap();
        rc.collect();
        assert_eq!(inflate(&rc.take_frames()[0].payload), payload);
        assert_eq!(counters.totals().compressions, 3);
        // A connection without the extension gets the plain frame.
        let mut plain = RawClient::new(Config::default());
        plain.server.send_shared(plain.now, &frame).unwrap();
        plain.collect();
        let f = plain.take_frames();
        assert_eq!((f[0].rsv, &f[0].payload), (0, &payload));
    }

    /// A config sharing `cfg`'s compression counters and pool (as a server's connections do).
    fn on_sharing(cfg: &Config) -> Config {
        cfg.clone()
    }

    #[test]
    fn the_server_compresses_with_the_window_it_agreed() {
        for bits in 9..=15u8 {
            let (mut rc, head) = RawClient::offering(
                {
                    let mut c = on();
                    c.enable_compression().server_max_window_bits = 15;
                    c
                },
                &format!("permessage-deflate; server_max_window_bits={bits}"),
            );
            assert!(
                extension_line(&head).unwrap().contains(&format!("server_max_window_bits={bits}"))
            );
            // Data repeating at a distance only a large window sees.
            let mut data = json(1 << 14);
            data.extend_from_within(..);
            rc.server.send_binary(rc.now, &data).unwrap();
            rc.collect();
            let f = rc.take_frames();
            let mut d = Decompress::new_with_window_bits(false, bits.max(9));
            let mut input = f[0].payload.clone();
            input.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::with_capacity(data.len() + 16);
            d.decompress_vec(&input, &mut out, FlushDecompress::Sync).expect("fits the window");
            assert_eq!(out, data);
        }
    }
}

#[test]
fn negotiation_functions_are_usable_on_their_own() {
    let cfg = DeflateConfig::default();
    let accepted = deflate::accept(Some(&cfg), [cfg.offer().as_bytes()]).unwrap();
    let answered = deflate::validate_response(Some(&cfg), [accepted.header.as_bytes()]).unwrap();
    assert_eq!(answered, Some(accepted.params));
}
