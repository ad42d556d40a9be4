//! The broker bridge's state machine, driven by hand: every command the hub queues is
//! answered by the test with the events a broker driver would give, in the orders that
//! matter (a live message during a history read, a stale answer after a reconnect, ...).
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::Principal;
use wsrpc_core::hub::{
    BridgedTopics, BrokerCommand, BrokerDriver, BrokerEvent, BrokerLink, BrokerRunning,
    PublishError, TopicPattern,
};
use wsrpc_core::metrics::BrokerState;
use wsrpc_core::rpc::{ConnectionId, Router, RpcSession, SessionOutput, Transport};
use wsrpc_core::service::{Launch, ServerBuilder, Service, ServiceConfig};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Option<BrokerLink>>>, Arc<Mutex<bool>>);

struct Driver(Captured);

struct Running(Captured);

impl BrokerDriver for Driver {
    fn start(self: Box<Self>, link: BrokerLink) -> Box<dyn BrokerRunning> {
        *self.0.0.lock().unwrap() = Some(link);
        Box::new(Running(self.0))
    }
}

impl BrokerRunning for Running {
    fn stop(self: Box<Self>) {
        *self.0.1.lock().unwrap() = true;
    }
}

struct Harness {
    service: Arc<Service>,
    link: BrokerLink,
    now: Instant,
    next_conn: u64,
    stopped: Arc<Mutex<bool>>,
}

fn config() -> ServiceConfig {
    let mut c = ServiceConfig::default();
    c.limits = wsrpc_core::limit::LimitConfig::disabled();
    c.hub.replay_capacity = 8;
    c
}

/// The builder's broker hook without an adapter: the harness takes the service itself.
struct NoLaunch;

impl Launch for NoLaunch {
    type Output = ();
    type Tls = ();
    fn launch(_: ServerBuilder<Self>) {}
}

impl Harness {
    fn new(config: ServiceConfig) -> Self {
        Self::with_router(config, Router::new())
    }

    fn with_router(config: ServiceConfig, router: Router) -> Self {
        let captured = Captured::default();
        let now = Instant::now();
        let service = ServerBuilder::<NoLaunch>::new()
            .config(config)
            .router(router)
            .broker(Driver(captured.clone()))
            .into_parts(
                wsrpc_core::Now::new(now, wsrpc_core::UnixTime(Duration::from_secs(1_700_000_000))),
                None,
            )
            .expect("the router is fine")
            .service;
        let link = captured.0.lock().unwrap().clone().expect("the driver was started");
        Self { service, link, now, next_conn: 0, stopped: captured.1 }
    }

    /// A harness whose broker is up.
    fn up() -> Self {
        let h = Self::new(config());
        h.event(BrokerEvent::Up);
        h
    }

    fn session(&mut self) -> RpcSession {
        self.next_conn += 1;
        RpcSession::new(
            self.service.clone(),
            ConnectionId(self.next_conn),
            None,
            Arc::new(Principal::anonymous()),
            Transport::Messages,
            self.now,
        )
    }

    fn event(&self, e: BrokerEvent) {
        self.link.handle_event(e);
    }

    fn message(&self, topic: &str, seq: u64, epoch: u64, value: Value) {
        self.link.handle_message(topic, seq, epoch, value.to_string().as_bytes());
    }

    fn commands(&self) -> Vec<BrokerCommand> {
        let mut out = Vec::new();
        self.link.drain_commands(&mut out, usize::MAX);
        out
    }

    fn call(&self, s: &mut RpcSession, method: &str, params: Value) {
        let msg = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        s.handle_message(self.now, msg.to_string().as_bytes());
    }

    /// Subscribes `s` to `topic` and answers the broker's subscribe and history read (the
    /// topic at `top` in `epoch`, no entries); returns the subscribe result.
    fn subscribe_fresh(&self, s: &mut RpcSession, topic: &str, epoch: u64, top: u64) -> Value {
        self.call(s, "subscribe", json!([topic]));
        assert!(drain(s).is_empty(), "answered only once the broker side is ready");
        let token = match &self.commands()[..] {
            [BrokerCommand::Subscribe { topic: t, token }] if &**t == topic => *token,
            other => panic!("{other:?}"),
        };
        self.event(BrokerEvent::Subscribed { topic: topic.into(), token });
        let id = match &self.commands()[..] {
            [BrokerCommand::History { id, since: None, .. }] => *id,
            other => panic!("{other:?}"),
        };
        self.event(BrokerEvent::History { id, topic: topic.into(), epoch, top, entries: vec![] });
        let out = drain(s);
        assert_eq!(out.len(), 1, "{out:?}");
        out[0]["result"].clone()
    }
}

fn drain(s: &mut RpcSession) -> Vec<Value> {
    let mut outs = Vec::new();
    while let Some(o) = s.poll_output() {
        match o {
            SessionOutput::Message(m) => outs.push(serde_json::from_slice(&m).unwrap()),
            SessionOutput::Notification(f) => {
                outs.push(serde_json::from_slice(f.payload()).unwrap())
            }
            other => panic!("{other:?}"),
        }
    }
    outs
}

/// `(method, seq or missed range)` of notifications, for compact assertions.
fn summary(outs: &[Value]) -> Vec<String> {
    outs.iter()
        .map(|v| match v["method"].as_str() {
            Some("subscription") => format!("n{}", v["params"]["seq"]),
            Some("gap") => {
                format!("gap{}-{}", v["params"]["missed_from"], v["params"]["missed_to"])
            }
            Some("lagged") => format!(
                "lagged{}-{}",
                v["params"]["missed_from"],
                v["params"].get("missed_to").map_or("".into(), |t| t.to_string())
            ),
            Some("reset") => format!("reset{}", v["params"]["epoch"]),
            Some(m) => m.to_owned(),
            None if v.get("error").is_some() => format!("error{}", v["error"]["code"]),
            None => "result".into(),
        })
        .collect()
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, json!({ "i": i }).to_string().into_bytes())).collect()
}

#[test]
fn live_messages_are_delivered_in_order_and_a_jump_is_filled_from_history() {
    let mut h = Harness::up();
    let mut s = h.session();
    let r = h.subscribe_fresh(&mut s, "prices", 7, 3);
    assert_eq!((r["seq"].as_u64(), r["epoch"].as_u64()), (Some(3), Some(7)));
    h.message("prices", 4, 7, json!(4));
    h.message("prices", 4, 7, json!(4)); // a duplicate
    h.message("prices", 3, 7, json!(3)); // already before the subscription
    assert_eq!(summary(&drain(&mut s)), ["n4"]);
    // 5 and 6 were lost on the way: 7 starts a read; 8 arrives during it and is held.
    h.message("prices", 7, 7, json!(7));
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(4), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.message("prices", 8, 7, json!(8));
    assert!(drain(&mut s).is_empty());
    h.event(BrokerEvent::History {
        id,
        topic: "prices".into(),
        epoch: 7,
        top: 7,
        entries: entries(5..=7),
    });
    assert_eq!(summary(&drain(&mut s)), ["n5", "n6", "n7", "n8"]);
    h.message("prices", 9, 7, json!(9));
    assert_eq!(summary(&drain(&mut s)), ["n9"]);
}

#[test]
fn a_hole_the_history_no_longer_holds_is_an_exact_gap() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.subscribe_fresh(&mut s, "t", 1, 10);
    h.message("t", 30, 1, json!(30));
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(10), .. }] => *id,
        other => panic!("{other:?}"),
    };
    // The history kept 25..=30 only.
    h.event(BrokerEvent::History {
        id,
        topic: "t".into(),
        epoch: 1,
        top: 30,
        entries: entries(25..=30),
    });
    assert_eq!(summary(&drain(&mut s)), ["gap11-24", "n25", "n26", "n27", "n28", "n29", "n30"]);
    assert_eq!(h.service.snapshot(h.now).broker.unwrap().gaps, 1);
}

#[test]
fn publishes_go_to_the_broker_and_reach_local_subscribers_only_on_the_way_back() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.subscribe_fresh(&mut s, "news", 3, 0);
    let published = h.service.publish("news", &json!({"headline": "x"})).unwrap();
    assert_eq!((published.seq, published.subscribers), (0, 0));
    let mut ticket = published.pending.expect("numbered by the broker");
    assert!(ticket.try_take().is_none());
    let id = match &h.commands()[..] {
        [BrokerCommand::Publish { id, topic, payload }] if &**topic == "news" => {
            assert_eq!(payload, br#"{"headline":"x"}"#);
            *id
        }
        other => panic!("{other:?}"),
    };
    assert!(drain(&mut s).is_empty(), "not delivered locally before the broker numbered it");
    h.event(BrokerEvent::Published { id, seq: 1, epoch: 3 });
    let done = ticket.try_take().unwrap().unwrap();
    assert_eq!((done.seq, done.epoch), (1, 3));
    h.message("news", 1, 3, json!({"headline": "x"}));
    let out = drain(&mut s);
    assert_eq!(out[0]["params"]["result"], json!({"headline": "x"}));
    // The broker refuses one.
    let p = h.service.publish("news", &1).unwrap();
    let id = match &h.commands()[..] {
        [BrokerCommand::Publish { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::PublishFailed { id, reason: "WRONGTYPE".into() });
    assert!(matches!(p.wait(), Err(PublishError::BrokerFailed(why)) if why == "WRONGTYPE"));
    let stats = h.service.snapshot(h.now).broker.unwrap();
    assert_eq!((stats.publishes, stats.publish_failures, stats.deliveries), (1, 1, 1));
}

#[test]
fn a_resubscription_is_served_from_the_replay_buffer_or_the_history() {
    let mut h = Harness::up();
    let mut a = h.session();
    h.subscribe_fresh(&mut a, "t", 5, 0);
    for i in 1..=20 {
        h.message("t", i, 5, json!(i));
    }
    assert_eq!(drain(&mut a).len(), 20);
    // Covered by the replay buffer (8 kept: 13..=20): answered at once.
    let mut b = h.session();
    h.call(&mut b, "subscribe", json!({"topic": "t", "since": 15, "epoch": 5}));
    let out = drain(&mut b);
    assert_eq!(summary(&out), ["result", "n16", "n17", "n18", "n19", "n20"]);
    assert_eq!(out[0]["result"]["seq"], 20);
    assert!(h.commands().is_empty());
    // Older than the buffer: read from the broker, which holds 10..=20.
    let mut c = h.session();
    h.call(&mut c, "subscribe", json!({"topic": "t", "since": 4, "epoch": 5}));
    assert!(drain(&mut c).is_empty());
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(4), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.message("t", 21, 5, json!(21)); // held for everyone during the read
    h.event(BrokerEvent::History {
        id,
        topic: "t".into(),
        epoch: 5,
        top: 20,
        entries: entries(10..=20),
    });
    // The replay buffer keeps the newest 8 of what it learned: 14..=21.
    let got = summary(&drain(&mut c));
    assert_eq!(got, ["result", "gap5-13", "n14", "n15", "n16", "n17", "n18", "n19", "n20", "n21"]);
    assert_eq!(summary(&drain(&mut a)), ["n21"]);
    assert_eq!(summary(&drain(&mut b)), ["n21"]);
}

#[test]
fn a_subscriber_ahead_of_this_instance_gets_no_duplicates() {
    let mut h = Harness::up();
    let mut a = h.session();
    h.subscribe_fresh(&mut a, "t", 5, 10);
    // A client that saw up to 12 on another instance, while this one is at 10.
    let mut b = h.session();
    h.call(&mut b, "subscribe", json!({"topic": "t", "since": 12, "epoch": 5}));
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(10), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History {
        id,
        topic: "t".into(),
        epoch: 5,
        top: 12,
        entries: entries(11..=12),
    });
    assert_eq!(summary(&drain(&mut b)), ["result"]);
    assert_eq!(summary(&drain(&mut a)), ["n11", "n12"]);
    h.message("t", 11, 5, json!(11));
    h.message("t", 13, 5, json!(13));
    assert_eq!(summary(&drain(&mut b)), ["n13"]);
}

#[test]
fn a_new_epoch_resets_subscribers_and_resumes_with_a_stale_epoch_replay_it_all() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.subscribe_fresh(&mut s, "t", 1, 40);
    h.message("t", 41, 1, json!(41));
    // The broker lost the topic (FLUSHALL): the next message is 1 of epoch 2. Only a read
    // says which epoch is current; then the new one is read from its start.
    h.message("t", 1, 2, json!("new"));
    assert_eq!(summary(&drain(&mut s)), ["n41"]);
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(41), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History { id, topic: "t".into(), epoch: 2, top: 1, entries: vec![] });
    assert_eq!(summary(&drain(&mut s)), ["reset2"]);
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(0), .. }] => *id,
        other => panic!("{other:?}"),
    };
    let one = entries(1..=1);
    h.event(BrokerEvent::History { id, topic: "t".into(), epoch: 2, top: 1, entries: one });
    assert_eq!(summary(&drain(&mut s)), ["n1"]);
    h.message("t", 2, 2, json!("new"));
    assert_eq!(summary(&drain(&mut s)), ["n2"]);
    // A client that knew epoch 1 resumes: told about the reset, given all of epoch 2.
    let mut r = h.session();
    h.call(&mut r, "subscribe", json!({"topic": "t", "since": 41, "epoch": 1}));
    let out = drain(&mut r);
    assert_eq!(summary(&out), ["result", "reset2", "n1", "n2"]);
    assert_eq!(out[0]["result"]["epoch"], 2);
    assert_eq!(h.service.snapshot(h.now).broker.unwrap().resets, 2);
}

#[test]
fn a_history_read_that_finds_a_new_epoch_resets_and_drops_the_old_epochs_stragglers() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.subscribe_fresh(&mut s, "t", 1, 5);
    h.message("t", 9, 1, json!(9));
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(5), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History { id, topic: "t".into(), epoch: 4, top: 2, entries: vec![] });
    assert_eq!(summary(&drain(&mut s)), ["reset4"]);
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(0), .. }] => *id,
        other => panic!("{other:?}"),
    };
    let two = entries(1..=2);
    h.event(BrokerEvent::History { id, topic: "t".into(), epoch: 4, top: 2, entries: two });
    // The held 9 was of the old epoch, sent before the loss: dropped.
    assert_eq!(summary(&drain(&mut s)), ["n1", "n2"]);
    assert!(h.commands().is_empty());
    // A straggler of the old epoch arriving live is checked by a read, and dropped.
    h.message("t", 10, 1, json!(10));
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(2), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History { id, topic: "t".into(), epoch: 4, top: 2, entries: vec![] });
    h.message("t", 3, 4, json!(3));
    assert_eq!(summary(&drain(&mut s)), ["n3"]);
    assert_eq!(h.service.snapshot(h.now).broker.unwrap().resets, 1);
}

#[test]
fn broker_down_fails_publishes_fast_stalls_subscribers_and_recovers_after() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.subscribe_fresh(&mut s, "t", 9, 0);
    h.message("t", 1, 9, json!(1));
    assert_eq!(summary(&drain(&mut s)), ["n1"]);
    let in_flight = h.service.publish("t", &2).unwrap();
    let _ = h.commands();
    h.event(BrokerEvent::Down { reason: "connection reset".into() });
    assert!(matches!(in_flight.wait(), Err(PublishError::BrokerFailed(_))));
    assert!(matches!(h.service.publish("t", &3), Err(PublishError::BrokerUnavailable)));
    assert_eq!(h.service.broker_state(), Some(BrokerState::Down));
    let health = h.service.health(h.now);
    assert_eq!(health.http_status(), 503);
    let out = drain(&mut s);
    assert_eq!(summary(&out), ["lagged2-"]);
    assert_eq!(out[0]["params"]["broker"], "down");
    // Subscribing to a bridged topic fails fast too; local answers are unaffected.
    let mut other = h.session();
    h.call(&mut other, "subscribe", json!(["u"]));
    assert_eq!(summary(&drain(&mut other)), ["error-32002"]);
    assert!(h.commands().is_empty());
    // Back: subscribed anew, read from where it stalled; 2..=3 published elsewhere meanwhile,
    // the history kept 3 only.
    h.event(BrokerEvent::Up);
    let token = match &h.commands()[..] {
        [BrokerCommand::Subscribe { token, .. }] => *token,
        other => panic!("{other:?}"),
    };
    h.message("t", 4, 9, json!(4)); // held: subscribing
    h.event(BrokerEvent::Subscribed { topic: "t".into(), token });
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(1), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History {
        id,
        topic: "t".into(),
        epoch: 9,
        top: 3,
        entries: entries(3..=3),
    });
    assert_eq!(summary(&drain(&mut s)), ["gap2-2", "n3", "n4"]);
    let stats = h.service.snapshot(h.now).broker.unwrap();
    assert_eq!((stats.reconnects, stats.publish_failures), (1, 2));
    assert_eq!(h.service.health(h.now).http_status(), 200);
    h.event(BrokerEvent::Down { reason: "again".into() });
    h.event(BrokerEvent::Up);
    assert_eq!(h.service.snapshot(h.now).broker.unwrap().reconnects, 2);
}

#[test]
fn a_pending_subscription_fails_when_the_broker_goes_away() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.call(&mut s, "subscribe", json!(["t"]));
    let _ = h.commands();
    h.event(BrokerEvent::Down { reason: "x".into() });
    let out = drain(&mut s);
    assert_eq!(summary(&out), ["error-32002"]);
    assert_eq!(out[0]["error"]["data"], json!({"broker": "down"}));
    assert_eq!(s.subscription_count(), 0);
    assert_eq!(h.service.hub().stats().topics, 0);
    assert_eq!(h.service.hub().stats().subscriptions_active, 0);
}

#[test]
fn stale_answers_are_ignored() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.call(&mut s, "subscribe", json!(["t"]));
    let token = match &h.commands()[..] {
        [BrokerCommand::Subscribe { token, .. }] => *token,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::Subscribed { topic: "t".into(), token: token + 100 });
    assert!(h.commands().is_empty(), "another subscription's answer");
    h.event(BrokerEvent::Subscribed { topic: "t".into(), token });
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History {
        id: id + 100,
        topic: "t".into(),
        epoch: 1,
        top: 0,
        entries: vec![],
    });
    assert!(drain(&mut s).is_empty(), "another read's answer");
    h.event(BrokerEvent::History { id, topic: "t".into(), epoch: 1, top: 0, entries: vec![] });
    assert_eq!(summary(&drain(&mut s)), ["result"]);
}

#[test]
fn the_last_unsubscribe_leaves_the_broker_channel_and_forgets_the_topic() {
    let mut h = Harness::up();
    let mut a = h.session();
    let mut b = h.session();
    let id = h.subscribe_fresh(&mut a, "t", 1, 0)["subscription"].as_str().unwrap().to_owned();
    h.call(&mut b, "subscribe", json!(["t"]));
    let id_b = drain(&mut b)[0]["result"]["subscription"].as_str().unwrap().to_owned();
    h.call(&mut a, "unsubscribe", json!([id]));
    assert_eq!(drain(&mut a)[0]["result"], true);
    assert!(h.commands().is_empty(), "b still listens");
    h.call(&mut b, "unsubscribe", json!([id_b]));
    assert_eq!(drain(&mut b)[0]["result"], true);
    assert!(matches!(&h.commands()[..], [BrokerCommand::Unsubscribe { topic }] if &**topic == "t"));
    assert_eq!(h.service.hub().stats().topics, 0);
    // Messages still on their way are ignored.
    h.message("t", 1, 1, json!(1));
}

#[test]
fn unsubscribing_while_the_subscription_waits_answers_both_calls() {
    let mut h = Harness::up();
    let mut s = h.session();
    h.call(&mut s, "subscribe", json!(["t"]));
    let _ = h.commands();
    // The id is the topic's; a client guessing it can end the subscription before it is
    // established.
    let msg = json!({"jsonrpc": "2.0", "method": "unsubscribe", "params": ["0x1"], "id": 2});
    s.handle_message(h.now, msg.to_string().as_bytes());
    let out = drain(&mut s);
    // The subscribe call came first, so its answer does.
    assert_eq!(summary(&out), ["error-32002", "result"], "{out:?}");
    assert_eq!((out[0]["id"].as_u64(), out[1]["id"].as_u64()), (Some(1), Some(2)));
    assert_eq!(out[1]["result"], true);
    assert_eq!(h.service.hub().stats().topics, 0);
}

#[test]
fn live_messages_beyond_the_hold_bound_are_read_again() {
    let mut c = config();
    c.hub.bridge.max_held = 2;
    let mut h = Harness::new(c);
    h.event(BrokerEvent::Up);
    let mut s = h.session();
    h.subscribe_fresh(&mut s, "t", 1, 0);
    h.message("t", 2, 1, json!(2));
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(0), .. }] => *id,
        other => panic!("{other:?}"),
    };
    for i in 3..=6 {
        h.message("t", i, 1, json!(i)); // 3 held, 4..=6 dropped
    }
    h.event(BrokerEvent::History {
        id,
        topic: "t".into(),
        epoch: 1,
        top: 2,
        entries: entries(1..=2),
    });
    assert_eq!(summary(&drain(&mut s)), ["n1", "n2", "n3"]);
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(3), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History {
        id,
        topic: "t".into(),
        epoch: 1,
        top: 6,
        entries: entries(4..=6),
    });
    assert_eq!(summary(&drain(&mut s)), ["n4", "n5", "n6"]);
}

#[test]
fn only_matching_topics_are_bridged() {
    let mut c = config();
    c.hub.bridge.topics = BridgedTopics::Matching(vec![TopicPattern::new("shared:*")]);
    let mut h = Harness::new(c);
    let mut s = h.session();
    // Local topics work with the broker down, exactly as without one.
    h.call(&mut s, "subscribe", json!(["local"]));
    assert_eq!(summary(&drain(&mut s)), ["result"]);
    let p = h.service.publish("local", &1).unwrap();
    assert_eq!((p.seq, p.subscribers, p.pending.is_none()), (1, 1, true));
    assert_eq!(summary(&drain(&mut s)), ["n1"]);
    assert!(matches!(h.service.publish("shared:x", &1), Err(PublishError::BrokerUnavailable)));
    h.event(BrokerEvent::Up);
    assert!(h.service.publish("shared:x", &1).unwrap().pending.is_some());
}

#[test]
fn publishes_beyond_the_in_flight_bound_are_refused() {
    let mut c = config();
    c.hub.bridge.max_in_flight = 3;
    let h = Harness::new(c);
    h.event(BrokerEvent::Up);
    let tickets: Vec<_> = (0..3).map(|i| h.service.publish("t", &i).unwrap()).collect();
    assert!(matches!(h.service.publish("t", &4), Err(PublishError::Backlog { max: 3 })));
    let e = PublishError::Backlog { max: 3 }.to_rpc_error();
    assert_eq!(e.code, -32005);
    assert_eq!(PublishError::BrokerUnavailable.to_rpc_error().code, -32002);
    drop(tickets);
    assert_eq!(h.commands().len(), 3);
}

#[test]
fn stopping_the_service_stops_the_driver_and_fails_what_waits() {
    let h = Harness::up();
    let p = h.service.publish("t", &1).unwrap();
    h.service.stop_broker();
    assert!(*h.stopped.lock().unwrap());
    assert!(matches!(p.wait(), Err(PublishError::BrokerFailed(_))));
    h.event(BrokerEvent::Up);
    assert_eq!(h.service.broker_state(), Some(BrokerState::Down), "never up after the stop");
}

#[test]
fn topics_created_and_abandoned_leave_nothing_behind() {
    let mut h = Harness::up();
    let mut s = h.session();
    for i in 0..100_000u64 {
        let topic = format!("t{i}");
        h.call(&mut s, "subscribe", json!([topic]));
        let token = match &h.commands()[..] {
            [BrokerCommand::Subscribe { token, .. }] => *token,
            other => panic!("{other:?}"),
        };
        h.event(BrokerEvent::Subscribed { topic: topic.as_str().into(), token });
        let id = match &h.commands()[..] {
            [BrokerCommand::History { id, .. }] => *id,
            other => panic!("{other:?}"),
        };
        h.event(BrokerEvent::History {
            id,
            topic: topic.as_str().into(),
            epoch: i,
            top: i,
            entries: vec![],
        });
        let sub = drain(&mut s)[0]["result"]["subscription"].as_str().unwrap().to_owned();
        h.call(&mut s, "unsubscribe", json!([sub]));
        assert_eq!(drain(&mut s)[0]["result"], true);
        assert!(matches!(&h.commands()[..], [BrokerCommand::Unsubscribe { .. }]));
    }
    let stats = h.service.hub().stats();
    assert_eq!((stats.topics, stats.subscriptions_active), (0, 0));
    assert_eq!(s.subscription_count(), 0);
}

#[test]
fn a_ticket_resolves_for_an_awaiting_task() {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};
    struct Flag(Mutex<bool>);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() = true;
        }
    }
    let h = Harness::up();
    let mut ticket = h.service.publish("t", &1).unwrap().pending.unwrap();
    let flag = Arc::new(Flag(Mutex::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut ticket).poll(&mut cx).is_pending());
    let id = match &h.commands()[..] {
        [BrokerCommand::Publish { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::Published { id, seq: 7, epoch: 1 });
    assert!(*flag.0.lock().unwrap(), "woken");
    match std::pin::Pin::new(&mut ticket).poll(&mut cx) {
        Poll::Ready(Ok(s)) => assert_eq!(s.seq, 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_driver_far_behind_refuses_new_topics_instead_of_queueing_without_bound() {
    let mut c = config();
    c.hub.bridge.max_in_flight = 1;
    c.hub.max_topics = 400;
    let mut h = Harness::new(c);
    h.event(BrokerEvent::Up);
    let mut s = h.session();
    // Subscribe/unsubscribe churn on invented topics while the driver takes nothing.
    let mut refused_at = None;
    for i in 0..2_000 {
        h.call(&mut s, "subscribe", json!([format!("churn:{i}")]));
        let out = drain(&mut s);
        if let [answer] = &out[..] {
            assert_eq!(answer["error"]["code"], -32002, "{out:?}");
            refused_at = Some(i);
            break;
        }
        let msg = json!({"jsonrpc": "2.0", "method": "unsubscribe", "params": [format!("0x{:x}", i + 1)], "id": 2});
        s.handle_message(h.now, msg.to_string().as_bytes());
        let _ = drain(&mut s);
    }
    let refused_at = refused_at.expect("refused once the queue is full");
    let queued = h.commands().len();
    assert!(queued <= 1_201 + 2, "{queued} commands queued after {refused_at} topics");
    // Drained, new topics are taken again.
    h.call(&mut s, "subscribe", json!(["fresh"]));
    assert!(drain(&mut s).is_empty(), "waiting for the broker, not refused");
}

#[test]
fn filters_apply_after_the_bridge_to_live_messages_and_to_the_history() {
    // `evens:*` with `"filter": true`: only even values, decided per subscription after the
    // broker numbered them.
    let mut router = Router::new();
    router.subscription("evens", |call| {
        let s = wsrpc_core::rpc::SubscriptionTarget::topic(call.name());
        Ok(match call.filter::<bool>()? {
            Some(true) => s.with_filter(|p: &wsrpc_core::hub::Payload<'_>| {
                p.value()["i"].as_u64().is_some_and(|i| i % 2 == 0)
            }),
            _ => s,
        })
    });
    let mut h = Harness::with_router(config(), router);
    h.event(BrokerEvent::Up);
    let mut all = h.session();
    h.subscribe_fresh(&mut all, "evens:t", 5, 0);
    let mut even = h.session();
    h.call(&mut even, "subscribe", json!({"topic": "evens:t", "filter": true}));
    assert_eq!(summary(&drain(&mut even)), ["result"], "served at once: the topic is in step");
    for i in 1..=4 {
        h.message("evens:t", i, 5, json!({ "i": i }));
    }
    assert_eq!(summary(&drain(&mut all)), ["n1", "n2", "n3", "n4"]);
    assert_eq!(summary(&drain(&mut even)), ["n2", "n4"], "numbered as the broker numbered them");
    // A resubscription older than the replay buffer is read from the broker's history,
    // filtered the same way; what the history lost is a gap for it too.
    for i in 5..=20 {
        h.message("evens:t", i, 5, json!({ "i": i }));
    }
    drain(&mut all);
    drain(&mut even);
    let mut late = h.session();
    let resume = json!({"topic": "evens:t", "since": 3, "epoch": 5, "filter": true});
    h.call(&mut late, "subscribe", resume);
    let id = match &h.commands()[..] {
        [BrokerCommand::History { id, since: Some(3), .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.event(BrokerEvent::History {
        id,
        topic: "evens:t".into(),
        epoch: 5,
        top: 20,
        entries: entries(8..=20),
    });
    let got = summary(&drain(&mut late));
    assert_eq!(got, ["result", "gap4-12", "n14", "n16", "n18", "n20"], "replay kept 13..=20");
}
