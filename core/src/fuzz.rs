//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test, so a
//! finding reproduces under plain `cargo test`. Each one asserts the invariants that must
//! hold for any input: no panic, bounded buffers, a fatal error stays fatal.
//!
//! Not part of the API.

use std::time::{Duration, Instant};

use crate::Xoshiro256;
use crate::http::head::{HeadBuffer, HeadLimits, RequestHead, ResponseHead};
use crate::ws::frame::{FrameDecoder, MAX_HEADER_LEN};
use crate::ws::{ClientRequest, CloseCode, Config, Connection, Event, Role, handshake};

/// Decodes `data` as back-to-back frames for both roles; re-encoding a decoded header must
/// give the same bytes.
pub fn frame_decoder(data: &[u8]) {
    for role in [Role::Server, Role::Client] {
        let decoder = FrameDecoder::new(role, 1 << 20);
        let mut buf = data.to_vec();
        let mut at = 0;
        while let Ok(Some(frame)) = decoder.decode_in_place(&mut buf[at..]) {
            assert!(frame.len > 0 && at + frame.len <= data.len());
            let header = frame.header;
            let hlen = frame.len - frame.payload.len();
            let mut enc = [0u8; MAX_HEADER_LEN];
            assert_eq!(header.encode(&mut enc), hlen);
            assert_eq!(&enc[..hlen], &data[at..at + hlen], "re-encoded header differs");
            at += frame.len;
        }
    }
}

/// Parses `data` as a request head and a response head, and validates them as a WebSocket
/// upgrade and its answer.
pub fn handshake_heads(data: &[u8]) {
    let limits = HeadLimits { max_size: 4096, max_headers: 32 };
    let mut hb = HeadBuffer::new();
    if let Ok(Some(used)) = hb.push(data, limits.max_size) {
        assert!(used <= data.len() && hb.len() == used);
        let raw = hb.take();
        if let Ok(req) = RequestHead::parse(raw.clone(), limits) {
            let _ = (req.path(), req.query(), req.query_param("token"), req.headers.len());
            if let Ok(upgrade) = handshake::validate_upgrade(req) {
                let mut out = Vec::new();
                handshake::write_accept(&mut out, upgrade.key(), None, &[]);
                assert!(out.starts_with(b"HTTP/1.1 101 "));
            }
        }
        if let Ok(resp) = ResponseHead::parse(raw, limits) {
            let _ =
                handshake::validate_response(&resp, "dGhlIHNhbXBsZSBub25jZQ==", &["chat".into()]);
        }
    } else {
        assert!(hb.len() <= limits.max_size);
    }
}

/// Runs a whole connection, server role when the first byte is even, client role when odd,
/// over a script read from `data`: chunks of input, time steps, end of file, and
/// application commands. Checks progress, bounds and that failure is final.
pub fn connection(data: &[u8], origin: Instant) {
    let Some((&first, mut script)) = data.split_first() else { return };
    let config = Config {
        max_message_size: 64 * 1024,
        max_frame_size: 32 * 1024,
        max_fragments: 64,
        head_limits: HeadLimits { max_size: 2048, max_headers: 16 },
        idle_timeout: Some(Duration::from_secs(100)),
        ..Config::default()
    };
    let role = if first % 2 == 0 { Role::Server } else { Role::Client };
    let mut now = origin;
    let mut conn = match role {
        Role::Server => Connection::server(config.clone(), now),
        Role::Client => {
            let request = ClientRequest::new("localhost", "/").protocol("chat");
            Connection::client(config.clone(), &request, Box::new(Xoshiro256::from_seed(7)), now)
        }
    };
    let mut failed = false;
    let mut finished = false;
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        let arg = script.first().copied().unwrap_or(0);
        match op % 8 {
            0..=4 => {
                let n = usize::from(arg).min(script.len().saturating_sub(1));
                let chunk = script.get(1..1 + n).unwrap_or(&[]);
                script = script.get(1 + n..).unwrap_or(&[]);
                let mut at = 0;
                while at < chunk.len() {
                    pending_events(&mut conn);
                    let used = conn.handle_input(now, &chunk[at..]);
                    assert!(
                        used > 0 && used <= chunk.len() - at,
                        "handle_input must make progress"
                    );
                    at += used;
                    assert!(pending_events(&mut conn) <= 1, "input stops after each event");
                }
            }
            5 => {
                script = script.get(1..).unwrap_or(&[]);
                now += Duration::from_millis(u64::from(arg) * 250);
                conn.handle_timeout(now);
            }
            6 => conn.handle_eof(now),
            _ => {
                script = script.get(1..).unwrap_or(&[]);
                let _ = match arg % 4 {
                    0 => conn.send_text(now, "app message"),
                    1 => conn.send_binary(now, &[arg; 300]),
                    2 => conn.ping(b"app ping"),
                    _ => conn.close(now, CloseCode(u16::from(arg) * 20 + 990), "bye"),
                };
            }
        }
        // Write out half of what is pending, as a slow transport would.
        if let Some(bytes) = conn.poll_transmit() {
            let n = bytes.len().div_ceil(2);
            conn.advance_transmit(n);
        }
        // Assembly capacity may reach twice the message limit through Vec growth.
        let bound = 2 * 64 * 1024 + 2048 + 256;
        assert!(conn.receive_buffer_len() <= bound, "receive buffer bounded by the limits");
        assert!(conn.transmit_len() <= 256 * 1024, "transmit bounded: {}", conn.transmit_len());
        if let Some(deadline) = conn.poll_timeout() {
            assert!(deadline >= origin);
        }
        if failed {
            assert!(conn.error().is_some() && !conn.is_open(), "a fatal error stays fatal");
        }
        failed |= conn.error().is_some();
        if finished {
            assert!(conn.is_finished(), "finished is final");
        }
        finished |= conn.is_finished();
    }
}

/// Drains events; returns how many were pending. A `Closed` event is emitted at most once.
fn pending_events(conn: &mut Connection) -> usize {
    let mut n = 0;
    while let Some(e) = conn.poll_event() {
        if let Event::Message(m) = &e {
            assert!(m.data.len() <= conn.config().max_message_size as usize);
            if m.kind == crate::ws::MessageKind::Text {
                assert!(m.as_text().is_some(), "text messages are valid UTF-8");
            }
        }
        n += 1;
    }
    n
}
