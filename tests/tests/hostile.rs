//! Hostile peers over real loopback sockets, for every adapter: handshakes that drip, overflow
//! or lie, half-open sockets, and frames that announce absurd lengths, split a message into
//! crumbs, carry broken UTF-8, skip the mask or close with codes that may not be sent. The
//! server answers each with the documented status or close code, keeps serving everyone else
//! and keeps its memory bounded. Tests in this file run one at a time: some read the process's
//! RSS, which other tests' allocations would blur.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::ClientOptions;
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_tests::LONG;
use wsrpc_tests::raw::{self, RawWs};
use wsrpc_tests::{Adapter, TestServer};
use wsrpc_tests::{errors, serial, unlimited_config as config, wait_for};

const MIB: u64 = 1024;

fn start<A: Adapter>(config: ServiceConfig) -> Box<dyn TestServer> {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b));
    A::start(config, r, Bind::Addr("127.0.0.1:0".parse().unwrap())).expect("server starts")
}

/// A served client proves the server still works: a call answered within `LONG`.
fn served<A: Adapter>(server: &dyn TestServer) {
    let client = A::connect(&server.url(), ClientOptions::default()).expect("a client connects");
    assert_eq!(client.call("add", json!([20, 22])).unwrap(), json!(42));
}

/// Sends `request`, returns the response head and whether the server then closed.
fn refusal(server: &dyn TestServer, request: &[u8]) -> (String, bool) {
    let mut s = raw::connect(server.addr());
    s.write_all(request).unwrap();
    let head = raw::read_until(&mut s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    let closed = raw::closed_within(&mut s, LONG);
    (String::from_utf8_lossy(&head).into_owned(), closed)
}

pub fn slowloris_is_cut_at_the_handshake_timeout<A: Adapter>() {
    let _serial = serial();
    let timeout = Duration::from_millis(1500);
    let mut c = config();
    c.ws.handshake_timeout = Some(timeout);
    let server = start::<A>(c);
    // 20 peers drip their handshake one byte every 200 ms; it would take 30 s to complete.
    let request = raw::upgrade_request("/", "X-Slow: yes\r\n").into_bytes();
    let mut slow: Vec<TcpStream> = (0..20).map(|_| raw::connect(server.addr())).collect();
    let writers: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let drip = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut writers = writers;
            for b in request {
                // Pacing, not synchronisation: this is the attack.
                writers.retain_mut(|w| w.write_all(&[b]).is_ok());
                if done.load(Ordering::SeqCst) || writers.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Meanwhile a normal client keeps calling; each answer comes promptly.
    let calls = Arc::new(AtomicUsize::new(0));
    let normal = {
        let (url, done, calls) = (server.url(), done.clone(), calls.clone());
        std::thread::spawn(move || {
            let client = A::connect(&url, ClientOptions::default()).unwrap();
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::SeqCst) {
                let t = Instant::now();
                assert_eq!(client.call("add", json!([1, 2])).unwrap(), json!(3));
                slowest = slowest.max(t.elapsed());
                calls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
            slowest
        })
    };
    for s in &mut slow {
        let head = raw::read_until(s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
        assert_eq!(raw::status_of(&head), 408, "{}", String::from_utf8_lossy(&head));
        assert!(raw::closed_within(s, LONG), "closed after the 408");
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    drip.join().unwrap();
    let slowest = normal.join().unwrap();
    // The deadline runs from the first byte, however slowly the rest arrives.
    assert!(elapsed >= timeout - Duration::from_millis(100), "cut early: {elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(3), "cut late: {elapsed:?}");
    assert!(calls.load(Ordering::SeqCst) >= 10, "the normal client was served meanwhile");
    assert!(slowest < Duration::from_secs(1), "a normal call took {slowest:?}");
    assert!(errors(&*server, "handshake") >= 20);
}

pub fn oversized_headers_get_431_and_close<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    let pad = format!("X-Pad: {}\r\n", "a".repeat(100 * 1024));
    let (head, closed) = refusal(&*server, raw::upgrade_request("/", &pad).as_bytes());
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert!(closed, "closed after the 431");
    // Too many lines, each small, is refused the same way (the default is 64 lines).
    let lines: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    let (head, closed) = refusal(&*server, raw::upgrade_request("/", &lines).as_bytes());
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert!(closed);
    assert!(errors(&*server, "handshake") >= 2);
    served::<A>(&*server);
}

pub fn malformed_handshakes_get_their_status<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("garbage", b"\x00\x01\x02 garbage\xff\xfe\r\nnot: http\r\n\r\n".to_vec(), 400),
        (
            "HTTP/1.0",
            raw::upgrade_request("/", "").replace("HTTP/1.1", "HTTP/1.0").into_bytes(),
            505,
        ),
        (
            "no key",
            raw::upgrade_request("/", "")
                .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")
                .into_bytes(),
            400,
        ),
        (
            "version 8",
            raw::upgrade_request("/", "")
                .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
                .into_bytes(),
            426,
        ),
    ];
    for (name, request, status) in cases {
        let (head, closed) = refusal(&*server, &request);
        assert_eq!(raw::status_of(head.as_bytes()), status, "{name}: {head}");
        assert!(closed, "{name}: closed after the refusal");
        if status == 426 {
            assert!(head.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{head}");
        }
    }
    assert!(errors(&*server, "handshake") >= 4);
    served::<A>(&*server);
}

pub fn half_open_sockets_do_not_starve_a_normal_client<A: Adapter>() {
    let _serial = serial();
    let mut c = config();
    c.max_connections = 1100;
    let server = start::<A>(c);
    // Half of them never send a byte, half stop in the middle of the request line.
    let held: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut s = raw::connect(server.addr());
            if i % 2 == 1 {
                s.write_all(b"GET / HT").unwrap();
            }
            s
        })
        .collect();
    wait_for("the server to hold 1,000 sockets", || server.connections() >= 1000);
    let client = A::connect(&server.url(), ClientOptions::default()).unwrap();
    for i in 0..20i64 {
        let t = Instant::now();
        assert_eq!(client.call("add", json!([i, 1])).unwrap(), json!(i + 1));
        assert!(t.elapsed() < Duration::from_secs(2), "call {i} took {:?}", t.elapsed());
    }
    assert!(server.connections() >= 1001, "the half-open sockets were still held");
    drop(held);
    client.close();
    wait_for("every socket to be released", || server.connections() == 0);
}

pub fn huge_frame_header_gets_1009_without_allocating<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    served::<A>(&*server);
    let before = raw::rss_kib(None);
    // 20 peers announce 2^63-1 bytes and send 1 MiB of it: a server that believed the header
    // would buffer 20 MiB; this one refuses at the header and discards what follows.
    let junk = vec![b'a'; 1 << 20];
    for _ in 0..20 {
        let mut ws = RawWs::open(server.addr(), "");
        ws.send(&raw::frame_header_64(true, 1, (1 << 63) - 1)).unwrap();
        let _ = ws.send(&junk);
        assert_eq!(ws.close_code(LONG), Some(1009));
    }
    let grown = raw::rss_kib(None).saturating_sub(before);
    assert!(grown < 8 * MIB, "RSS grew by {grown} KiB");
    // 2^63 has the most significant bit set, which RFC 6455 forbids: a protocol error.
    let mut ws = RawWs::open(server.addr(), "");
    ws.send(&raw::frame_header_64(true, 1, 1 << 63)).unwrap();
    assert_eq!(ws.close_code(LONG), Some(1002));
    assert!(errors(&*server, "protocol") >= 21);
    served::<A>(&*server);
}

/// Peers that each hold most of a large unfinished message share one budget: the one that
/// would take it over is closed with 1013 (try again later), others are served, and a peer
/// that leaves gives its share back.
pub fn unfinished_messages_share_one_memory_budget<A: Adapter>() {
    let _serial = serial();
    let mut cfg = config();
    cfg.ws.assembly_budget = Some(wsrpc_core::ws::AssemblyBudget::new(8 << 20));
    let server = start::<A>(cfg);
    let part = raw::client_frame_with(false, 1, true, &vec![b'x'; 3 << 20]);
    let mut a = RawWs::open(server.addr(), "");
    let mut b = RawWs::open(server.addr(), "");
    let mut c = RawWs::open(server.addr(), "");
    for ws in [&mut a, &mut b] {
        ws.send(&part).unwrap();
        assert_eq!(ws.ping_pong(LONG), Some(vec![]), "3 MiB held, still open");
    }
    let _ = c.send(&part);
    assert_eq!(c.close_code(LONG), Some(1013), "the third 3 MiB would exceed 8 MiB");
    drop(c);
    served::<A>(&*server);
    assert!(errors(&*server, "limit_exceeded") >= 1, "counted as a limit, not a protocol error");
    // `a` leaves mid-message; its share comes back and a newcomer can use it.
    drop(a);
    wait_for("a's connection to go", || server.connections() == 1);
    let mut d = RawWs::open(server.addr(), "");
    d.send(&part).unwrap();
    assert_eq!(d.ping_pong(LONG), Some(vec![]));
    // And `b` finishes its message, which is then answered as JSON-RPC (an invalid one here).
    b.send(&raw::client_frame_with(true, 0, true, b"")).unwrap();
    let frame = b.next_frame(LONG).expect("an answer");
    assert_eq!(frame.json().expect("JSON")["error"]["code"], -32700);
}

/// Sends `n` one-byte fragments of a text message that never ends (the first one included).
fn fragments(first: bool, n: usize) -> Vec<u8> {
    let mut wire = Vec::with_capacity(n * 7);
    for i in 0..n {
        let opcode = if first && i == 0 { 1 } else { 0 };
        wire.extend_from_slice(&raw::client_frame_with(false, opcode, true, b"a"));
    }
    wire
}

/// Accepts exactly `cap` one-byte fragments, closes with 1009 at the next, and stays within a
/// few MiB while the peer goes on to 100,000.
fn crumbs_closed_at(server: &dyn TestServer, cap: usize) {
    let before = raw::rss_kib(None);
    let mut ws = RawWs::open(server.addr(), "");
    ws.send(&fragments(true, cap)).unwrap();
    // A ping between fragments is legal; its pong proves every fragment before it was taken.
    let seen = ws.ping_pong(LONG).expect("still open after the cap's worth of fragments");
    assert!(seen.is_empty(), "nothing before the pong: {seen:?}");
    // One more, then a ping: the close must come instead of the pong.
    ws.send(&[fragments(false, 1), raw::client_frame(9, b"late")].concat()).unwrap();
    let _ = ws.send(&fragments(false, 100_000 - cap - 1));
    let frame = ws.next_frame(LONG).expect("a close");
    assert_eq!(frame.close_code(), Some(1009), "closed at fragment {}: {frame:?}", cap + 1);
    let grown = raw::rss_kib(None).saturating_sub(before);
    assert!(grown < 4 * MIB, "RSS grew by {grown} KiB");
}

pub fn one_byte_fragments_are_cut_at_the_fragment_cap<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    served::<A>(&*server);
    assert_eq!(ServiceConfig::default().ws.max_fragments, 1024);
    crumbs_closed_at(&*server, 1024);
    assert!(errors(&*server, "protocol") >= 1);
    served::<A>(&*server);
}

pub fn one_byte_fragments_are_cut_at_the_message_cap<A: Adapter>() {
    let _serial = serial();
    let mut c = config();
    c.ws.max_fragments = 1_000_000;
    c.ws.max_message_size = 64 * 1024;
    let server = start::<A>(c);
    served::<A>(&*server);
    crumbs_closed_at(&*server, 64 * 1024);
    served::<A>(&*server);
}

pub fn invalid_utf8_gets_1007_at_the_first_bad_byte<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    // The header announces 1,000 bytes; only those up to the bad one are sent, and the close
    // must come before the rest. The zero mask key puts the bytes on the wire as they are.
    let cases: [(&str, Vec<u8>); 3] = [
        ("a stray 0xFF", [raw::frame_header(true, 1, 1000), b"{\"a\":\xff".to_vec()].concat()),
        (
            "a broken two-byte sequence",
            [raw::frame_header(true, 1, 1000), b"caf\xc3\x28".to_vec()].concat(),
        ),
        (
            "in a continuation frame",
            [
                raw::client_frame_with(false, 1, true, b"[1,"),
                raw::frame_header(true, 0, 1000),
                b"\"\xed\xa0\x80".to_vec(), // an encoded surrogate
            ]
            .concat(),
        ),
    ];
    for (name, wire) in cases {
        let mut ws = RawWs::open(server.addr(), "");
        ws.send(&wire).unwrap();
        assert_eq!(ws.close_code(LONG), Some(1007), "{name}");
    }
    // The same frame with valid text and the rest of its bytes is served.
    let mut ws = RawWs::open(server.addr(), "");
    ws.send_text(r#"{"jsonrpc":"2.0","method":"add","params":[1,1],"id":"café"}"#).unwrap();
    let answer = ws.next_frame(LONG).and_then(|f| f.json()).expect("an answer");
    assert_eq!(answer, json!({"jsonrpc": "2.0", "result": 2, "id": "café"}));
    assert!(errors(&*server, "protocol") >= 3);
}

pub fn unmasked_client_frame_gets_1002<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    let mut ws = RawWs::open(server.addr(), "");
    let call = br#"{"jsonrpc":"2.0","method":"add","params":[1,1],"id":1}"#;
    ws.send(&raw::client_frame_with(true, 1, false, call)).unwrap();
    let frame = ws.next_frame(LONG).expect("a frame");
    assert_eq!(frame.close_code(), Some(1002), "no answer to an unmasked call: {frame:?}");
    assert!(errors(&*server, "protocol") >= 1);
    served::<A>(&*server);
}

pub fn close_with_an_invalid_code_gets_1002<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    for code in [1005u16, 999, 1006, 1015, 5000] {
        let mut ws = RawWs::open(server.addr(), "");
        ws.send(&raw::client_frame(8, &code.to_be_bytes())).unwrap();
        assert_eq!(ws.close_code(LONG), Some(1002), "close code {code}");
    }
    // A valid code is echoed, so the 1002s above are about the codes.
    let mut ws = RawWs::open(server.addr(), "");
    ws.send(&raw::client_frame(8, &4000u16.to_be_bytes())).unwrap();
    assert_eq!(ws.close_code(LONG), Some(4000));
    assert!(errors(&*server, "protocol") >= 5);
    served::<A>(&*server);
}

macro_rules! hostile_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn slowloris_is_cut_at_the_handshake_timeout() {
                super::slowloris_is_cut_at_the_handshake_timeout::<$adapter>();
            }
            #[test]
            fn oversized_headers_get_431_and_close() {
                super::oversized_headers_get_431_and_close::<$adapter>();
            }
            #[test]
            fn malformed_handshakes_get_their_status() {
                super::malformed_handshakes_get_their_status::<$adapter>();
            }
            #[test]
            fn half_open_sockets_do_not_starve_a_normal_client() {
                super::half_open_sockets_do_not_starve_a_normal_client::<$adapter>();
            }
            #[test]
            fn huge_frame_header_gets_1009_without_allocating() {
                super::huge_frame_header_gets_1009_without_allocating::<$adapter>();
            }
            #[test]
            fn unfinished_messages_share_one_memory_budget() {
                super::unfinished_messages_share_one_memory_budget::<$adapter>();
            }
            #[test]
            fn one_byte_fragments_are_cut_at_the_fragment_cap() {
                super::one_byte_fragments_are_cut_at_the_fragment_cap::<$adapter>();
            }
            #[test]
            fn one_byte_fragments_are_cut_at_the_message_cap() {
                super::one_byte_fragments_are_cut_at_the_message_cap::<$adapter>();
            }
            #[test]
            fn invalid_utf8_gets_1007_at_the_first_bad_byte() {
                super::invalid_utf8_gets_1007_at_the_first_bad_byte::<$adapter>();
            }
            #[test]
            fn unmasked_client_frame_gets_1002() {
                super::unmasked_client_frame_gets_1002::<$adapter>();
            }
            #[test]
            fn close_with_an_invalid_code_gets_1002() {
                super::close_with_an_invalid_code_gets_1002::<$adapter>();
            }
        }
    };
}

hostile_tests!(smol, wsrpc_tests::Smol);
hostile_tests!(async_std, wsrpc_tests::AsyncStd);
hostile_tests!(blocking, wsrpc_tests::Blocking);
