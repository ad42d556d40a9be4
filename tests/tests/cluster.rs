//! Several instances share topics through a real Redis, over real sockets.
//!
//! Each test starts its own `redis-server` on a free port in a temporary directory (never the
//! machine's 6379) and stops it. Instances run in this process on smol, async-std and the
//! blocking adapter, or, where one is killed, as child processes running the `cluster`
//! example's instance (this test binary again, told so by an environment variable). Clients
//! are raw WebSocket JSON-RPC clients that resume with `since` and `epoch` on whichever
//! instance they reach, as an outside checker does.
//!
//! Without `redis-server` the tests say so loudly and pass, unless `CI` is set: then they fail
//! (`.ci/run` installs it with `scripts/install-redis.sh`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::StaticToken;
use wsrpc_core::hub::{TopicPattern, TopicPolicy};
use wsrpc_core::metrics::BrokerState;
use wsrpc_core::rpc::client::{BackoffConfig, ClientOptions, SubscriptionEvent};
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_examples::cluster::{self, Event, RawClient};
use wsrpc_examples::redis_server::{self, RedisServer};
use wsrpc_redis::RedisExt;
use wsrpc_tests::{Adapter, LONG, raw, serial, wait_for};

/// Set in a child process: be an instance for the Redis at this URL.
const INSTANCE_ROLE: &str = "WSRPC_CLUSTER_INSTANCE";
/// With it: messages kept per topic.
const INSTANCE_REPLAY: &str = "WSRPC_CLUSTER_REPLAY";
const CALL: Duration = Duration::from_secs(10);

/// A private Redis, or `None` (after saying so) when `redis-server` is missing.
fn redis() -> Option<RedisServer> {
    // `RUST_LOG=wsrpc=debug` shows the bridge's decisions of a failing test.
    let _ = env_logger::builder().is_test(true).try_init();
    if !redis_server::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed and CI is set: run scripts/install-redis.sh"
        );
        eprintln!(
            "\n********************************************************************\n\
             SKIPPED: redis-server is not installed, the Redis tests did not run.\n\
             Install it with scripts/install-redis.sh (CI=1 makes this a failure).\n\
             ********************************************************************\n"
        );
        return None;
    }
    Some(RedisServer::start().expect("redis-server starts"))
}

/// An instance in this process.
enum Instance {
    Smol(wsrpc_smol::Server),
    AsyncStd(wsrpc_async_std::Server),
    Blocking(wsrpc_blocking::Server),
}

impl Instance {
    fn start(adapter: &str, url: &str, config: ServiceConfig) -> Self {
        let cell = Arc::new(OnceLock::new());
        let router = cluster::router(cell.clone());
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let instance = match adapter {
            "smol" => Self::Smol(
                wsrpc_smol::Server::builder()
                    .config(config)
                    .router(router)
                    .redis(url)
                    .bind(bind)
                    .start()
                    .unwrap(),
            ),
            "async-std" => Self::AsyncStd(
                wsrpc_async_std::Server::builder()
                    .config(config)
                    .router(router)
                    .redis(url)
                    .bind(bind)
                    .start()
                    .unwrap(),
            ),
            _ => Self::Blocking(
                wsrpc_blocking::Server::builder()
                    .config(config)
                    .router(router)
                    .redis(url)
                    .bind(bind)
                    .start()
                    .unwrap(),
            ),
        };
        let _ = cell.set(Arc::downgrade(instance.service()));
        assert!(cluster::wait_until_up(instance.service(), LONG), "{adapter} reaches Redis");
        instance
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Self::Smol(s) => s.local_addr(),
            Self::AsyncStd(s) => s.local_addr(),
            Self::Blocking(s) => s.local_addr(),
        }
    }

    fn service(&self) -> &Arc<Service> {
        match self {
            Self::Smol(s) => s.service(),
            Self::AsyncStd(s) => s.service(),
            Self::Blocking(s) => s.service(),
        }
    }

    /// Publishes through the service and waits for the seq Redis gave it.
    fn publish(&self, topic: &str, value: Value) -> (u64, u64) {
        let at = self.service().publish(topic, &value).unwrap().wait().unwrap();
        (at.seq, at.epoch)
    }

    fn health(&self) -> u16 {
        raw::http_status(self.addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    }
}

fn config() -> ServiceConfig {
    cluster::instance_config()
}

/// `subscribe(topic[, since, epoch])` → `(seq, epoch)` of the answer.
fn subscribe(c: &mut RawClient, topic: &str, since: Option<(u64, u64)>) -> (u64, u64) {
    let params = match since {
        Some((s, e)) => json!({"topic": topic, "since": s, "epoch": e}),
        None => json!([topic]),
    };
    let r = c.call("subscribe", params, CALL).unwrap().expect("subscribed");
    (r["seq"].as_u64().unwrap(), r["epoch"].as_u64().unwrap())
}

/// Reads until `topic` reached `last` (or `LONG` passed); returns every event of it.
fn read_until(c: &mut RawClient, last: u64) -> Vec<Event> {
    let end = Instant::now() + LONG;
    let mut events = Vec::new();
    while Instant::now() < end {
        match c.next(Duration::from_millis(200)).unwrap() {
            Some(e @ Event::Notification { seq, .. }) => {
                events.push(e);
                if seq >= last {
                    break;
                }
            }
            Some(e) => events.push(e),
            None => {}
        }
    }
    events
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Notification { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn a_publish_on_one_instance_reaches_every_instance_with_consecutive_seqs() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let instances: Vec<Instance> = ["smol", "async-std", "blocking"]
        .into_iter()
        .map(|a| Instance::start(a, &redis.url(), config()))
        .collect();
    let mut clients: Vec<RawClient> = instances
        .iter()
        .map(|i| {
            let mut c = RawClient::connect(i.addr()).unwrap();
            assert_eq!(subscribe(&mut c, "prices", None).0, 0);
            c
        })
        .collect();
    // Through each adapter's service in turn, and through the JSON-RPC method.
    let mut epochs = Vec::new();
    for n in 1..=30u64 {
        let (seq, epoch) = instances[(n % 3) as usize].publish("prices", json!({ "n": n }));
        assert_eq!(seq, n);
        epochs.push(epoch);
    }
    let mut publisher = RawClient::connect(instances[2].addr()).unwrap();
    let r = publisher.call("publish", json!(["prices", {"n": 31}]), CALL).unwrap().unwrap();
    assert_eq!(r["seq"], 31);
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "one epoch for the topic");
    for c in &mut clients {
        let events = read_until(c, 31);
        assert_eq!(seqs(&events), (1..=31).collect::<Vec<_>>());
        for (i, e) in events.iter().enumerate() {
            let Event::Notification { value, .. } = e else { panic!("{e:?}") };
            assert_eq!(value["n"], i as u64 + 1);
        }
    }
    for i in &instances {
        assert_eq!(i.health(), 200);
        let stats = i.service().snapshot(Instant::now()).broker.expect("a broker");
        assert_eq!(stats.state, BrokerState::Up);
        assert_eq!(stats.deliveries, 31);
    }
}

#[test]
fn publishers_on_two_instances_interleave_into_one_sequence() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let a = Instance::start("smol", &redis.url(), config());
    let b = Instance::start("blocking", &redis.url(), config());
    let mut sa = RawClient::connect(a.addr()).unwrap();
    let mut sb = RawClient::connect(b.addr()).unwrap();
    subscribe(&mut sa, "feed", None);
    subscribe(&mut sb, "feed", None);
    let publish = |addr: SocketAddr, who: &'static str| {
        std::thread::spawn(move || {
            let mut c = RawClient::connect(addr).unwrap();
            (0..200)
                .map(|i| {
                    let r = c.call("publish", json!(["feed", {"who": who, "i": i}]), CALL);
                    (r.unwrap().unwrap()["seq"].as_u64().unwrap(), i)
                })
                .collect::<Vec<_>>()
        })
    };
    let (pa, pb) = (publish(a.addr(), "a"), publish(b.addr(), "b"));
    let (pa, pb) = (pa.join().unwrap(), pb.join().unwrap());
    // Every publish got its own number, 1..=400 between them, each publisher's in order.
    let mut expected = BTreeMap::new();
    for (who, results) in [("a", &pa), ("b", &pb)] {
        assert!(results.windows(2).all(|w| w[0].0 < w[1].0), "{who}'s publishes in order");
        for &(seq, i) in results.iter() {
            assert!(expected.insert(seq, (who, i)).is_none(), "seq {seq} given twice");
        }
    }
    assert_eq!(expected.keys().copied().collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>());
    for c in [&mut sa, &mut sb] {
        let events = read_until(c, 400);
        assert_eq!(seqs(&events), (1..=400).collect::<Vec<_>>());
        for e in &events {
            let Event::Notification { seq, value, .. } = e else { panic!("{e:?}") };
            let (who, i) = expected[seq];
            assert_eq!((value["who"].as_str().unwrap(), value["i"].as_u64().unwrap()), (who, i));
        }
    }
}

/// The child process: the `cluster` example's instance for the Redis at `url`.
fn be_an_instance(url: &str) -> ! {
    let replay = std::env::var(INSTANCE_REPLAY).ok().and_then(|n| n.parse().ok());
    let _ = cluster::run_instance(url, 0, replay);
    std::process::exit(1);
}

/// An instance in a child process, killed (SIGKILL) when dropped if not before.
struct ChildInstance {
    child: Child,
    addr: SocketAddr,
}

impl ChildInstance {
    fn spawn(test: &str, url: &str, replay: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(INSTANCE_ROLE, url)
            .env(INSTANCE_REPLAY, replay.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the instance process starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness may have printed the test's name first, on the same line.
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the instance is ready");
        Self { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a subscriber saw of a topic, across instances.
#[derive(Debug, Default)]
struct Seen {
    seqs: Vec<u64>,
    gaps: Vec<(u64, u64)>,
    moved: bool,
}

/// A subscriber on `first` that moves to `then` when `first` goes away, resuming with
/// `since` and `epoch`; reads until it has `last` (once `last` is known, non-zero).
fn follow(
    first: SocketAddr,
    then: SocketAddr,
    topic: &'static str,
    last: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        let mut c = RawClient::connect(first).unwrap();
        let (mut at, epoch) = subscribe(&mut c, topic, None);
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let want = last.load(Ordering::Acquire);
            if want != 0 && at >= want {
                break;
            }
            match c.next(Duration::from_millis(100)) {
                Ok(Some(Event::Notification { seq, .. })) => {
                    seen.seqs.push(seq);
                    at = seq;
                }
                Ok(Some(Event::Gap { from, to, .. })) => {
                    seen.gaps.push((from, to));
                    at = to;
                }
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => {}
                Err(_) => {
                    assert!(!seen.moved, "the second instance went away too");
                    seen.moved = true;
                    c = RawClient::connect(then).unwrap();
                    let (_, e) = subscribe(&mut c, topic, Some((at, epoch)));
                    assert_eq!(e, epoch, "the same epoch on the other instance");
                }
            }
        }
        seen
    })
}

/// A subscriber on the wsrpc client of adapter `A`, given both instances' URLs: when the
/// first goes away the client itself moves to the other (`ClientOptions::fallback`) and
/// resumes with `since`.
fn follow_with_client<A: Adapter>(
    first: SocketAddr,
    then: SocketAddr,
    topic: &'static str,
    last: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Seen> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let follower = std::thread::spawn(move || {
        let fast =
            BackoffConfig { initial: Duration::from_millis(50), max: Duration::from_secs(1) };
        let options =
            ClientOptions::default().fallback(format!("ws://{then}/")).reconnect(Some(fast));
        let client = A::connect(&format!("ws://{first}/"), options).expect("connects");
        let mut sub = client.subscribe(topic).expect("subscribes");
        ready_tx.send(()).unwrap();
        let mut seen = Seen::default();
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let want = last.load(Ordering::Acquire);
            if want != 0 && seen.seqs.last().is_some_and(|&s| s >= want) {
                break;
            }
            match sub.next(Duration::from_millis(100)) {
                Some(SubscriptionEvent::Notification { seq, .. }) => seen.seqs.push(seq),
                Some(SubscriptionEvent::Gap { from, to, .. }) => seen.gaps.push((from, to)),
                Some(other) => panic!("unexpected {other:?}"),
                None => {}
            }
        }
        client.close();
        seen
    });
    ready.recv_timeout(LONG).expect("the follower subscribed");
    follower
}

/// Checks that a subscriber saw every number after its first, once, in order, and exactly
/// `gaps` reported as gaps.
fn assert_complete(seen: &Seen, last: u64, gaps: &[(u64, u64)]) {
    assert_eq!(seen.gaps, gaps);
    let first = seen.seqs.first().copied().unwrap_or(1);
    let expected: Vec<u64> = (first..=last)
        .filter(|s| !gaps.iter().any(|&(from, to)| (from..=to).contains(s)))
        .collect();
    if seen.seqs != expected {
        let dup = seen.seqs.windows(2).filter(|w| w[1] <= w[0]).count();
        panic!(
            "{} seen for {} expected ({dup} duplicated or reordered), {} missing",
            seen.seqs.len(),
            expected.len(),
            expected.iter().filter(|s| !seen.seqs.contains(s)).count()
        );
    }
}

#[test]
fn killing_an_instance_mid_stream_its_clients_resume_on_the_other_with_nothing_lost() {
    const TEST: &str =
        "killing_an_instance_mid_stream_its_clients_resume_on_the_other_with_nothing_lost";
    if let Ok(url) = std::env::var(INSTANCE_ROLE) {
        be_an_instance(&url);
    }
    let _serial = serial();
    let Some(redis) = redis() else { return };
    // History for 4 s of this stream: what the clients miss while moving is well within it.
    let mut a = ChildInstance::spawn(TEST, &redis.url(), 4096);
    let b = ChildInstance::spawn(TEST, &redis.url(), 4096);
    let last = Arc::new(AtomicU64::new(0));
    let followers: Vec<_> = (0..6)
        .map(|i| {
            let (first, then) = if i < 4 { (a.addr, b.addr) } else { (b.addr, a.addr) };
            follow(first, then, "ticks", last.clone())
        })
        .collect();
    // The wsrpc client itself, with the other instance as its fallback URL.
    let clients = [
        follow_with_client::<wsrpc_tests::Smol>(a.addr, b.addr, "ticks", last.clone()),
        follow_with_client::<wsrpc_tests::Blocking>(a.addr, b.addr, "ticks", last.clone()),
    ];
    // 1,000 publishes a second, half through each instance, paced.
    let confirmed = Arc::new(AtomicU64::new(0));
    let stop_a = Arc::new(AtomicBool::new(false));
    let publisher = |addr: SocketAddr, count: u64, stop: Arc<AtomicBool>| {
        let confirmed = confirmed.clone();
        std::thread::spawn(move || {
            let mut c = RawClient::connect(addr).unwrap();
            let start = Instant::now();
            let mut top = 0;
            for n in 0..count {
                let due = start + Duration::from_millis(2 * n);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match c.call("publish", json!(["ticks", {"n": n}]), CALL) {
                    Ok(Ok(r)) => {
                        top = r["seq"].as_u64().unwrap();
                        confirmed.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(Err(e)) => panic!("publish refused: {e}"),
                    Err(_) => break, // the instance went away; the outcome of this one is unknown
                }
            }
            top
        })
    };
    let pa = publisher(a.addr, u64::MAX, stop_a.clone());
    let pb = publisher(b.addr, 2_000, Arc::new(AtomicBool::new(false)));
    wait_for("1,000 publishes", || confirmed.load(Ordering::Acquire) >= 1_000);
    a.kill();
    stop_a.store(true, Ordering::Release);
    let top_a = pa.join().unwrap();
    let top_b = pb.join().unwrap();
    // B published after A died: its last is the topic's last.
    assert!(top_b > top_a && top_b >= 2_000, "{top_a} {top_b}");
    last.store(top_b, Ordering::Release);
    let mut moved = 0;
    for f in followers {
        let seen = f.join().unwrap();
        moved += usize::from(seen.moved);
        assert_complete(&seen, top_b, &[]);
    }
    assert_eq!(moved, 4, "every client of A moved to B");
    for c in clients {
        assert_complete(&c.join().unwrap(), top_b, &[]);
    }
    drop(b);
}

#[test]
fn a_client_away_longer_than_the_history_gets_an_exact_gap() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let mut small = config();
    small.hub.replay_capacity = 16;
    let a = Instance::start("smol", &redis.url(), small.clone());
    let b = Instance::start("blocking", &redis.url(), small);
    let mut c = RawClient::connect(a.addr()).unwrap();
    let (_, epoch) = subscribe(&mut c, "t", None);
    for n in 1..=5 {
        a.publish("t", json!(n));
    }
    assert_eq!(seqs(&read_until(&mut c, 5)), [1, 2, 3, 4, 5]);
    drop(c);
    for n in 6..=105 {
        a.publish("t", json!(n));
    }
    // On B, which has never seen the topic (Redis's history), and on A (its replay).
    for addr in [b.addr(), a.addr()] {
        let mut c = RawClient::connect(addr).unwrap();
        assert_eq!(subscribe(&mut c, "t", Some((5, epoch))), (105, epoch));
        let events = read_until(&mut c, 105);
        assert_eq!(events[0], Event::Gap { topic: "t".into(), from: 6, to: 89 });
        assert_eq!(seqs(&events[1..]), (90..=105).collect::<Vec<_>>());
    }
}

#[test]
fn history_lost_in_redis_gives_a_new_epoch_and_a_reset() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let a = Instance::start("smol", &redis.url(), config());
    let b = Instance::start("async-std", &redis.url(), config());
    let mut sa = RawClient::connect(a.addr()).unwrap();
    let mut sb = RawClient::connect(b.addr()).unwrap();
    let (_, e1) = subscribe(&mut sa, "t", None);
    subscribe(&mut sb, "t", None);
    for n in 1..=3 {
        assert_eq!(a.publish("t", json!(n)), (n, e1));
    }
    assert_eq!(redis.command(&["FLUSHALL"]).unwrap(), "+OK");
    let (seq, e2) = b.publish("t", json!("after"));
    assert_eq!(seq, 1);
    assert_ne!(e2, e1, "a new epoch once the history is gone");
    for c in [&mut sa, &mut sb] {
        assert_eq!(seqs(&read_until(c, 3)), [1, 2, 3]);
        let events = read_until(c, 1);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], Event::Reset { topic: "t".into(), epoch: e2 });
        assert!(
            matches!(&events[1], Event::Notification { seq: 1, value, .. } if value == "after")
        );
    }
    // A client that knew the old epoch resumes: told, and given the new one's messages.
    let mut late = RawClient::connect(b.addr()).unwrap();
    assert_eq!(subscribe(&mut late, "t", Some((3, e1))), (1, e2));
    let events = read_until(&mut late, 1);
    assert_eq!(events[0], Event::Reset { topic: "t".into(), epoch: e2 });
    assert_eq!(seqs(&events), [1]);
}

#[test]
fn redis_frozen_for_5_s_fails_publishes_fast_and_subscribers_recover_after() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let a = Instance::start("smol", &redis.url(), config());
    let b = Instance::start("blocking", &redis.url(), config());
    let mut sa = RawClient::connect(a.addr()).unwrap();
    let mut sb = RawClient::connect(b.addr()).unwrap();
    subscribe(&mut sa, "t", None);
    subscribe(&mut sb, "t", None);
    let mut publisher = RawClient::connect(a.addr()).unwrap();
    for n in 1..=10 {
        publisher.call("publish", json!(["t", n]), CALL).unwrap().unwrap();
    }
    redis.pause();
    let paused = Instant::now();
    // Errors come back while Redis is still frozen: the first once its command times out,
    // the next ones at once.
    let mut errors = 0;
    while errors < 3 {
        match publisher.call("publish", json!(["t", "during"]), CALL).unwrap() {
            Err(e) => {
                assert_eq!(e["code"], -32002, "{e}");
                errors += 1;
            }
            Ok(r) => panic!("published while Redis is frozen: {r}"),
        }
    }
    wait_for("/health 503", || a.health() == 503 && b.health() == 503);
    // All of that while Redis is still frozen; it stays so for 5 s at least.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed()));
    redis.resume();
    wait_for("/health 200", || a.health() == 200 && b.health() == 200);
    let mut last = 0;
    for n in 11..=20 {
        last = publisher.call("publish", json!(["t", n]), CALL).unwrap().unwrap()["seq"]
            .as_u64()
            .unwrap();
    }
    for c in [&mut sa, &mut sb] {
        let events = read_until(c, last);
        // Told it stalled after 10; then everything, including a publish that timed out
        // but ran once Redis woke up, in order, once.
        let stalled =
            events.iter().position(|e| matches!(e, Event::Lagged { from: 11, to: None, .. }));
        let stalled = stalled.expect("a stalled notice");
        assert_eq!(seqs(&events[..stalled]), (1..=10).collect::<Vec<_>>());
        let after = seqs(&events[stalled..]);
        assert_eq!(after, (11..=last).collect::<Vec<_>>(), "{events:?}");
        assert!(!events.iter().any(|e| matches!(e, Event::Gap { .. })));
    }
    for i in [&a, &b] {
        let stats = i.service().snapshot(Instant::now()).broker.unwrap();
        assert!(stats.reconnects >= 1, "{stats:?}");
    }
    let failures = a.service().snapshot(Instant::now()).broker.unwrap().publish_failures;
    assert!(failures >= 3, "{failures}");
}

#[test]
fn redis_restarted_empty_gives_a_new_epoch_and_subscribers_a_reset() {
    let _serial = serial();
    let Some(mut redis) = redis() else { return };
    let a = Instance::start("async-std", &redis.url(), config());
    let mut s = RawClient::connect(a.addr()).unwrap();
    let (_, e1) = subscribe(&mut s, "t", None);
    for n in 1..=5 {
        a.publish("t", json!(n));
    }
    // Delivered before Redis goes: a publish it answered may still sit in its pub/sub
    // buffers when it is killed, and a restart without data cannot bring it back.
    let events = read_until(&mut s, 5);
    assert_eq!(seqs(&events), [1, 2, 3, 4, 5]);
    redis.kill();
    let e = a.service().publish("t", &0).map(|p| p.wait());
    assert!(matches!(e, Err(_) | Ok(Err(_))), "no publish without Redis");
    std::thread::sleep(Duration::from_secs(1));
    redis.restart().unwrap();
    assert!(cluster::wait_until_up(a.service(), LONG));
    let (seq, e2) = a.publish("t", json!("new"));
    assert_eq!(seq, 1);
    assert_ne!(e2, e1);
    let events = read_until(&mut s, 1);
    assert!(matches!(events[0], Event::Lagged { from: 6, to: None, .. }), "{events:?}");
    assert_eq!(events[1], Event::Reset { topic: "t".into(), epoch: e2 });
    assert_eq!(seqs(&events), [1]);
}

#[test]
fn topic_policies_and_subscription_limits_hold_on_every_instance() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let mut c = config();
    c.hub.policies = vec![(TopicPattern::new("user:*"), TopicPolicy::OwnerOnly)];
    c.hub.max_subscriptions = 3;
    c.hub.kind_limits = vec![("intent".into(), 2)];
    c.auth.authenticator = Some(Arc::new(StaticToken::new("0xabc", "alice-token")));
    let a = Instance::start("smol", &redis.url(), c.clone());
    let b = Instance::start("blocking", &redis.url(), c);
    let mut alice = RawClient::connect_to(b.addr(), "/?token=alice-token").unwrap();
    subscribe(&mut alice, "user:0xabc", None);
    let mut anonymous = RawClient::connect(b.addr()).unwrap();
    let e = anonymous.call("subscribe", json!(["user:0xabc"]), CALL).unwrap().unwrap_err();
    assert_eq!(e["code"], -32003);
    // Published through A, it reaches her on B, and nobody else.
    a.publish("user:0xabc", json!({"balance": 7}));
    let events = read_until(&mut alice, 1);
    assert!(
        matches!(&events[..], [Event::Notification { seq: 1, value, .. }] if value["balance"] == 7)
    );
    assert_eq!(anonymous.next(Duration::from_millis(300)).unwrap(), None);
    // Limits count bridged subscriptions like local ones, on each instance.
    for inst in [&a, &b] {
        let mut c = RawClient::connect(inst.addr()).unwrap();
        subscribe(&mut c, "intent:1", None);
        subscribe(&mut c, "intent:2", None);
        let e = c.call("subscribe", json!(["intent:3"]), CALL).unwrap().unwrap_err();
        assert_eq!(
            (e["code"].as_i64(), e["data"]["limit"].as_str()),
            (Some(-32005), Some("intent"))
        );
        subscribe(&mut c, "prices", None);
        let e = c.call("subscribe", json!(["other"]), CALL).unwrap().unwrap_err();
        assert_eq!(e["data"]["limit"], "subscriptions");
    }
}

#[test]
fn a_thousand_topics_on_two_instances() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let a = Instance::start("smol", &redis.url(), config());
    let b = Instance::start("blocking", &redis.url(), config());
    // 20 connections per instance, 50 topics each: every topic on both.
    let mut clients = Vec::new();
    for inst in [&a, &b] {
        for k in 0..20 {
            let mut c = RawClient::connect(inst.addr()).unwrap();
            let ids: Vec<u64> = (0..50)
                .map(|j| c.send("subscribe", json!([format!("topic:{}", k * 50 + j)])).unwrap())
                .collect();
            for id in ids {
                match c.next(LONG).unwrap() {
                    Some(Event::Response { id: got, result: Ok(_) }) => assert_eq!(got, id),
                    other => panic!("{other:?}"),
                }
            }
            clients.push((k, c));
        }
    }
    let tickets: Vec<_> = (0..1000)
        .map(|t| a.service().publish(&format!("topic:{t}"), &json!({ "t": t })).unwrap())
        .collect();
    for t in tickets {
        assert_eq!(t.wait().unwrap().seq, 1);
    }
    for (k, c) in &mut clients {
        let mut got = Vec::new();
        while got.len() < 50 {
            match c.next(LONG).unwrap() {
                Some(Event::Notification { topic, seq: 1, value }) => {
                    assert_eq!(format!("topic:{}", value["t"]), topic);
                    got.push(value["t"].as_u64().unwrap());
                }
                other => panic!("{other:?}"),
            }
        }
        got.sort_unstable();
        assert_eq!(got, (*k * 50..*k * 50 + 50).collect::<Vec<_>>());
    }
    assert_eq!(a.service().hub().stats().topics, 1000);
    // Each instance subscribed once per topic, however many subscribers it has.
    let numsub = "return redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]";
    assert_eq!(redis.command(&["EVAL", numsub, "0", "wsrpc:{topic:999}"]).unwrap(), ":2");
}

#[test]
fn topics_created_and_abandoned_by_the_100_000_leave_no_memory_behind() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let a = Instance::start("smol", &redis.url(), config());
    let mut c = RawClient::connect(a.addr()).unwrap();
    let mut rss_after_10k = 0;
    for round in 0..2_000u64 {
        let ids: Vec<u64> = (0..50)
            .map(|j| c.send("subscribe", json!([format!("gone:{}", round * 50 + j)])).unwrap())
            .collect();
        let mut subs = Vec::new();
        for id in ids {
            match c.next(LONG).unwrap() {
                Some(Event::Response { id: got, result: Ok(r) }) if got == id => {
                    subs.push(r["subscription"].as_str().unwrap().to_owned());
                }
                other => panic!("{other:?}"),
            }
        }
        let ids: Vec<u64> =
            subs.iter().map(|s| c.send("unsubscribe", json!([s])).unwrap()).collect();
        for id in ids {
            assert_eq!(
                c.next(LONG).unwrap(),
                Some(Event::Response { id, result: Ok(json!(true)) })
            );
        }
        if round == 199 {
            rss_after_10k = raw::rss_kib(None);
        }
    }
    let stats = a.service().hub().stats();
    assert_eq!((stats.topics, stats.subscriptions_active), (0, 0));
    // Redis holds no subscription for them either: only the instance's probe channel is left.
    let channels = "return #redis.call('PUBSUB', 'CHANNELS', 'wsrpc:{*')";
    wait_for("the channels are left", || redis.command(&["EVAL", channels, "0"]).unwrap() == ":0");
    let grown = raw::rss_kib(None).saturating_sub(rss_after_10k);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB over 90,000 abandoned topics");
}

/// An idle instance costs Redis about one probe a second.
#[test]
fn an_idle_instance_only_probes() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let a = Instance::start("blocking", &redis.url(), config());
    let before: u64 = redis.info_field("total_commands_processed").unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    let after: u64 = redis.info_field("total_commands_processed").unwrap().parse().unwrap();
    // About one probe a second (and the INFO itself), nothing else.
    assert!(after - before <= 6, "{} commands while idle", after - before);
    assert_eq!(a.health(), 200);
    let stats = a.service().snapshot(Instant::now()).broker.unwrap();
    assert_eq!((stats.publishes, stats.messages), (0, 0));
}

/// A TCP relay to Redis that can freeze what Redis sends on one of its connections, the
/// failure of a pub/sub connection that stays open while nothing arrives on it.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Relay {
    fn start(redis: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(redis) else { continue };
                let up = client.try_clone().unwrap();
                let to_redis = server.try_clone().unwrap();
                std::thread::spawn(move || relay_copy(up, to_redis, None));
                let f = f.clone();
                std::thread::spawn(move || relay_copy(server, client, Some((f, n))));
            }
        });
        Self { addr, frozen }
    }

    /// Holds back what Redis sends on the relay's `connection`-th connection (from 0).
    fn freeze(&self, connection: usize) {
        self.frozen.lock().unwrap().push(connection);
    }
}

/// Copies `from` to `to` until either ends, holding the bytes back while connection `n` of
/// `frozen` is listed there.
fn relay_copy(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    frozen: Option<(Arc<std::sync::Mutex<Vec<usize>>>, usize)>,
) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    while let Ok(k) = from.read(&mut buf) {
        if k == 0 {
            break;
        }
        while frozen.as_ref().is_some_and(|(f, n)| f.lock().unwrap().contains(n)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if to.write_all(&buf[..k]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn a_silent_pubsub_connection_is_caught_by_the_probe_and_nothing_is_lost() {
    let _serial = serial();
    let Some(redis) = redis() else { return };
    let relay = Relay::start(redis.addr());
    let mut options = wsrpc_redis::RedisOptions::new(format!("redis://{}", relay.addr));
    options.probe_interval = Duration::from_millis(200);
    options.probe_timeout = Duration::from_secs(1);
    let cell = Arc::new(OnceLock::new());
    let a = wsrpc_smol::Server::builder()
        .config(config())
        .router(cluster::router(cell.clone()))
        .redis_with(options)
        .bind("127.0.0.1:0".parse().unwrap())
        .start()
        .unwrap();
    let _ = cell.set(Arc::downgrade(a.service()));
    assert!(cluster::wait_until_up(a.service(), LONG));
    let mut s = RawClient::connect(a.local_addr()).unwrap();
    subscribe(&mut s, "t", None);
    let publish = |n: u64| a.service().publish("t", &n).unwrap().wait().unwrap().seq;
    for n in 1..=5 {
        publish(n);
    }
    assert_eq!(seqs(&read_until(&mut s, 5)), [1, 2, 3, 4, 5]);
    // The relay's second connection is the pub/sub one (the command connection comes first).
    relay.freeze(1);
    // Publishes still succeed: Redis counts the frozen connection as a subscriber.
    let mut last = 0;
    for n in 6..=15 {
        last = publish(n);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(last, 15);
    wait_for("a reconnection", || {
        a.service().snapshot(Instant::now()).broker.is_some_and(|b| b.reconnects >= 1)
    });
    for n in 16..=20 {
        last = a.service().publish("t", &n).unwrap().wait().unwrap().seq;
    }
    let events = read_until(&mut s, last);
    assert!(
        events.iter().any(|e| matches!(e, Event::Lagged { from: 6, to: None, .. })),
        "{events:?}"
    );
    assert_eq!(seqs(&events), (6..=20).collect::<Vec<_>>(), "nothing lost, nothing twice");
    assert!(!events.iter().any(|e| matches!(e, Event::Gap { .. })));
}
