//! The serde view of the metrics: one [`Snapshot`] type for `rpc.metrics` and `GET /metrics`,
//! and its small [`Health`] part for `rpc.health` and `GET /health`.
//!
//! Field names are snake_case and stable; new fields may be added, so readers should ignore
//! fields they do not know (serde does by default).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every counter, gauge and latency summary at one instant; from
/// [`Metrics::snapshot`](super::Metrics::snapshot).
///
/// Each number is exact, but the counters are read one after another, not as one atomic cut.
/// In JSON:
///
/// ```json
/// { "uptime_seconds": 12.5, "port": 8766,
///   "connections": { "total": 3, "active": 1 }, "http_requests": 2,
///   "messages": { "in": 40, "out": 52 }, "bytes": { "in": 4096, "out": 8192 },
///   "errors": { "parse": 0, "invalid_request": 1, "...": 0 },
///   "rate_limited": 0, "subscriptions": { "active": 1, "total": 2 }, "lagged_drops": 0,
///   "methods": { "eth_call": { "count": 40, "window_count": 12, "sum_us": 9000,
///     "min_us": 80, "mean_us": 210.5, "max_us": 900, "p50_us": 180, "p90_us": 400,
///     "p99_us": 900 } } }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Seconds since the registry's start.
    pub uptime_seconds: f64,
    /// The port the server is bound to, once known.
    pub port: Option<u16>,
    /// WebSocket connections.
    pub connections: ConnectionCounts,
    /// Plain HTTP requests on the same port (JSON-RPC POST, /health, /metrics).
    pub http_requests: u64,
    /// Whole messages (WebSocket messages or HTTP bodies) received and sent.
    pub messages: TrafficCounts,
    /// Bytes received and sent on the wire.
    pub bytes: TrafficCounts,
    /// Errors by kind name ([`ErrorKind::as_str`](super::ErrorKind::as_str)); every kind is
    /// present, with 0 if it never happened.
    pub errors: BTreeMap<String, u64>,
    /// Calls rejected by a rate limit.
    pub rate_limited: u64,
    /// Pub/sub subscriptions.
    pub subscriptions: SubscriptionCounts,
    /// Notifications dropped because a slow consumer's outbox was full.
    pub lagged_drops: u64,
    /// Latencies of each registered method, by method name.
    pub methods: BTreeMap<String, LatencyStats>,
    /// permessage-deflate: payload bytes before and after compression.
    #[serde(default)]
    pub compression: CompressionCounts,
}

/// permessage-deflate traffic: what was compressed for sending and inflated on receipt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CompressionCounts {
    /// Times the compressor ran (a notification shared by many subscribers counts once).
    pub compressions: u64,
    /// Messages sent compressed.
    pub messages_sent: u64,
    /// Their payload bytes before compression.
    pub sent_uncompressed_bytes: u64,
    /// Their payload bytes as sent.
    pub sent_compressed_bytes: u64,
    /// Compressed messages received.
    pub messages_received: u64,
    /// Their payload bytes as received.
    pub received_compressed_bytes: u64,
    /// What they inflated to.
    pub received_inflated_bytes: u64,
}

impl From<crate::ws::CompressionTotals> for CompressionCounts {
    fn from(t: crate::ws::CompressionTotals) -> Self {
        Self {
            compressions: t.compressions,
            messages_sent: t.messages_sent,
            sent_uncompressed_bytes: t.sent_uncompressed_bytes,
            sent_compressed_bytes: t.sent_compressed_bytes,
            messages_received: t.messages_received,
            received_compressed_bytes: t.received_compressed_bytes,
            received_inflated_bytes: t.received_inflated_bytes,
        }
    }
}

/// Connections opened since the start, and open now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionCounts {
    /// Opened since the start.
    pub total: u64,
    /// Open now.
    pub active: u64,
}

/// Subscriptions made since the start, and live now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubscriptionCounts {
    /// Made since the start.
    pub total: u64,
    /// Live now.
    pub active: u64,
}

/// Amounts received and sent, as `{"in": .., "out": ..}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TrafficCounts {
    /// Received from peers.
    #[serde(rename = "in")]
    pub received: u64,
    /// Sent to peers.
    #[serde(rename = "out")]
    pub sent: u64,
}

/// Latency statistics of one method, from a [`LatencyHistogram`](super::LatencyHistogram).
///
/// `count` and `sum_us` are all-time; everything else covers the rolling window, and is 0 when
/// `window_count` is 0. Quantiles below 134 s are within 1.6 % of the true sample, and never
/// outside `min_us..=max_us`, which are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LatencyStats {
    /// Calls recorded since the start.
    pub count: u64,
    /// Sum of all latencies since the start, in microseconds.
    pub sum_us: u64,
    /// Calls recorded in the window.
    pub window_count: u64,
    /// Shortest latency in the window, in microseconds.
    pub min_us: u64,
    /// Mean latency in the window, in microseconds.
    pub mean_us: f64,
    /// Longest latency in the window, in microseconds.
    pub max_us: u64,
    /// Median latency in the window, in microseconds.
    pub p50_us: u64,
    /// 90th percentile latency in the window, in microseconds.
    pub p90_us: u64,
    /// 99th percentile latency in the window, in microseconds.
    pub p99_us: u64,
}

/// Whether the server is up, and which server it is; the small view for `GET /health` and
/// `rpc.health`.
///
/// In JSON: `{"status": "ok", "uptime_seconds": 12.5, "connections_active": 1, "port": 8766,
/// "name": "wsrpc", "pubsub": {"subscribe": "subscribe", "unsubscribe": "unsubscribe",
/// "notification": "subscription", "lagged": "lagged", "gap": "gap", "eth_style": false,
/// "epoch": 1700000000000000}}`. A client scanning ports checks `name` before it trusts a
/// port; `pubsub` tells it how to subscribe without being configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// Always [`HealthStatus::Ok`] while the registry answers.
    pub status: HealthStatus,
    /// Seconds since the registry's start.
    pub uptime_seconds: f64,
    /// WebSocket connections open now.
    pub connections_active: u64,
    /// The port the server is bound to, once known.
    pub port: Option<u16>,
    /// The server's configured name; empty when read from a bare [`Metrics`](super::Metrics)
    /// registry (the service fills it in).
    #[serde(default)]
    pub name: String,
    /// The subscription protocol of the server; absent from a bare registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<PubSubInfo>,
}

/// How to subscribe on a server, as [`Health::pubsub`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PubSubInfo {
    /// The subscribe method (`subscribe`, `eth_subscribe`).
    pub subscribe: String,
    /// The unsubscribe method.
    pub unsubscribe: String,
    /// The method of notifications carrying published values.
    pub notification: String,
    /// The method of the notice for notifications dropped from a slow consumer's outbox.
    pub lagged: String,
    /// The method of the notice for replay older than the buffer.
    pub gap: String,
    /// `eth_subscribe` style: positional params (`[topic, {"since": N, "epoch": E}]`).
    pub eth_style: bool,
    /// The hub's epoch: sequence numbers restart when it changes (a server restart).
    pub epoch: u64,
}

impl PubSubInfo {
    /// The info for these method names and epoch.
    pub fn new(
        subscribe: &str,
        unsubscribe: &str,
        notification: &str,
        (lagged, gap): (&str, &str),
        eth_style: bool,
        epoch: u64,
    ) -> Self {
        Self {
            subscribe: subscribe.into(),
            unsubscribe: unsubscribe.into(),
            notification: notification.into(),
            lagged: lagged.into(),
            gap: gap.into(),
            eth_style,
            epoch,
        }
    }
}

/// The `status` of a [`Health`] report, in JSON a snake_case string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// Serving: `"ok"`.
    Ok,
}

impl Snapshot {
    /// The health part of this snapshot.
    pub fn health(&self) -> Health {
        Health {
            status: HealthStatus::Ok,
            uptime_seconds: self.uptime_seconds,
            connections_active: self.connections.active,
            port: self.port,
            name: String::new(),
            pubsub: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::super::{ErrorKind, Metrics};
    use super::*;

    use crate::test_origin as origin;

    fn keys(value: &Value) -> Vec<&str> {
        value.as_object().expect("an object").keys().map(String::as_str).collect()
    }

    fn busy_snapshot() -> Snapshot {
        let t0 = origin();
        let mut metrics = Metrics::new(t0);
        let call = metrics.register_method("eth_call");
        metrics.register_method("eth_chainId");
        metrics.set_port(8766);
        metrics.connection_opened();
        metrics.bytes_received(10);
        metrics.bytes_sent(20);
        metrics.message_received();
        metrics.subscription_opened();
        metrics.subscription_opened();
        metrics.subscriptions_closed(1);
        metrics.record_error(ErrorKind::Handshake);
        for us in [100, 200, 300, 400] {
            metrics.record_call(call, Duration::from_micros(us), t0 + Duration::from_secs(1));
        }
        metrics.snapshot(t0 + Duration::from_millis(1500))
    }

    #[test]
    fn a_snapshot_serializes_to_the_documented_shape() {
        let value = serde_json::to_value(busy_snapshot()).unwrap();
        let mut top = keys(&value);
        top.sort_unstable();
        assert_eq!(
            top,
            [
                "bytes",
                "compression",
                "connections",
                "errors",
                "http_requests",
                "lagged_drops",
                "messages",
                "methods",
                "port",
                "rate_limited",
                "subscriptions",
                "uptime_seconds",
            ]
        );
        assert_eq!(value["uptime_seconds"], json!(1.5));
        assert_eq!(value["port"], json!(8766));
        assert_eq!(value["connections"], json!({"total": 1, "active": 1}));
        assert_eq!(value["subscriptions"], json!({"total": 2, "active": 1}));
        assert_eq!(value["messages"], json!({"in": 1, "out": 0}));
        assert_eq!(value["bytes"], json!({"in": 10, "out": 20}));
        let errors = value["errors"].as_object().unwrap();
        let names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(errors.len(), names.len());
        assert!(names.iter().all(|name| errors.contains_key(*name)), "{errors:?}");
        assert_eq!(value["errors"]["handshake"], json!(1));
        assert_eq!(value["errors"]["method_not_found"], json!(0));
        assert_eq!(keys(&value["methods"]), ["eth_call", "eth_chainId"]);
        // p50 is the middle of 200's bucket, 200..=203; p90 and p99 are clamped to max_us.
        assert_eq!(
            value["methods"]["eth_call"],
            json!({
                "count": 4, "sum_us": 1000, "window_count": 4, "min_us": 100, "mean_us": 250.0,
                "max_us": 400, "p50_us": 201, "p90_us": 400, "p99_us": 400,
            })
        );
        assert_eq!(value["methods"]["eth_chainId"]["window_count"], json!(0));
    }

    #[test]
    fn a_snapshot_round_trips_through_json() {
        let snapshot = busy_snapshot();
        let text = serde_json::to_string(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, snapshot);
        assert_eq!(back.to_prometheus(), snapshot.to_prometheus());
    }

    #[test]
    fn unknown_fields_are_ignored_and_a_missing_port_is_null() {
        let mut value = serde_json::to_value(busy_snapshot()).unwrap();
        value["port"] = Value::Null;
        value["added_later"] = json!({"x": 1});
        value["methods"]["eth_call"]["p999_us"] = json!(5);
        let back: Snapshot = serde_json::from_value(value).unwrap();
        assert_eq!(back.port, None);
        assert_eq!(back.methods["eth_call"].p99_us, 400);
    }

    #[test]
    fn health_is_small_and_says_ok() {
        let health = busy_snapshot().health();
        let value = serde_json::to_value(&health).unwrap();
        assert_eq!(
            value,
            json!({"status": "ok", "uptime_seconds": 1.5, "connections_active": 1, "port": 8766,
                "name": ""})
        );
        assert_eq!(serde_json::from_value::<Health>(value).unwrap(), health);
        assert!(serde_json::from_value::<HealthStatus>(json!("Ok")).is_err());
    }
}
