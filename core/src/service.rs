//! The state a server's connections share: configuration, router, hub, rate limiters,
//! metrics and the injected clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::auth::{AuthPolicy, MessageSigner};
use crate::hub::{Hub, HubConfig, PublishError, Published};
use crate::limit::{LimitConfig, OriginLimiter};
use crate::metrics::{Health, MethodId, Metrics, Snapshot};
use crate::rpc::Router;
use crate::rpc::router::ConnectionId;
use crate::ws;

/// JSON-RPC limits (DESIGN.md defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcConfig {
    /// Most entries in a batch [100].
    pub max_batch: usize,
    /// Largest request message [10 MiB].
    pub max_request_size: usize,
    /// Largest single response [10 MiB]; larger results become an error.
    pub max_response_size: usize,
    /// Async calls in flight per connection before -32005 [64].
    pub max_inflight_async: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            max_batch: 100,
            max_request_size: 10 << 20,
            max_response_size: 10 << 20,
            max_inflight_async: 64,
        }
    }
}

/// HTTP on the WebSocket port.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Path of the JSON-RPC endpoint, for POST and for the WebSocket upgrade [`/`]. Upgrades
    /// are accepted on any path.
    pub rpc_path: String,
    /// Path of the JSON health document [`/health`].
    pub health_path: String,
    /// Path of the Prometheus exposition [`/metrics`].
    pub metrics_path: String,
    /// Keep an idle HTTP connection open this long between requests [30 s].
    pub keep_alive_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            rpc_path: "/".into(),
            health_path: "/health".into(),
            metrics_path: "/metrics".into(),
            keep_alive_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything configurable about a server, with DESIGN.md defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// WebSocket limits and timers (the handshake timeout also bounds an HTTP request).
    pub ws: ws::Config,
    /// JSON-RPC limits.
    pub rpc: RpcConfig,
    /// HTTP paths and keep-alive.
    pub http: HttpConfig,
    /// Pub/sub.
    pub hub: HubConfig,
    /// Rate tokens.
    pub limits: LimitConfig,
    /// Origin policy [no Origin, or a loopback origin], authenticator [none: everyone is
    /// anonymous] and whether anonymous requests are refused [no].
    pub auth: AuthPolicy,
    /// HMAC-SHA256 message signing, off by default.
    pub signing: Option<MessageSigner>,
    /// Most concurrent connections; beyond it new ones get HTTP 503 [1024].
    pub max_connections: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            ws: ws::Config::default(),
            rpc: RpcConfig::default(),
            http: HttpConfig::default(),
            hub: HubConfig::default(),
            limits: LimitConfig::default(),
            auth: AuthPolicy::default(),
            signing: None,
            max_connections: 1024,
        }
    }
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("ws", &self.ws)
            .field("rpc", &self.rpc)
            .field("http", &self.http)
            .field("hub", &self.hub)
            .field("limits", &self.limits)
            .field("auth", &self.auth)
            .field("signing", &self.signing.is_some())
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A time source for measuring how long synchronous handlers run. Optional: without one,
/// synchronous calls are recorded with the latency between the `now` values passed in.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The shared state of one server. `Send + Sync`; connections hold an `Arc` of it.
pub struct Service {
    config: ServiceConfig,
    ws_config: Arc<ws::Config>,
    router: Router,
    method_ids: Vec<MethodId>,
    hub: Hub,
    metrics: Metrics,
    limit_config: Arc<LimitConfig>,
    origin_limiter: OriginLimiter,
    clock: Option<Box<dyn Clock>>,
    unix_at_start: Duration,
    next_connection: AtomicU64,
    active: AtomicUsize,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service started at `start`, when the wall clock read `unix_at_start` (time since the
    /// UNIX epoch, for JWT expiry). The hub's epoch is derived from it, so sequence numbers
    /// of a restarted server are recognised as new.
    pub fn new(
        config: ServiceConfig,
        router: Router,
        start: Instant,
        unix_at_start: Duration,
    ) -> Arc<Self> {
        Self::with_clock(config, router, start, unix_at_start, None)
    }

    /// [`new`](Self::new) with a clock for measuring synchronous handlers.
    pub fn with_clock(
        config: ServiceConfig,
        router: Router,
        start: Instant,
        unix_at_start: Duration,
        clock: Option<Box<dyn Clock>>,
    ) -> Arc<Self> {
        let mut metrics = Metrics::new(start);
        let method_ids = router.names().map(|n| metrics.register_method(n)).collect();
        let hub = Hub::new(config.hub.clone(), unix_at_start.as_nanos() as u64);
        let limit_config = Arc::new(config.limits.clone());
        let origin_limiter = OriginLimiter::new(limit_config.clone());
        let ws_config = Arc::new(config.ws.clone());
        Arc::new(Self {
            config,
            ws_config,
            router,
            method_ids,
            hub,
            metrics,
            limit_config,
            origin_limiter,
            clock,
            unix_at_start,
            next_connection: AtomicU64::new(1),
            active: AtomicUsize::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub(crate) fn ws_config(&self) -> &Arc<ws::Config> {
        &self.ws_config
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The pub/sub hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn limit_config(&self) -> &Arc<LimitConfig> {
        &self.limit_config
    }

    /// The per-origin rate limiter.
    pub fn origin_limiter(&self) -> &OriginLimiter {
        &self.origin_limiter
    }

    pub(crate) fn method_id(&self, index: usize) -> MethodId {
        self.method_ids[index]
    }

    pub(crate) fn clock_now(&self) -> Option<Instant> {
        self.clock.as_ref().map(|c| c.now())
    }

    /// Seconds since the UNIX epoch at `now`.
    pub fn unix_now(&self, now: Instant) -> u64 {
        (self.unix_at_start + now.saturating_duration_since(self.metrics.start())).as_secs()
    }

    /// Publishes `value` to `topic` (callable from any thread).
    pub fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Published, PublishError> {
        self.hub.publish(topic, value)
    }

    /// The health document served as `rpc.health` and `GET /health`.
    pub fn health(&self, now: Instant) -> Health {
        self.snapshot(now).health()
    }

    /// The metrics snapshot served as `rpc.metrics` and `GET /metrics`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        self.metrics.snapshot(now)
    }

    /// Records the port the server is bound to, for the snapshot.
    pub fn set_port(&self, port: u16) {
        self.metrics.set_port(port);
    }

    /// Connections currently open.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Admits a connection: a fresh id, or `None` at the connection limit.
    pub(crate) fn admit(&self) -> (ConnectionId, bool) {
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let admitted = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.max_connections).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.metrics.connection_opened();
        }
        (id, admitted)
    }

    pub(crate) fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connection_closed();
    }
}
