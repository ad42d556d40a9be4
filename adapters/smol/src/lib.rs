//! wsrpc on [smol](https://docs.rs/smol): a JSON-RPC 2.0 over WebSocket server (HTTP on the
//! same port) and a reconnecting client. This crate only supplies spawning and timers; the
//! drive loop is `wsrpc-futures`, the protocol is `wsrpc-core`.
//!
//! ```no_run
//! use wsrpc_smol::{Server, connect};
//! use wsrpc_smol::wsrpc_core::rpc::Router;
//!
//! smol::block_on(async {
//!     let mut router = Router::new();
//!     router.method("add", |(a, b): (i64, i64), _| Ok(a + b));
//!     let server = Server::builder().router(router).start()?;
//!     let client = connect(&format!("ws://{}", server.local_addr()), Default::default()).await?;
//!     let sum: i64 = client.call("add", (2, 3)).await?;
//!     assert_eq!(sum, 5);
//!     server.shutdown(std::time::Duration::from_secs(5)).await;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use wsrpc_core;
use wsrpc_core::service::{Launch, ServerBuilder};
use wsrpc_futures::server::ServerHandle;
use wsrpc_futures::{BoxFuture, Runtime, SystemClock, net};
pub use wsrpc_futures::{Client, ClientError, ClientOptions, Subscription, SubscriptionEvent};

/// The smol runtime: `smol::spawn` and `smol::Timer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        smol::spawn(future).detach();
    }

    fn timer(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            smol::Timer::at(deadline).await;
        })
    }
}

/// Starts servers on smol (the [`Launch`] of [`Server::builder`]).
#[derive(Debug)]
pub struct Smol;

impl Launch for Smol {
    type Output = io::Result<Server>;

    fn launch(builder: ServerBuilder<Self>) -> io::Result<Server> {
        let rt = SmolRuntime;
        let (service, bind) =
            builder.into_service(rt.now(), rt.unix_time(), Some(Box::new(SystemClock)));
        net::start(rt, service, &bind).map(Server)
    }
}

/// A running server. Derefs to [`ServerHandle`] for `local_addr`, `publish`, `metrics`.
#[derive(Debug)]
pub struct Server(ServerHandle);

impl Server {
    /// A builder: router, configuration, where to listen; then `.start()`.
    pub fn builder() -> ServerBuilder<Smol> {
        ServerBuilder::new()
    }

    /// Graceful shutdown: stop accepting, answer in-flight calls, close every WebSocket with
    /// 1001, drop what is left after `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        self.0.shutdown(&SmolRuntime, deadline).await;
    }
}

impl Deref for Server {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.0
    }
}

/// Connects a client to `url` (`ws://host:port/path`).
pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
    Client::connect(SmolRuntime, Arc::new(net::connect), url, options).await
}
