//! One blocking facade over the three adapters, so every integration test runs against each
//! of them (see the `adapter_tests!` macro in `tests/adapters.rs`).
#![allow(missing_docs, clippy::missing_errors_doc)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use wsrpc_core::metrics::Snapshot;
use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::{ClientError, ClientOptions, SubscriptionEvent};
use wsrpc_core::rpc::hooks::Hook;
use wsrpc_core::service::{Bind, ServerBuilder, ServiceConfig};

pub mod raw;
pub mod tls;

use std::sync::Arc;

use wsrpc_tls::{ServerConfig, TlsOptions};

/// A running server of some adapter.
pub trait TestServer: Send + Sync {
    fn addr(&self) -> SocketAddr;
    /// Whether it serves TLS.
    fn is_tls(&self) -> bool;
    fn url(&self) -> String {
        let scheme = if self.is_tls() { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr())
    }
    /// Serves new connections with `config`; false when it was started without TLS.
    fn set_tls(&self, config: Arc<ServerConfig>) -> bool;
    fn publish(&self, topic: &str, value: &Value) -> u64;
    fn metrics(&self) -> Snapshot;
    fn connections(&self) -> usize;
    fn shutdown(self: Box<Self>, deadline: Duration);
}

/// A client of some adapter, used blockingly.
pub trait TestClient: Send + Sync {
    fn call(&self, method: &str, params: Value) -> Result<Value, ClientError>;
    fn call_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError>;
    fn notify(&self, method: &str, params: Value) -> Result<(), ClientError>;
    fn batch(
        &self,
        calls: Vec<(&str, Value)>,
    ) -> Result<Vec<Result<Value, ClientError>>, ClientError>;
    fn subscribe(&self, topic: &str) -> Result<Box<dyn TestSubscription>, ClientError> {
        self.subscribe_filtered(topic, Value::Null)
    }
    /// With a filter param for the server's subscription handler (`null`: none).
    fn subscribe_filtered(
        &self,
        topic: &str,
        filter: Value,
    ) -> Result<Box<dyn TestSubscription>, ClientError>;
    fn close(self: Box<Self>);
}

pub trait TestSubscription: Send {
    /// The next event within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<SubscriptionEvent>;
}

/// An adapter under test.
pub trait Adapter: 'static {
    const NAME: &'static str;
    fn start(
        config: ServiceConfig,
        router: Router,
        bind: Bind,
    ) -> std::io::Result<Box<dyn TestServer>> {
        Self::start_with(config, router, bind, None)
    }
    /// Starts a server, serving TLS with `tls`.
    fn start_with(
        config: ServiceConfig,
        router: Router,
        bind: Bind,
        tls: Option<Arc<ServerConfig>>,
    ) -> std::io::Result<Box<dyn TestServer>> {
        Self::start_hooked(config, router, bind, tls, Vec::new())
    }
    /// [`start_with`](Self::start_with), with `hooks` registered (`ServerBuilder::hook`).
    fn start_hooked(
        config: ServiceConfig,
        router: Router,
        bind: Bind,
        tls: Option<Arc<ServerConfig>>,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> std::io::Result<Box<dyn TestServer>>;
    fn connect(url: &str, options: ClientOptions) -> Result<Box<dyn TestClient>, ClientError>;
}

/// Adapter `A` over TLS: its servers serve the shared test PKI's leaf (`wss://`, `https://`)
/// and its clients trust the test CA, so the integration tests run unchanged over TLS.
#[derive(Debug)]
pub struct Tls<A>(std::marker::PhantomData<A>);

impl<A: Adapter> Adapter for Tls<A> {
    const NAME: &'static str = A::NAME;
    fn start_hooked(
        config: ServiceConfig,
        router: Router,
        bind: Bind,
        tls: Option<Arc<ServerConfig>>,
        hooks: Vec<Arc<dyn Hook>>,
    ) -> std::io::Result<Box<dyn TestServer>> {
        let tls = Some(tls.unwrap_or_else(|| tls::pki().server.clone()));
        A::start_hooked(config, router, bind, tls, hooks)
    }
    fn connect(url: &str, options: ClientOptions) -> Result<Box<dyn TestClient>, ClientError> {
        A::connect(url, options.tls(tls::pki().client.clone()))
    }
}

// Takes the box by value to fit `Result::map` over the adapters' raw results.
#[allow(clippy::boxed_local)]
fn raw_to_value(raw: Box<serde_json::value::RawValue>) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn configure<L: wsrpc_core::service::Launch<Tls = Arc<ServerConfig>>>(
    b: ServerBuilder<L>,
    config: ServiceConfig,
    router: Router,
    bind: Bind,
    tls: Option<Arc<ServerConfig>>,
) -> ServerBuilder<L> {
    let b = b.config(config).router(router).listen(bind);
    match tls {
        Some(tls) => b.tls(tls),
        None => b,
    }
}

macro_rules! async_adapter {
    ($name:ident, $label:expr, $krate:ident, $block_on:path, $timeout:expr) => {
        #[derive(Debug)]
        pub struct $name;

        struct Server(Option<$krate::Server>, bool);

        impl TestServer for Server {
            fn addr(&self) -> SocketAddr {
                self.0.as_ref().expect("running").local_addr()
            }
            fn is_tls(&self) -> bool {
                self.1
            }
            fn set_tls(&self, config: Arc<ServerConfig>) -> bool {
                self.0.as_ref().expect("running").set_tls(config)
            }
            fn publish(&self, topic: &str, value: &Value) -> u64 {
                self.0.as_ref().expect("running").publish(topic, value).expect("valid topic").seq
            }
            fn metrics(&self) -> Snapshot {
                self.0.as_ref().expect("running").metrics()
            }
            fn connections(&self) -> usize {
                self.0.as_ref().expect("running").connections()
            }
            fn shutdown(mut self: Box<Self>, deadline: Duration) {
                if let Some(s) = self.0.take() {
                    $block_on(s.shutdown(deadline));
                }
            }
        }

        impl Drop for Server {
            fn drop(&mut self) {
                if let Some(s) = self.0.take() {
                    $block_on(s.shutdown(Duration::from_millis(200)));
                }
            }
        }

        struct Client($krate::Client);

        impl TestClient for Client {
            fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
                $block_on(self.0.call(method, params))
            }
            fn call_with_timeout(
                &self,
                method: &str,
                params: Value,
                timeout: Duration,
            ) -> Result<Value, ClientError> {
                $block_on(self.0.call_with_timeout(method, params, timeout))
            }
            fn notify(&self, method: &str, params: Value) -> Result<(), ClientError> {
                self.0.notify(method, params)
            }
            fn batch(
                &self,
                calls: Vec<(&str, Value)>,
            ) -> Result<Vec<Result<Value, ClientError>>, ClientError> {
                let results = $block_on(self.0.batch(calls))?;
                Ok(results.into_iter().map(|r| r.map(raw_to_value)).collect())
            }
            fn subscribe_filtered(
                &self,
                topic: &str,
                filter: Value,
            ) -> Result<Box<dyn TestSubscription>, ClientError> {
                Ok(Box::new(Subscription($block_on(self.0.subscribe_filtered(topic, filter))?)))
            }
            fn close(self: Box<Self>) {
                $block_on(self.0.close());
            }
        }

        struct Subscription($krate::Subscription);

        impl TestSubscription for Subscription {
            fn next(&mut self, timeout: Duration) -> Option<SubscriptionEvent> {
                let sub = &mut self.0;
                $block_on(async move {
                    let next = std::pin::pin!(sub.next());
                    let timer = std::pin::pin!($timeout(timeout));
                    match futures_lite_select(next, timer).await {
                        Either::Left(ev) => ev,
                        Either::Right(()) => None,
                    }
                })
            }
        }

        impl Adapter for $name {
            const NAME: &'static str = $label;
            fn start_hooked(
                config: ServiceConfig,
                router: Router,
                bind: Bind,
                tls: Option<Arc<ServerConfig>>,
                hooks: Vec<Arc<dyn Hook>>,
            ) -> std::io::Result<Box<dyn TestServer>> {
                let is_tls = tls.is_some();
                let builder = configure($krate::Server::builder(), config, router, bind, tls);
                let builder = hooks.into_iter().fold(builder, |b, h| b.hook(h));
                Ok(Box::new(Server(Some(builder.start()?), is_tls)))
            }
            fn connect(
                url: &str,
                options: ClientOptions,
            ) -> Result<Box<dyn TestClient>, ClientError> {
                Ok(Box::new(Client($block_on($krate::connect(url, options))?)))
            }
        }
    };
}

#[derive(Debug)]
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Completes with whichever of two futures finishes first.
pub async fn futures_lite_select<A: std::future::Future + Unpin, B: std::future::Future + Unpin>(
    mut a: A,
    mut b: B,
) -> Either<A::Output, B::Output> {
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = std::pin::Pin::new(&mut a).poll(cx) {
            return std::task::Poll::Ready(Either::Left(v));
        }
        std::pin::Pin::new(&mut b).poll(cx).map(Either::Right)
    })
    .await
}

async fn smol_sleep(d: Duration) {
    smol::Timer::after(d).await;
}

async fn async_std_sleep(d: Duration) {
    async_std::task::sleep(d).await;
}

pub mod smol_adapter {
    use super::*;
    async_adapter!(Smol, "smol", wsrpc_smol, smol::block_on, smol_sleep);
}

pub mod async_std_adapter {
    use super::*;
    async_adapter!(
        AsyncStd,
        "async-std",
        wsrpc_async_std,
        async_std::task::block_on,
        async_std_sleep
    );
}

pub use async_std_adapter::AsyncStd;
pub use smol_adapter::Smol;

pub mod blocking_adapter {
    use super::*;

    #[derive(Debug)]
    pub struct Blocking;

    struct Server(Option<wsrpc_blocking::Server>, bool);

    impl TestServer for Server {
        fn addr(&self) -> SocketAddr {
            self.0.as_ref().expect("running").local_addr()
        }
        fn is_tls(&self) -> bool {
            self.1
        }
        fn set_tls(&self, config: Arc<ServerConfig>) -> bool {
            self.0.as_ref().expect("running").set_tls(config)
        }
        fn publish(&self, topic: &str, value: &Value) -> u64 {
            self.0.as_ref().expect("running").publish(topic, value).expect("valid topic").seq
        }
        fn metrics(&self) -> Snapshot {
            self.0.as_ref().expect("running").metrics()
        }
        fn connections(&self) -> usize {
            self.0.as_ref().expect("running").connections()
        }
        fn shutdown(mut self: Box<Self>, deadline: Duration) {
            if let Some(s) = self.0.take() {
                s.shutdown(deadline);
            }
        }
    }

    struct Client(wsrpc_blocking::Client);

    impl TestClient for Client {
        fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
            self.0.call(method, params)
        }
        fn call_with_timeout(
            &self,
            method: &str,
            params: Value,
            timeout: Duration,
        ) -> Result<Value, ClientError> {
            self.0.call_with_timeout(method, params, timeout)
        }
        fn notify(&self, method: &str, params: Value) -> Result<(), ClientError> {
            self.0.notify(method, params)
        }
        fn batch(
            &self,
            calls: Vec<(&str, Value)>,
        ) -> Result<Vec<Result<Value, ClientError>>, ClientError> {
            let results = self.0.batch(calls)?;
            Ok(results.into_iter().map(|r| r.map(raw_to_value)).collect())
        }
        fn subscribe_filtered(
            &self,
            topic: &str,
            filter: Value,
        ) -> Result<Box<dyn TestSubscription>, ClientError> {
            Ok(Box::new(Subscription(self.0.subscribe_filtered(topic, filter)?)))
        }
        fn close(self: Box<Self>) {
            self.0.close();
        }
    }

    struct Subscription(wsrpc_blocking::Subscription);

    impl TestSubscription for Subscription {
        fn next(&mut self, timeout: Duration) -> Option<SubscriptionEvent> {
            self.0.recv_timeout(timeout).ok()
        }
    }

    impl Adapter for Blocking {
        const NAME: &'static str = "blocking";
        fn start_hooked(
            config: ServiceConfig,
            router: Router,
            bind: Bind,
            tls: Option<Arc<ServerConfig>>,
            hooks: Vec<Arc<dyn Hook>>,
        ) -> std::io::Result<Box<dyn TestServer>> {
            let is_tls = tls.is_some();
            let builder = configure(wsrpc_blocking::Server::builder(), config, router, bind, tls);
            let builder = hooks.into_iter().fold(builder, |b, h| b.hook(h));
            Ok(Box::new(Server(Some(builder.start()?), is_tls)))
        }
        fn connect(url: &str, options: ClientOptions) -> Result<Box<dyn TestClient>, ClientError> {
            Ok(Box::new(Client(wsrpc_blocking::connect(url, options)?)))
        }
    }
}

pub use blocking_adapter::Blocking;

/// Generous bound for anything a test waits on.
pub const LONG: Duration = Duration::from_secs(10);

/// Defaults without rate tokens (tests call faster than the default 10/s allows; rate
/// limiting has tests of its own).
pub fn unlimited_config() -> ServiceConfig {
    let mut c = ServiceConfig::default();
    c.limits = wsrpc_core::limit::LimitConfig::disabled();
    c
}

/// Polls `cond` every 5 ms until it holds, failing after [`LONG`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + LONG;
    while !cond() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The server's error count of `kind` ("protocol", "handshake", "auth", …).
pub fn errors(server: &dyn TestServer, kind: &str) -> u64 {
    server.metrics().errors.get(kind).copied().unwrap_or(0)
}

/// Serialises the tests of one file that measure process-wide things (RSS, descriptors).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
