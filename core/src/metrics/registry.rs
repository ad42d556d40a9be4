//! The registry every connection of a server shares.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::counters::{Counters, ErrorKind};
use super::histogram::{LatencyHistogram, RollingWindow, WindowSamples};
use super::snapshot::{
    ConnectionCounts, Health, HealthStatus, Snapshot, SubscriptionCounts, TrafficCounts,
};
use crate::ws::CompressionCounters;

/// `port` value while the server has not reported its bound port.
const NO_PORT: u32 = u32::MAX;

/// A method registered with [`Metrics::register_method`]; only meaningful to that registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodId(usize);

/// One method's histogram.
#[derive(Debug)]
#[repr(align(128))] // one cache line pair per method: neighbours' locks must not false-share
struct MethodSlot {
    name: Box<str>,
    // A mutex, not atomics: clearing a stale slice must not race with recording into it, and
    // an uncontended lock is one compare-and-swap plus one store.
    histogram: Mutex<LatencyHistogram>,
}

/// Counters, gauges and per-method latency histograms of one server, shared by all its
/// connections (in an `Arc`) and readable from any thread.
///
/// Build it, register the router's methods with [`register_method`](Self::register_method),
/// then share it. Every recording method takes `&self` and costs one atomic operation (a call's
/// latency: one uncontended mutex); none allocates. [`snapshot`](Self::snapshot) and
/// [`health`](Self::health) read everything at a `now` the caller passes, as the rest of
/// wsrpc-core never reads a clock.
///
/// Connections and subscriptions are gauges: pair every `*_opened` with one `*_closed`.
#[derive(Debug)]
pub struct Metrics {
    start: Instant,
    port: AtomicU32,
    counters: Counters,
    window: RollingWindow,
    methods: Vec<MethodSlot>,
    compression: Arc<CompressionCounters>,
}

impl Metrics {
    /// An empty registry for a server started at `start`, with the default 60 s latency window.
    pub fn new(start: Instant) -> Self {
        Self::with_window(start, RollingWindow::default())
    }

    /// An empty registry whose latency histograms keep `window`.
    pub fn with_window(start: Instant, window: RollingWindow) -> Self {
        Self {
            start,
            port: AtomicU32::new(NO_PORT),
            counters: Counters::default(),
            window,
            methods: Vec::new(),
            compression: Arc::default(),
        }
    }

    /// Adds a latency histogram for method `name`, or returns the one it already has.
    pub fn register_method(&mut self, name: &str) -> MethodId {
        if let Some(id) = self.method_id(name) {
            return id;
        }
        let histogram = Mutex::new(LatencyHistogram::new(self.start, self.window));
        self.methods.push(MethodSlot { name: name.into(), histogram });
        MethodId(self.methods.len() - 1)
    }

    /// The id of method `name`, if it was registered.
    pub fn method_id(&self, name: &str) -> Option<MethodId> {
        self.methods.iter().position(|m| &*m.name == name).map(MethodId)
    }

    /// The permessage-deflate counters this registry reports; a server shares them with its
    /// connections' [`DeflateConfig`](crate::ws::DeflateConfig).
    pub fn compression_counters(&self) -> &Arc<CompressionCounters> {
        &self.compression
    }

    /// When the server started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Time since the start, at `now`.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// Records the port the server is bound to.
    pub fn set_port(&self, port: u16) {
        self.port.store(u32::from(port), Ordering::Relaxed);
    }

    /// The port the server is bound to, once [`set_port`](Self::set_port) was called.
    pub fn port(&self) -> Option<u16> {
        u16::try_from(self.port.load(Ordering::Relaxed)).ok()
    }

    /// A WebSocket connection was accepted (or, on a client, established).
    pub fn connection_opened(&self) {
        Counters::open(&self.counters.connections_total, &self.counters.connections_active);
    }

    /// A connection counted by [`connection_opened`](Self::connection_opened) ended; extra
    /// calls leave the active count at zero.
    pub fn connection_closed(&self) {
        Counters::close(&self.counters.connections_active, 1);
    }

    /// A plain HTTP request (not an upgrade) arrived.
    pub fn http_request_received(&self) {
        Counters::add(&self.counters.http_requests, 1);
    }

    /// A whole message (WebSocket message or HTTP body) arrived.
    pub fn message_received(&self) {
        Counters::add(&self.counters.messages_in, 1);
    }

    /// A whole message was queued for sending.
    pub fn message_sent(&self) {
        Counters::add(&self.counters.messages_out, 1);
    }

    /// `n` bytes were read from the wire.
    pub fn bytes_received(&self, n: u64) {
        Counters::add(&self.counters.bytes_in, n);
    }

    /// `n` bytes were written to the wire.
    pub fn bytes_sent(&self, n: u64) {
        Counters::add(&self.counters.bytes_out, n);
    }

    /// An error of `kind` was answered, or ended a connection or request.
    pub fn record_error(&self, kind: ErrorKind) {
        Counters::add(self.counters.error(kind), 1);
    }

    /// A rate limit rejected a call (count its -32005 answer with
    /// [`record_error`](Self::record_error) too, if it is answered).
    pub fn call_rate_limited(&self) {
        Counters::add(&self.counters.rate_limited, 1);
    }

    /// A subscription was made.
    pub fn subscription_opened(&self) {
        Counters::open(&self.counters.subscriptions_total, &self.counters.subscriptions_active);
    }

    /// `n` subscriptions ended (a closing connection ends all of its own at once); closing
    /// more than are open leaves the active count at zero.
    pub fn subscriptions_closed(&self, n: u64) {
        Counters::close(&self.counters.subscriptions_active, n);
    }

    /// `n` notifications were dropped because a slow consumer's outbox was full.
    pub fn notifications_dropped(&self, n: u64) {
        Counters::add(&self.counters.lagged_drops, n);
    }

    /// A call of `method` took `latency` and finished at `now`. An id from another registry
    /// is ignored if out of range (and misattributed if not: do not mix registries).
    pub fn record_call(&self, method: MethodId, latency: Duration, now: Instant) {
        if let Some(slot) = self.methods.get(method.0) {
            // Recording cannot panic, so a poisoned lock still holds consistent data.
            slot.histogram.lock().unwrap_or_else(PoisonError::into_inner).record(latency, now);
        }
    }

    /// Everything, at `now`. Allocates the maps and locks each method's histogram briefly.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let c = &self.counters;
        let read = Counters::read;
        let (connections_active, connections_total) =
            Counters::read_open(&c.connections_total, &c.connections_active);
        let (subscriptions_active, subscriptions_total) =
            Counters::read_open(&c.subscriptions_total, &c.subscriptions_active);
        let errors = ErrorKind::ALL
            .iter()
            .map(|&kind| (kind.as_str().to_owned(), read(c.error(kind))))
            .collect();
        let mut window = WindowSamples::new();
        let methods = self
            .methods
            .iter()
            .map(|slot| {
                window.clear();
                let (count, sum_us) = slot
                    .histogram
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .merge_window(now, &mut window);
                // The lock is released here; quantiles are computed without it.
                (slot.name.to_string(), window.stats(count, sum_us))
            })
            .collect::<BTreeMap<_, _>>();
        Snapshot {
            uptime_seconds: self.uptime(now).as_secs_f64(),
            port: self.port(),
            connections: ConnectionCounts { total: connections_total, active: connections_active },
            http_requests: read(&c.http_requests),
            messages: TrafficCounts { received: read(&c.messages_in), sent: read(&c.messages_out) },
            bytes: TrafficCounts { received: read(&c.bytes_in), sent: read(&c.bytes_out) },
            errors,
            rate_limited: read(&c.rate_limited),
            subscriptions: SubscriptionCounts {
                total: subscriptions_total,
                active: subscriptions_active,
            },
            lagged_drops: read(&c.lagged_drops),
            methods,
            compression: self.compression.totals().into(),
        }
    }

    /// Whether the server is up, at `now`; cheaper than a snapshot (no lock, no allocation).
    /// `name` and `pubsub` are left for the service to fill in.
    pub fn health(&self, now: Instant) -> Health {
        let (active, _) = Counters::read_open(
            &self.counters.connections_total,
            &self.counters.connections_active,
        );
        Health {
            status: HealthStatus::Ok,
            uptime_seconds: self.uptime(now).as_secs_f64(),
            connections_active: active,
            port: self.port(),
            name: String::new(),
            pubsub: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    use crate::test_origin as origin;

    #[test]
    fn metrics_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Metrics>();
        shareable::<Arc<Metrics>>();
        shareable::<Snapshot>();
    }

    #[test]
    fn counters_from_several_threads_add_up_exactly() {
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 10_000;
        let t0 = origin();
        let mut metrics = Metrics::new(t0);
        let call = metrics.register_method("call");
        let metrics = Arc::new(metrics);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let metrics = &metrics;
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        metrics.connection_opened();
                        metrics.message_received();
                        metrics.message_sent();
                        metrics.bytes_received(3);
                        metrics.bytes_sent(thread);
                        metrics.record_error(ErrorKind::ALL[(round % 11) as usize]);
                        metrics.subscription_opened();
                        metrics.record_call(call, Duration::from_micros(round % 7), t0);
                        if round % 2 == 0 {
                            metrics.connection_closed();
                            metrics.subscriptions_closed(1);
                        }
                        if round % 1000 == 0 {
                            let s = metrics.snapshot(t0);
                            assert!(s.connections.active <= s.connections.total);
                            assert!(s.subscriptions.active <= s.subscriptions.total);
                        }
                    }
                });
            }
        });
        let s = metrics.snapshot(t0);
        let n = THREADS * ROUNDS;
        assert_eq!((s.connections.total, s.connections.active), (n, n / 2));
        assert_eq!((s.subscriptions.total, s.subscriptions.active), (n, n / 2));
        assert_eq!((s.messages.received, s.messages.sent), (n, n));
        assert_eq!((s.bytes.received, s.bytes.sent), (3 * n, ROUNDS * (0..THREADS).sum::<u64>()));
        assert_eq!(s.errors.values().sum::<u64>(), n);
        // Rounds 0..10_000 hit kinds 0..=0 one extra time (10_000 = 909 * 11 + 1).
        assert_eq!(s.errors["parse"], THREADS * 910);
        assert_eq!(s.errors["application"], THREADS * 909);
        let call = &s.methods["call"];
        assert_eq!((call.count, call.window_count, call.min_us, call.max_us), (n, n, 0, 6));
    }

    #[test]
    fn a_snapshot_reads_every_counter_at_now() {
        let t0 = origin();
        let mut metrics = Metrics::new(t0);
        let a = metrics.register_method("a");
        let b = metrics.register_method("b");
        assert_eq!(metrics.register_method("a"), a);
        assert_eq!(metrics.method_id("b"), Some(b));
        assert_eq!(metrics.method_id("c"), None);
        assert_eq!(metrics.port(), None);
        metrics.set_port(8766);
        metrics.http_request_received();
        metrics.call_rate_limited();
        metrics.call_rate_limited();
        metrics.notifications_dropped(5);
        metrics.record_error(ErrorKind::from_rpc_code(-32005));
        metrics.record_call(b, Duration::from_millis(2), t0 + Duration::from_secs(1));
        metrics.record_call(MethodId(99), Duration::from_millis(2), t0); // ignored
        let s = metrics.snapshot(t0 + Duration::from_millis(12_500));
        assert_eq!(s.uptime_seconds, 12.5);
        assert_eq!(s.port, Some(8766));
        assert_eq!((s.http_requests, s.rate_limited, s.lagged_drops), (1, 2, 5));
        assert_eq!(s.errors.len(), ErrorKind::COUNT);
        assert_eq!(s.errors["limit_exceeded"], 1);
        assert_eq!(s.errors.values().sum::<u64>(), 1);
        assert_eq!(s.methods.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((s.methods["a"].count, s.methods["b"].count), (0, 1));
        assert_eq!(s.methods["b"].p50_us, 2000);
        let late = metrics.snapshot(t0 + Duration::from_secs(70));
        assert_eq!((late.methods["b"].count, late.methods["b"].window_count), (1, 0));
    }

    #[test]
    fn health_is_the_snapshot_s_health() {
        let t0 = origin();
        let window = RollingWindow::new(Duration::from_secs(1), 2).unwrap();
        let metrics = Metrics::with_window(t0 + Duration::from_secs(1), window);
        metrics.connection_opened();
        metrics.connection_opened();
        metrics.connection_closed();
        metrics.set_port(0);
        let now = t0 + Duration::from_secs(4);
        let health = metrics.health(now);
        assert_eq!(health, metrics.snapshot(now).health());
        assert_eq!((health.status, health.connections_active), (HealthStatus::Ok, 1));
        assert_eq!((health.uptime_seconds, health.port), (3.0, Some(0)));
        assert_eq!(metrics.uptime(t0), Duration::ZERO, "a now before the start");
        assert_eq!(metrics.start(), t0 + Duration::from_secs(1));
    }
}
