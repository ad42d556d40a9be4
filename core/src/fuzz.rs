//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test, so a
//! finding reproduces under plain `cargo test`. Each one asserts the invariants that must
//! hold for any input: no panic, bounded buffers, a fatal error stays fatal.
//!
//! Not part of the API.

use std::time::{Duration, Instant};

use crate::Xoshiro256;
use crate::http::head::{HeadBuffer, HeadLimits, RequestHead, ResponseHead};
use crate::ws::frame::{FrameDecoder, MAX_HEADER_LEN};
use crate::ws::{
    AssemblyBudget, ClientRequest, CloseCode, Config, Connection, Event, Role, handshake,
};

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

/// Feeds a server connection that negotiated permessage-deflate compressed messages built
/// from `data`, and checks the inflating decoder against a plain inflate of the same bytes:
/// a message it delivers is exactly what the stream inflates to; one that inflates beyond the
/// limit is never delivered (1009); the message buffer never exceeds the limit plus one byte;
/// the shared budget is given back; a failure is final.
///
/// Returns the messages delivered and whether the connection failed.
///
/// `data`: one settings byte (limit, context takeover, text or binary, chop size), then
/// records of `[h, payload]`: `h & 1` ends the message, `h >> 1` is the payload length
/// (capped by what is left). The first frame of each message has RSV1.
pub fn inflate(data: &[u8], origin: Instant) -> (usize, bool) {
    use crate::ws::deflate::Negotiated;
    use crate::ws::frame::{OpCode, encode_frame_rsv};
    use flate2::{Decompress, FlushDecompress, Status};

    let Some((&settings, mut rest)) = data.split_first() else { return (0, false) };
    let max = [64u64, 1000, 4096, 70_000][usize::from(settings & 3)];
    let takeover = settings & 4 != 0;
    let opcode = if settings & 8 != 0 { OpCode::Text } else { OpCode::Binary };
    let chop = 1 + usize::from(settings >> 4) * 61;
    let budget = AssemblyBudget::new(1 << 20);
    let mut config = Config { max_message_size: max, max_frame_size: 1 << 20, ..Config::default() };
    config.assembly_budget = Some(budget.clone());
    config.enable_compression().client_no_context_takeover = !takeover;
    let params = Negotiated {
        server_no_context_takeover: true,
        client_no_context_takeover: !takeover,
        server_max_window_bits: 12,
        client_max_window_bits: 15,
    };
    let mut conn = Connection::accepted_with(config, origin, Some(params));
    // The reference: one inflater per message, or one for the connection under takeover.
    let mut reference = Decompress::new(false);
    let mut reference_lost = false;
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut failed = false;
    let mut messages = 0;
    while !rest.is_empty() {
        // One message: its frames, and the compressed bytes they carry.
        let mut wire = Vec::new();
        let mut stream = Vec::new();
        let mut first = true;
        while let Some((&h, tail)) = rest.split_first() {
            let n = usize::from(h >> 1).min(tail.len());
            let payload = &tail[..n];
            rest = &tail[n..];
            let fin = h & 1 == 1 || rest.is_empty();
            let (rsv, op) = if first { (4, opcode) } else { (0, OpCode::Continuation) };
            encode_frame_rsv(&mut wire, fin, rsv, op, Some(key), payload);
            stream.extend_from_slice(payload);
            first = false;
            if fin {
                break;
            }
        }
        // What the message inflates to, up to one byte over the limit.
        if !takeover {
            reference.reset(false);
        }
        stream.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut expected = Vec::with_capacity(max as usize + 1);
        let mut input = &stream[..];
        let verdict = loop {
            let (in_before, out_before) = (reference.total_in(), expected.len());
            let Ok(status) = reference.decompress_vec(input, &mut expected, FlushDecompress::Sync)
            else {
                break Err(());
            };
            input = &input[(reference.total_in() - in_before) as usize..];
            if expected.len() as u64 > max {
                break Err(());
            }
            if status == Status::StreamEnd {
                reference_lost |= takeover;
                break Ok(());
            }
            if input.is_empty() && expected.len() < expected.capacity() {
                break Ok(());
            }
            if reference.total_in() == in_before && expected.len() == out_before {
                break Err(());
            }
        };
        let mut delivered = Vec::new();
        for piece in wire.chunks(chop) {
            let mut at = 0;
            while at < piece.len() {
                let used = conn.handle_input(origin, &piece[at..]);
                assert!(used > 0, "handle_input must make progress");
                at += used;
                while let Some(e) = conn.poll_event() {
                    if let Event::Message(m) = e {
                        delivered.push(m);
                    }
                }
                let held = conn.receive_buffer_len() as u64;
                assert!(held <= max + 1 + 14 + 125, "buffer {held} over the limit {max}");
            }
        }
        if failed {
            assert!(delivered.is_empty() && !conn.is_open(), "a failure is final");
        }
        for m in &delivered {
            assert!(m.data.len() as u64 <= max, "delivered over the limit");
            if m.kind == crate::ws::MessageKind::Text {
                assert!(m.as_text().is_some(), "text messages are valid UTF-8");
            }
        }
        if !reference_lost || !takeover {
            match verdict {
                Ok(()) if expected.len() as u64 <= max => {
                    if let Some(m) = delivered.first() {
                        assert_eq!(m.data, expected, "inflated differently from the reference");
                    }
                }
                // Too large or corrupt: never delivered.
                _ => assert!(delivered.is_empty(), "a message the reference refuses was delivered"),
            }
        }
        failed |= !conn.is_open();
        if failed {
            assert_eq!(budget.used(), 0, "budget given back after a failure");
        }
        messages += delivered.len();
    }
    drop(conn);
    assert_eq!(budget.used(), 0, "budget given back");
    (messages, failed)
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

/// Parses `data` as a JSON-RPC message and runs it through a session; every response must be
/// JSON, and ids must be echoed byte for byte.
pub fn jsonrpc(data: &[u8], origin: Instant) {
    use crate::rpc::message::{Incoming, parse};
    let entries = match parse(data, 100) {
        Incoming::Single(e) => vec![e],
        Incoming::Batch(v) => v,
        Incoming::Unanswerable(e) => {
            assert!(e.code == -32700 || e.code == -32600);
            Vec::new()
        }
    };
    for entry in entries.iter().flatten() {
        let params = crate::rpc::Params::new(entry.params);
        let _ = params.parse::<serde_json::Value>();
        let _ = params.parse::<(i64, String)>();
        let _ = params.parse::<&str>();
    }
    let mut session = fuzz_session(origin, crate::rpc::Transport::Messages);
    session.handle_message(origin, data);
    drain_session(&mut session, origin);
    // Ids of valid requests come back exactly.
    if let Incoming::Single(Ok(req)) = parse(data, 100) {
        if let Some(id) = req.id {
            let mut s = fuzz_session(origin, crate::rpc::Transport::Messages);
            s.handle_message(origin, data);
            if let Some(crate::rpc::SessionOutput::Message(m)) = s.poll_output() {
                // Compared as raw text: a number id may be beyond what `Value` (f64) holds.
                #[derive(serde::Deserialize)]
                struct Response<'a> {
                    #[serde(borrow)]
                    id: &'a serde_json::value::RawValue,
                }
                let response: Response<'_> =
                    serde_json::from_slice(&m).expect("a response object with an id");
                assert_eq!(response.id.get(), id.get(), "the id is echoed byte for byte");
            }
        }
    }
}

fn fuzz_router() -> crate::rpc::Router {
    let mut r = crate::rpc::Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a.wrapping_add(b)))
        .method("echo", |p: serde_json::Value, _| Ok(p))
        .method_raw("len", |p, _| Ok(p.raw().map_or(0, |r| r.get().len())))
        .async_method("later", |(x,): (u8,), _| async move { Ok(x) });
    r
}

fn fuzz_service(origin: Instant) -> std::sync::Arc<crate::service::Service> {
    let mut config = crate::service::ServiceConfig::default();
    config.rpc.max_request_size = 16 * 1024;
    config.rpc.max_batch = 8;
    config.rpc.max_inflight_async = 4;
    config.hub.replay_capacity = 4;
    config.hub.outbox.max_messages = 8;
    config.max_connections = 4;
    config.ws.max_message_size = 32 * 1024;
    config.ws.head_limits = HeadLimits { max_size: 2048, max_headers: 16 };
    config.limits.message_rate = Some(crate::limit::Rate::per_second(50));
    crate::service::Service::new(config, fuzz_router(), fuzz_now(origin))
}

fn fuzz_session(origin: Instant, transport: crate::rpc::Transport) -> crate::rpc::RpcSession {
    let service = fuzz_service(origin);
    crate::rpc::RpcSession::new(
        service,
        crate::rpc::ConnectionId(1),
        None,
        std::sync::Arc::new(crate::auth::Principal::anonymous()),
        transport,
        origin,
    )
}

fn drain_session(session: &mut crate::rpc::RpcSession, now: Instant) {
    use crate::rpc::SessionOutput;
    while let Some(o) = session.poll_output() {
        match o {
            SessionOutput::Message(m) => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&m).expect("responses are JSON");
            }
            SessionOutput::Spawn(id, work) => session.complete(id, run_work(work), now),
            _ => {}
        }
    }
}

/// Both clocks at the start of a fuzz run: `origin`, and a fixed date in 2023.
fn fuzz_now(origin: Instant) -> crate::Now {
    crate::Now::new(origin, crate::UnixTime(Duration::from_secs(1_700_000_000)))
}

/// Runs handler work that needs no waiting (the fuzz handlers never wait).
fn run_work(work: crate::rpc::Work) -> crate::engine::HandlerResult {
    match work {
        crate::rpc::Work::Future(mut fut) => {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => Err(crate::rpc::RpcError::internal("pending")),
            }
        }
        crate::rpc::Work::Blocking(call) => call(),
    }
}

/// Feeds `data` to the HTTP head and body parsers in pieces.
pub fn http(data: &[u8]) {
    use crate::http::body::BodyReader;
    let limits = HeadLimits { max_size: 4096, max_headers: 32 };
    let mut hb = HeadBuffer::new();
    let mut rest = data;
    for piece in data.chunks(7) {
        match hb.push(piece, limits.max_size) {
            Ok(Some(used)) => {
                let consumed = data.len() - rest.len() + used;
                rest = &data[consumed..];
                if let Ok(req) = RequestHead::parse(hb.take(), limits) {
                    let _ = (req.method(), req.path(), req.headers.tokens("connection").count());
                }
                break;
            }
            Ok(None) => rest = &rest[piece.len()..],
            Err(_) => return,
        }
    }
    for chop in [1usize, 5, 64] {
        let mut body = BodyReader::chunked(1024);
        for piece in rest.chunks(chop) {
            match body.push(piece) {
                Ok((used, done)) => {
                    assert!(used <= piece.len());
                    if done {
                        assert!(body.into_body().len() <= 1024);
                        break;
                    }
                    assert_eq!(used, piece.len(), "an unfinished body takes all it is given");
                }
                Err(e) => {
                    assert!(matches!(e.status(), 400 | 413));
                    break;
                }
            }
        }
    }
}

/// Runs a whole server connection (HTTP and WebSocket) over a script, like
/// [`connection`]: input chunks, time steps, end of file, publishes and a shutdown.
pub fn engine(data: &[u8], origin: Instant) {
    use crate::engine::{Endpoint, Input, ServerConnection};
    let service = fuzz_service(origin);
    let mut now = fuzz_now(origin);
    let mut conn = ServerConnection::new(service.clone(), now);
    let mut script = data;
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
                    let used = conn.handle(now, Input::Bytes(&chunk[at..]));
                    assert!(used <= chunk.len() - at);
                    let done = pump_engine(&mut conn, now);
                    if used == 0 {
                        assert!(!conn.wants_read() || done, "no progress while wanting input");
                        break;
                    }
                    at += used;
                }
            }
            5 => {
                script = script.get(1..).unwrap_or(&[]);
                now = now.after(Duration::from_millis(u64::from(arg) * 100));
                conn.handle(now, Input::Timeout);
            }
            6 => {
                script = script.get(1..).unwrap_or(&[]);
                match arg % 4 {
                    0 => drop(conn.handle(now, Input::Eof)),
                    1 => drop(conn.handle(now, Input::Shutdown)),
                    2 => drop(conn.handle(now, Input::Broken)),
                    _ => {
                        let _ = service.publish("t", &arg);
                    }
                }
            }
            _ => {
                script = script.get(1..).unwrap_or(&[]);
                let _ = service.publish(if arg % 2 == 0 { "t" } else { "u:1" }, &[arg; 3]);
            }
        }
        let done = pump_engine(&mut conn, now);
        if finished {
            assert!(done, "finished is final");
        }
        finished |= done;
    }
    drop(conn);
    assert_eq!(service.active_connections(), 0, "a dropped connection is released");
    assert_eq!(service.hub().stats().subscriptions_active, 0, "and its subscriptions with it");
}

/// Drains the connection's output at `now` as an adapter with an always-writable transport
/// would (handler work run at once); true once it is finished. Output must end in a bounded
/// number of steps.
fn pump_engine(conn: &mut crate::engine::ServerConnection, now: crate::Now) -> bool {
    use crate::engine::{Endpoint, Input, Output};
    for _ in 0..100_000 {
        match conn.poll_output(now) {
            Output::Spawn(id, work) => {
                let result = run_work(work);
                conn.handle(now, Input::Completed(id, result));
            }
            Output::Transmit(tx) => {
                let n = tx.len();
                tx.advance(n);
            }
            Output::Finished => return true,
            Output::Wait(_) => return false,
            _ => {}
        }
    }
    panic!("output never ends");
}
