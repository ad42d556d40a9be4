//! Every example of the JSON-RPC 2.0 specification (section 7), with the exact responses.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::Principal;
use wsrpc_core::rpc::{ConnectionId, Router, RpcError, RpcSession, SessionOutput, Transport};
use wsrpc_core::service::{Service, ServiceConfig};

#[derive(serde::Deserialize)]
struct Subtract {
    minuend: i64,
    subtrahend: i64,
}

fn spec_router() -> Router {
    let mut r = Router::new();
    r.method("subtract", |p: Subtract, _| Ok(p.minuend - p.subtrahend))
        .method("sum", |p: Vec<i64>, _| Ok(p.iter().sum::<i64>()))
        .method("update", |_: Vec<i64>, _| Ok(()))
        .method("notify_hello", |_: Vec<i64>, _| Ok(()))
        .method("get_data", |(): (), _| Ok(json!(["hello", 5])));
    r
}

fn session() -> RpcSession {
    let now = Instant::now();
    let service = Service::new(
        ServiceConfig::default(),
        spec_router(),
        wsrpc_core::Now::new(now, wsrpc_core::UnixTime(Duration::from_secs(1_700_000_000))),
    );
    let mut session = RpcSession::new(
        service,
        ConnectionId(1),
        None,
        Arc::new(Principal::anonymous()),
        Transport::Messages,
        now,
    );
    // A local client, which may read `rpc.metrics`.
    session.set_client_address(Some(core::net::Ipv4Addr::LOCALHOST.into()));
    session
}

/// Sends `request`, returns the parsed responses (none for notifications).
fn exchange(s: &mut RpcSession, request: &str) -> Vec<Value> {
    s.handle_message(Instant::now(), request.as_bytes());
    let mut out = Vec::new();
    while let Some(o) = s.poll_output() {
        match o {
            SessionOutput::Message(m) => {
                out.push(serde_json::from_slice(&m).expect("responses are JSON"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn check(request: &str, expected: Option<&str>) {
    let mut s = session();
    let got = exchange(&mut s, request);
    match expected {
        None => assert!(got.is_empty(), "{request} answered {got:?}"),
        Some(e) => assert_eq!(got, vec![serde_json::from_str::<Value>(e).unwrap()], "{request}"),
    }
}

#[test]
fn positional_parameters() {
    check(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
        Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 1}"#),
    );
    check(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}"#,
        Some(r#"{"jsonrpc": "2.0", "result": -19, "id": 2}"#),
    );
}

#[test]
fn named_parameters() {
    check(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
        Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 3}"#),
    );
    check(
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}"#,
        Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 4}"#),
    );
}

#[test]
fn notifications() {
    check(r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#, None);
    check(r#"{"jsonrpc": "2.0", "method": "foobar"}"#, None);
}

#[test]
fn non_existent_method() {
    check(
        r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}"#,
        ),
    );
}

#[test]
fn invalid_json() {
    check(
        r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}"#,
        ),
    );
}

#[test]
fn invalid_request_object() {
    check(
        r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}"#,
        ),
    );
}

#[test]
fn batch_invalid_json() {
    check(
        r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}"#,
        ),
    );
}

#[test]
fn empty_array() {
    check(
        "[]",
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}"#,
        ),
    );
}

#[test]
fn invalid_batch_but_not_empty() {
    check(
        "[1]",
        Some(
            r#"[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]"#,
        ),
    );
}

#[test]
fn invalid_batch() {
    check(
        "[1,2,3]",
        Some(
            r#"[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]"#,
        ),
    );
}

#[test]
fn mixed_batch() {
    check(
        r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#,
        Some(
            r#"[
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
    ]"#,
        ),
    );
}

#[test]
fn all_notifications_batch() {
    check(
        r#"[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"#,
        None,
    );
}

#[test]
fn ids_are_echoed_byte_for_byte() {
    let mut s = session();
    for id in ["1.50", "1e3", "-0", "\"\\u00e9\"", "null", "123456789012345678901234567890"] {
        let req = format!(r#"{{"jsonrpc":"2.0","method":"get_data","id":{id}}}"#);
        s.handle_message(Instant::now(), req.as_bytes());
        let Some(SessionOutput::Message(m)) = s.poll_output() else { panic!() };
        let text = String::from_utf8(m).unwrap();
        assert!(text.ends_with(&format!(",\"id\":{id}}}")), "{text}");
    }
}

#[test]
fn invalid_params_name_the_param() {
    let mut s = session();
    let got =
        exchange(&mut s, r#"{"jsonrpc":"2.0","method":"subtract","params":{"minuend":1},"id":1}"#);
    assert_eq!(got[0]["error"]["code"], -32602);
    assert!(got[0]["error"]["message"].as_str().unwrap().contains("subtrahend"), "{got:?}");
    let got =
        exchange(&mut s, r#"{"jsonrpc":"2.0","method":"subtract","params":[1,"two"],"id":2}"#);
    assert_eq!(got[0]["error"]["code"], -32602);
    assert!(got[0]["error"]["message"].as_str().unwrap().contains("[1]"), "{got:?}");
    let got = exchange(&mut s, r#"{"jsonrpc":"2.0","method":"subtract","params":[1,2,3],"id":3}"#);
    assert_eq!(got[0]["error"]["code"], -32602);
    assert_eq!(got[0]["error"]["message"], "Invalid params: too many positional params (3 given)");
    let got = exchange(&mut s, r#"{"jsonrpc":"2.0","method":"subtract","params":[1],"id":4}"#);
    assert_eq!(got[0]["error"]["code"], -32602);
    assert!(got[0]["error"]["message"].as_str().unwrap().contains("invalid length 1"), "{got:?}");
}

#[test]
fn batch_limit_and_request_size_limit() {
    let mut s = session();
    let batch: Vec<String> =
        (0..101).map(|i| format!(r#"{{"jsonrpc":"2.0","method":"get_data","id":{i}}}"#)).collect();
    let got = exchange(&mut s, &format!("[{}]", batch.join(",")));
    assert_eq!(got[0]["error"]["code"], -32600);
    assert_eq!(got[0]["error"]["data"]["max"], 100);
    let exactly: Vec<String> =
        (0..100).map(|i| format!(r#"{{"jsonrpc":"2.0","method":"get_data","id":{i}}}"#)).collect();
    let got = exchange(&mut s, &format!("[{}]", exactly.join(",")));
    assert_eq!(got[0].as_array().unwrap().len(), 100);
    let huge =
        format!(r#"{{"jsonrpc":"2.0","method":"sum","params":[{}],"id":1}}"#, "1,".repeat(6 << 20));
    let got = exchange(&mut s, &huge);
    assert_eq!(got[0]["error"]["code"], -32005);
}

#[test]
fn rpc_prefix_builtins() {
    let mut s = session();
    let got = exchange(&mut s, r#"{"jsonrpc":"2.0","method":"rpc.health","id":1}"#);
    assert_eq!(got[0]["result"]["status"], "ok");
    let got = exchange(&mut s, r#"{"jsonrpc":"2.0","method":"rpc.metrics","id":2}"#);
    assert!(got[0]["result"]["methods"]["subtract"].is_object(), "{got:?}");
    let got = exchange(&mut s, r#"{"jsonrpc":"2.0","method":"rpc.other","id":3}"#);
    assert_eq!(got[0]["error"]["code"], -32601);
}

#[test]
fn handler_errors_pass_through() {
    let mut r = Router::new();
    r.method("fail", |(): (), _| {
        Err::<(), _>(
            RpcError::server(-32042, "custom failure").with_data(json!({"why": "because"})),
        )
    });
    let now = Instant::now();
    let service = Service::new(
        ServiceConfig::default(),
        r,
        wsrpc_core::Now::new(now, wsrpc_core::UnixTime(Duration::ZERO)),
    );
    let mut s = RpcSession::new(
        service,
        ConnectionId(1),
        None,
        Arc::new(Principal::anonymous()),
        Transport::Messages,
        now,
    );
    let got = exchange(&mut s, r#"{"jsonrpc":"2.0","method":"fail","id":7}"#);
    assert_eq!(
        got[0],
        json!({"jsonrpc":"2.0","error":{"code":-32042,"message":"custom failure","data":{"why":"because"}},"id":7})
    );
}
