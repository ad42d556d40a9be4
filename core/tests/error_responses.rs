//! How failures are answered: internal errors keep their detail in the log, panicking handlers
//! get -32603 and the session lives on, and every error response is signed and counted like a
//! result.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::Principal;
use wsrpc_core::rpc::{ConnectionId, Router, RpcError, RpcSession, SessionOutput, Transport};
use wsrpc_core::service::{Service, ServiceConfig};

/// Log records of this test binary: (target, message).
static RECORDS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let entry = (record.target().to_owned(), record.args().to_string());
        RECORDS.lock().unwrap().push(entry);
    }

    fn flush(&self) {}
}

fn capture_logs() {
    static LOGGER: Capture = Capture;
    // Several tests call this; the first one installs it.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Whether a record of `target` contains `text`.
fn logged(target: &str, text: &str) -> bool {
    RECORDS.lock().unwrap().iter().any(|(t, m)| t == target && m.contains(text))
}

fn session(config: ServiceConfig, router: Router) -> (Arc<Service>, RpcSession, Instant) {
    let now = Instant::now();
    let service = Service::new(config, router, now, Duration::from_secs(1_700_000_000));
    let session = RpcSession::new(
        service.clone(),
        ConnectionId(1),
        None,
        Arc::new(Principal::anonymous()),
        Transport::Messages,
        now,
    );
    (service, session, now)
}

/// Sends `request`; returns the raw text of each message that comes back.
fn exchange(s: &mut RpcSession, now: Instant, request: &str) -> Vec<String> {
    s.handle_message(now, request.as_bytes());
    let mut out = Vec::new();
    while let Some(o) = s.poll_output() {
        match o {
            SessionOutput::Message(m) => out.push(String::from_utf8(m).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[test]
fn internal_errors_are_logged_with_their_detail_and_answered_without_it() {
    capture_logs();
    let mut r = Router::new();
    r.method("db", |(): (), _| {
        Err::<(), _>(RpcError::internal("password authentication failed for user wallet_ro"))
    })
    // Maps with non-string keys cannot be JSON: the result fails to serialize.
    .method("unserializable", |(): (), _| Ok(HashMap::from([((1, 2), 3)])))
    .async_method("unserializable_later", |(): (), _| async { Ok(HashMap::from([((4, 5), 6)])) });
    let (_, mut s, now) = session(ServiceConfig::default(), r);
    let generic = |id: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":-32603,"message":"Internal error"}},"id":{id}}}"#
        )
    };
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"db","id":1}"#);
    assert_eq!(got, [generic(1)]);
    assert!(logged("wsrpc::rpc", "password authentication failed for user wallet_ro"));
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"unserializable","id":2}"#);
    assert_eq!(got, [generic(2)]);
    assert!(logged("wsrpc::rpc", "key must be a string"));
    // An async result that fails to serialize, completed the way an adapter does.
    s.handle_message(now, br#"{"jsonrpc":"2.0","method":"unserializable_later","id":3}"#);
    let Some(SessionOutput::Spawn(call, mut fut)) = s.poll_output() else { panic!() };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(result) = fut.as_mut().poll(&mut cx) else { panic!() };
    s.complete(call, result, now);
    let Some(SessionOutput::Message(m)) = s.poll_output() else { panic!() };
    assert_eq!(String::from_utf8(m).unwrap(), generic(3));
}

#[test]
fn handler_errors_with_their_own_detail_still_reach_the_peer() {
    let mut r = Router::new();
    r.method("fail", |(): (), _| {
        Err::<(), _>(RpcError::server(-32042, "custom").with_data(json!({"why": "because"})))
    });
    let (_, mut s, now) = session(ServiceConfig::default(), r);
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"fail","id":1}"#);
    let v: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["error"]["data"]["why"], "because", "only internal errors lose their detail");
}
