//! HTTP request bodies share the server-wide budget of unfinished WebSocket messages: a body
//! is charged while it arrives (beyond its first 64 KiB), given back when it is complete or
//! its connection ends, and refused with 503 when the budget is spent.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::sync::Arc;
use std::time::{Duration, Instant};

use wsrpc_core::engine::{Endpoint, Input, Output, ServerConnection};
use wsrpc_core::rpc::Router;
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_core::ws::AssemblyBudget;
use wsrpc_core::{Now, UnixTime};

const KIB: usize = 1024;

fn service(budget: &AssemblyBudget) -> Arc<Service> {
    let mut config = ServiceConfig::default();
    config.ws.assembly_budget = Some(budget.clone());
    config.rpc.max_request_size = 1024 * KIB;
    let mut r = Router::new();
    r.method("len", |(s,): (String,), _| Ok(s.len()));
    Service::new(config, r, start())
}

fn start() -> Now {
    Now::new(Instant::now(), UnixTime(Duration::from_secs(1_700_000_000)))
}

/// The body of a `len` call without its string.
const CALL: &str = r#"{"jsonrpc":"2.0","method":"len","params":[""],"id":1}"#;

/// A call of `len` whose body is `size` bytes.
fn body(size: usize) -> Vec<u8> {
    let pad = size - CALL.len();
    format!(r#"{{"jsonrpc":"2.0","method":"len","params":["{}"],"id":1}}"#, "a".repeat(pad))
        .into_bytes()
}

fn head(len: usize) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes()
}

fn chunked_head() -> Vec<u8> {
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()
}

/// Feeds `bytes` in 16 KiB reads (as a socket would deliver them) and returns the output.
fn feed(conn: &mut ServerConnection, now: Now, bytes: &[u8]) -> String {
    let mut out = Vec::new();
    for piece in bytes.chunks(16 * KIB) {
        let mut at = 0;
        while at < piece.len() {
            let used = conn.handle(now, Input::Bytes(&piece[at..]));
            assert!(used > 0, "progress");
            at += used;
        }
        loop {
            match conn.poll_output(now) {
                Output::Transmit(mut tx) => {
                    let b = tx.first().to_vec();
                    out.extend_from_slice(&b);
                    tx.advance(b.len());
                }
                Output::Wait(_) | Output::Finished => break,
                _ => {}
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn limit_errors(svc: &Service, now: Now) -> u64 {
    svc.snapshot(now.mono).errors["limit_exceeded"]
}

#[test]
fn bodies_are_charged_to_the_shared_budget_and_refused_with_503_when_it_is_spent() {
    // One body's buffer grows to 256 KiB (192 KiB charged); two do not fit.
    let budget = AssemblyBudget::new(320 * KIB as u64);
    let svc = service(&budget);
    let now = start();
    let big = body(240 * KIB);
    // A body on its way holds its share beyond its first 64 KiB.
    let mut a = ServerConnection::new(svc.clone(), now);
    let mut wire = head(big.len());
    wire.extend_from_slice(&big[..200 * KIB]);
    assert_eq!(feed(&mut a, now, &wire), "");
    let held = budget.used();
    assert_eq!(held, 192 * KIB as u64, "charged by capacity beyond the first 64 KiB");
    // A second one cannot get as much: 503 with Retry-After, counted as a limit, closed.
    let mut b = ServerConnection::new(svc.clone(), now);
    let mut wire = head(big.len());
    wire.extend_from_slice(&big[..200 * KIB]);
    let answer = feed(&mut b, now, &wire);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\r\nretry-after: 1\r\n") || answer.contains("\r\nRetry-After: 1\r\n"));
    assert!(answer.contains("onnection: close"), "{answer}");
    assert_eq!(limit_errors(&svc, now), 1);
    assert_eq!(budget.used(), held, "the refused body gave back what it had");
    // Small bodies stay within their free 64 KiB and are served while the budget is spent.
    let mut c = ServerConnection::new(svc.clone(), now);
    let small = body(60 * KIB);
    let mut wire = head(small.len());
    wire.extend_from_slice(&small);
    let answer = feed(&mut c, now, &wire);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.ends_with(&format!(r#""result":{},"id":1}}"#, 60 * KIB - CALL.len())),
        "{answer}"
    );
    // A connection that ends mid-body gives its share back.
    drop(a);
    assert_eq!(budget.used(), 0);
    // A whole large body is served, and its share is back once it is.
    let mut d = ServerConnection::new(svc.clone(), now);
    let mut wire = head(big.len());
    wire.extend_from_slice(&big);
    let answer = feed(&mut d, now, &wire);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(budget.used(), 0);
    assert_eq!(limit_errors(&svc, now), 1);
}

#[test]
fn chunked_bodies_are_charged_too() {
    let budget = AssemblyBudget::new(128 * KIB as u64);
    let svc = service(&budget);
    let now = start();
    let big = body(300 * KIB);
    let mut wire = chunked_head();
    for chunk in big.chunks(10 * KIB) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let mut conn = ServerConnection::new(svc.clone(), now);
    let answer = feed(&mut conn, now, &wire);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert_eq!(limit_errors(&svc, now), 1);
    drop(conn);
    assert_eq!(budget.used(), 0);
    // Over the request size limit by itself is still 413, whatever the budget.
    let mut conn = ServerConnection::new(svc.clone(), now);
    let answer = feed(&mut conn, now, &head(2048 * KIB));
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
}
