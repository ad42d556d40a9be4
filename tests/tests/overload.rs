//! Floods and overload over real loopback sockets, for every adapter: a client flooding
//! requests is limited (-32005, then 1008) while 50 well-behaved clients keep their latency;
//! 10,000 subscribe/unsubscribe cycles leak no subscription or topic; a 2,000-connection storm
//! leaves no connection or file descriptor behind; a subscriber that never reads neither
//! delays a fast one nor grows past its outbox (lagged notices, or 1008, per policy). Tests in
//! this file run one at a time: they measure latency and count the process's descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::hub::{OutboxLimits, SlowConsumer};
use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::{ClientOptions, SubscriptionEvent};
use wsrpc_core::service::{Bind, Service, ServiceConfig};
use wsrpc_tests::LONG;
use wsrpc_tests::raw::{self, RawWs};
use wsrpc_tests::{Adapter, TestClient, TestServer};
use wsrpc_tests::{serial, unlimited_config as config, wait_for};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn router() -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b));
    r
}

fn start<A: Adapter>(config: ServiceConfig) -> Box<dyn TestServer> {
    A::start(config, router(), Bind::Addr(loopback())).expect("server starts")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 50 clients each make 8 calls, 120 ms apart (within the default 10/s budget); every
/// latency, all answered.
fn latencies(clients: &[Arc<dyn TestClient>]) -> Vec<Duration> {
    let threads: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(n, c)| {
            std::thread::spawn(move || {
                (0..8i64)
                    .map(|i| {
                        let t = Instant::now();
                        let sum = c.call("add", json!([n, i])).expect("a well-behaved call");
                        let took = t.elapsed();
                        assert_eq!(sum, json!(n as i64 + i));
                        std::thread::sleep(Duration::from_millis(120));
                        took
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

#[derive(Debug, Default)]
struct FloodReport {
    connections: u64,
    answered: u64,
    limited: u64,
    closed_1008: u64,
}

/// One flooding client: pipelines 300 calls without reading, then reads what came back;
/// again on a new connection each time the server throws it out, until `stop`.
fn flood(addr: SocketAddr, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> FloodReport {
    let calls: Vec<u8> = (0..300)
        .flat_map(|id| {
            raw::client_frame(
                1,
                format!(r#"{{"jsonrpc":"2.0","method":"add","params":[1,2],"id":{id}}}"#)
                    .as_bytes(),
            )
        })
        .collect();
    let mut report = FloodReport::default();
    while !stop.load(Ordering::SeqCst) {
        let mut ws = RawWs::open(addr, "");
        report.connections += 1;
        let _ = ws.send(&calls);
        while let Some(frame) = ws.next_frame(LONG) {
            if let Some(code) = frame.close_code() {
                assert_eq!(code, 1008, "the flooder is closed for abuse");
                report.closed_1008 += 1;
                break;
            }
            let answer = frame.json().expect("JSON-RPC responses");
            if answer["result"] == json!(3) {
                report.answered += 1;
            } else {
                assert_eq!(answer["error"]["code"], json!(-32005), "{answer}");
                assert!(answer["error"]["data"]["retry_after_ms"].is_u64(), "{answer}");
                report.limited += 1;
            }
        }
        rounds.fetch_add(1, Ordering::SeqCst);
    }
    report
}

pub fn flood_is_limited_while_others_keep_their_latency<A: Adapter>() {
    let _serial = serial();
    // Default limits: 10/s, 100/min per connection; 100 rejections in a row close with 1008.
    let server = start::<A>(ServiceConfig::default());
    let clients: Vec<Arc<dyn TestClient>> = (0..50)
        .map(|_| Arc::from(A::connect(&server.url(), ClientOptions::default()).unwrap()))
        .collect();
    let idle = median(latencies(&clients));
    let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let flooder = {
        let (addr, stop, rounds) = (server.addr(), stop.clone(), rounds.clone());
        std::thread::spawn(move || flood(addr, stop, rounds))
    };
    wait_for("the flood to be under way", || rounds.load(Ordering::SeqCst) >= 1);
    let loaded = median(latencies(&clients));
    let during = rounds.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let report = flooder.join().unwrap();
    println!("{}: idle median {idle:?}, under flood {loaded:?}; flood {report:?}", A::NAME);
    // The bound: within 2x of the idle median, plus 20 ms of slack for a noisy 2-core machine.
    assert!(loaded <= idle * 2 + Duration::from_millis(20), "idle {idle:?}, flooded {loaded:?}");
    assert!(during >= 2, "the flood went on while the others were measured ({during} rounds)");
    assert_eq!(report.closed_1008, report.connections, "every flooding connection got 1008");
    // Each connection got its 10 tokens (maybe one more refilled), then refusals.
    assert!(report.answered <= report.connections * 12, "{report:?}");
    // 100 refusals in a row close the connection: 99 answered -32005, the 100th gets the 1008.
    assert!(report.limited >= report.connections * 99, "{report:?}");
    assert!(server.metrics().rate_limited >= report.limited);
}

/// A server started through its own crate, for what the facade does not show: the hub.
pub trait Native: Adapter {
    fn start_native(config: ServiceConfig) -> (SocketAddr, Arc<Service>, Box<dyn FnOnce()>);
}

impl Native for wsrpc_tests::Smol {
    fn start_native(config: ServiceConfig) -> (SocketAddr, Arc<Service>, Box<dyn FnOnce()>) {
        let builder = wsrpc_smol::Server::builder().config(config).router(router());
        let s = builder.bind(loopback()).start().unwrap();
        let (addr, service) = (s.local_addr(), s.service().clone());
        (addr, service, Box::new(move || ::smol::block_on(s.shutdown(Duration::from_secs(1)))))
    }
}

impl Native for wsrpc_tests::AsyncStd {
    fn start_native(config: ServiceConfig) -> (SocketAddr, Arc<Service>, Box<dyn FnOnce()>) {
        let builder = wsrpc_async_std::Server::builder().config(config).router(router());
        let s = builder.bind(loopback()).start().unwrap();
        let (addr, service) = (s.local_addr(), s.service().clone());
        let stop = move || ::async_std::task::block_on(s.shutdown(Duration::from_secs(1)));
        (addr, service, Box::new(stop))
    }
}

impl Native for wsrpc_tests::Blocking {
    fn start_native(config: ServiceConfig) -> (SocketAddr, Arc<Service>, Box<dyn FnOnce()>) {
        let builder = wsrpc_blocking::Server::builder().config(config).router(router());
        let s = builder.bind(loopback()).start().unwrap();
        let (addr, service) = (s.local_addr(), s.service().clone());
        (addr, service, Box::new(move || s.shutdown(Duration::from_secs(1))))
    }
}

pub fn subscribe_unsubscribe_cycles_leak_nothing<A: Native>() {
    let _serial = serial();
    let (addr, service, stop) = A::start_native(config());
    let url = format!("ws://{addr}");
    let client = A::connect(&url, ClientOptions::default()).unwrap();
    for i in 0..10_000 {
        let sub = client.subscribe(&format!("cycle:{}", i % 100)).expect("subscribed");
        drop(sub); // unsubscribes
    }
    // Connections that go away with live subscriptions release them too: a client closed
    // politely, and a raw peer that just vanishes.
    let doomed = A::connect(&url, ClientOptions::default()).unwrap();
    let subs: Vec<_> = (0..20).map(|i| doomed.subscribe(&format!("doomed:{i}")).unwrap()).collect();
    let mut ws = RawWs::open(addr, "");
    for i in 0..5 {
        ws.send_text(&format!(
            r#"{{"jsonrpc":"2.0","method":"subscribe","params":["vanished:{i}"],"id":{i}}}"#
        ))
        .unwrap();
        assert!(
            ws.next_frame(LONG).and_then(|f| f.json()).is_some_and(|v| v["result"].is_object())
        );
    }
    assert!(service.hub().stats().subscriptions_active >= 25);
    doomed.close();
    drop((subs, ws));
    wait_for("no live subscription nor topic", || {
        let hub = service.hub().stats();
        let metrics = service.snapshot(Instant::now());
        hub.subscriptions_active == 0 && hub.topics == 0 && metrics.subscriptions.active == 0
    });
    assert!(service.snapshot(Instant::now()).subscriptions.total >= 10_025);
    client.close();
    stop();
}

/// One connect/close cycle of `kind`: a socket that sends nothing, a handshake then a
/// vanishing peer, a handshake and a clean close, or a real client with a call.
fn storm_cycle<A: Adapter>(server: &dyn TestServer, kind: usize) {
    match kind {
        0 => drop(raw::connect(server.addr())),
        1 => drop(RawWs::open(server.addr(), "")),
        2 => {
            let mut ws = RawWs::open(server.addr(), "");
            ws.send(&raw::client_frame(8, &1000u16.to_be_bytes())).unwrap();
            assert_eq!(ws.close_code(LONG), Some(1000));
        }
        _ => {
            let c = A::connect(&server.url(), ClientOptions::default()).unwrap();
            assert_eq!(c.call("add", json!([1, 1])).unwrap(), json!(2));
            c.close();
        }
    }
}

pub fn connection_storm_releases_connections_and_fds<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(config());
    // One cycle of each kind first, so resources a runtime creates lazily are in the baseline.
    for kind in 0..4 {
        storm_cycle::<A>(&*server, kind);
    }
    wait_for("the warm-up to close", || server.connections() == 0);
    let baseline = raw::open_fds();
    let total_before = server.metrics().connections.total;
    for i in 0..2000 {
        storm_cycle::<A>(&*server, i % 4);
    }
    wait_for("every connection to be released", || {
        server.connections() == 0 && server.metrics().connections.active == 0
    });
    let mut fds = raw::open_fds();
    let end = Instant::now() + LONG;
    while fds > baseline + 8 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        fds = raw::open_fds();
    }
    assert!(fds <= baseline + 8, "{fds} descriptors open, {baseline} before the storm");
    assert!(server.metrics().connections.total - total_before >= 2000);
}

/// Subscribes by hand on a raw socket that then reads nothing until the test says so.
fn silent_subscriber(server: &dyn TestServer, topic: &str) -> RawWs {
    let mut ws = RawWs::open(server.addr(), "");
    ws.send_text(&format!(
        r#"{{"jsonrpc":"2.0","method":"subscribe","params":["{topic}"],"id":1}}"#
    ))
    .unwrap();
    ws
}

/// Publishes 16 KiB notifications one by one until the silent subscriber's outbox overflows,
/// then `after` more; the fast subscriber receives each and the worst delay is returned.
fn publish_past_overflow(
    server: &dyn TestServer,
    sub: &mut dyn wsrpc_tests::TestSubscription,
    after: u64,
) -> (u64, Duration) {
    let pad = "x".repeat(16 * 1024);
    let (mut worst, mut seq, mut overflowed_at) = (Duration::ZERO, 0, None);
    while overflowed_at.is_none_or(|at| seq < at + after) {
        seq += 1;
        assert!(seq < 20_000, "the silent subscriber never overflowed");
        let sent = Instant::now();
        assert_eq!(server.publish("ticks", &json!({"seq": seq, "pad": pad})), seq);
        match sub.next(LONG) {
            Some(SubscriptionEvent::Notification { seq: got, .. }) => assert_eq!(got, seq),
            other => panic!("the fast subscriber missed {seq}: {other:?}"),
        }
        worst = worst.max(sent.elapsed());
        if overflowed_at.is_none() && server.metrics().lagged_drops > 0 {
            overflowed_at = Some(seq);
        }
    }
    (seq, worst)
}

/// Reads everything the silent subscriber was sent: notification seqs, missed ranges and
/// the close code, if any; stops once `last` is accounted for or the connection ends.
fn drain_silent(ws: &mut RawWs, last: u64) -> (Vec<u64>, Vec<(u64, u64)>, Option<u16>) {
    let (mut seqs, mut missed) = (Vec::new(), Vec::new());
    while let Some(frame) = ws.next_frame(LONG) {
        if let Some(code) = frame.close_code() {
            return (seqs, missed, Some(code));
        }
        let msg: Value = frame.json().expect("JSON");
        match msg["method"].as_str() {
            Some("subscription") => seqs.push(msg["params"]["seq"].as_u64().unwrap()),
            Some("lagged") => {
                let p = &msg["params"];
                missed.push((p["missed_from"].as_u64().unwrap(), p["missed_to"].as_u64().unwrap()));
            }
            _ => assert_eq!(msg["id"], json!(1), "the subscribe answer: {msg}"),
        }
        if seqs.last() == Some(&last) || missed.iter().any(|&(_, to)| to == last) {
            break;
        }
    }
    (seqs, missed, None)
}

fn slow_consumer_config(policy: SlowConsumer) -> ServiceConfig {
    let mut c = config();
    c.hub.outbox = OutboxLimits { max_messages: 64, max_bytes: 4 << 20, slow_consumer: policy };
    c
}

pub fn silent_subscriber_lags_without_delaying_a_fast_one<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(slow_consumer_config(SlowConsumer::DropOldest));
    let mut silent = silent_subscriber(&*server, "ticks");
    let fast = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let mut sub = fast.subscribe("ticks").unwrap();
    wait_for("both subscriptions", || server.metrics().subscriptions.active == 2);
    let (last, worst) = publish_past_overflow(&*server, &mut *sub, 300);
    println!("{}: {last} published, fast subscriber's worst delay {worst:?}", A::NAME);
    // Generous: a publish and its delivery take about a millisecond here.
    assert!(worst < Duration::from_secs(1), "the fast subscriber waited {worst:?}");
    let dropped = server.metrics().lagged_drops;
    // Most of the 300 published after the first drop were dropped too (the kernel may still
    // take a few into its buffers).
    assert!(dropped >= 100, "the outbox kept dropping while full: {dropped}");
    // Every sequence number reaches the silent one or is reported missed; none is lost
    // silently, and what arrives is in order.
    let (seqs, missed, close) = drain_silent(&mut silent, last);
    assert_eq!(close, None);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(!missed.is_empty(), "a lagged notice");
    for s in 1..=last {
        assert!(
            seqs.contains(&s) || missed.iter().any(|&(from, to)| (from..=to).contains(&s)),
            "{s} neither delivered nor reported missed"
        );
    }
    // Exact accounting: what was not dropped from the outbox was delivered, once.
    assert_eq!(seqs.len() as u64 + dropped, last, "delivered plus dropped");
}

pub fn silent_subscriber_is_closed_under_the_close_policy<A: Adapter>() {
    let _serial = serial();
    let server = start::<A>(slow_consumer_config(SlowConsumer::Close));
    let mut silent = silent_subscriber(&*server, "ticks");
    let fast = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let mut sub = fast.subscribe("ticks").unwrap();
    wait_for("both subscriptions", || server.metrics().subscriptions.active == 2);
    let (last, worst) = publish_past_overflow(&*server, &mut *sub, 50);
    assert!(worst < Duration::from_secs(1), "the fast subscriber waited {worst:?}");
    let (seqs, missed, close) = drain_silent(&mut silent, last);
    assert_eq!(close, Some(1008), "closed for not reading, after {} notifications", seqs.len());
    assert!(missed.is_empty() && (seqs.len() as u64) < last, "{} delivered", seqs.len());
    // Answering the close and hanging up lets the server finish now, not at its close timeout.
    let _ = silent.send(&raw::client_frame(8, &1008u16.to_be_bytes()));
    drop(silent);
    wait_for("the silent subscriber to be gone", || {
        server.metrics().subscriptions.active == 1 && server.connections() == 1
    });
    // The fast one is still subscribed and served.
    server.publish("ticks", &json!("after"));
    assert!(matches!(sub.next(LONG), Some(SubscriptionEvent::Notification { .. })));
}

macro_rules! overload_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn flood_is_limited_while_others_keep_their_latency() {
                super::flood_is_limited_while_others_keep_their_latency::<$adapter>();
            }
            #[test]
            fn subscribe_unsubscribe_cycles_leak_nothing() {
                super::subscribe_unsubscribe_cycles_leak_nothing::<$adapter>();
            }
            #[test]
            fn connection_storm_releases_connections_and_fds() {
                super::connection_storm_releases_connections_and_fds::<$adapter>();
            }
            #[test]
            fn silent_subscriber_lags_without_delaying_a_fast_one() {
                super::silent_subscriber_lags_without_delaying_a_fast_one::<$adapter>();
            }
            #[test]
            fn silent_subscriber_is_closed_under_the_close_policy() {
                super::silent_subscriber_is_closed_under_the_close_policy::<$adapter>();
            }
        }
    };
}

overload_tests!(smol, wsrpc_tests::Smol);
overload_tests!(async_std, wsrpc_tests::AsyncStd);
overload_tests!(blocking, wsrpc_tests::Blocking);
