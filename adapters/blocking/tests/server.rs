//! Server behaviour: graceful shutdown, a server that goes away, binding, the connection
//! limit and the heartbeat.

mod common;

use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use common::{
    Gate, PATIENCE, fast_reconnect, init, no_reconnect, raw_websocket, read_frame, read_to_close,
    router, send_close, send_text, start, url,
};
use serde_json::value::RawValue;
use wsrpc_blocking::limit::LimitConfig;
use wsrpc_blocking::ws;
use wsrpc_blocking::{ClientError, Server, StartError, connect};

#[test]
fn graceful_shutdown_answers_the_call_in_flight_then_closes() {
    init();
    let gate = Gate::new();
    let server = start(router(&gate));
    let addr = server.local_addr();
    let client = connect(&url(addr), no_reconnect()).unwrap();
    let mut observer = raw_websocket(addr);
    std::thread::scope(|s| {
        let call = s.spawn(|| client.call::<i64>("hold", ()));
        gate.wait_started();
        let shutdown = s.spawn(move || server.shutdown(PATIENCE));
        // An idle peer is told at once: close 1001.
        let (op, payload) = read_frame(&mut observer);
        assert_eq!(op, 0x88, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
        send_close(&mut observer, 1001);
        read_to_close(&mut observer);
        // End the lingering close at once (the server would wait for this end of file).
        observer.shutdown(Shutdown::Both).unwrap();
        // The shutdown has begun; the call in flight still gets its answer.
        gate.release();
        assert_eq!(call.join().unwrap(), Ok(42));
        shutdown.join().unwrap();
    });
    // Then the client's connection was closed (1001) and, without reconnecting, it is done.
    assert!(matches!(
        client.call::<i64>("add", (1, 2)),
        Err(ClientError::Disconnected | ClientError::Closed)
    ));
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
}

#[test]
fn calls_in_flight_fail_with_disconnected_when_the_server_goes_away() {
    init();
    let gate = Gate::new();
    let server = start(router(&gate));
    let client = connect(&url(server.local_addr()), fast_reconnect()).unwrap();
    std::thread::scope(|s| {
        let call = s.spawn(|| client.call::<i64>("hold", ()));
        gate.wait_started();
        // No grace: the connection is cut with the call still running.
        server.shutdown(Duration::ZERO);
        assert_eq!(call.join().unwrap(), Err(ClientError::Disconnected));
    });
    gate.release();
}

#[test]
fn a_port_range_skips_the_ports_in_use() {
    init();
    let (blocker, first) = loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 65000 {
            break (l, port);
        }
    };
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let server = Server::builder()
        .router(router(&Gate::new()))
        .bind_range(ip, first..=first + 20)
        .start()
        .unwrap();
    let port = server.local_addr().port();
    assert!(port > first && port <= first + 20, "{first} -> {port}");
    assert_eq!(server.metrics().port, Some(port));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
    // A range with no free port fails.
    let err = Server::builder().bind_range(ip, first..=first).start().unwrap_err();
    assert!(
        matches!(&err, StartError::Io(e) if e.kind() == std::io::ErrorKind::AddrInUse),
        "{err:?}"
    );
    drop(blocker);
}

#[test]
fn beyond_max_connections_the_server_answers_503() {
    init();
    let server = Server::builder()
        .router(router(&Gate::new()))
        .limits(LimitConfig::disabled())
        .bind("127.0.0.1:0".parse().unwrap())
        .max_connections(1)
        .start()
        .unwrap();
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
    let mut extra = TcpStream::connect(server.local_addr()).unwrap();
    extra.set_read_timeout(Some(PATIENCE)).unwrap();
    let response = String::from_utf8(read_to_close(&mut extra)).unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("Retry-After: 1"), "{response}");
    // A client is refused at the handshake.
    match connect(&url(server.local_addr()), no_reconnect()) {
        Err(ClientError::Rejected { status }) => assert_eq!(status, 503),
        other => panic!("{other:?}"),
    }
    // The admitted connection is unaffected.
    assert_eq!(client.call::<i64>("add", (2, 2)).unwrap(), 4);
}

#[test]
fn the_heartbeat_closes_a_peer_that_never_answers_pings() {
    init();
    let mut config = ws::Config::default();
    config.ping_interval = Some(Duration::from_millis(50));
    config.pong_timeout = Duration::from_millis(100);
    let server = Server::builder()
        .router(router(&Gate::new()))
        .limits(LimitConfig::disabled())
        .bind("127.0.0.1:0".parse().unwrap())
        .websocket(config)
        .start()
        .unwrap();
    // Connected first, so the heartbeat checks it no later than the silent peer.
    let client = connect(&url(server.local_addr()), no_reconnect()).unwrap();
    let mut silent = raw_websocket(server.local_addr());
    let (op, payload) = read_frame(&mut silent);
    assert_eq!(op, 0x89, "a ping");
    assert!(!payload.is_empty());
    // Never answered: the server gives up and closes the socket.
    read_to_close(&mut silent);
    // The client answers pings (the core's auto-pong), so it is still connected.
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
}

#[test]
fn dropping_the_server_closes_its_connections() {
    init();
    let server = start(router(&Gate::new()));
    let addr = server.local_addr();
    let client = connect(&url(addr), no_reconnect()).unwrap();
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
    drop(server);
    assert!(matches!(
        client.call::<i64>("add", (1, 2)),
        Err(ClientError::Disconnected | ClientError::Closed)
    ));
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
}

#[test]
fn a_peer_that_stops_reading_is_dropped_without_holding_up_anyone() {
    init();
    let mut config = ws::Config::default();
    config.ping_interval = Some(Duration::from_millis(100));
    config.pong_timeout = Duration::from_millis(200);
    let server = Server::builder()
        .router(router(&Gate::new()))
        .limits(LimitConfig::disabled())
        .bind("127.0.0.1:0".parse().unwrap())
        .websocket(config)
        .start()
        .unwrap();
    let mut stuck = raw_websocket(server.local_addr());
    send_text(
        &mut stuck,
        r#"{"jsonrpc":"2.0","method":"subscribe","params":{"topic":"flood"},"id":1}"#,
    );
    let (op, response) = read_frame(&mut stuck);
    assert_eq!(op, 0x81, "{}", String::from_utf8_lossy(&response));
    // From now on it reads nothing: its socket buffers fill and the server's writes stall.
    let client = connect(&url(server.local_addr()), no_reconnect()).unwrap();
    // Raw JSON: copied as is, so the test does not spend its time escaping strings.
    let payload = RawValue::from_string(format!("\"{}\"", "x".repeat(64 << 10))).unwrap();
    for _ in 0..512 {
        assert_eq!(server.publish("flood", &payload).unwrap().subscribers, 1);
    }
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
    // Between write attempts the stalled driver runs its timers: the unanswered heartbeat
    // drops the peer.
    let start = std::time::Instant::now();
    while server.connections() > 1 {
        assert!(start.elapsed() < PATIENCE, "the stuck peer was not dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.publish("flood", &payload).unwrap().subscribers, 0);
    assert_eq!(client.call::<i64>("add", (2, 2)).unwrap(), 4);
}
