//! Metrics and health: lock-free counters, per-method latency histograms over a rolling
//! window, and their exposition as JSON (`rpc.metrics`, `rpc.health`, `GET /health`) and in
//! the Prometheus text format (`GET /metrics`).
//!
//! One [`Metrics`] registry is shared by every connection of a server; any thread may record
//! into it or take a [`Snapshot`]. Like the rest of wsrpc-core it never reads a clock: the
//! start instant and every `now` come from the caller.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use wsrpc_core::metrics::{ErrorKind, Metrics};
//!
//! let start = Instant::now(); // the adapter's clock
//! let mut metrics = Metrics::new(start);
//! let eth_call = metrics.register_method("eth_call"); // while building the router
//! let metrics = Arc::new(metrics);
//! metrics.set_port(8766);
//!
//! // From any connection's thread:
//! metrics.connection_opened();
//! metrics.message_received();
//! metrics.record_call(eth_call, Duration::from_micros(250), start + Duration::from_secs(1));
//! metrics.record_error(ErrorKind::from_rpc_code(-32602));
//!
//! let snapshot = metrics.snapshot(start + Duration::from_secs(2));
//! assert_eq!(snapshot.methods["eth_call"].p99_us, 250);
//! assert_eq!(snapshot.errors["invalid_params"], 1);
//! let json = serde_json::to_string(&snapshot.health()).unwrap(); // GET /health
//! assert!(json.starts_with(r#"{"status":"ok","uptime_seconds":2.0,"#));
//! let body = snapshot.to_prometheus(); // GET /metrics, served as PROMETHEUS_CONTENT_TYPE
//! assert!(body.contains("wsrpc_connections_active 1\n"));
//! ```

mod counters;
mod histogram;
mod prometheus;
mod registry;
mod snapshot;

pub use counters::ErrorKind;
pub use histogram::{LatencyHistogram, RollingWindow};
pub use prometheus::PROMETHEUS_CONTENT_TYPE;
pub use registry::{MethodId, Metrics};
pub use snapshot::{
    CompressionCounts, ConnectionCounts, Health, HealthStatus, LatencyStats, PubSubInfo, Snapshot,
    SubscriptionCounts, TrafficCounts,
};
