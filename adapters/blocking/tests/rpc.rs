//! Calls, batches, notifications and async handlers over real loopback sockets.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{Gate, PATIENCE, fast_reconnect, init, no_reconnect, router, start, url};
use crossbeam_channel::unbounded;
use serde_json::json;
use wsrpc_blocking::{ClientError, ConnectError, connect};
use wsrpc_blocking::{Router, RpcError};

#[test]
fn call_returns_the_typed_result_and_errors() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let sum: i64 = client.call("add", (2, 3)).unwrap();
    assert_eq!(sum, 5);
    let echoed: serde_json::Value = client.call("echo", json!({"a": [1, "x"]})).unwrap();
    assert_eq!(echoed, json!({"a": [1, "x"]}));
    match client.call::<i64>("missing", ()) {
        Err(ClientError::Rpc(e)) => assert_eq!(e.code, -32601),
        other => panic!("{other:?}"),
    }
    match client.call::<i64>("add", ("two", 3)) {
        Err(ClientError::Rpc(e)) => assert_eq!(e.code, -32602),
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.call::<String>("add", (1, 1)), Err(ClientError::Decode(_))));
    // Clones share the connection, across threads.
    std::thread::scope(|s| {
        for i in 0..8i64 {
            let c = client.clone();
            s.spawn(move || assert_eq!(c.call::<i64>("add", (i, i)).unwrap(), 2 * i));
        }
    });
    assert_eq!(server.connections(), 1);
}

#[test]
fn batch_answers_in_request_order() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let results = client
        .batch(vec![("add", json!([1, 2])), ("missing", json!(null)), ("double", json!([21]))])
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().get(), "3");
    assert!(matches!(&results[1], Err(ClientError::Rpc(e)) if e.code == -32601));
    assert_eq!(results[2].as_ref().unwrap().get(), "42");
    assert!(client.batch::<()>(vec![]).unwrap().is_empty());
}

#[test]
fn a_notification_reaches_its_handler() {
    init();
    let (seen_tx, seen) = unbounded();
    let mut r = Router::new();
    r.method("note", move |(x,): (i64,), _| {
        seen_tx.send(x).unwrap();
        Ok(())
    });
    let server = start(r);
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    client.notify("note", (7,)).unwrap();
    assert_eq!(seen.recv_timeout(PATIENCE).unwrap(), 7);
}

#[test]
fn async_handlers_run_on_the_worker_pool() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    assert_eq!(client.call::<i64>("double", (21,)).unwrap(), 42);
    // More concurrent calls than workers, from several threads.
    std::thread::scope(|s| {
        for i in 0..16i64 {
            let c = client.clone();
            s.spawn(move || assert_eq!(c.call::<i64>("double", (i,)).unwrap(), 2 * i));
        }
    });
    // Bad params of an async method are answered by the core, not the pool.
    assert!(matches!(
        client.call::<i64>("double", ("x",)),
        Err(ClientError::Rpc(e)) if e.code == -32602
    ));
}

#[test]
fn a_panicking_async_handler_answers_internal_error() {
    init();
    let mut r = Router::new();
    r.async_method("boom", |(fail,): (bool,), _| async move {
        assert!(!fail, "boom");
        Ok::<_, RpcError>(1)
    });
    let server = start(r);
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    assert!(
        matches!(client.call::<i64>("boom", (true,)), Err(ClientError::Rpc(e)) if e.code == -32603)
    );
    // The worker survived.
    assert_eq!(client.call::<i64>("boom", (false,)).unwrap(), 1);
}

#[test]
fn a_call_slower_than_its_timeout_times_out() {
    init();
    let gate = Gate::new();
    let server = start(router(&gate));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let result = client.call_with_timeout::<i64>("hold", (), Duration::from_millis(100));
    assert_eq!(result, Err(ClientError::Timeout));
    gate.wait_started();
    gate.release();
    // The late answer is dropped; the connection keeps working.
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
}

#[test]
fn deeply_nested_params_fit_the_connection_thread_stack() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    // serde_json's recursion limit is 128 levels.
    let depth = 126;
    let deep: serde_json::Value = serde_json::from_str(&format!(
        "{}{}{}",
        "[".repeat(depth),
        r#"{"k":"v"}"#,
        "]".repeat(depth)
    ))
    .unwrap();
    let echoed: serde_json::Value = client.call("echo", &deep).unwrap();
    assert_eq!(echoed, deep);
}

#[test]
fn http_post_on_the_same_port_with_sync_and_async_handlers() {
    init();
    let server = start(router(&Gate::new()));
    for (body, want) in [
        (r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#, r#""result":5"#),
        (r#"{"jsonrpc":"2.0","method":"double","params":[4],"id":"x"}"#, r#""result":8"#),
    ] {
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(want), "{response}");
    }
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn a_peer_that_half_closes_after_its_request_still_gets_the_response() {
    init();
    let server = start(router(&Gate::new()));
    let body = r#"{"jsonrpc":"2.0","method":"add","params":[20,22],"id":1}"#;
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""result":42"#), "{response}");
}

#[test]
fn connect_fails_when_nothing_listens() {
    init();
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Reconnecting or not, a first connection that fails is reported.
    for options in [fast_reconnect(), no_reconnect()] {
        match connect(&url(addr), options) {
            Err(ClientError::Connect(ConnectError::Refused)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(connect("http://x", Default::default()), Err(ClientError::InvalidUrl(_))));
}

#[test]
fn close_ends_subscriptions_and_fails_later_calls() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let other = client.clone();
    let sub = client.subscribe("t").unwrap();
    client.close();
    assert!(sub.recv().is_none());
    assert_eq!(other.call::<i64>("add", (1, 2)), Err(ClientError::Closed));
    assert_eq!(other.notify("add", (1, 2)), Err(ClientError::Closed));
}

#[test]
fn large_messages_cross_in_both_directions() {
    init();
    let server = start(router(&Gate::new()));
    let client = connect(&url(server.local_addr()), Default::default()).unwrap();
    let big: String = (0..3 << 20).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let echoed: String = client.call("echo", [&big]).map(|v: Vec<String>| v[0].clone()).unwrap();
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big);
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<wsrpc_blocking::Server>();
    send_sync::<wsrpc_blocking::Client>();
    send_sync::<wsrpc_blocking::Subscription>();
}
