//! Work that reaches a connection while its thread sleeps in `poll` waiting for input: output
//! the socket did not take, a close handshake started by a shutdown, async answers on a
//! keep-alive or pipelined HTTP connection, a handler that publishes to its own connection.
//! Heartbeats are off here, so a sleeping connection thread has no timer to wake it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{Gate, PATIENCE, init, raw_websocket, read_frame, read_head, router, send_text, url};
use serde_json::value::RawValue;
use wsrpc_blocking::Router;
use wsrpc_blocking::hub::HubConfig;
use wsrpc_blocking::limit::LimitConfig;
use wsrpc_blocking::ws;
use wsrpc_blocking::{Server, SubscriptionEvent, connect};
use wsrpc_core::service::Service;

/// No heartbeat, no handshake timer.
fn quiet() -> ws::Config {
    let mut c = ws::Config::default();
    c.ping_interval = None;
    c.handshake_timeout = None;
    c
}

fn start_with(router: Router, ws: ws::Config, hub: HubConfig) -> Server {
    Server::builder()
        .router(router)
        .limits(LimitConfig::disabled())
        .bind("127.0.0.1:0".parse().unwrap())
        .websocket(ws)
        .hub(hub)
        .start()
        .unwrap()
}

/// A server whose outboxes hold 1,024 messages / 64 MiB, and a raw peer subscribed to `topic`.
fn server_and_subscriber(ws: ws::Config, topic: &str) -> (Server, TcpStream) {
    let mut hub = HubConfig::default();
    hub.outbox.max_messages = 1024;
    hub.outbox.max_bytes = 64 << 20;
    let server = start_with(router(&Gate::new()), ws, hub);
    let mut peer = raw_websocket(server.local_addr());
    let subscribe = format!(
        r#"{{"jsonrpc":"2.0","method":"subscribe","params":{{"topic":"{topic}"}},"id":1}}"#
    );
    send_text(&mut peer, &subscribe);
    let (op, _) = read_frame(&mut peer);
    assert_eq!(op, 0x81);
    (server, peer)
}

#[test]
fn output_the_socket_did_not_take_is_written_once_the_peer_reads_again() {
    init();
    let (server, mut peer) = server_and_subscriber(quiet(), "bulk");
    // Far more than the socket buffers hold: the notifier's writes stop with output left,
    // while the peer sends nothing that would wake the connection thread.
    let payload = RawValue::from_string(format!("\"{}\"", "y".repeat(64 << 10))).unwrap();
    const COUNT: u64 = 256;
    for _ in 0..COUNT {
        assert_eq!(server.publish("bulk", &payload).unwrap().subscribers, 1);
    }
    std::thread::sleep(Duration::from_millis(300));
    // Reading again, it gets everything, in order.
    for seq in 1..=COUNT {
        let (op, frame) = read_frame(&mut peer);
        assert_eq!(op, 0x81);
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["params"]["seq"], seq, "{}", &v["params"]["topic"]);
    }
}

#[test]
fn a_close_handshake_started_by_a_shutdown_times_out_on_a_silent_peer() {
    init();
    let mut ws = quiet();
    ws.close_timeout = Duration::from_millis(200);
    let server = start_with(router(&Gate::new()), ws, HubConfig::default());
    let mut silent = raw_websocket(server.local_addr());
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| server.shutdown(PATIENCE));
        let (op, payload) = read_frame(&mut silent);
        assert_eq!(op, 0x88, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
        // Never answered: the close timer, not the shutdown deadline, ends the connection.
        let mut rest = Vec::new();
        let _ = silent.read_to_end(&mut rest);
    });
    assert!(started.elapsed() < PATIENCE / 2, "took {:?}", started.elapsed());
}

/// Reads one HTTP/1.1 response with a Content-Length: (head, body).
fn read_response(s: &mut TcpStream) -> (String, String) {
    let head = read_head(s);
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn post(id: i64, x: i64) -> String {
    let body = format!(r#"{{"jsonrpc":"2.0","method":"double","params":[{x}],"id":{id}}}"#);
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn async_answers_on_a_keep_alive_connection_then_the_next_request() {
    init();
    let server = start_with(router(&Gate::new()), quiet(), HubConfig::default());
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    for i in 1..=3 {
        s.write_all(post(i, i).as_bytes()).unwrap();
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains(&format!(r#""result":{}"#, 2 * i)), "{body}");
    }
    assert_eq!(server.connections(), 1);
}

#[test]
fn pipelined_async_requests_are_answered_in_order() {
    init();
    let server = start_with(router(&Gate::new()), quiet(), HubConfig::default());
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    // The second request arrives while the first waits for its async handler.
    s.write_all(format!("{}{}{}", post(1, 10), post(2, 20), post(3, 30)).as_bytes()).unwrap();
    for (id, want) in [(1, 20), (2, 40), (3, 60)] {
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains(&format!(r#""result":{want}"#)), "{body}");
        assert!(body.contains(&format!(r#""id":{id}"#)), "{body}");
    }
}

#[test]
fn a_handler_that_publishes_to_its_own_connection() {
    init();
    let service: Arc<OnceLock<Arc<Service>>> = Arc::default();
    let mut r = Router::new();
    let svc = service.clone();
    r.method("shout", move |(n,): (i64,), _| {
        let svc = svc.get().expect("set after start");
        for i in 0..n {
            svc.publish("self", &i).expect("a valid topic");
        }
        Ok(n)
    });
    let server = start_with(r, quiet(), HubConfig::default());
    let _ = service.set(server.service().clone());
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let sub = client.subscribe("self").unwrap();
    for round in 0..20u64 {
        assert_eq!(client.call::<i64>("shout", (3,)).unwrap(), 3);
        for i in 0..3u64 {
            match sub.recv_timeout(PATIENCE) {
                Ok(SubscriptionEvent::Notification { seq, value }) => {
                    assert_eq!(seq, round * 3 + i + 1);
                    assert_eq!(value.get(), i.to_string());
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn many_sleeping_connections_get_a_publish() {
    init();
    let server = start_with(router(&Gate::new()), quiet(), HubConfig::default());
    let clients: Vec<_> =
        (0..50).map(|_| connect(&url(server.local_addr()), Default::default()).unwrap()).collect();
    let subs: Vec<_> = clients.iter().map(|c| c.subscribe("all").unwrap()).collect();
    for i in 0..20i64 {
        assert_eq!(server.publish("all", &i).unwrap().subscribers, 50);
    }
    for sub in &subs {
        for i in 0..20u64 {
            match sub.recv_timeout(PATIENCE) {
                Ok(SubscriptionEvent::Notification { seq, .. }) => assert_eq!(seq, i + 1),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn a_peer_that_stops_reading_is_dropped_without_a_heartbeat() {
    init();
    let mut ws = quiet();
    // The stall limit is the longer of the two.
    ws.pong_timeout = Duration::from_millis(200);
    ws.close_timeout = Duration::from_millis(200);
    // Held open, never read.
    let (server, _stuck) = server_and_subscriber(ws, "flood");
    let payload = RawValue::from_string(format!("\"{}\"", "x".repeat(64 << 10))).unwrap();
    for _ in 0..256 {
        server.publish("flood", &payload).unwrap();
    }
    let start = Instant::now();
    while server.connections() > 0 {
        assert!(start.elapsed() < PATIENCE, "the stuck peer was not dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
}
