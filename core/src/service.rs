//! The state a server's connections share: configuration, router, hub, rate limiters,
//! metrics and the injected clock.

use core::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{AuthPolicy, MessageSigner};
use crate::hub::{
    BrokerDriver, BrokerLink, BrokerRunning, Hub, HubConfig, PublishError, Published,
};
use crate::limit::{LimitConfig, SharedLimits, TrustedProxies};
use crate::metrics::{BrokerState, Health, MethodId, Metrics, PubSubInfo, Snapshot};
use crate::rpc::hooks::{CallEnd, ConnectionClosed, ConnectionOpened, Hook, HookSet};
use crate::rpc::router::ConnectionId;
use crate::rpc::{PublishTo, Router};
use crate::time::Now;
use crate::ws;

/// Bytes all connections of a service may hold in unfinished WebSocket messages and HTTP
/// request bodies, unless `ws.assembly_budget` sets a budget: 256 MiB (16 messages at the
/// 16 MiB limit).
pub const DEFAULT_ASSEMBLY_BUDGET: u64 = 256 << 20;

/// JSON-RPC limits; the defaults are in brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcConfig {
    /// Most entries in a batch \[100\].
    pub max_batch: usize,
    /// Largest request message [10 MiB].
    pub max_request_size: usize,
    /// Largest single response [10 MiB]; larger results become an error.
    pub max_response_size: usize,
    /// Async calls in flight per connection before -32005 \[64\].
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

/// HTTP on the WebSocket port (`ServiceConfig::http`): the paths of JSON-RPC, health and
/// metrics, who may read monitoring, keep-alive and fixed routes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Path of the JSON-RPC endpoint, for POST and for the WebSocket upgrade \[`/`\]. Upgrades
    /// are accepted on any path.
    pub rpc_path: String,
    /// Path of the JSON health document \[`/health`\].
    pub health_path: String,
    /// Path of the Prometheus exposition \[`/metrics`\].
    pub metrics_path: String,
    /// Keep an idle HTTP connection open this long between requests [30 s].
    pub keep_alive_timeout: Duration,
    /// Fixed `GET` answers for exact paths (a demo page, its script) \[none\].
    pub routes: Vec<crate::http::StaticRoute>,
    /// Who may read the details of `health_path` and `metrics_path` (and `rpc.metrics`)
    /// (default `Restricted`: loopback clients, or authenticated ones under `require_auth`).
    pub monitoring: MonitoringAccess,
}

/// Who may read a server's health details and metrics: `GET /health` beyond its bare status,
/// `GET /metrics`, and the `rpc.metrics` built-in (method names, latencies, refusal counts).
///
/// "Loopback" is judged on the client address: the TCP peer, or what the
/// [trusted proxies](crate::limit::LimitConfig::trusted_proxies) forwarded. Behind a reverse
/// proxy on the same host, configure the proxy as trusted (or turn `require_auth` on), or every
/// client would look local. A connection whose peer address the adapter does not know (a
/// stream given to `serve`) is not loopback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MonitoringAccess {
    /// `GET /health` gives its bare status (`{"status":"ok"}`, 200 or 503) to anyone, since
    /// load balancers probe it; its details, `GET /metrics` and `rpc.metrics` go only to
    /// loopback clients, or, when `require_auth` is on, only to authenticated ones. Others get
    /// 403 for `/metrics` (401 with a challenge without valid credentials under
    /// `require_auth`) and -32003 for `rpc.metrics`.
    #[default]
    Restricted,
    /// Everything to anyone the origin policy admits.
    Public,
    /// Neither path is served (404) and `rpc.metrics` answers -32003; `rpc.health` still
    /// answers, as clients check a server's name with it.
    Off,
}

impl MonitoringAccess {
    /// Whether a client may read the details: `client` is its address (`None` when unknown),
    /// `authenticated` whether it presented valid credentials, `require_auth` the server's
    /// setting.
    pub fn allows(self, client: Option<IpAddr>, authenticated: bool, require_auth: bool) -> bool {
        match self {
            Self::Public => true,
            Self::Off => false,
            Self::Restricted if require_auth => authenticated,
            Self::Restricted => client.is_some_and(|ip| ip.to_canonical().is_loopback()),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            rpc_path: "/".into(),
            health_path: "/health".into(),
            metrics_path: "/metrics".into(),
            keep_alive_timeout: Duration::from_secs(30),
            routes: Vec::new(),
            monitoring: MonitoringAccess::default(),
        }
    }
}

/// The server name [`ServiceConfig::name`] has unless set.
pub const DEFAULT_SERVER_NAME: &str = "wsrpc";

/// Everything configurable about a server; each part documents its defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The name `rpc.health` and `GET /health` report ["wsrpc"]; a client scanning a port
    /// range accepts a port only when it answers with the name it expects.
    pub name: String,
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
    /// anonymous] and whether anonymous requests are refused \[no\].
    pub auth: AuthPolicy,
    /// HMAC-SHA256 message signing, off by default.
    pub signing: Option<MessageSigner>,
    /// Most concurrent connections; beyond it new ones get HTTP 503 \[1024\].
    pub max_connections: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_SERVER_NAME.into(),
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
            .field("name", &self.name)
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
    hub: Arc<Hub>,
    metrics: Metrics,
    /// The running broker driver, stopped at shutdown.
    broker: Mutex<Option<Box<dyn BrokerRunning>>>,
    limit_config: Arc<LimitConfig>,
    shared_limits: SharedLimits,
    clock: Option<Box<dyn Clock>>,
    hooks: HookSet,
    next_connection: AtomicU64,
    active: AtomicUsize,
    /// The `rpc.discover` document, made at its first request (the router never changes).
    openrpc: std::sync::OnceLock<Box<serde_json::value::RawValue>>,
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
    /// A service started at `now`. The hub's epoch is derived from the wall clock, so
    /// sequence numbers of a restarted server are recognised as new.
    pub fn new<S: Send + Sync + 'static>(
        config: ServiceConfig,
        router: Router<S>,
        now: Now,
    ) -> Arc<Self> {
        Self::with_clock(config, router, now, None)
    }

    /// [`new`](Self::new) with a clock for measuring synchronous handlers.
    pub fn with_clock<S: Send + Sync + 'static>(
        config: ServiceConfig,
        router: Router<S>,
        now: Now,
        clock: Option<Box<dyn Clock>>,
    ) -> Arc<Self> {
        Self::build(config, router.into_stateless(), now, clock, None, Vec::new())
    }

    /// [`new`](Self::new) with hooks (what `ServerBuilder::hook` registers), for sessions
    /// over transports the caller runs itself and for tests.
    pub fn with_hooks<S: Send + Sync + 'static>(
        config: ServiceConfig,
        router: Router<S>,
        now: Now,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> Arc<Self> {
        Self::build(config, router.into_stateless(), now, None, None, hooks)
    }

    /// The service, with a broker when `broker` is given: its driver is started here with
    /// the link to the hub.
    fn build(
        config: ServiceConfig,
        router: Router,
        now: Now,
        clock: Option<Box<dyn Clock>>,
        broker: Option<Box<dyn BrokerDriver>>,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> Arc<Self> {
        let mut metrics = Metrics::new(now.mono);
        let method_ids = router.names().map(|n| metrics.register_method(n)).collect();
        // Microseconds: clients echo the epoch back, and JavaScript numbers are exact only up
        // to 2^53 (nanoseconds since 1970 are above it; microseconds stay below until 2255).
        let epoch = u64::try_from(now.wall.0.as_micros()).unwrap_or(u64::MAX);
        let hub = Arc::new(match broker {
            Some(_) => Hub::with_bridge(config.hub.clone(), epoch),
            None => Hub::new(config.hub.clone(), epoch),
        });
        let running = broker.map(|driver| driver.start(BrokerLink::new(hub.clone())));
        let limit_config = Arc::new(config.limits.clone());
        let shared_limits = SharedLimits::new(limit_config.clone());
        let mut ws_config = config.ws.clone();
        // Unfinished messages of all connections share one budget, so 1,024 peers each
        // sending most of a 16 MiB message cannot hold 16 GiB.
        if ws_config.assembly_budget.is_none() {
            ws_config.assembly_budget = Some(ws::AssemblyBudget::new(DEFAULT_ASSEMBLY_BUDGET));
        }
        // Compression is counted in the server's metrics.
        if let Some(deflate) = ws_config.compression.as_mut() {
            deflate.set_counters(metrics.compression_counters().clone());
        }
        let ws_config = Arc::new(ws_config);
        Arc::new(Self {
            config,
            ws_config,
            router,
            method_ids,
            hub,
            metrics,
            broker: Mutex::new(running),
            limit_config,
            shared_limits,
            clock,
            hooks: HookSet::new(hooks),
            next_connection: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            openrpc: std::sync::OnceLock::new(),
        })
    }

    /// The configuration it was made with (fixed for its life).
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub(crate) fn ws_config(&self) -> &Arc<ws::Config> {
        &self.ws_config
    }

    /// The methods it serves.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The OpenRPC 1.3 document `rpc.discover` answers: the router's methods, the
    /// subscription methods with the declared topics, and the built-ins.
    pub fn openrpc(&self) -> &serde_json::value::RawValue {
        self.openrpc.get_or_init(|| {
            let doc = crate::rpc::openrpc::document(&self.router, &self.config);
            serde_json::value::to_raw_value(&doc).expect("a JSON value serializes")
        })
    }

    /// The pub/sub hub (topics, subscriptions, replay); publish with
    /// [`publish`](Self::publish), which also counts the message in the metrics.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The live counters and histograms; [`snapshot`](Self::snapshot) reads them at an
    /// instant.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn limit_config(&self) -> &Arc<LimitConfig> {
        &self.limit_config
    }

    /// The rate buckets shared by connections: per principal, per origin, per client address.
    pub fn shared_limits(&self) -> &SharedLimits {
        &self.shared_limits
    }

    pub(crate) fn method_id(&self, index: usize) -> MethodId {
        self.method_ids[index]
    }

    pub(crate) fn clock_now(&self) -> Option<Instant> {
        self.clock.as_ref().map(|c| c.now())
    }

    pub(crate) fn hooks(&self) -> &HookSet {
        &self.hooks
    }

    /// The one place a finished call is observed: the built-in metrics and log, then the
    /// application's hooks.
    #[inline]
    pub(crate) fn after_call(&self, call: &CallEnd<'_>) {
        self.hooks.after_call(&self.metrics, call);
    }

    /// The one place an upgraded connection is announced.
    pub(crate) fn connection_opened(&self, connection: &ConnectionOpened<'_>) {
        self.hooks.connection_opened(&self.metrics, connection);
    }

    /// The one place an ended connection is announced.
    pub(crate) fn connection_closed(&self, connection: &ConnectionClosed<'_>) {
        self.hooks.connection_closed(&self.metrics, connection);
    }

    /// Publishes `value` to `topic` (callable from any thread).
    ///
    /// A topic shared with other instances through the broker is numbered by the broker:
    /// the call returns once the message is queued for it, with the answer to come in
    /// [`Published::pending`] (`Published::wait` blocks for it); it fails at once with
    /// [`PublishError::BrokerUnavailable`] while the broker is down.
    ///
    /// `topic` is a [`Topic<T>`](crate::rpc::Topic) (then `value` must be a `T`) or a topic
    /// name.
    pub fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: impl PublishTo<T>,
        value: &T,
    ) -> Result<Published, PublishError> {
        self.hub.publish(topic.topic_name(), value)
    }

    /// The health document served as `rpc.health` and `GET /health`: the metrics' health
    /// with the server's name, its subscription protocol and its broker's state (unavailable
    /// while a configured broker is down).
    pub fn health(&self, now: Instant) -> Health {
        let mut health = self.metrics.health(now);
        health.name.clone_from(&self.config.name);
        let m = &self.hub.config().methods;
        health.pubsub = Some(PubSubInfo::new(
            &m.subscribe,
            &m.unsubscribe,
            &m.notification,
            (&m.lagged, &m.gap, &m.reset),
            m.eth_style,
            self.hub.epoch(),
        ));
        health.broker = self.broker_state();
        if health.broker == Some(BrokerState::Down) {
            health.status = crate::metrics::HealthStatus::Unavailable;
        }
        health
    }

    /// The metrics snapshot served as `rpc.metrics` and `GET /metrics`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut snapshot = self.metrics.snapshot(now);
        // Drops happen in the hub, on the publisher's thread, when an outbox overflows.
        snapshot.lagged_drops = self.hub.stats().dropped;
        snapshot.broker = self.hub.broker_stats();
        snapshot
    }

    /// The broker's state, when the server has one.
    pub fn broker_state(&self) -> Option<BrokerState> {
        self.hub.broker_stats().map(|s| s.state)
    }

    /// Stops the broker driver, if any (idempotent): the broker counts as down from then
    /// on, publishes waiting for it fail. Adapters call it at the end of a shutdown; dropping
    /// the service does it too.
    pub fn stop_broker(&self) {
        let running = self.broker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(running) = running {
            running.stop();
            self.hub.close_bridge();
        }
    }

    /// Records the port the server is bound to, for the snapshot.
    pub fn set_port(&self, port: u16) {
        self.metrics.set_port(port);
    }

    /// Connections currently open.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A fresh connection id, for sessions over transports the caller runs itself.
    pub fn connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    /// Admits a connection: a fresh id, and whether it is within the connection limit.
    pub(crate) fn admit(&self) -> (ConnectionId, bool) {
        let id = self.connection_id();
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

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_broker();
    }
}

/// What every adapter's running server offers besides shutting down: its address, its
/// service, publishing and metrics. Adapters' `Server` types dereference to it.
pub struct Running {
    service: Arc<Service>,
    local_addr: core::net::SocketAddr,
    clock: fn() -> Instant,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl Running {
    /// A server of `service` bound to `local_addr`; `clock` reads the adapter's monotonic
    /// clock for metric snapshots.
    pub fn new(
        service: Arc<Service>,
        local_addr: core::net::SocketAddr,
        clock: fn() -> Instant,
    ) -> Self {
        service.set_port(local_addr.port());
        Self { service, local_addr, clock }
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> core::net::SocketAddr {
        self.local_addr
    }

    /// The shared service: router, hub, metrics.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Publishes `value` to `topic` (a [`Topic<T>`](crate::rpc::Topic), then `value` must be
    /// a `T`, or a topic name); callable from any thread that can reach the server (to publish
    /// from threads of your own, give each a [`publisher`](Self::publisher)).
    pub fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: impl PublishTo<T>,
        value: &T,
    ) -> Result<Published, PublishError> {
        self.service.publish(topic, value)
    }

    /// A cheap handle that publishes to this server's topics from any thread: `Send + Sync +
    /// Clone`, independent of the server value (which stays where it was started, to be shut
    /// down). Publishing through it after the server shut down reaches no subscriber.
    pub fn publisher(&self) -> Publisher {
        Publisher { service: self.service.clone() }
    }

    /// A metrics snapshot; callable from any thread.
    pub fn metrics(&self) -> Snapshot {
        self.service.snapshot((self.clock)())
    }
}

/// Publishes to a server's topics from any thread; from
/// [`Running::publisher`] (`server.publisher()` on every adapter's server).
///
/// Clone it into each thread that publishes; a clone is one reference count.
///
/// ```no_run
/// # fn demo(server: &wsrpc_core::service::Running) {
/// let publisher = server.publisher();
/// std::thread::spawn(move || {
///     for n in 0u64.. {
///         let _ = publisher.publish("ticks", &n);
///         std::thread::sleep(std::time::Duration::from_secs(1));
///     }
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    service: Arc<Service>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Publishes `value` to `topic` (a [`Topic<T>`](crate::rpc::Topic), then `value` must be
    /// a `T`, or a topic name), as [`Service::publish`] does.
    pub fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: impl PublishTo<T>,
        value: &T,
    ) -> Result<Published, PublishError> {
        self.service.publish(topic, value)
    }
}

/// Where a server listens (pure data; adapters do the binding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// Exactly this address (port 0 picks a free port).
    Addr(core::net::SocketAddr),
    /// The first port of `ports` on `ip` that is free, tried in order.
    Range {
        /// The interface.
        ip: core::net::IpAddr,
        /// Ports to try.
        ports: std::ops::RangeInclusive<u16>,
    },
}

impl Default for Bind {
    /// 127.0.0.1, ports 8766..=8800 tried in order.
    fn default() -> Self {
        Self::Range {
            ip: core::net::IpAddr::V4(core::net::Ipv4Addr::LOCALHOST),
            ports: 8766..=8800,
        }
    }
}

impl Bind {
    /// Calls `try_bind` on each candidate address in order until one succeeds; an address
    /// in use moves on to the next port, any other error stops.
    pub fn first_available<T>(
        &self,
        mut try_bind: impl FnMut(core::net::SocketAddr) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        match self {
            Self::Addr(addr) => try_bind(*addr),
            Self::Range { ip, ports } => {
                let mut last =
                    std::io::Error::new(std::io::ErrorKind::AddrInUse, "empty port range");
                for port in ports.clone() {
                    match try_bind(core::net::SocketAddr::new(*ip, port)) {
                        Ok(bound) => return Ok(bound),
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                            log::debug!(target: "wsrpc::http", "port {port} in use; trying the next");
                            last = e;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(last)
            }
        }
    }
}

/// How an adapter starts a server from a [`ServerBuilder`].
pub trait Launch: Sized {
    /// What starting gives: a running server, or why it could not start.
    type Output;
    /// The TLS server configuration the adapter serves `https://` and `wss://` with
    /// (`Arc<rustls::ServerConfig>` for the adapters of this workspace). The core never looks
    /// inside it: TLS lives in the adapters.
    type Tls;
    /// Binds and starts serving.
    fn launch(builder: ServerBuilder<Self>) -> Self::Output;
}

/// Everything a server is made of: router, configuration and where to listen. The same
/// builder shape serves every adapter (`wsrpc_smol::Server::builder()`, …); the adapter's
/// [`Launch`] gives [`start`](Self::start) its meaning.
pub struct ServerBuilder<L: Launch> {
    tls: Option<L::Tls>,
    router: Router,
    config: ServiceConfig,
    bind: Bind,
    measure_handlers: bool,
    threads: Threads,
    broker: Option<Box<dyn BrokerDriver>>,
    hooks: Vec<Arc<dyn Hook>>,
    launcher: std::marker::PhantomData<fn() -> L>,
}

/// Thread counts for adapters that run their own threads (the blocking adapter); async
/// adapters use their runtime's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Threads {
    /// Threads that read, run the core and write, each serving many connections \[1\].
    pub io: usize,
    /// Threads that run async handlers and methods registered as blocking \[4\].
    pub workers: usize,
}

impl Default for Threads {
    fn default() -> Self {
        Self { io: 1, workers: 4 }
    }
}

/// Why a server did not start: what `Server::builder()…start()` returns as its error (a
/// router that refused a method name, or the bind).
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A method name was refused (registered twice, or reserved).
    Router(crate::rpc::RouterError),
    /// No address could be bound (or another I/O failure while starting).
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Router(e) => write!(f, "cannot serve the router: {e}"),
            Self::Io(e) => write!(f, "cannot start the server: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Router(e) => Some(e),
            Self::Io(e) => Some(e),
        }
    }
}

impl From<StartError> for std::io::Error {
    /// For callers that report I/O errors: a refused router is invalid input.
    fn from(e: StartError) -> Self {
        match e {
            StartError::Io(e) => e,
            StartError::Router(r) => Self::new(std::io::ErrorKind::InvalidInput, r),
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// What an adapter starts a server from (see [`ServerBuilder::into_parts`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct ServerParts {
    /// The shared state of the server's connections.
    pub service: Arc<Service>,
    /// Where to listen.
    pub bind: Bind,
    /// Thread counts, for adapters with their own threads.
    pub threads: Threads,
}

impl<L: Launch> std::fmt::Debug for ServerBuilder<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("tls", &self.tls.is_some())
            .field("router", &self.router)
            .field("config", &self.config)
            .field("bind", &self.bind)
            .field("broker", &self.broker.is_some())
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl<L: Launch> Default for ServerBuilder<L> {
    fn default() -> Self {
        Self {
            tls: None,
            router: Router::new(),
            config: ServiceConfig::default(),
            bind: Bind::default(),
            measure_handlers: true,
            threads: Threads::default(),
            broker: None,
            hooks: Vec::new(),
            launcher: std::marker::PhantomData,
        }
    }
}

impl<L: Launch> ServerBuilder<L> {
    /// Binds and starts serving: the adapter's running server (`Result<Server, StartError>`
    /// for this workspace's adapters), or why it could not start (a bind failure, a method
    /// name the router refused).
    pub fn start(self) -> L::Output {
        L::launch(self)
    }
}

impl<L: Launch> ServerBuilder<L> {
    /// A builder with every default (see [`ServiceConfig`]): no methods, 127.0.0.1 on the
    /// first free port of 8766..=8800. Adapters give it as `Server::builder()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves TLS: `https://` and `wss://` on the port, with this configuration (a
    /// `rustls::ServerConfig`, or an `Arc` of one, for this workspace's adapters). A plain
    /// request on the port is refused with 400 and counted. The running server can swap the
    /// configuration for new connections (a renewed certificate) with its `set_tls`.
    pub fn tls(mut self, config: impl Into<L::Tls>) -> Self {
        self.tls = Some(config.into());
        self
    }

    /// The TLS configuration given to [`tls`](Self::tls), for adapters.
    pub fn tls_config(&self) -> Option<&L::Tls> {
        self.tls.as_ref()
    }

    /// The methods to serve (a [`Router`], or a `Router<S>` made with
    /// [`Router::with_state`]).
    pub fn router<S: Send + Sync + 'static>(mut self, router: Router<S>) -> Self {
        self.router = router.into_stateless();
        self
    }

    /// Replaces the whole configuration (`let mut c = ServiceConfig::default(); c.name = ..;
    /// builder.config(c)`); the setters after it change single parts.
    pub fn config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// Listen on exactly `addr` (port 0: any free port).
    pub fn bind(mut self, addr: core::net::SocketAddr) -> Self {
        self.bind = Bind::Addr(addr);
        self
    }

    /// Listen on the first free port of `ports` on `ip`.
    pub fn bind_range(
        mut self,
        ip: core::net::IpAddr,
        ports: std::ops::RangeInclusive<u16>,
    ) -> Self {
        self.bind = Bind::Range { ip, ports };
        self
    }

    /// Listen per `bind` (an address or a range).
    pub fn listen(mut self, bind: Bind) -> Self {
        self.bind = bind;
        self
    }

    /// Measure how long synchronous handlers run with the adapter's clock \[yes\]; without it
    /// their latency is recorded from the times passed in.
    pub fn measure_handlers(mut self, measure: bool) -> Self {
        self.measure_handlers = measure;
        self
    }

    /// I/O threads of the blocking adapter \[1\]; each serves many connections.
    pub fn io_threads(mut self, n: usize) -> Self {
        self.threads.io = n.max(1);
        self
    }

    /// Worker threads of the blocking adapter, for async handlers and methods registered as
    /// blocking \[4\].
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.threads.workers = n.max(1);
        self
    }

    /// The configuration the setters have made so far (for an extension trait that reads it,
    /// such as `wsrpc_redis::RedisExt`).
    pub fn service_config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Which `Origin` headers may connect, on upgrades and plain HTTP: `OriginPolicy::Loopback`
    /// (the default), `OriginPolicy::allow_list(["https://app.example.org"])?` or
    /// `OriginPolicy::Any`; a refused origin gets 403.
    pub fn origin_policy(mut self, policy: crate::auth::OriginPolicy) -> Self {
        self.config.auth.origin = policy;
        self
    }

    /// Checks the token a client brings (`Authorization: Bearer` or `?token=`) and names its
    /// principal: `Hs256Jwt::new(secret)`, `StaticToken::new(principal, token)` or your own
    /// [`Authenticator`](crate::auth::Authenticator). A bad token gets 401; no token stays
    /// anonymous unless [`require_auth`](Self::require_auth).
    pub fn authenticator(mut self, authenticator: impl crate::auth::Authenticator) -> Self {
        self.config.auth.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// With `true`, requests without a valid token get 401 (with `WWW-Authenticate: Bearer`)
    /// instead of running as the anonymous principal; off by default.
    pub fn require_auth(mut self, required: bool) -> Self {
        self.config.auth.require_auth = required;
        self
    }

    /// Rate tokens: method classes, their tiers, and what calls are keyed by (per
    /// connection and per principal by default; `LimitConfig::wallet()` adds per origin).
    /// Keeps the trusted proxies set with [`trusted_proxies`](Self::trusted_proxies) when
    /// `limits` has none.
    pub fn limits(mut self, limits: LimitConfig) -> Self {
        let proxies = std::mem::take(&mut self.config.limits.trusted_proxies);
        self.config.limits = limits;
        if self.config.limits.trusted_proxies.is_empty() {
            self.config.limits.trusted_proxies = proxies;
        }
        self
    }

    /// Reverse proxies whose `Forwarded` or `X-Forwarded-For` header names the client (none
    /// by default): the address per-address rate limits, the loopback check of `/metrics` and
    /// the refusal logs use.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.config.limits.trusted_proxies = proxies;
        self
    }

    /// Who may read the health details and metrics ([`MonitoringAccess::Restricted`]: loopback
    /// clients, or authenticated ones under `require_auth`).
    pub fn monitoring(mut self, access: MonitoringAccess) -> Self {
        self.config.http.monitoring = access;
        self
    }

    /// Pub/sub limits and policies ([`HubConfig`]: subscriptions per connection, topics,
    /// replay, outboxes and the slow-consumer policy, topic policies, subscription method
    /// names); start from `HubConfig::default()` and change fields.
    pub fn hub(mut self, hub: HubConfig) -> Self {
        self.config.hub = hub;
        self
    }

    /// WebSocket limits, timers and compression ([`ws::Config`]: frame and message sizes, the
    /// handshake timeout, heartbeat, `enable_compression()`); start from
    /// `ws::Config::default()` and change fields.
    pub fn websocket(mut self, ws: ws::Config) -> Self {
        self.config.ws = ws;
        self
    }

    /// JSON-RPC limits ([`RpcConfig`]: batch size, request and response sizes, async calls in
    /// flight per connection); start from `RpcConfig::default()` and change fields.
    pub fn rpc(mut self, rpc: RpcConfig) -> Self {
        self.config.rpc = rpc;
        self
    }

    /// The name `rpc.health` reports, which port-scanning clients check.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Answers `GET path` (and `HEAD`) with `body` as `content_type`.
    pub fn static_route(
        mut self,
        path: impl Into<String>,
        content_type: impl Into<String>,
        body: impl Into<Arc<[u8]>>,
    ) -> Self {
        self.config.http.routes.push(crate::http::StaticRoute::new(path, content_type, body));
        self
    }

    /// Most connections served at once (1024 by default); one more is answered HTTP 503 and
    /// closed.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Requires every request to carry an HMAC-SHA256 signature made with the shared key
    /// (`MessageSigner::new(key)`) and signs every response; a bad signature gets -32004. Off
    /// by default.
    pub fn signing(mut self, signer: MessageSigner) -> Self {
        self.config.signing = Some(signer);
        self
    }

    /// Shares topics with other server instances through a broker, driven by `driver`
    /// (`wsrpc_redis::RedisExt::redis` sets a Redis one). Which topics is
    /// `config.hub.bridge.topics` \[all\].
    pub fn broker(mut self, driver: impl BrokerDriver) -> Self {
        self.broker = Some(Box::new(driver));
        self
    }

    /// [`broker`](Self::broker) with a driver already boxed (chosen at run time, say).
    pub fn broker_boxed(mut self, driver: Box<dyn BrokerDriver>) -> Self {
        self.broker = Some(driver);
        self
    }

    /// Runs `hook` at every call and WebSocket connection of the server, after the
    /// built-in metrics and log and after the hooks registered before it (see
    /// [`rpc::hooks`](crate::rpc::hooks) for the points and their order).
    /// [`before_call`](crate::rpc::hooks::before_call) and
    /// [`after_call`](crate::rpc::hooks::after_call) make one from a closure.
    pub fn hook(mut self, hook: impl Hook + 'static) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Builds the service (for adapters), started at `now`; `clock` measures synchronous
    /// handlers; a broker driver given to [`broker`](Self::broker) is started here. Fails
    /// when the router refused a method name.
    pub fn into_parts(
        self,
        now: Now,
        clock: Option<Box<dyn Clock>>,
    ) -> Result<ServerParts, StartError> {
        self.router.check().map_err(StartError::Router)?;
        let clock = if self.measure_handlers { clock } else { None };
        let service = Service::build(self.config, self.router, now, clock, self.broker, self.hooks);
        Ok(ServerParts { service, bind: self.bind, threads: self.threads })
    }
}
