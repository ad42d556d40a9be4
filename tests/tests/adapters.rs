//! Integration tests over real loopback sockets, run for every adapter (smol, async-std,
//! blocking): calls, batches, notifications, async handlers, pub/sub, slow consumers, rate
//! limits, origin and token checks, heartbeats, handshake timeouts, connection limits, port
//! fallback, graceful shutdown and reconnect with resubscription.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::StaticToken;
use wsrpc_core::hub::Payload;
use wsrpc_core::hub::{OutboxLimits, SlowConsumer};
use wsrpc_core::rpc::client::{BackoffConfig, ClientError, ClientOptions, SubscriptionEvent};
use wsrpc_core::rpc::{Router, RpcError, SubscriptionTarget};
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_tests::LONG;
use wsrpc_tests::raw;
use wsrpc_tests::{Adapter, TestServer};
use wsrpc_tests::{unlimited_config as config, wait_for};

fn any_port() -> Bind {
    Bind::Addr("127.0.0.1:0".parse().unwrap())
}

struct Counters {
    notified: AtomicUsize,
}

fn router(counters: Arc<Counters>) -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b))
        .method("echo", |v: Value, _| Ok(v))
        .method("fail", |(): (), _| Err::<(), _>(RpcError::server(-32042, "asked to fail")))
        .method("note", move |(): (), _| {
            counters.notified.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .method("whoami", |(): (), ctx| Ok(ctx.principal.id.clone()))
        .async_method("sleep", |(ms,): (u64,), _| async move {
            async_io::Timer::after(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        // "sizes" with an optional floor, applied by the hub at each publish.
        .subscription("sizes", |call| {
            let min: Option<u64> = call.filter()?;
            let target = SubscriptionTarget::topic("sizes");
            Ok(match min {
                Some(min) => target.with_filter(move |p: &Payload<'_>| {
                    p.value()["size"].as_u64().is_some_and(|s| s >= min)
                }),
                None => target,
            })
        });
    r
}

fn start<A: Adapter>(config: ServiceConfig) -> (Box<dyn TestServer>, Arc<Counters>) {
    let counters = Arc::new(Counters { notified: AtomicUsize::new(0) });
    let server = A::start(config, router(counters.clone()), any_port()).expect("server starts");
    (server, counters)
}

fn rpc_code(e: &ClientError) -> Option<i64> {
    match e {
        ClientError::Rpc(r) => Some(r.code),
        _ => None,
    }
}

pub fn calls_batches_notifications_and_async<A: Adapter>() {
    let (server, counters) = start::<A>(config());
    let client = A::connect(&server.url(), ClientOptions::default()).unwrap();
    assert_eq!(client.call("add", json!([2, 3])).unwrap(), json!(5));
    assert_eq!(client.call("echo", json!({"a": [1, "x"]})).unwrap(), json!({"a": [1, "x"]}));
    let e = client.call("fail", json!([])).unwrap_err();
    assert_eq!(rpc_code(&e), Some(-32042));
    assert_eq!(rpc_code(&client.call("nope", json!([])).unwrap_err()), Some(-32601));
    assert_eq!(client.call("sleep", json!([30])).unwrap(), json!(30));
    let batch = client
        .batch(vec![("add", json!([1, 1])), ("sleep", json!([10])), ("nope", json!([]))])
        .unwrap();
    assert_eq!(batch[0].as_ref().unwrap(), &json!(2));
    assert_eq!(batch[1].as_ref().unwrap(), &json!(10));
    assert_eq!(rpc_code(batch[2].as_ref().unwrap_err()), Some(-32601));
    client.notify("note", json!([])).unwrap();
    wait_for("the notification to run", || counters.notified.load(Ordering::SeqCst) == 1);
    // Many concurrent async calls finish out of order and each gets its own answer.
    let client: Arc<dyn wsrpc_tests::TestClient> = Arc::from(client);
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let c = client.clone();
            std::thread::spawn(move || c.call("sleep", json!([80 - i * 10])).unwrap())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), json!(80 - i as u64 * 10));
    }
    assert_eq!(server.metrics().methods["add"].count, 2);
}

pub fn pubsub_in_order_with_sequence_numbers<A: Adapter>() {
    let (server, _) = start::<A>(config());
    let client = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let mut a = client.subscribe("prices:btc").unwrap();
    let mut b = client.subscribe("prices:eth").unwrap();
    for i in 1..=50u64 {
        assert_eq!(server.publish("prices:btc", &json!({"i": i})), i);
        if i % 10 == 0 {
            server.publish("prices:eth", &json!(i));
        }
    }
    for i in 1..=50u64 {
        match a.next(LONG) {
            Some(SubscriptionEvent::Notification { seq, value }) => {
                assert_eq!(seq, i);
                assert_eq!(serde_json::from_str::<Value>(value.get()).unwrap(), json!({"i": i}));
            }
            other => panic!("expected notification {i}, got {other:?}"),
        }
    }
    let seqs: Vec<u64> = (0..5)
        .map(|_| match b.next(LONG) {
            Some(SubscriptionEvent::Notification { seq, .. }) => seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(server.metrics().subscriptions.active, 2);
}

pub fn a_client_subscription_with_a_filter_gets_only_what_matches<A: Adapter>() {
    let (server, _) = start::<A>(config());
    let client = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let mut large = client.subscribe_filtered("sizes", json!(10)).unwrap();
    let mut all = client.subscribe("sizes").unwrap();
    // A filter the handler cannot read is refused with -32602, naming it.
    let e = client.subscribe_filtered("sizes", json!("ten")).map(|_| ()).unwrap_err();
    assert_eq!(rpc_code(&e), Some(-32602), "{e:?}");
    for size in [3u64, 12, 9, 40] {
        server.publish("sizes", &json!({"size": size}));
    }
    let take = |sub: &mut Box<dyn wsrpc_tests::TestSubscription>, n: usize| -> Vec<(u64, u64)> {
        (0..n)
            .map(|_| match sub.next(LONG) {
                Some(SubscriptionEvent::Notification { seq, value }) => {
                    let v: Value = serde_json::from_str(value.get()).unwrap();
                    (seq, v["size"].as_u64().unwrap())
                }
                other => panic!("{other:?}"),
            })
            .collect()
    };
    // Topic sequence numbers, with holes where values did not match.
    assert_eq!(take(&mut large, 2), [(2, 12), (4, 40)]);
    assert_eq!(take(&mut all, 4), [(1, 3), (2, 12), (3, 9), (4, 40)]);
    assert!(large.next(Duration::from_millis(100)).is_none(), "nothing else matched");
}

pub fn slow_consumer_lags_without_hurting_a_fast_one<A: Adapter>() {
    let mut config = config();
    config.hub.outbox = OutboxLimits {
        max_messages: 32,
        max_bytes: 1 << 20,
        slow_consumer: SlowConsumer::DropOldest,
    };
    let (server, _) = start::<A>(config);
    // The slow one: subscribes by hand and never reads again.
    let mut slow = raw::connect(server.addr());
    slow.write_all(raw::upgrade_request("/", "").as_bytes()).unwrap();
    let head = raw::read_until(&mut slow, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    assert_eq!(raw::status_of(&head), 101);
    slow.write_all(&raw::client_frame(
        1,
        br#"{"jsonrpc":"2.0","method":"subscribe","params":["ticks"],"id":1}"#,
    ))
    .unwrap();
    let fast = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let mut sub = fast.subscribe("ticks").unwrap();
    wait_for("both subscriptions", || server.metrics().subscriptions.active == 2);
    let payload = "x".repeat(16 * 1024);
    let n = 1500u64;
    let started = Instant::now();
    for i in 1..=n {
        server.publish("ticks", &json!({"i": i, "pad": payload}));
        // The fast consumer keeps up as it goes.
        match sub.next(LONG) {
            Some(SubscriptionEvent::Notification { seq, .. }) => assert_eq!(seq, i),
            other => panic!("fast consumer missed {i}: {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60), "the slow consumer held everyone up");
    wait_for("the slow consumer to lag", || server.metrics().lagged_drops > 0);
    drop(slow);
}

pub fn rate_limited_calls_get_32005<A: Adapter>() {
    let mut config = ServiceConfig::default();
    config.limits.message_rate = Some(wsrpc_core::limit::Rate::per_second(5));
    config.limits.abuse_threshold = None;
    let (server, _) = start::<A>(config);
    let client = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let mut limited = 0;
    for _ in 0..20 {
        if let Err(e) = client.call("add", json!([1, 1])) {
            assert_eq!(rpc_code(&e), Some(-32005), "{e}");
            let ClientError::Rpc(r) = e else { unreachable!() };
            assert!(r.data.unwrap().get().contains("retry_after_ms"));
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited} limited");
    assert!(server.metrics().rate_limited >= 10);
}

pub fn foreign_origin_gets_403_and_bad_token_401<A: Adapter>() {
    let mut config = config();
    config.auth.authenticator = Some(Arc::new(StaticToken::new("alice", "s3cret")));
    config.auth.require_auth = true;
    let (server, _) = start::<A>(config);
    let status = raw::http_status(
        server.addr(),
        &raw::upgrade_request("/?token=s3cret", "Origin: https://evil.example\r\n"),
    );
    assert_eq!(status, 403);
    let status = raw::http_status(
        server.addr(),
        &raw::upgrade_request("/", "Origin: http://localhost:3000\r\n"),
    );
    assert_eq!(status, 401);
    let bad = ClientOptions::default().token("wrong");
    assert!(matches!(A::connect(&server.url(), bad), Err(ClientError::Rejected { status: 401 })));
    let good = ClientOptions::default().token("s3cret");
    let client = A::connect(&server.url(), good).unwrap();
    assert_eq!(client.call("whoami", json!([])).unwrap(), json!("alice"));
    let query =
        A::connect(&format!("{}/?token=s3cret", server.url()), ClientOptions::default()).unwrap();
    assert_eq!(query.call("whoami", json!([])).unwrap(), json!("alice"));
}

pub fn heartbeat_closes_a_silent_peer<A: Adapter>() {
    let mut config = config();
    config.ws.ping_interval = Some(Duration::from_millis(200));
    config.ws.pong_timeout = Duration::from_millis(300);
    let (server, _) = start::<A>(config);
    let mut s = raw::connect(server.addr());
    s.write_all(raw::upgrade_request("/", "").as_bytes()).unwrap();
    let head = raw::read_until(&mut s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    assert_eq!(raw::status_of(&head), 101);
    // We read (so the ping arrives) but never answer it.
    assert!(raw::closed_within(&mut s, LONG), "a silent peer is dropped");
    wait_for("the connection to be released", || server.connections() == 0);
    // A live client answers pings automatically and stays.
    let client = A::connect(&server.url(), ClientOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(client.call("add", json!([1, 2])).unwrap(), json!(3));
}

pub fn handshake_timeout_answers_408<A: Adapter>() {
    let mut config = config();
    config.ws.handshake_timeout = Some(Duration::from_millis(300));
    let (server, _) = start::<A>(config);
    let mut s = raw::connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow").unwrap();
    let resp = raw::read_until(&mut s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    assert_eq!(raw::status_of(&resp), 408);
    assert!(raw::closed_within(&mut s, LONG));
}

pub fn connection_limit_answers_503<A: Adapter>() {
    let mut config = config();
    config.max_connections = 2;
    let (server, _) = start::<A>(config);
    let a = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let b = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let status = raw::http_status(server.addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 503);
    drop((a, b));
    wait_for("slots to free up", || {
        raw::http_status(server.addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == 200
    });
}

pub fn port_range_falls_back_to_the_next_port<A: Adapter>() {
    // Find two consecutive free ports, occupy the first.
    let (taken, base) = loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 60000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            break (l, port);
        }
    };
    let bind = Bind::Range { ip: "127.0.0.1".parse().unwrap(), ports: base..=base + 5 };
    let server = A::start(ServiceConfig::default(), Router::new(), bind).unwrap();
    assert_eq!(server.addr().port(), base + 1);
    assert_eq!(server.metrics().port, Some(base + 1));
    drop(taken);
}

pub fn graceful_shutdown_answers_in_flight_calls<A: Adapter>() {
    let (server, _) = start::<A>(config());
    let client: Arc<dyn wsrpc_tests::TestClient> = Arc::from(
        A::connect(&server.url(), ClientOptions::default().config(no_reconnect())).unwrap(),
    );
    let calls: Vec<_> = (0..20u64)
        .map(|i| {
            let c = client.clone();
            std::thread::spawn(move || c.call("sleep", json!([200 + i])))
        })
        .collect();
    wait_for("the calls to be in flight", || server.metrics().messages.received >= 20);
    server.shutdown(LONG);
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(
            c.join().unwrap().unwrap(),
            json!(200 + i as u64),
            "in-flight call {i} answered"
        );
    }
    let after = client.call("add", json!([1, 1])).unwrap_err();
    assert!(
        matches!(after, ClientError::Disconnected | ClientError::Closed | ClientError::Timeout),
        "{after:?}"
    );
}

fn no_reconnect() -> wsrpc_core::rpc::client::ClientConfig {
    let mut c = wsrpc_core::rpc::client::ClientConfig::default();
    c.reconnect = None;
    c.call_timeout = Duration::from_secs(5);
    c
}

pub fn reconnect_resubscribes_without_losing_messages<A: Adapter>() {
    let first = A::start(config(), Router::new(), any_port()).unwrap();
    let addr: SocketAddr = first.addr();
    let mut client_config = wsrpc_core::rpc::client::ClientConfig::default();
    client_config.reconnect = Some(BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(400),
    });
    let client = A::connect(&first.url(), ClientOptions::default().config(client_config)).unwrap();
    let mut sub = client.subscribe("feed").unwrap();
    let mut got = Vec::new();
    for i in 0..3 {
        first.publish("feed", &json!(i));
    }
    while got.len() < 3 {
        match sub.next(LONG) {
            Some(SubscriptionEvent::Notification { value, .. }) => {
                got.push(serde_json::from_str::<i64>(value.get()).unwrap())
            }
            other => panic!("{other:?}"),
        }
    }
    first.shutdown(LONG);
    // The server comes back on the same port and publishes before the client is back: those
    // messages sit in the replay window and must arrive, once each, in order.
    let second = A::start(config(), Router::new(), Bind::Addr(addr)).unwrap();
    for i in 3..6 {
        second.publish("feed", &json!(i));
    }
    wait_for("the client to resubscribe", || second.metrics().subscriptions.active == 1);
    for i in 6..9 {
        second.publish("feed", &json!(i));
    }
    while got.len() < 9 {
        match sub.next(LONG) {
            Some(SubscriptionEvent::Notification { value, .. }) => {
                got.push(serde_json::from_str::<i64>(value.get()).unwrap())
            }
            Some(SubscriptionEvent::Gap { .. }) => {}
            other => panic!("after {got:?}: {other:?}"),
        }
    }
    assert_eq!(got, (0..9).collect::<Vec<_>>());
    assert!(sub.next(Duration::from_millis(200)).is_none(), "no duplicates");
}

pub fn pending_calls_fail_when_the_server_goes_away<A: Adapter>() {
    let (server, _) = start::<A>(config());
    let client: Arc<dyn wsrpc_tests::TestClient> = Arc::from(
        A::connect(&server.url(), ClientOptions::default().config(no_reconnect())).unwrap(),
    );
    let c = client.clone();
    let call = std::thread::spawn(move || c.call("sleep", json!([5000])));
    wait_for("the call to be in flight", || server.metrics().messages.received >= 1);
    server.shutdown(Duration::from_millis(100));
    let err = call.join().unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Disconnected | ClientError::Closed), "{err:?}");
}

/// A method registered as blocking runs on a worker thread: while one holds its thread
/// (here until the test lets it go), other connections and other calls on the same one are
/// answered. Were it run on an I/O thread, those calls would wait for it and time out.
pub fn a_blocking_method_does_not_stall_other_connections<A: Adapter>() {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b)).blocking_method(
        "block",
        move |(): (), _| {
            let _ = started_tx.lock().unwrap().send(());
            held.lock().unwrap().recv_timeout(LONG).map_err(|_| RpcError::internal("not released"))
        },
    );
    let server = A::start(config(), r, any_port()).expect("server starts");
    let slow = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let fast = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let slow: Arc<dyn wsrpc_tests::TestClient> = Arc::from(slow);
    let blocked = {
        let slow = slow.clone();
        std::thread::spawn(move || slow.call("block", json!([])))
    };
    started.recv_timeout(LONG).expect("the blocking handler started");
    for i in 0..20 {
        let answer = fast.call_with_timeout("add", json!([i, 1]), LONG / 2).unwrap();
        assert_eq!(answer, json!(i + 1));
    }
    assert_eq!(slow.call_with_timeout("add", json!([2, 2]), LONG / 2).unwrap(), json!(4));
    release.send(()).unwrap();
    assert_eq!(blocked.join().unwrap().unwrap(), json!(null));
}

macro_rules! adapter_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn a_blocking_method_does_not_stall_other_connections() {
                super::a_blocking_method_does_not_stall_other_connections::<$adapter>();
            }
            #[test]
            fn calls_batches_notifications_and_async() {
                super::calls_batches_notifications_and_async::<$adapter>();
            }
            #[test]
            fn pubsub_in_order_with_sequence_numbers() {
                super::pubsub_in_order_with_sequence_numbers::<$adapter>();
            }
            #[test]
            fn a_client_subscription_with_a_filter_gets_only_what_matches() {
                super::a_client_subscription_with_a_filter_gets_only_what_matches::<$adapter>();
            }
            #[test]
            fn slow_consumer_lags_without_hurting_a_fast_one() {
                super::slow_consumer_lags_without_hurting_a_fast_one::<$adapter>();
            }
            #[test]
            fn rate_limited_calls_get_32005() {
                super::rate_limited_calls_get_32005::<$adapter>();
            }
            #[test]
            fn foreign_origin_gets_403_and_bad_token_401() {
                super::foreign_origin_gets_403_and_bad_token_401::<$adapter>();
            }
            #[test]
            fn heartbeat_closes_a_silent_peer() {
                super::heartbeat_closes_a_silent_peer::<$adapter>();
            }
            #[test]
            fn handshake_timeout_answers_408() {
                super::handshake_timeout_answers_408::<$adapter>();
            }
            #[test]
            fn connection_limit_answers_503() {
                super::connection_limit_answers_503::<$adapter>();
            }
            #[test]
            fn port_range_falls_back_to_the_next_port() {
                super::port_range_falls_back_to_the_next_port::<$adapter>();
            }
            #[test]
            fn graceful_shutdown_answers_in_flight_calls() {
                super::graceful_shutdown_answers_in_flight_calls::<$adapter>();
            }
            #[test]
            fn reconnect_resubscribes_without_losing_messages() {
                super::reconnect_resubscribes_without_losing_messages::<$adapter>();
            }
            #[test]
            fn pending_calls_fail_when_the_server_goes_away() {
                super::pending_calls_fail_when_the_server_goes_away::<$adapter>();
            }
        }
    };
}

adapter_tests!(smol, wsrpc_tests::Smol);
adapter_tests!(async_std, wsrpc_tests::AsyncStd);
adapter_tests!(blocking, wsrpc_tests::Blocking);

/// The integration tests that need no raw socket, again over `wss://` (the test PKI's leaf on
/// the server, its CA trusted by the client).
macro_rules! tls_adapter_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            type A = wsrpc_tests::Tls<$adapter>;
            #[test]
            fn calls_batches_notifications_and_async() {
                super::calls_batches_notifications_and_async::<A>();
            }
            #[test]
            fn pubsub_in_order_with_sequence_numbers() {
                super::pubsub_in_order_with_sequence_numbers::<A>();
            }
            #[test]
            fn rate_limited_calls_get_32005() {
                super::rate_limited_calls_get_32005::<A>();
            }
            #[test]
            fn graceful_shutdown_answers_in_flight_calls() {
                super::graceful_shutdown_answers_in_flight_calls::<A>();
            }
            #[test]
            fn reconnect_resubscribes_without_losing_messages() {
                super::reconnect_resubscribes_without_losing_messages::<A>();
            }
            #[test]
            fn pending_calls_fail_when_the_server_goes_away() {
                super::pending_calls_fail_when_the_server_goes_away::<A>();
            }
        }
    };
}

tls_adapter_tests!(tls_smol, wsrpc_tests::Smol);
tls_adapter_tests!(tls_async_std, wsrpc_tests::AsyncStd);
tls_adapter_tests!(tls_blocking, wsrpc_tests::Blocking);
