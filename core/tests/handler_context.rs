//! What handlers see: the router's state and the call's context (request id, connection,
//! principal, origin, transport, extensions), for sync, async and blocking handlers.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::Principal;
use wsrpc_core::rpc::{
    CallContext, ConnectionId, Extensions, HandlerContext, RequestId, Router, RpcError, RpcSession,
    SessionOutput, Transport, Work,
};
use wsrpc_core::service::{Service, ServiceConfig};

fn service<S: Send + Sync + 'static>(router: Router<S>) -> (Arc<Service>, Instant) {
    let now = Instant::now();
    let wall = wsrpc_core::UnixTime(Duration::from_secs(1_700_000_000));
    let mut config = ServiceConfig::default();
    config.limits = wsrpc_core::limit::LimitConfig::disabled();
    (Service::new(config, router, wsrpc_core::Now::new(now, wall)), now)
}

fn session(service: &Arc<Service>, now: Instant, conn: u64) -> RpcSession {
    RpcSession::new(
        service.clone(),
        ConnectionId(conn),
        Some(Arc::from("https://app.example")),
        Arc::new(Principal::authenticated("alice")),
        Transport::WebSocket,
        now,
    )
}

/// Sends `msg` and returns the single JSON answer, running handed-out work inline.
fn call(s: &mut RpcSession, now: Instant, msg: &str) -> Value {
    s.handle_message(now, msg.as_bytes());
    loop {
        match s.poll_output().expect("an answer") {
            SessionOutput::Message(m) => return serde_json::from_slice(&m).unwrap(),
            SessionOutput::Spawn(id, work) => s.complete(id, run(work), now),
            other => panic!("{other:?}"),
        }
    }
}

fn run(work: Work) -> Result<Box<serde_json::value::RawValue>, RpcError> {
    let mut fut = match work {
        Work::Future(fut) => fut,
        Work::Blocking(call) => return call(),
    };
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("test futures complete immediately"),
    }
}

/// What a handler reports about its context.
fn describe<S>(ctx: &HandlerContext<'_, S>) -> Value {
    json!({
        "id": ctx.id.as_ref().map(|id| id.as_json()),
        "connection": ctx.connection.0,
        "principal": ctx.principal.id,
        "authenticated": ctx.principal.authenticated,
        "origin": ctx.origin.as_deref(),
        "websocket": ctx.transport == Transport::WebSocket,
        "extensions": ctx.extensions.len(),
    })
}

#[test]
fn every_kind_of_handler_sees_the_call_it_serves() {
    let mut router = Router::new();
    router
        .method("sync", |(): (), ctx| Ok(describe(&ctx)))
        .async_method("async", |(): (), ctx| async move { Ok(describe(&ctx)) })
        .blocking_method("blocking", |(): (), ctx| Ok(describe(&ctx)));
    let (service, now) = service(router);
    let mut s = session(&service, now, 7);
    for (method, id) in [("sync", "1"), ("async", "\"a-\\u0062\""), ("blocking", "-3")] {
        let msg = format!(r#"{{"jsonrpc":"2.0","method":"{method}","id":{id}}}"#);
        let r = call(&mut s, now, &msg);
        assert_eq!(
            r["result"],
            json!({
                "id": id, "connection": 7, "principal": "alice", "authenticated": true,
                "origin": "https://app.example", "websocket": true, "extensions": 0,
            }),
            "{method}"
        );
    }
}

#[test]
fn request_ids_read_as_sent() {
    let id = |json: &str| RequestId::from_json(json).unwrap();
    assert_eq!(id("42").as_i64(), Some(42));
    assert_eq!(id("-1").as_i64(), Some(-1));
    assert_eq!(id("-1").as_u64(), None);
    assert_eq!(id("18446744073709551615").as_u64(), Some(u64::MAX));
    assert!(id("null").is_null());
    assert_eq!(id(r#""x\"y""#).as_str().as_deref(), Some("x\"y"));
    assert_eq!(id(r#""x\"y""#).to_string(), r#""x\"y""#, "Display writes the JSON sent");
    assert_eq!(id("1.5").as_i64(), None);
    assert_eq!(id("1.5").as_str(), None);
    let long = format!("\"{}\"", "u".repeat(40));
    assert_eq!(id(&long).as_json(), long, "longer than the inline buffer");
    assert_eq!(id(&long), id(&long).clone());
    assert_ne!(id("1"), id("\"1\""));
    for not_an_id in ["{}", "[1]", "true", "", "1 2"] {
        assert!(RequestId::from_json(not_an_id).is_none(), "{not_an_id}");
    }
}

#[test]
fn a_notification_has_no_id_and_still_runs() {
    let seen = Arc::new(AtomicU64::new(0));
    let mut router = Router::with_shared_state(seen.clone());
    router.method("note", |(): (), ctx| {
        assert!(ctx.id.is_none(), "a notification has no id");
        ctx.state().fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let (service, now) = service(router);
    let mut s = session(&service, now, 1);
    s.handle_message(now, br#"{"jsonrpc":"2.0","method":"note"}"#);
    assert!(s.poll_output().is_none(), "no answer to a notification");
    assert_eq!(seen.load(Ordering::Relaxed), 1);
}

struct Bank {
    balance: AtomicU64,
    name: &'static str,
}

#[test]
fn state_given_once_reaches_every_handler() {
    let mut router = Router::with_state(Bank { balance: AtomicU64::new(10), name: "acme" });
    router
        .method("deposit", |(n,): (u64,), ctx| {
            Ok(ctx.state().balance.fetch_add(n, Ordering::Relaxed) + n)
        })
        .async_method("balance", |(): (), ctx| async move {
            Ok(json!({ "bank": ctx.state().name, "balance": ctx.state().balance.load(Ordering::Relaxed) }))
        })
        .blocking_method("withdraw", |(n,): (u64,), ctx| {
            let bank: Arc<Bank> = ctx.shared_state();
            Ok(bank.balance.fetch_sub(n, Ordering::Relaxed) - n)
        });
    let state = router.state().clone();
    let (service, now) = service(router);
    let mut s = session(&service, now, 1);
    let r = call(&mut s, now, r#"{"jsonrpc":"2.0","method":"deposit","params":[5],"id":1}"#);
    assert_eq!(r["result"], 15);
    let r = call(&mut s, now, r#"{"jsonrpc":"2.0","method":"withdraw","params":[3],"id":2}"#);
    assert_eq!(r["result"], 12);
    let r = call(&mut s, now, r#"{"jsonrpc":"2.0","method":"balance","id":3}"#);
    assert_eq!(r["result"], json!({"bank": "acme", "balance": 12}));
    assert_eq!(state.balance.load(Ordering::Relaxed), 12, "the caller's state is the handlers'");
}

#[test]
fn a_handler_can_be_run_by_hand_with_a_context() {
    #[derive(Debug, PartialEq)]
    struct Tenant(&'static str);
    let mut call = CallContext::new(ConnectionId(3), Transport::Messages, Instant::now());
    call.id = RequestId::from_json("9");
    call.extensions.insert(Tenant("t1"));
    let state = Arc::new(5u32);
    let ctx = HandlerContext::new(&call, &state);
    assert_eq!(*ctx.state(), 5);
    assert_eq!(ctx.extensions.get::<Tenant>(), Some(&Tenant("t1")));
    let owned = ctx.clone().into_call();
    assert_eq!(owned.id.and_then(|id| id.as_i64()), Some(9));
    assert_eq!(Extensions::new().len(), 0);
}
