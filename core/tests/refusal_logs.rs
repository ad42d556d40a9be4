//! Refused handshakes, requests and calls are logged at `info` on their layer's target, with
//! the connection id, the peer (and client) address, the status or code and the reason.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use core::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};
use serde_json::json;
use wsrpc_core::auth::Principal;
use wsrpc_core::engine::{Endpoint, Input, Output, ServerConnection};
use wsrpc_core::limit::{MethodClass, Rate};
use wsrpc_core::rpc::{ConnectionId, Router, RpcSession, Transport};
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_core::{Now, UnixTime};

/// Every record, as (level, target, message).
struct Capture(Mutex<Vec<(Level, String, String)>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        let entry = (record.level(), record.target().to_owned(), record.args().to_string());
        self.0.lock().unwrap().push(entry);
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn start() -> Now {
    Now::new(Instant::now(), UnixTime(Duration::from_secs(1_700_000_000)))
}

/// Sends `request` on a new connection from `peer` and drains what it answers.
fn exchange(service: &Arc<Service>, peer: &str, request: &str) {
    let now = start();
    let peer: SocketAddr = peer.parse().unwrap();
    let mut conn = ServerConnection::with_peer(service.clone(), now, Some(peer));
    conn.handle(now, Input::Bytes(request.as_bytes()));
    for _ in 0..100 {
        match conn.poll_output(now) {
            Output::Transmit(mut tx) => {
                let mut slices = [std::io::IoSlice::new(&[]); 16];
                let k = tx.slices(&mut slices);
                let n = slices[..k].iter().map(|s| s.len()).sum();
                tx.advance(n);
            }
            Output::Wait(_) | Output::Finished => return,
            _ => {}
        }
    }
}

/// The levels of the captured records on `target` whose message contains every one of `parts`.
fn levels(target: &str, parts: &[&str]) -> Vec<Level> {
    let records = CAPTURE.0.lock().unwrap();
    records
        .iter()
        .filter(|(_, t, m)| t == target && parts.iter().all(|p| m.contains(p)))
        .map(|(level, _, _)| *level)
        .collect()
}

/// The one captured record at `info` or above on `target` whose message contains every one
/// of `parts`.
fn logged(target: &str, parts: &[&str]) -> (Level, String) {
    let records = CAPTURE.0.lock().unwrap();
    let found: Vec<_> = records
        .iter()
        .filter(|(l, t, m)| *l <= Level::Info && t == target && parts.iter().all(|p| m.contains(p)))
        .collect();
    assert_eq!(found.len(), 1, "{target} {parts:?} in {records:#?}");
    (found[0].0, found[0].2.clone())
}

#[test]
fn refusals_are_logged_at_info_with_peer_connection_and_reason() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(LevelFilter::Debug);
    let service = Service::new(ServiceConfig::default(), Router::new(), start());

    let upgrade = |extra: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    // A foreign origin: the auth layer's refusal.
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    exchange(
        &service,
        "198.51.100.7:4001",
        &upgrade(&format!("{key}Origin: https://evil.example\r\n")),
    );
    let (level, message) = logged("wsrpc::auth", &["peer=198.51.100.7:4001", "status=403"]);
    assert_eq!(level, Level::Info);
    assert!(message.contains("conn=") && message.contains("reason=\""), "{message}");
    // A broken upgrade: the WebSocket layer's.
    exchange(&service, "198.51.100.7:4002", &upgrade(""));
    let (level, message) = logged("wsrpc::ws", &["peer=198.51.100.7:4002", "status=400"]);
    assert_eq!(level, Level::Info);
    assert!(message.contains("Sec-WebSocket-Key"), "{message}");
    // A refused HTTP request: HTTP's.
    exchange(&service, "[2001:db8::7]:4003", "POST / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (level, _) = logged("wsrpc::http", &["peer=[2001:db8::7]:4003", "status=415"]);
    assert_eq!(level, Level::Info);
    // Metrics asked for from afar.
    exchange(&service, "198.51.100.7:4004", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    logged("wsrpc::auth", &["peer=198.51.100.7:4004", "status=403", "loopback"]);

    // A rate-limited call: the limit layer's, the first of a run at info, the rest at debug.
    let mut config = ServiceConfig::default();
    config.limits.classes =
        config.limits.classes.with_tiers(MethodClass::Default, &[Rate::per_minute(1)]);
    let mut router = Router::new();
    router.method("ping", |(): (), _| Ok("pong"));
    let service = Service::new(config, router, start());
    let now = Instant::now();
    let mut session = RpcSession::new(
        service,
        ConnectionId(4242),
        None,
        Arc::new(Principal::anonymous()),
        Transport::Messages,
        now,
    );
    session.set_client_address(Some("203.0.113.9".parse().unwrap()));
    for id in 0..4 {
        let call = json!({"jsonrpc": "2.0", "method": "ping", "id": id}).to_string();
        session.handle_message(now, call.as_bytes());
        while session.poll_output().is_some() {}
    }
    let (level, message) =
        logged("wsrpc::limit", &["conn=c4242", "client=203.0.113.9", "code=-32005"]);
    assert_eq!(level, Level::Info);
    assert!(message.contains("scope=connection") && message.contains("class=default"));
    // Three refusals in a row (one token a minute, four calls): the first at info, the
    // other two at debug, each still logged.
    let limit = ["conn=c4242", "code=-32005"];
    assert_eq!(levels("wsrpc::limit", &limit), [Level::Info, Level::Debug, Level::Debug]);
}
