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
    let service = Service::new(
        config,
        router,
        wsrpc_core::Now::new(now, wsrpc_core::UnixTime(Duration::from_secs(1_700_000_000))),
    );
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
    let Some(SessionOutput::Spawn(call, wsrpc_core::rpc::Work::Future(mut fut))) = s.poll_output()
    else {
        panic!()
    };
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

/// The members of a response a signature covers, as the exact text on the wire.
#[derive(serde::Deserialize)]
struct SignedResponse<'a> {
    #[serde(borrow)]
    error: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    id: &'a serde_json::value::RawValue,
    sig: String,
}

#[test]
fn every_error_response_is_signed_and_counted_as_sent() {
    use wsrpc_core::auth::MessageSigner;
    use wsrpc_core::limit::{MethodClass, Rate};
    let signer = MessageSigner::new("shared key");
    let mut config = ServiceConfig::default();
    config.signing = Some(signer.clone());
    config.rpc.max_request_size = 1024;
    config.rpc.max_inflight_async = 1;
    config.limits.classes = config
        .limits
        .classes
        .clone()
        .with_method("scarce", MethodClass::Sensitive)
        .with_tiers(MethodClass::Sensitive, &[Rate::per_hour(1)]);
    let mut r = Router::new();
    r.method("scarce", |(): (), _| Ok(1))
        .method("fail", |(): (), _| Err::<(), _>(RpcError::server(-32042, "custom")))
        .async_method("later", |(): (), _| async { Ok(2) });
    let (service, mut s, now) = session(config.clone(), r);
    let signed = |method: &str, id: u64| {
        let sig = signer.sign_request(method, &id.to_string(), "null");
        format!(r#"{{"jsonrpc":"2.0","method":"{method}","id":{id},"sig":"{sig}"}}"#)
    };
    // Uses up the one token of `scarce` and the one async slot.
    assert_eq!(exchange(&mut s, now, &signed("scarce", 1)).len(), 1);
    s.handle_message(now, signed("later", 2).as_bytes());
    assert!(matches!(s.poll_output(), Some(SessionOutput::Spawn(..))));
    let too_large =
        format!(r#"{{"jsonrpc":"2.0","method":"x","params":["{}"],"id":3}}"#, "a".repeat(2000));
    let cases = [
        ("parse error", "{not json".to_owned(), -32700),
        ("request too large", too_large, -32005),
        ("invalid request", r#"{"jsonrpc":"1.0","method":"scarce","id":4}"#.to_owned(), -32600),
        ("bad signature", r#"{"jsonrpc":"2.0","method":"scarce","id":5}"#.to_owned(), -32004),
        ("method not found", signed("nope", 6), -32601),
        ("rate limited", signed("scarce", 7), -32005),
        ("too many async calls", signed("later", 8), -32005),
        ("handler error", signed("fail", 9), -32042),
    ];
    for (what, request, code) in cases {
        let sent_before = service.snapshot(now).messages.sent;
        let got = exchange(&mut s, now, &request);
        assert_eq!(got.len(), 1, "{what}: {got:?}");
        let v: Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(v["error"]["code"], code, "{what}: {}", got[0]);
        let r: SignedResponse<'_> =
            serde_json::from_str(&got[0]).unwrap_or_else(|e| panic!("{what}: {e}: {}", got[0]));
        signer
            .verify_response(r.id.get(), r.error.get(), &r.sig)
            .unwrap_or_else(|e| panic!("{what}: {e:?}: {}", got[0]));
        assert_eq!(service.snapshot(now).messages.sent, sent_before + 1, "{what} counted as sent");
    }
    // The per-message rate limit, on a service of its own.
    config.limits.message_rate = Some(Rate::per_hour(1));
    let (service, mut s, now) = session(config, Router::new());
    exchange(&mut s, now, &signed("nope", 1));
    let got = exchange(&mut s, now, &signed("nope", 2));
    let r: SignedResponse<'_> = serde_json::from_str(&got[0]).unwrap();
    assert!(r.error.get().contains("-32005"), "{}", got[0]);
    signer.verify_response(r.id.get(), r.error.get(), &r.sig).expect("signed");
    assert_eq!(service.snapshot(now).messages.sent, 2);
}

#[test]
fn answered_limit_rejections_are_counted_as_limit_errors() {
    use wsrpc_core::limit::{MethodClass, Rate};
    let mut config = ServiceConfig::default();
    config.rpc.max_inflight_async = 1;
    config.limits.classes = config
        .limits
        .classes
        .clone()
        .with_method("scarce", MethodClass::Sensitive)
        .with_tiers(MethodClass::Sensitive, &[Rate::per_hour(1)]);
    let mut r = Router::new();
    r.method("scarce", |(): (), _| Ok(1)).async_method("later", |(): (), _| async { Ok(2) });
    let (service, mut s, now) = session(config, r);
    let limit_errors = || service.snapshot(now).errors["limit_exceeded"];
    exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"scarce","id":1}"#);
    s.handle_message(now, br#"{"jsonrpc":"2.0","method":"later","id":2}"#);
    assert!(matches!(s.poll_output(), Some(SessionOutput::Spawn(..))));
    assert_eq!(limit_errors(), 0);
    exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"scarce","id":3}"#);
    assert_eq!(limit_errors(), 1, "a call over its rate");
    exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"later","id":4}"#);
    assert_eq!(limit_errors(), 2, "an async call over the in-flight cap");
    assert_eq!(service.snapshot(now).rate_limited, 2);
}

#[test]
fn a_panicking_handler_is_answered_with_internal_error_and_the_session_lives_on() {
    capture_logs();
    let mut r = Router::new();
    r.method("explode", |(n,): (u32,), _| -> Result<u32, RpcError> {
        panic!("index {n} out of range in the quote table")
    })
    .method("add", |(a, b): (i64, i64), _| Ok(a + b))
    // Its code before the first `.await` runs in the core too.
    .async_method("explode_later", |(): (), _| -> std::future::Ready<Result<(), RpcError>> {
        panic!("async handler set-up failed")
    });
    let (service, mut s, now) = session(ServiceConfig::default(), r);
    let internal = r#"{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal error"},"id":1}"#;
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"explode","params":[7],"id":1}"#);
    assert_eq!(got, [internal]);
    assert!(logged("wsrpc::rpc", "index 7 out of range in the quote table"));
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":2}"#);
    assert_eq!(got, [r#"{"jsonrpc":"2.0","result":5,"id":2}"#]);
    // A notification gets nothing; a batch keeps its other answers.
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"explode","params":[8]}"#);
    assert!(got.is_empty());
    let got = exchange(
        &mut s,
        now,
        r#"[{"jsonrpc":"2.0","method":"explode","params":[9],"id":1},{"jsonrpc":"2.0","method":"add","params":[1,1],"id":3}]"#,
    );
    assert_eq!(got, [format!(r#"[{internal},{{"jsonrpc":"2.0","result":2,"id":3}}]"#)]);
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"explode_later","id":1}"#);
    assert_eq!(got, [internal]);
    assert!(logged("wsrpc::rpc", "async handler set-up failed"));
    let got = exchange(&mut s, now, r#"{"jsonrpc":"2.0","method":"add","params":[4,4],"id":4}"#);
    assert_eq!(got, [r#"{"jsonrpc":"2.0","result":8,"id":4}"#]);
    assert_eq!(service.snapshot(now).errors["internal"], 4);
}
