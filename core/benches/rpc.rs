//! JSON-RPC in the core: request → response for a trivial method (target ≤ 1 µs including
//! JSON parse and serialize), a 100-entry batch, the same call through the whole engine over
//! WebSocket frames, and publish fan-out to 10,000 subscribers' outboxes (target ≥ 5 M
//! deliveries/s on one core).
//!
//! `cargo bench -p wsrpc-core --bench rpc` (criterion), then a summary table.
#![allow(clippy::disallowed_methods, missing_docs)] // benchmarks read the clock

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use wsrpc_core::auth::Principal;
use wsrpc_core::engine::{Endpoint, Input, Output, ServerConnection};
use wsrpc_core::rpc::{ConnectionId, Router, RpcSession, SessionOutput, Transport};
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_core::ws::frame::{OpCode, encode_frame};
use wsrpc_core::{Now, UnixTime};

const CALL: &[u8] = br#"{"jsonrpc":"2.0","method":"add","params":[20,22],"id":12345}"#;

fn service(config: ServiceConfig) -> Arc<Service> {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b));
    Service::new(
        config,
        r,
        wsrpc_core::Now::new(
            Instant::now(),
            wsrpc_core::UnixTime(Duration::from_secs(1_700_000_000)),
        ),
    )
}

fn unlimited() -> ServiceConfig {
    let mut c = ServiceConfig::default();
    c.limits = wsrpc_core::limit::LimitConfig::disabled();
    c.hub.max_subscriptions = 10;
    c
}

fn session(svc: &Arc<Service>) -> RpcSession {
    RpcSession::new(
        svc.clone(),
        ConnectionId(1),
        None,
        Arc::new(Principal::anonymous()),
        Transport::Messages,
        Instant::now(),
    )
}

fn one_call(s: &mut RpcSession, now: Instant, msg: &[u8]) -> usize {
    s.handle_message(now, msg);
    match s.poll_output() {
        Some(SessionOutput::Message(m)) => m.len(),
        other => panic!("{other:?}"),
    }
}

fn batch() -> Vec<u8> {
    let entries: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","method":"add","params":[{i},1],"id":{i}}}"#))
        .collect();
    format!("[{}]", entries.join(",")).into_bytes()
}

/// A server connection already upgraded; returns it and a masked frame carrying `CALL`.
fn engine_ws(svc: &Arc<Service>) -> (ServerConnection, Vec<u8>) {
    let now = bench_now();
    let mut conn = ServerConnection::new(svc.clone(), now);
    let hs = b"GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    conn.handle(now, Input::Bytes(hs));
    engine_output(&mut conn, now);
    let mut frame = Vec::new();
    encode_frame(&mut frame, true, OpCode::Text, Some([1, 2, 3, 4]), CALL);
    (conn, frame)
}

fn bench_now() -> Now {
    Now::new(Instant::now(), UnixTime(Duration::from_secs(1_700_000_000)))
}

/// Drains the connection's output as an always-writable transport would; bytes written.
fn engine_output(conn: &mut ServerConnection, now: Now) -> usize {
    let mut n = 0;
    loop {
        match conn.poll_output(now) {
            Output::Transmit(mut tx) => {
                let len = tx.first().len();
                n += len;
                tx.advance(len);
            }
            Output::Wait(_) | Output::Finished => return n,
            _ => {}
        }
    }
}

fn engine_call(conn: &mut ServerConnection, now: Now, frame: &[u8]) -> usize {
    conn.handle(now, Input::Bytes(frame));
    engine_output(conn, now)
}

/// `n` subscriber sessions on topic "t".
fn subscribers(svc: &Arc<Service>, n: usize) -> Vec<RpcSession> {
    let now = Instant::now();
    (0..n)
        .map(|i| {
            let mut s = RpcSession::new(
                svc.clone(),
                ConnectionId(i as u64),
                None,
                Arc::new(Principal::anonymous()),
                Transport::Messages,
                now,
            );
            s.handle_message(
                now,
                br#"{"jsonrpc":"2.0","method":"subscribe","params":["t"],"id":1}"#,
            );
            while s.poll_output().is_some() {}
            s
        })
        .collect()
}

fn drain_all(subs: &mut [RpcSession]) {
    for s in subs.iter_mut() {
        while let Some(o) = s.poll_output() {
            black_box(o);
        }
    }
}

fn benches(c: &mut Criterion) {
    let svc = service(unlimited());
    let now = Instant::now();
    let mut s = session(&svc);
    let mut g = c.benchmark_group("rpc");
    g.bench_function("call_in_session", |b| b.iter(|| one_call(&mut s, now, black_box(CALL))));
    let msg = batch();
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_100", |b| b.iter(|| one_call(&mut s, now, black_box(&msg))));
    g.throughput(Throughput::Elements(1));
    let (mut conn, frame) = engine_ws(&svc);
    g.bench_function("call_through_engine_ws", |b| {
        b.iter(|| engine_call(&mut conn, bench_now(), black_box(&frame)))
    });
    g.finish();

    let mut g = c.benchmark_group("fanout");
    g.sample_size(20);
    let svc = service(unlimited());
    let mut subs = subscribers(&svc, 10_000);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("publish_10k_subscribers", |b| {
        b.iter(|| {
            svc.publish("t", &[1, 2, 3]).unwrap();
            drain_all(&mut subs);
        })
    });
    // The per-publish and per-subscribe cost outside the fan-out loop (topic lookup, locks,
    // encoding): where a check for broker-bridged topics would show.
    let svc = service(unlimited());
    let mut one = subscribers(&svc, 1);
    g.throughput(Throughput::Elements(1));
    g.sample_size(50);
    g.bench_function("publish_1_subscriber", |b| {
        b.iter(|| {
            svc.publish("t", &[1, 2, 3]).unwrap();
            drain_all(&mut one);
        })
    });
    let mut s = session(&svc);
    let now = Instant::now();
    let sub = br#"{"jsonrpc":"2.0","method":"subscribe","params":["u"],"id":1}"#;
    g.bench_function("subscribe_unsubscribe", |b| {
        b.iter(|| {
            s.handle_message(now, sub);
            let Some(SessionOutput::Message(m)) = s.poll_output() else { panic!("no answer") };
            let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
            let id = v["result"]["subscription"].as_str().unwrap();
            let unsub =
                format!(r#"{{"jsonrpc":"2.0","method":"unsubscribe","params":["{id}"],"id":2}}"#);
            one_call(&mut s, now, unsub.as_bytes())
        })
    });
    g.finish();
}

fn time_per_iter(mut f: impl FnMut()) -> Duration {
    let mut iters = 1u32;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() > Duration::from_millis(50) {
            break;
        }
        iters *= 2;
    }
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed() / iters);
    }
    best
}

fn summary() {
    let svc = service(unlimited());
    let now = Instant::now();
    let mut s = session(&svc);
    let call = time_per_iter(|| {
        black_box(one_call(&mut s, now, CALL));
    });
    let msg = batch();
    let batch = time_per_iter(|| {
        black_box(one_call(&mut s, now, &msg));
    });
    let (mut conn, frame) = engine_ws(&svc);
    let engine = time_per_iter(|| {
        black_box(engine_call(&mut conn, bench_now(), &frame));
    });
    let svc = service(unlimited());
    let mut subs = subscribers(&svc, 10_000);
    // Time only the publish; drain the outboxes between publishes so each one is a plain push.
    let mut publish = Duration::MAX;
    for _ in 0..7 {
        let mut total = Duration::ZERO;
        for _ in 0..50 {
            let t = Instant::now();
            svc.publish("t", &[1, 2, 3]).unwrap();
            total += t.elapsed();
            drain_all(&mut subs);
        }
        publish = publish.min(total / 50);
    }
    println!(
        "\nrequest → response, trivial method (session):   {:>8.0} ns  (target ≤ 1000 ns)",
        call.as_nanos()
    );
    println!("request → response through the engine (WS frames): {:>6.0} ns", engine.as_nanos());
    println!(
        "100-entry batch:                                 {:>8.1} µs  ({:.0} ns per entry)",
        batch.as_secs_f64() * 1e6,
        batch.as_nanos() as f64 / 100.0
    );
    println!(
        "publish to 10,000 subscribers (into outboxes):   {:>8.2} ms  = {:.1} M deliveries/s (target ≥ 5)",
        publish.as_secs_f64() * 1e3,
        10_000.0 / publish.as_secs_f64() / 1e6
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--summary-only") {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c);
        c.final_summary();
    }
    summary();
}
