//! permessage-deflate over real loopback sockets, for every adapter: decompression bombs are
//! closed with 1009 before their memory is spent while other peers are served, and the
//! adapters' own clients (which offer compression when their ws config has it) call and
//! subscribe compressed, a publish being compressed once for all subscribers. Tests in this
//! file run one at a time: the bomb test reads the process's RSS.

use std::io::Write;
use std::time::Duration;

use flate2::{Compress, Compression, FlushCompress};
use serde_json::json;
use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::{ClientOptions, SubscriptionEvent};
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_core::ws::frame::{OpCode, encode_frame_rsv};
use wsrpc_tests::raw::{self, RawWs};
use wsrpc_tests::{Adapter, LONG, TestServer, serial, unlimited_config, wait_for};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn compressed_config() -> ServiceConfig {
    let mut c = unlimited_config();
    c.ws.enable_compression();
    c
}

fn start<A: Adapter>(config: ServiceConfig) -> Box<dyn TestServer> {
    let mut r = Router::new();
    r.method("echo", |v: serde_json::Value, _| Ok(v));
    A::start(config, r, Bind::Addr("127.0.0.1:0".parse().unwrap())).expect("server starts")
}

fn compressing_client<A: Adapter>(server: &dyn TestServer) -> Box<dyn wsrpc_tests::TestClient> {
    let options = ClientOptions::default().compression();
    A::connect(&server.url(), options).expect("a compressing client connects")
}

/// Raw deflate of `data`, sync-flushed, tail kept.
fn deflate_flushed(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 500 + 1024);
    loop {
        let done = c.total_in() as usize;
        c.compress_vec(&data[done..], &mut out, FlushCompress::Sync).unwrap();
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out
}

/// One message's payload: `data` deflated, the flush's tail removed (RFC 7692 §7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = deflate_flushed(data);
    out.truncate(out.len() - 4);
    out
}

/// A payload that inflates to `mib` MiB of zeros: one flushed MiB repeated (each copy refers
/// back only within itself and ends on a byte boundary, so the copies chain into one stream).
fn bomb(mib: usize) -> Vec<u8> {
    let one = deflate_flushed(&vec![0u8; 1 << 20]);
    let mut out = Vec::with_capacity(one.len() * mib);
    for _ in 0..mib {
        out.extend_from_slice(&one);
    }
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame; `compressed` sets RSV1.
fn frame(opcode: OpCode, compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    encode_frame_rsv(
        &mut wire,
        true,
        if compressed { 4 } else { 0 },
        opcode,
        Some([9, 8, 7, 6]),
        payload,
    );
    wire
}

/// Opens a raw WebSocket that offered permessage-deflate and checks it was accepted.
fn open_compressed(server: &dyn TestServer) -> RawWs {
    let (ws, head) = RawWs::open_with_head(server.addr(), OFFER);
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"),
        "{head}"
    );
    ws
}

pub fn bombs_get_1009_before_their_memory_is_spent<A: Adapter>() {
    let _serial = serial();
    let mut cfg = compressed_config();
    cfg.ws.max_message_size = 1 << 20;
    let server = start::<A>(cfg);
    let client = compressing_client::<A>(&*server);
    assert_eq!(client.call("echo", json!(["warm", "up"])).unwrap(), json!(["warm", "up"]));
    let gib = bomb(1024);
    assert!(gib.len() < 2 << 20, "1 GiB in {} bytes", gib.len());
    let kib = deflate(&vec![b' '; 2 << 20]);
    assert!(kib.len() < 4096, "2 MiB in {} bytes", kib.len());
    let before = raw::rss_kib(None);
    // Ten peers at once, each with a message that would inflate to 1 GiB: a server that
    // inflated before checking would need 10 GiB.
    let bombers: Vec<_> = (0..10)
        .map(|i| {
            let mut ws = open_compressed(&*server);
            let wire = if i % 2 == 0 {
                frame(OpCode::Binary, true, &gib)
            } else {
                frame(OpCode::Text, true, &kib)
            };
            std::thread::spawn(move || {
                // The server stops reading the frame once it has seen enough.
                let _ = ws.send(&wire);
                ws.close_code(LONG)
            })
        })
        .collect();
    for b in bombers {
        assert_eq!(b.join().unwrap(), Some(1009));
    }
    let grown = raw::rss_kib(None).saturating_sub(before);
    assert!(grown < 40 << 10, "RSS grew by {grown} KiB for ten 1 MiB-limited bombs");
    // Everyone else is still served, compressed.
    let big = json!({"rows": vec!["the same row, again and again"; 500]});
    assert_eq!(client.call("echo", big.clone()).unwrap(), big);
    let fresh = compressing_client::<A>(&*server);
    assert_eq!(fresh.call("echo", json!([1])).unwrap(), json!([1]));
    // Broken compressed text: 1007.
    let mut ws = open_compressed(&*server);
    ws.send(&frame(OpCode::Text, true, &deflate(b"{\"a\":\"\xff\xfe\"}"))).unwrap();
    assert_eq!(ws.close_code(LONG), Some(1007));
    // RSV1 on a control frame: 1002.
    let mut ws = open_compressed(&*server);
    ws.send(&frame(OpCode::Ping, true, b"x")).unwrap();
    assert_eq!(ws.close_code(LONG), Some(1002));
}

pub fn compressed_calls_and_a_publish_compressed_once<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(compressed_config());
    let clients: Vec<_> = (0..3).map(|_| compressing_client::<A>(&*server)).collect();
    let big = json!({"rows": vec!["the same row, again and again"; 200]});
    for c in &clients {
        assert_eq!(c.call("echo", big.clone()).unwrap(), big);
    }
    let m = server.metrics().compression;
    assert!(m.messages_received >= 3 && m.messages_sent >= 3, "{m:?}");
    assert!(m.received_inflated_bytes > 4 * m.received_compressed_bytes, "{m:?}");
    assert!(m.sent_uncompressed_bytes > 4 * m.sent_compressed_bytes, "{m:?}");
    let mut subs: Vec<_> = clients.iter().map(|c| c.subscribe("prices").unwrap()).collect();
    wait_for("three subscribers", || server.metrics().subscriptions.active == 3);
    let before = server.metrics().compression;
    let value = json!({"bids": vec![[40000.5, 1.25]; 100], "asks": vec![[40001.5, 0.5]; 100]});
    server.publish("prices", &value);
    for s in &mut subs {
        match s.next(LONG) {
            Some(SubscriptionEvent::Notification { value: v, .. }) => {
                assert_eq!(serde_json::from_str::<serde_json::Value>(v.get()).unwrap(), value);
            }
            other => panic!("expected the notification, got {other:?}"),
        }
    }
    let after = server.metrics().compression;
    assert_eq!(after.compressions - before.compressions, 1, "compressed once for three");
    assert_eq!(after.messages_sent - before.messages_sent, 3);
    // The Prometheus exposition has the byte counters.
    let mut s = raw::connect(server.addr());
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let body = raw::read_until(&mut s, Duration::from_secs(5), |_| false);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("wsrpc_compression_sent_uncompressed_bytes_total "), "{body}");
    assert!(body.contains("wsrpc_compressions_total "));
}

macro_rules! compression_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn bombs_get_1009_before_their_memory_is_spent() {
                super::bombs_get_1009_before_their_memory_is_spent::<$adapter>();
            }
            #[test]
            fn compressed_calls_and_a_publish_compressed_once() {
                super::compressed_calls_and_a_publish_compressed_once::<$adapter>();
            }
        }
    };
}

compression_tests!(smol, wsrpc_tests::Smol);
compression_tests!(async_std, wsrpc_tests::AsyncStd);
compression_tests!(blocking, wsrpc_tests::Blocking);
