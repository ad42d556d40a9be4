//! The RPC session over plain messages: async handlers, ordering, in-flight caps, pub/sub
//! (sequence numbers, lag, replay, policies, limits) and rate tokens, on a virtual clock.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::Principal;
use wsrpc_core::hub::{HubConfig, OutboxLimits, SlowConsumer, TopicPattern, TopicPolicy};
use wsrpc_core::limit::{LimitConfig, MethodClass, MethodClasses, Rate};
use wsrpc_core::rpc::{
    CallId, ConnectionId, Router, RpcError, RpcSession, SessionOutput, Transport, Work,
};
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_core::ws::CloseCode;

struct Harness {
    service: Arc<Service>,
    now: Instant,
    next_conn: u64,
}

#[derive(Debug)]
enum Out {
    Json(Value),
    Spawn,
    Close(CloseCode),
}

impl Harness {
    fn new(config: ServiceConfig, router: Router) -> Self {
        let now = Instant::now();
        Self {
            service: Service::new(
                config,
                router,
                wsrpc_core::Now::new(now, wsrpc_core::UnixTime(Duration::from_secs(1_700_000_000))),
            ),
            now,
            next_conn: 1,
        }
    }

    /// A session of a local client (loopback address).
    fn session(&mut self, origin: Option<&str>, principal: Principal) -> RpcSession {
        self.next_conn += 1;
        let mut session = RpcSession::new(
            self.service.clone(),
            ConnectionId(self.next_conn),
            origin.map(Arc::from),
            Arc::new(principal),
            Transport::Messages,
            self.now,
        );
        session.set_client_address(Some(core::net::Ipv4Addr::LOCALHOST.into()));
        session
    }

    fn send(&self, s: &mut RpcSession, msg: Value) -> (Vec<Out>, Vec<(CallId, Work)>) {
        s.handle_message(self.now, msg.to_string().as_bytes());
        drain(s)
    }
}

fn drain(s: &mut RpcSession) -> (Vec<Out>, Vec<(CallId, Work)>) {
    let mut outs = Vec::new();
    let mut spawns = Vec::new();
    while let Some(o) = s.poll_output() {
        match o {
            SessionOutput::Message(m) => outs.push(Out::Json(serde_json::from_slice(&m).unwrap())),
            SessionOutput::Notification(f) => {
                outs.push(Out::Json(serde_json::from_slice(f.payload()).unwrap()))
            }
            SessionOutput::Spawn(id, fut) => {
                outs.push(Out::Spawn);
                spawns.push((id, fut));
            }
            SessionOutput::Close(code, _) => outs.push(Out::Close(code)),
            other => panic!("{other:?}"),
        }
    }
    (outs, spawns)
}

fn json_outs(outs: &[Out]) -> Vec<&Value> {
    outs.iter().filter_map(|o| if let Out::Json(v) = o { Some(v) } else { None }).collect()
}

/// Polls a future that is ready without waiting (the handlers here never block).
fn run(work: Work) -> Result<Box<serde_json::value::RawValue>, RpcError> {
    let mut fut = match work {
        Work::Future(fut) => fut,
        Work::Blocking(call) => return call(),
    };
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("test futures complete immediately"),
    }
}

fn call(method: &str, params: Value, id: u64) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
}

fn async_router() -> Router {
    let mut r = Router::new();
    r.method("now", |(): (), _| Ok("sync"))
        .async_method("slow", |(x,): (i64,), ctx| async move {
            Ok(json!({"x": x, "conn": ctx.connection.0}))
        })
        .async_method("boom", |(): (), _| async move {
            Err::<(), _>(RpcError::server(-32001, "async failure"))
        });
    r
}

#[test]
fn async_calls_are_handed_out_and_answered_on_completion() {
    let mut h = Harness::new(ServiceConfig::default(), async_router());
    let mut s = h.session(None, Principal::anonymous());
    let (outs, mut spawns) = h.send(&mut s, call("slow", json!([7]), 1));
    assert!(matches!(outs[..], [Out::Spawn]), "the core does not poll the future: {outs:?}");
    // A sync call after it is answered at once, before the async one.
    let (outs, _) = h.send(&mut s, call("now", json!([]), 2));
    assert_eq!(json_outs(&outs)[0]["id"], 2);
    let (id, fut) = spawns.remove(0);
    h.now += Duration::from_millis(40);
    s.complete(id, run(fut), h.now);
    let (outs, _) = drain(&mut s);
    assert_eq!(json_outs(&outs)[0], &json!({"jsonrpc":"2.0","result":{"x":7,"conn":2},"id":1}));
    // Completing twice is ignored.
    s.complete(id, Ok(serde_json::value::to_raw_value(&1).unwrap()), h.now);
    assert!(drain(&mut s).0.is_empty());
    // The latency was measured between the two instants.
    let snap = h.service.snapshot(h.now);
    assert!(snap.methods["slow"].max_us >= 39_000, "{:?}", snap.methods["slow"]);
}

#[test]
fn async_errors_and_bad_params_are_answered() {
    let mut h = Harness::new(ServiceConfig::default(), async_router());
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) = h.send(&mut s, call("slow", json!(["not a number"]), 1));
    assert_eq!(
        json_outs(&outs)[0]["error"]["code"],
        -32602,
        "bad params answered without spawning"
    );
    let (outs, mut spawns) = h.send(&mut s, call("boom", json!([]), 2));
    assert!(!spawns.is_empty(), "{outs:?}");
    let (id, fut) = spawns.remove(0);
    s.complete(id, run(fut), h.now);
    let (outs, _) = drain(&mut s);
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32001);
}

#[test]
fn an_async_call_echoes_its_id_byte_for_byte() {
    let mut h = Harness::new(ServiceConfig::default(), async_router());
    let mut s = h.session(None, Principal::anonymous());
    // Inline (short) and shared (long) ids, a number no f64 holds, an escaped string.
    for id in [
        "7",
        "-0.5e-3",
        "2111111111111111.11111111111111e11111111111111111111111111111111111111",
        r#""caf\u00e9 \"quoted\" id that is longer than twenty-three bytes""#,
    ] {
        let text = format!(r#"{{"jsonrpc":"2.0","method":"slow","params":[1],"id":{id}}}"#);
        s.handle_message(h.now, text.as_bytes());
        let mut work = None;
        while let Some(o) = s.poll_output() {
            if let SessionOutput::Spawn(call, w) = o {
                work = Some((call, w));
            }
        }
        let (call, w) = work.expect("the async call was handed out");
        h.now += Duration::from_millis(40);
        s.complete(call, run(w), h.now);
        let Some(SessionOutput::Message(m)) = s.poll_output() else { panic!("no answer") };
        let m = String::from_utf8(m).unwrap();
        assert!(m.ends_with(&format!(r#","id":{id}}}"#)), "{m}");
    }
}

#[test]
fn batch_with_async_entries_waits_for_all_and_keeps_order() {
    let mut h = Harness::new(ServiceConfig::default(), async_router());
    let mut s = h.session(None, Principal::anonymous());
    let batch = json!([
        call("slow", json!([1]), 1),
        call("now", json!([]), 2),
        call("slow", json!([3]), 3)
    ]);
    let (outs, mut spawns) = h.send(&mut s, batch);
    assert_eq!(outs.len(), 2, "two spawns, no response yet: {outs:?}");
    let (b, fb) = spawns.pop().unwrap();
    s.complete(b, run(fb), h.now);
    assert!(drain(&mut s).0.is_empty());
    let (a, fa) = spawns.pop().unwrap();
    s.complete(a, run(fa), h.now);
    let (outs, _) = drain(&mut s);
    let ids: Vec<&Value> =
        json_outs(&outs)[0].as_array().unwrap().iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(3)]);
}

#[test]
fn in_flight_async_calls_are_capped() {
    let mut config = ServiceConfig::default();
    config.rpc.max_inflight_async = 2;
    let mut h = Harness::new(config, async_router());
    let mut s = h.session(None, Principal::anonymous());
    let mut spawns = Vec::new();
    for id in 1..=2 {
        spawns.extend(h.send(&mut s, call("slow", json!([id]), id)).1);
    }
    let (outs, _) = h.send(&mut s, call("slow", json!([3]), 3));
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32005);
    let (id, fut) = spawns.remove(0);
    s.complete(id, run(fut), h.now);
    drain(&mut s);
    let (outs, _) = h.send(&mut s, call("slow", json!([4]), 4));
    assert!(matches!(outs[..], [Out::Spawn]), "a slot freed up: {outs:?}");
}

fn hub_config() -> ServiceConfig {
    let mut config = ServiceConfig::default();
    config.hub = HubConfig::default();
    config.hub.kind_limits = vec![("intent".into(), 2)];
    config.hub.policies = vec![
        (TopicPattern::new("user:*"), TopicPolicy::OwnerOnly),
        (TopicPattern::new("solver:*"), TopicPolicy::Authenticated),
    ];
    config.hub.replay_capacity = 4;
    // These tests are about the hub; rate tokens have their own below.
    config.limits = LimitConfig::disabled();
    config
}

fn subscribe(h: &Harness, s: &mut RpcSession, params: Value) -> Value {
    let (outs, _) = h.send(s, call("subscribe", params, 99));
    json_outs(&outs)[0].clone()
}

#[test]
fn publish_reaches_subscribers_in_order_with_sequence_numbers() {
    let mut h = Harness::new(hub_config(), Router::new());
    let mut a = h.session(None, Principal::anonymous());
    let mut b = h.session(None, Principal::anonymous());
    let ra = subscribe(&h, &mut a, json!(["prices:btc"]));
    let rb = subscribe(&h, &mut b, json!({"topic": "prices:btc"}));
    assert_eq!(ra["result"]["subscription"], rb["result"]["subscription"]);
    for i in 0..3 {
        let p = h.service.publish("prices:btc", &json!({"price": i})).unwrap();
        assert_eq!((p.seq, p.subscribers), (i + 1, 2));
    }
    for s in [&mut a, &mut b] {
        let (outs, _) = drain(s);
        let notes = json_outs(&outs);
        assert_eq!(notes.len(), 3);
        for (i, n) in notes.iter().enumerate() {
            assert_eq!(n["method"], "subscription");
            assert_eq!(n["params"]["topic"], "prices:btc");
            assert_eq!(n["params"]["seq"], i as u64 + 1);
            assert_eq!(n["params"]["result"]["price"], i as u64);
            assert_eq!(n["params"]["subscription"], ra["result"]["subscription"]);
        }
    }
    // Unsubscribing stops deliveries, including ones already queued.
    h.service.publish("prices:btc", &1).unwrap();
    let sub = ra["result"]["subscription"].clone();
    let (outs, _) = h.send(&mut a, call("unsubscribe", json!([sub]), 5));
    assert_eq!(json_outs(&outs).iter().filter(|v| v.get("method").is_some()).count(), 0);
    assert_eq!(json_outs(&outs)[0]["result"], true);
    h.service.publish("prices:btc", &2).unwrap();
    assert!(drain(&mut a).0.is_empty());
    assert_eq!(drain(&mut b).0.len(), 2);
    let (outs, _) = h.send(&mut a, call("unsubscribe", json!([sub]), 6));
    assert_eq!(json_outs(&outs)[0]["result"], false);
}

#[test]
fn resubscribe_with_since_replays_in_order_or_reports_a_gap() {
    let mut h = Harness::new(hub_config(), Router::new());
    for i in 1..=6 {
        h.service.publish("feed", &i).unwrap();
    }
    // Replay buffer holds 3..=6 (capacity 4).
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) = h.send(&mut s, call("subscribe", json!(["feed", 4]), 1));
    let outs = json_outs(&outs);
    assert_eq!(outs[0]["result"]["seq"], 6, "the response comes before the replay");
    let epoch = outs[0]["result"]["epoch"].clone();
    let seqs: Vec<u64> = outs[1..].iter().map(|n| n["params"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [5, 6]);
    // Asking from 1 when 3 is the oldest: a gap notice for 2..=2, then 3..=6.
    let mut t = h.session(None, Principal::anonymous());
    let (outs, _) =
        h.send(&mut t, call("subscribe", json!({"topic": "feed", "since": 1, "epoch": epoch}), 1));
    let notes = &json_outs(&outs)[1..];
    assert_eq!(notes[0]["method"], "gap");
    assert_eq!(
        (notes[0]["params"]["missed_from"].as_u64(), notes[0]["params"]["missed_to"].as_u64()),
        (Some(2), Some(2))
    );
    let seqs: Vec<u64> = notes[1..].iter().map(|n| n["params"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4, 5, 6]);
    // Another epoch (the server restarted): everything in the buffer, with a gap before it.
    let mut u = h.session(None, Principal::anonymous());
    let (outs, _) =
        h.send(&mut u, call("subscribe", json!({"topic": "feed", "since": 6, "epoch": 12345}), 1));
    let notes = &json_outs(&outs)[1..];
    assert_eq!(notes.len(), 5, "gap 1..=2 plus 3..=6");
    assert_eq!(notes[0]["method"], "gap");
}

#[test]
fn slow_consumer_lags_without_hurting_others() {
    let mut config = hub_config();
    config.hub.outbox = OutboxLimits {
        max_messages: 8,
        max_bytes: 1 << 20,
        slow_consumer: SlowConsumer::DropOldest,
    };
    let mut h = Harness::new(config, Router::new());
    let mut slow = h.session(None, Principal::anonymous());
    let mut fast = h.session(None, Principal::anonymous());
    subscribe(&h, &mut slow, json!(["ticks"]));
    subscribe(&h, &mut fast, json!(["ticks"]));
    let mut fast_seen = Vec::new();
    for i in 1..=20u64 {
        h.service.publish("ticks", &i).unwrap();
        let (outs, _) = drain(&mut fast);
        fast_seen.extend(json_outs(&outs).iter().map(|n| n["params"]["seq"].as_u64().unwrap()));
    }
    assert_eq!(fast_seen, (1..=20).collect::<Vec<_>>());
    let (outs, _) = drain(&mut slow);
    let notes = json_outs(&outs);
    assert_eq!(notes[0]["method"], "lagged");
    assert_eq!(
        (notes[0]["params"]["missed_from"].as_u64(), notes[0]["params"]["missed_to"].as_u64()),
        (Some(1), Some(12))
    );
    let seqs: Vec<u64> = notes[1..].iter().map(|n| n["params"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
    assert_eq!(h.service.snapshot(h.now).lagged_drops, 12);
}

#[test]
fn slow_consumer_close_policy_closes_with_1008() {
    let mut config = hub_config();
    config.hub.outbox =
        OutboxLimits { max_messages: 4, max_bytes: 1 << 20, slow_consumer: SlowConsumer::Close };
    let mut h = Harness::new(config, Router::new());
    let mut slow = h.session(None, Principal::anonymous());
    subscribe(&h, &mut slow, json!(["ticks"]));
    for i in 0..10 {
        h.service.publish("ticks", &i).unwrap();
    }
    let (outs, _) = drain(&mut slow);
    assert!(matches!(outs[..], [Out::Close(CloseCode::POLICY_VIOLATION)]), "{outs:?}");
}

#[test]
fn topic_policies_and_subscription_limits() {
    let mut h = Harness::new(hub_config(), Router::new());
    let alice = Principal::authenticated("0xabc");
    let mut a = h.session(None, alice);
    let mut anon = h.session(None, Principal::anonymous());
    assert!(
        subscribe(&h, &mut a, json!(["user:0xABC"]))["result"].is_object(),
        "owner, case-insensitive"
    );
    assert_eq!(subscribe(&h, &mut a, json!(["user:0xdef"]))["error"]["code"], -32003);
    assert_eq!(subscribe(&h, &mut anon, json!(["user:0xabc"]))["error"]["code"], -32003);
    assert!(subscribe(&h, &mut a, json!(["solver:1"]))["result"].is_object());
    assert_eq!(subscribe(&h, &mut anon, json!(["solver:1"]))["error"]["code"], -32003);
    assert_eq!(subscribe(&h, &mut anon, json!(["bad topic"]))["error"]["code"], -32602);
    // Per kind: intent at most 2.
    assert!(subscribe(&h, &mut anon, json!(["intent:1"]))["result"].is_object());
    assert!(subscribe(&h, &mut anon, json!(["intent:2"]))["result"].is_object());
    let r = subscribe(&h, &mut anon, json!(["intent:3"]));
    assert_eq!(r["error"]["code"], -32005);
    assert_eq!(r["error"]["data"]["max"], 2);
    // In total: 50 per connection.
    let mut many = h.session(None, Principal::anonymous());
    for i in 0..50 {
        assert!(subscribe(&h, &mut many, json!([format!("t{i}")]))["result"].is_object());
    }
    assert_eq!(subscribe(&h, &mut many, json!(["t50"]))["error"]["data"]["max"], 50);
    // Subscribing twice to the same topic is idempotent and does not count twice.
    let r1 = subscribe(&h, &mut anon, json!(["same"]));
    let r2 = subscribe(&h, &mut anon, json!(["same"]));
    assert_eq!(r1["result"]["subscription"], r2["result"]["subscription"]);
}

#[test]
fn dropping_sessions_leaves_no_subscriptions_behind() {
    let mut h = Harness::new(hub_config(), Router::new());
    for round in 0..100 {
        let mut s = h.session(None, Principal::anonymous());
        subscribe(&h, &mut s, json!([format!("round{}", round % 7)]));
        subscribe(&h, &mut s, json!(["shared"]));
    }
    let stats = h.service.hub().stats();
    assert_eq!(stats.subscriptions_active, 0);
    assert_eq!(stats.subscriptions_total, 200);
    assert_eq!(stats.topics, 0, "topics only subscribers created are gone");
    assert_eq!(h.service.snapshot(h.now).subscriptions.active, 0);
}

#[test]
fn eth_style_subscriptions() {
    let mut config = hub_config();
    config.hub.methods = wsrpc_core::hub::SubscriptionMethods::eth();
    let mut h = Harness::new(config, Router::new());
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) = h.send(&mut s, call("eth_subscribe", json!(["newHeads"]), 1));
    let id = json_outs(&outs)[0]["result"].clone();
    assert!(id.as_str().unwrap().starts_with("0x"));
    h.service.publish("newHeads", &json!({"number": "0x1"})).unwrap();
    let (outs, _) = drain(&mut s);
    let n = json_outs(&outs)[0];
    assert_eq!(n["method"], "eth_subscription");
    assert_eq!(n["params"]["subscription"], id);
    assert_eq!(n["params"]["result"]["number"], "0x1");
    let (outs, _) = h.send(&mut s, call("eth_unsubscribe", json!([id]), 2));
    assert_eq!(json_outs(&outs)[0]["result"], true);
}

#[test]
fn eth_style_resume_extension_answers_with_the_position_and_replays_since() {
    let mut config = hub_config();
    config.hub.methods = wsrpc_core::hub::SubscriptionMethods::eth();
    let mut h = Harness::new(config, Router::new());
    let epoch = h.service.hub().epoch();
    for n in 1..=3 {
        h.service.publish("newHeads", &json!({"number": n})).unwrap();
    }
    // `since: null` asks for the position (an object answer), without replay.
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) = h.send(&mut s, call("eth_subscribe", json!(["newHeads", {"since": null}]), 1));
    let r = json_outs(&outs)[0]["result"].clone();
    assert_eq!((r["seq"].as_u64(), r["epoch"].as_u64()), (Some(3), Some(epoch)), "{r}");
    assert!(r["subscription"].as_str().unwrap().starts_with("0x"));
    assert_eq!(outs.len(), 1, "nothing replayed without since");
    // A resubscription with since and the same epoch gets exactly what followed.
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) =
        h.send(&mut s, call("eth_subscribe", json!(["newHeads", {"since": 1, "epoch": epoch}]), 2));
    let seqs: Vec<_> =
        json_outs(&outs)[1..].iter().map(|n| n["params"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3]);
    // Another epoch (the server restarted): the whole buffer, the client resets.
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) = h.send(
        &mut s,
        call("eth_subscribe", json!(["newHeads", {"since": 3, "epoch": epoch + 1}]), 3),
    );
    assert_eq!(json_outs(&outs)[0]["result"]["epoch"], epoch);
    assert_eq!(outs.len(), 4, "seq 1..=3 replayed");
    // A bad since is an invalid-params error, and a standard call keeps the bare id.
    let (outs, _) = h.send(&mut s, call("eth_subscribe", json!(["newHeads", {"since": "x"}]), 4));
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32602);
    let (outs, _) = h.send(&mut s, call("eth_subscribe", json!(["newHeads", {}]), 5));
    assert!(json_outs(&outs)[0]["result"].is_string());
}

#[test]
fn health_names_the_server_and_its_subscription_protocol() {
    let mut config = hub_config();
    config.name = "wsrpc-wallet-bridge".into();
    config.hub.methods = wsrpc_core::hub::SubscriptionMethods::eth();
    let mut h = Harness::new(config, Router::new());
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) = h.send(&mut s, json!({"jsonrpc": "2.0", "method": "rpc.health", "id": 1}));
    let r = &json_outs(&outs)[0]["result"];
    assert_eq!(r["name"], "wsrpc-wallet-bridge");
    assert_eq!(r["pubsub"]["subscribe"], "eth_subscribe");
    assert_eq!(r["pubsub"]["gap"], "eth_subscriptionGap");
    assert_eq!(r["pubsub"]["eth_style"], true);
    // The epoch fits a JavaScript number exactly (clients echo it back).
    let epoch = r["pubsub"]["epoch"].as_u64().unwrap();
    assert_eq!(epoch, h.service.hub().epoch());
    assert_eq!(epoch, 1_700_000_000_000_000);
    assert!(epoch < 1 << 53);
}

fn limited_config() -> ServiceConfig {
    let mut config = ServiceConfig::default();
    config.limits = LimitConfig::default();
    config.limits.classes = MethodClasses::eth_wallet();
    config
}

fn wallet_router() -> Router {
    let mut r = Router::new();
    r.method("eth_sendTransaction", |_: Value, _| Ok("0xhash"))
        .method("eth_call", |_: Value, _| Ok("0x"));
    r
}

#[test]
fn rate_tokens_per_class_with_retry_after_across_tiers() {
    let mut h = Harness::new(limited_config(), wallet_router());
    let mut s = h.session(Some("http://localhost:3000"), Principal::anonymous());
    // Sensitive: 1/s, 10/min, 100/h.
    let (outs, _) = h.send(&mut s, call("eth_sendTransaction", json!([{}]), 1));
    assert_eq!(json_outs(&outs)[0]["result"], "0xhash");
    let (outs, _) = h.send(&mut s, call("eth_sendTransaction", json!([{}]), 2));
    let e = &json_outs(&outs)[0]["error"];
    assert_eq!(e["code"], -32005);
    assert_eq!(e["data"]["retry_after_ms"], 1000);
    // Read-only calls have their own bucket.
    let (outs, _) = h.send(&mut s, call("eth_call", json!([{}]), 3));
    assert_eq!(json_outs(&outs)[0]["result"], "0x");
    // One call a second: the per-second tier allows each, the minute tier (10, refilled at
    // one per 6 s) runs out after about a dozen, and then the wait is for the minute tier.
    let mut ok = 0;
    let retry = loop {
        h.now += Duration::from_secs(1);
        let (outs, _) = h.send(&mut s, call("eth_sendTransaction", json!([{}]), 10 + ok));
        match json_outs(&outs)[0]["error"]["data"]["retry_after_ms"].as_u64() {
            None => ok += 1,
            Some(ms) => break ms,
        }
        assert!(ok < 20, "the minute tier never ran out");
    };
    assert!((10..=13).contains(&ok), "{ok} calls passed, retry {retry}");
    assert!((1..=6000).contains(&retry), "{retry} after {ok}");
    // Waiting exactly retry_after_ms is enough; one millisecond less is not.
    h.now += Duration::from_millis(retry - 1);
    let (outs, _) = h.send(&mut s, call("eth_sendTransaction", json!([{}]), 40));
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32005);
    h.now += Duration::from_millis(1);
    let (outs, _) = h.send(&mut s, call("eth_sendTransaction", json!([{}]), 41));
    assert_eq!(json_outs(&outs)[0]["result"], "0xhash");
    // An hour of virtual time later everything is available again.
    h.now += Duration::from_secs(3600);
    let (outs, _) = h.send(&mut s, call("eth_sendTransaction", json!([{}]), 31));
    assert_eq!(json_outs(&outs)[0]["result"], "0xhash");
    assert!(h.service.snapshot(h.now).rate_limited >= 2);
}

#[test]
fn builtins_take_rate_tokens_and_subscriptions_do_not() {
    // Default tiers: the default class allows 10 calls in a burst.
    let mut h = Harness::new(ServiceConfig::default(), Router::new());
    let mut s = h.session(None, Principal::anonymous());
    let codes: Vec<Value> = (0..12)
        .map(|i| {
            let method = ["rpc.metrics", "rpc.health"][i % 2];
            let (outs, _) = h.send(&mut s, call(method, json!([]), i as u64));
            json_outs(&outs)[0]["error"]["code"].clone()
        })
        .collect();
    assert!(codes[..10].iter().all(Value::is_null), "{codes:?}");
    assert_eq!(codes[10..], [json!(-32005), json!(-32005)], "{codes:?}");
    // Unknown built-ins take no token: they are just not found.
    let (outs, _) = h.send(&mut s, call("rpc.nope", json!([]), 99));
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32601);
    // A reconnecting client resubscribes to all it had at once: never throttled.
    for i in 0..30 {
        assert!(subscribe(&h, &mut s, json!([format!("t{i}")]))["result"].is_object(), "t{i}");
    }
}

#[test]
fn by_default_buckets_are_per_connection_and_per_principal() {
    let mut h = Harness::new(limited_config(), wallet_router());
    let site = Some("http://localhost:3000");
    let mut a = h.session(site, Principal::anonymous());
    let mut a2 = h.session(site, Principal::anonymous());
    h.send(&mut a, call("eth_sendTransaction", json!([{}]), 1));
    // The same origin on another connection has a budget of its own.
    let (outs, _) = h.send(&mut a2, call("eth_sendTransaction", json!([{}]), 2));
    assert_eq!(json_outs(&outs)[0]["result"], "0xhash");
    // One principal on two connections shares one budget.
    let mut alice = h.session(None, Principal::authenticated("0xabc"));
    let mut alice2 = h.session(site, Principal::authenticated("0xabc"));
    let mut bob = h.session(None, Principal::authenticated("0xdef"));
    h.send(&mut alice, call("eth_sendTransaction", json!([{}]), 3));
    let (outs, _) = h.send(&mut alice2, call("eth_sendTransaction", json!([{}]), 4));
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32005);
    let (outs, _) = h.send(&mut bob, call("eth_sendTransaction", json!([{}]), 5));
    assert_eq!(json_outs(&outs)[0]["result"], "0xhash");
}

#[test]
fn http_requests_bring_their_own_keys() {
    // Over HTTP one session serves every request of a keep-alive connection, each with its
    // own origin and principal: the keys follow them.
    let mut config = limited_config();
    config.limits = LimitConfig::wallet();
    config.limits.per_connection = false;
    let mut h = Harness::new(config, wallet_router());
    let mut s = h.session(Some("http://localhost:3000"), Principal::anonymous());
    h.send(&mut s, call("eth_sendTransaction", json!([{}]), 1));
    s.set_identity(Some(Arc::from("http://localhost:4000")), Arc::new(Principal::anonymous()));
    let mut other = h.session(Some("http://localhost:4000"), Principal::anonymous());
    h.send(&mut s, call("eth_sendTransaction", json!([{}]), 2));
    let (outs, _) = h.send(&mut other, call("eth_sendTransaction", json!([{}]), 3));
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32005, "the second origin's budget");
}

#[test]
fn metrics_follow_the_monitoring_policy() {
    use wsrpc_core::service::MonitoringAccess;
    let mut h = Harness::new(ServiceConfig::default(), Router::new());
    let mut local = h.session(None, Principal::anonymous());
    let mut remote = h.session(None, Principal::anonymous());
    remote.set_client_address(Some("198.51.100.7".parse().unwrap()));
    let mut unknown = h.session(None, Principal::anonymous());
    unknown.set_client_address(None);
    let metrics = |h: &Harness, s: &mut RpcSession| {
        let (outs, _) = h.send(s, call("rpc.metrics", json!([]), 1));
        json_outs(&outs)[0].clone()
    };
    let health = |h: &Harness, s: &mut RpcSession| {
        let (outs, _) = h.send(s, call("rpc.health", json!([]), 2));
        json_outs(&outs)[0]["result"].clone()
    };
    assert!(metrics(&h, &mut local)["result"]["methods"].is_object());
    assert!(health(&h, &mut local)["uptime_seconds"].is_number());
    for s in [&mut remote, &mut unknown] {
        assert_eq!(metrics(&h, s)["error"]["code"], -32003);
        // The status and what a client checks the server by, not the details.
        let bare = health(&h, s);
        assert_eq!((bare["status"].as_str(), bare["name"].as_str()), (Some("ok"), Some("wsrpc")));
        assert_eq!(bare["pubsub"]["subscribe"], "subscribe");
        assert_eq!(bare.as_object().map(|o| o.len()), Some(3), "{bare}");
    }
    // Under require_auth, authenticated clients may read them wherever they are.
    let mut config = ServiceConfig::default();
    config.auth.require_auth = true;
    let mut h = Harness::new(config, Router::new());
    let mut alice = h.session(None, Principal::authenticated("0xabc"));
    alice.set_client_address(Some("198.51.100.7".parse().unwrap()));
    assert!(metrics(&h, &mut alice)["result"]["methods"].is_object());
    let mut local_anonymous = h.session(None, Principal::anonymous());
    assert_eq!(metrics(&h, &mut local_anonymous)["error"]["code"], -32003);
    // Public: anyone; off: nobody.
    for (access, served) in [(MonitoringAccess::Public, true), (MonitoringAccess::Off, false)] {
        let mut config = ServiceConfig::default();
        config.http.monitoring = access;
        let mut h = Harness::new(config, Router::new());
        let mut s = h.session(None, Principal::anonymous());
        s.set_client_address(Some("198.51.100.7".parse().unwrap()));
        assert_eq!(metrics(&h, &mut s)["result"].is_object(), served, "{access:?}");
        assert_eq!(health(&h, &mut s)["uptime_seconds"].is_number(), served, "{access:?}");
    }
}

#[test]
fn buckets_are_per_origin_under_the_wallet_preset() {
    let mut config = limited_config();
    config.limits = LimitConfig::wallet();
    let mut h = Harness::new(config, wallet_router());
    let mut a = h.session(Some("http://localhost:3000"), Principal::anonymous());
    let mut a2 = h.session(Some("http://localhost:3000"), Principal::anonymous());
    let mut b = h.session(Some("http://127.0.0.1:8080"), Principal::anonymous());
    h.send(&mut a, call("eth_sendTransaction", json!([{}]), 1));
    // The same origin on another connection shares the origin bucket.
    let (outs, _) = h.send(&mut a2, call("eth_sendTransaction", json!([{}]), 2));
    assert_eq!(json_outs(&outs)[0]["error"]["code"], -32005);
    // Another origin is unaffected.
    let (outs, _) = h.send(&mut b, call("eth_sendTransaction", json!([{}]), 3));
    assert_eq!(json_outs(&outs)[0]["result"], "0xhash");
}

#[test]
fn message_rate_and_abuse_close() {
    let mut config = ServiceConfig::default();
    config.limits.message_rate = Some(Rate::per_minute(60));
    config.limits.abuse_threshold = Some(30);
    let mut r = Router::new();
    r.method("ping", |(): (), _| Ok("pong"));
    let mut h = Harness::new(config, r);
    let mut s = h.session(None, Principal::anonymous());
    let mut limited = 0;
    let mut closed = false;
    for i in 0..200 {
        let (outs, _) = h.send(&mut s, call("ping", json!([]), i));
        for o in &outs {
            match o {
                Out::Json(v) if v["error"]["code"] == -32005 => limited += 1,
                Out::Close(CloseCode::POLICY_VIOLATION) => closed = true,
                _ => {}
            }
        }
        if closed {
            break;
        }
    }
    assert_eq!(limited, 30, "60 pass, then 30 rejections reach the abuse threshold");
    assert!(closed);
    let _ = MethodClass::Default;
}

#[test]
fn signed_messages_when_signing_is_on() {
    use wsrpc_core::auth::MessageSigner;
    let signer = MessageSigner::new("shared key");
    let mut config = ServiceConfig::default();
    config.signing = Some(signer.clone());
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b));
    let mut h = Harness::new(config, r);
    let mut s = h.session(None, Principal::anonymous());
    let sig = signer.sign_request("add", "7", "[1,2]");
    let msg = format!(r#"{{"jsonrpc":"2.0","method":"add","params":[1,2],"id":7,"sig":"{sig}"}}"#);
    s.handle_message(h.now, msg.as_bytes());
    let Some(SessionOutput::Message(m)) = s.poll_output() else { panic!() };
    let v: Value = serde_json::from_slice(&m).unwrap();
    assert_eq!(v["result"], 3);
    signer.verify_response("7", "3", v["sig"].as_str().unwrap()).expect("the response is signed");
    // Unsigned or tampered requests are refused with -32004.
    for bad in [
        r#"{"jsonrpc":"2.0","method":"add","params":[1,2],"id":8}"#.to_owned(),
        msg.replace("[1,2]", "[1,3]").replace("\"id\":7", "\"id\":9"),
    ] {
        s.handle_message(h.now, bad.as_bytes());
        let Some(SessionOutput::Message(m)) = s.poll_output() else { panic!() };
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["error"]["code"], -32004, "{bad}");
    }
}

#[test]
fn topics_without_subscribers_are_evicted_beyond_the_cap() {
    let mut config = hub_config();
    config.hub.max_topics = 100;
    let mut h = Harness::new(config, Router::new());
    let mut s = h.session(None, Principal::anonymous());
    subscribe(&h, &mut s, json!(["kept"]));
    for i in 0..1000 {
        h.service.publish(&format!("invented:{i}"), &i).unwrap();
    }
    let topics = h.service.hub().stats().topics;
    assert!(topics <= 100, "{topics} topics kept");
    // The subscribed topic survived every sweep and still delivers.
    h.service.publish("kept", &1).unwrap();
    let (outs, _) = drain(&mut s);
    assert_eq!(json_outs(&outs)[0]["params"]["topic"], "kept");
}

#[test]
fn when_every_kept_topic_has_subscribers_no_new_topic_is_made() {
    let mut config = hub_config();
    config.hub.max_topics = 10;
    let mut h = Harness::new(config, Router::new());
    let mut sessions: Vec<RpcSession> =
        (0..10).map(|_| h.session(None, Principal::anonymous())).collect();
    let mut ids = Vec::new();
    for (i, s) in sessions.iter_mut().enumerate() {
        let r = subscribe(&h, s, json!([format!("t{i}")]));
        ids.push(r["result"]["subscription"].as_str().unwrap().to_owned());
    }
    // Full of subscribed topics: a new name is refused, and publishing to one keeps nothing.
    let mut late = h.session(None, Principal::anonymous());
    let r = subscribe(&h, &mut late, json!(["t10"]));
    assert_eq!(r["error"]["code"], -32005, "{r}");
    assert_eq!(r["error"]["data"], json!({"limit": "topics", "max": 10}));
    assert_eq!(h.service.publish("new", &1).unwrap().subscribers, 0);
    assert_eq!(h.service.hub().stats().topics, 10);
    // Existing topics still work.
    assert_eq!(h.service.publish("t3", &1).unwrap().subscribers, 1);
    // Once one topic loses its subscriber, it makes room (here t3, which keeps a replay
    // buffer, so it is evicted rather than dropped at the unsubscribe).
    let (outs, _) = h.send(&mut sessions[3], call("unsubscribe", json!([ids[3]]), 1));
    assert_eq!(json_outs(&outs).last().unwrap()["result"], true);
    assert!(subscribe(&h, &mut late, json!(["t10"]))["result"].is_object());
    assert_eq!(h.service.hub().stats().topics, 10);
    // Many invented names later, the subscribed topics are all still there.
    for i in 0..10_000 {
        h.service.publish(&format!("invented{i}"), &i).unwrap();
    }
    let stats = h.service.hub().stats();
    assert!(stats.topics <= 10, "{stats:?}");
    for i in [0, 1, 2, 4, 5, 6, 7, 8, 9] {
        assert_eq!(h.service.publish(&format!("t{i}"), &1).unwrap().subscribers, 1, "t{i}");
    }
    assert_eq!(h.service.publish("t10", &1).unwrap().subscribers, 1);
}

#[test]
fn a_topic_evicted_and_made_again_never_reuses_sequence_numbers() {
    let mut config = hub_config();
    config.hub.max_topics = 2;
    let mut h = Harness::new(config, Router::new());
    for i in 1..=5 {
        h.service.publish("a", &i).unwrap();
    }
    for i in 1..=10 {
        h.service.publish("b", &i).unwrap();
    }
    let epoch = h.service.hub().epoch();
    // Two other topics push `a` and `b` (idle, with replay buffers) out.
    h.service.publish("c", &1).unwrap();
    h.service.publish("d", &1).unwrap();
    // `a` again: its numbers continue above any number a removed topic reached (10).
    let next = h.service.publish("a", &6).unwrap().seq;
    assert_eq!(next, 11);
    // A subscriber that had seen up to 5 is told what it may have missed, then gets 11.
    let mut s = h.session(None, Principal::anonymous());
    let (outs, _) =
        h.send(&mut s, call("subscribe", json!({"topic": "a", "since": 5, "epoch": epoch}), 1));
    let notes = &json_outs(&outs)[1..];
    assert_eq!(notes[0]["method"], "gap", "{notes:?}");
    assert_eq!(
        (notes[0]["params"]["missed_from"].as_u64(), notes[0]["params"]["missed_to"].as_u64()),
        (Some(6), Some(10))
    );
    assert_eq!(notes[1]["params"]["seq"], 11);
}

/// Subscriptions with parameters: handlers that decide the topic, filters applied at
/// fan-out on one shared encoding, replay and notices per subscription.
mod filters {
    use wsrpc_core::hub::{LogFilter, Payload, SubscriptionMethods};
    use wsrpc_core::rpc::SubscriptionTarget;
    use wsrpc_core::ws::SharedFrame;

    use super::*;

    const TOKEN: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
    const OTHER: &str = "0x6b175474e89094c44da98b954eedeac495271d0f";
    const TRANSFER: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
    const APPROVAL: &str = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925";

    fn log(address: &str, topic: &str, n: u64) -> Value {
        json!({"address": address, "topics": [topic], "data": "0x", "logIndex": format!("{n:#x}")})
    }

    fn eth_logs() -> Harness {
        let mut config = hub_config();
        config.hub.methods = SubscriptionMethods::eth();
        let mut r = Router::new();
        r.subscription("logs", |call| {
            let filter: LogFilter = call.filter()?.unwrap_or_default();
            Ok(SubscriptionTarget::topic("logs").with_filter(filter))
        });
        Harness::new(config, r)
    }

    /// The notifications queued for `s`, as frames, with anything else it says.
    fn frames(s: &mut RpcSession) -> (Vec<SharedFrame>, Vec<Value>) {
        let (mut frames, mut other) = (Vec::new(), Vec::new());
        while let Some(o) = s.poll_output() {
            match o {
                SessionOutput::Notification(f) => frames.push(f),
                SessionOutput::Message(m) => other.push(serde_json::from_slice(&m).unwrap()),
                o => panic!("{o:?}"),
            }
        }
        (frames, other)
    }

    fn json_of(f: &SharedFrame) -> Value {
        serde_json::from_slice(f.payload()).unwrap()
    }

    fn eth_subscribe(h: &Harness, s: &mut RpcSession, params: Value) -> Value {
        let (outs, _) = h.send(s, call("eth_subscribe", params, 7));
        json_outs(&outs)[0].clone()
    }

    #[test]
    fn bad_log_filters_are_invalid_params_that_say_what_is_wrong() {
        let mut h = eth_logs();
        let mut s = h.session(None, Principal::anonymous());
        let cases = [
            (
                json!({"address": "0xa0b86991"}),
                "Invalid params: [1]: address: expected 20 bytes (40 hex digits), got 8 digits",
            ),
            (
                json!({"address": [TOKEN, "0xzzb86991c6218b36c1d19d4a2e9eb0ce3606eb48"]}),
                "Invalid params: [1]: address[1]: not hex ('z')",
            ),
            (
                json!({"topics": [null, null, null, null, TRANSFER]}),
                "Invalid params: [1]: topics: at most 4 positions, got 5",
            ),
            (
                json!({"topics": ["0x1234"]}),
                "Invalid params: [1]: topics[0]: expected 32 bytes (64 hex digits), got 4 digits",
            ),
            (
                json!({"toBlock": "latest"}),
                "Invalid params: [1]: toBlock: a logs subscription delivers new logs only",
            ),
            (json!("everything"), "Invalid params: [1]: expected a filter object"),
        ];
        for (filter, want) in cases {
            let e = eth_subscribe(&h, &mut s, json!(["logs", filter]))["error"].clone();
            assert_eq!(e["code"], -32602, "{filter}: {e}");
            assert!(e["message"].as_str().unwrap().starts_with(want), "{filter}: {e}");
        }
        assert_eq!(s.subscription_count(), 0, "nothing subscribed by a refused call");
        // A name without a handler takes no filter, rather than dropping it silently.
        let e = eth_subscribe(&h, &mut s, json!(["newHeads", {"address": TOKEN}]))["error"].clone();
        assert_eq!(e["code"], -32602);
        assert_eq!(
            e["message"],
            "Invalid params: [1]: subscriptions to \"newHeads\" take no filter"
        );
        // `logs` without a filter is every log.
        assert!(eth_subscribe(&h, &mut s, json!(["logs"]))["result"].is_string());
    }

    #[test]
    fn only_matching_logs_arrive_and_matching_subscribers_share_one_frame() {
        let mut h = eth_logs();
        let mut a = h.session(None, Principal::anonymous());
        let mut b = h.session(None, Principal::anonymous());
        // `a`: two subscriptions, each with its own id; `b`: one like a's first.
        let token =
            eth_subscribe(&h, &mut a, json!(["logs", {"address": TOKEN}]))["result"].clone();
        let approvals =
            eth_subscribe(&h, &mut a, json!(["logs", {"topics": [APPROVAL]}]))["result"].clone();
        let b_token =
            eth_subscribe(&h, &mut b, json!(["logs", {"address": [TOKEN]}]))["result"].clone();
        assert_ne!(token, approvals, "a second subscription to the topic has its own id");
        assert_eq!(token, b_token, "first subscriptions of the topic share its id");
        let published = [log(TOKEN, TRANSFER, 0), log(OTHER, APPROVAL, 1), log(OTHER, TRANSFER, 2)];
        let counts: Vec<usize> =
            published.iter().map(|l| h.service.publish("logs", l).unwrap().subscribers).collect();
        assert_eq!(counts, [2, 1, 0], "queued only where the filter matched");
        let (fa, _) = frames(&mut a);
        let (fb, _) = frames(&mut b);
        let seen = |f: &[SharedFrame]| -> Vec<(String, u64, String)> {
            f.iter()
                .map(json_of)
                .map(|n| {
                    let p = &n["params"];
                    let id = p["subscription"].as_str().unwrap().to_owned();
                    (
                        id,
                        p["seq"].as_u64().unwrap(),
                        p["result"]["logIndex"].as_str().unwrap().into(),
                    )
                })
                .collect()
        };
        let id = |v: &Value| v.as_str().unwrap().to_owned();
        assert_eq!(
            seen(&fa),
            [(id(&token), 1, "0x0".to_owned()), (id(&approvals), 2, "0x1".to_owned())],
            "each log once, under the subscription it matched, numbered per topic"
        );
        assert_eq!(seen(&fb), [(id(&token), 1, "0x0".to_owned())]);
        assert!(
            Arc::ptr_eq(fa[0].wire_bytes(), fb[0].wire_bytes()),
            "the frame is encoded once and shared by every subscriber it matched"
        );
        // Unsubscribing one of a's subscriptions leaves the other.
        let (outs, _) = h.send(&mut a, call("eth_unsubscribe", json!([token]), 8));
        assert_eq!(json_outs(&outs)[0]["result"], true);
        h.service.publish("logs", &log(TOKEN, APPROVAL, 3)).unwrap();
        assert_eq!(seen(&frames(&mut a).0), [(id(&approvals), 4, "0x3".to_owned())]);
        assert_eq!(seen(&frames(&mut b).0), [(id(&token), 4, "0x3".to_owned())]);
    }

    #[test]
    fn a_second_channel_is_encoded_once_for_every_connection_on_it() {
        let mut h = eth_logs();
        let mut a = h.session(None, Principal::anonymous());
        let mut b = h.session(None, Principal::anonymous());
        for s in [&mut a, &mut b] {
            eth_subscribe(&h, s, json!(["logs", {"topics": [TRANSFER]}]));
            eth_subscribe(&h, s, json!(["logs", {"address": TOKEN}]));
        }
        h.service.publish("logs", &log(TOKEN, TRANSFER, 0)).unwrap();
        let (fa, fb) = (frames(&mut a).0, frames(&mut b).0);
        assert_eq!((fa.len(), fb.len()), (2, 2), "each subscription gets the log once");
        for (x, y) in fa.iter().zip(&fb) {
            assert!(Arc::ptr_eq(x.wire_bytes(), y.wire_bytes()), "one encoding per channel");
        }
        assert_ne!(
            json_of(&fa[0])["params"]["subscription"],
            json_of(&fa[1])["params"]["subscription"]
        );
    }

    /// `trades:*` with outboxes of `max_messages`.
    fn trades(max_messages: usize) -> Harness {
        let mut config = hub_config();
        config.hub.outbox = OutboxLimits {
            max_messages,
            max_bytes: 1 << 20,
            slow_consumer: SlowConsumer::DropOldest,
        };
        let mut r = Router::new();
        // `trades:<pair>`, optionally only trades of at least `{"min": size}`.
        r.subscription("trades", |call| {
            #[derive(serde::Deserialize)]
            struct Min {
                min: u64,
            }
            let min = call.filter::<Min>()?.map_or(0, |m| m.min);
            Ok(SubscriptionTarget::topic(call.name())
                .with_filter(move |p: &Payload<'_>| p.value()["size"].as_u64() >= Some(min)))
        });
        Harness::new(config, r)
    }

    fn seqs_and_sizes(notes: &[SharedFrame]) -> Vec<(u64, u64)> {
        notes
            .iter()
            .map(json_of)
            .map(|n| {
                (
                    n["params"]["seq"].as_u64().unwrap(),
                    n["params"]["result"]["size"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn replay_is_filtered_and_a_gap_is_only_what_is_gone() {
        let mut h = trades(64);
        for size in 1..=6 {
            h.service.publish("trades:btc", &json!({"size": size})).unwrap();
        }
        // The replay buffer holds seq 3..=6 (capacity 4). Resuming after 1: 2 is gone (a
        // gap); of 3..=6 only sizes of at least 5 come, numbered as published.
        let mut s = h.session(None, Principal::anonymous());
        let (outs, _) = h.send(
            &mut s,
            call("subscribe", json!({"topic": "trades:btc", "since": 1, "filter": {"min": 5}}), 1),
        );
        let id = json_outs(&outs)[0]["result"]["subscription"].clone();
        let gap = json_outs(&outs)[1];
        assert_eq!((gap["method"].as_str(), &gap["params"]["subscription"]), (Some("gap"), &id));
        assert_eq!(
            (gap["params"]["missed_from"].as_u64(), gap["params"]["missed_to"].as_u64()),
            (Some(2), Some(2))
        );
        let sizes: Vec<u64> = json_outs(&outs)[2..]
            .iter()
            .map(|n| n["params"]["result"]["size"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, [5, 6]);
        // Positional params carry the filter fourth; live messages are filtered the same way.
        let mut t = h.session(None, Principal::anonymous());
        let (outs, _) =
            h.send(&mut t, call("subscribe", json!(["trades:btc", null, null, {"min": 7}]), 2));
        assert!(json_outs(&outs)[0]["result"]["subscription"].is_string());
        for size in [9, 2, 7] {
            h.service.publish("trades:btc", &json!({"size": size})).unwrap();
        }
        assert_eq!(
            seqs_and_sizes(&frames(&mut t).0),
            [(7, 9), (9, 7)],
            "holes where it did not match"
        );
        // A bad filter is -32602 naming the param.
        let (outs, _) = h.send(
            &mut t,
            call("subscribe", json!({"topic": "trades:eth", "filter": {"min": "x"}}), 3),
        );
        let e = &json_outs(&outs)[0]["error"];
        assert_eq!(e["code"], -32602);
        assert!(
            e["message"].as_str().unwrap().starts_with("Invalid params: filter: min: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn a_slow_consumer_is_told_what_each_subscription_lost() {
        let mut h = trades(2);
        let mut s = h.session(None, Principal::anonymous());
        let big = subscribe(&h, &mut s, json!({"topic": "trades:btc", "filter": {"min": 5}}));
        let all = subscribe(&h, &mut s, json!({"topic": "trades:btc", "filter": {"min": 0}}));
        let (big, all) = (&big["result"]["subscription"], &all["result"]["subscription"]);
        assert_ne!(big, all);
        for size in [1, 6, 2, 7] {
            h.service.publish("trades:btc", &json!({"size": size})).unwrap();
        }
        // The outbox holds two: the first four deliveries (1, 6, 6, 2) made room for 7 and 7.
        let (notes, notices) = frames(&mut s);
        let lost: Vec<(Value, u64, u64)> = notices
            .iter()
            .map(|n| {
                let p = &n["params"];
                (
                    p["subscription"].clone(),
                    p["missed_from"].as_u64().unwrap(),
                    p["missed_to"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(lost, [(all.clone(), 1, 3), (big.clone(), 2, 2)], "{notices:?}");
        assert_eq!(seqs_and_sizes(&notes), [(4, 7), (4, 7)]);
    }

    #[test]
    fn a_handler_decides_the_topic_and_the_policies_apply_to_it() {
        let mut config = hub_config();
        config.hub.methods = SubscriptionMethods::eth();
        // `eth_subscribe("mine")`: the caller's own topic (its kind from the router's state),
        // which its principal may read.
        let mut r = Router::with_state(String::from("user"));
        r.subscription("mine", |call| {
            Ok(SubscriptionTarget::topic(format!(
                "{}:{}",
                call.state(),
                call.context().principal.id
            )))
        })
        .subscription("closed", |_| Err(RpcError::new(4200, "this subscription is not offered")))
        .subscription("broken", |_| -> Result<SubscriptionTarget, RpcError> { panic!("bug") });
        let mut h = Harness::new(config, r.into_stateless());
        let mut alice = h.session(None, Principal::authenticated("alice"));
        let r = eth_subscribe(&h, &mut alice, json!(["mine"]));
        assert!(r["result"].is_string(), "{r}");
        h.service.publish("user:alice", &json!({"balance": 1})).unwrap();
        let (notes, _) = frames(&mut alice);
        assert_eq!(json_of(&notes[0])["params"]["topic"], "user:alice");
        // Naming the topic directly is still subject to the policy (owner only).
        let mut bob = h.session(None, Principal::authenticated("bob"));
        assert_eq!(eth_subscribe(&h, &mut bob, json!(["user:alice"]))["error"]["code"], -32003);
        assert_eq!(eth_subscribe(&h, &mut bob, json!(["closed"]))["error"]["code"], 4200);
        assert_eq!(eth_subscribe(&h, &mut bob, json!(["broken"]))["error"]["code"], -32603);
        assert_eq!(bob.subscription_count(), 0);
    }
}
