//! wsrpc on [smol](https://docs.rs/smol): a JSON-RPC 2.0 over WebSocket server (HTTP on the
//! same port) and a reconnecting client. This crate only supplies spawning and timers; the
//! drive loop and the async-io listener are `wsrpc-futures`, the protocol is `wsrpc-core`.
//!
//! A server with one method and a topic, and a client that calls it and subscribes:
//!
//! ```
//! use std::time::Duration;
//! use wsrpc_smol::{ClientOptions, Router, Server, SubscriptionEvent, connect};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     smol::block_on(async {
//!         let mut router = Router::new();
//!         router.method("add", |(a, b): (i64, i64), _ctx| Ok(a + b));
//!         // Without `.bind(..)`: 127.0.0.1, the first free port of 8766..=8800.
//!         let server = Server::builder().router(router).bind("127.0.0.1:0".parse()?).start()?;
//!
//!         let url = format!("ws://{}", server.local_addr());
//!         let client = connect(&url, ClientOptions::default()).await?;
//!         let sum: i64 = client.call("add", (2, 3)).await?;
//!         assert_eq!(sum, 5);
//!
//!         let mut news = client.subscribe("news").await?;
//!         server.publish("news", "hello")?;
//!         match news.next().await {
//!             Some(SubscriptionEvent::Notification { seq, value }) => {
//!                 assert_eq!((seq, value.get()), (1, r#""hello""#));
//!             }
//!             other => panic!("expected the notification, got {other:?}"),
//!         }
//!
//!         client.close().await; // close 1000, so the server logs a clean close
//!         server.shutdown(Duration::from_secs(5)).await; // 1001 to every peer left
//!         Ok(())
//!     })
//! }
//! ```
//!
//! [`Server`] is the running server, [`connect`] the client; everything else an application
//! names (the [`Router`], [`ClientOptions`], [`ClientError`], the configuration) is
//! re-exported from `wsrpc-core` at the top level, and the configuration layers as modules
//! ([`auth`], [`hub`], [`limit`], [`metrics`], [`ws`]). TLS (`wss://`, `https://`) goes
//! through [`tls`] and [`TlsOptions`]; see the cargo features in the README.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Instant;

pub use wsrpc_core::prelude::*;
use wsrpc_core::service::Launch;
pub use wsrpc_core::{auth, hub, limit, metrics, ws};
pub use wsrpc_futures::tls::ClientStream;
pub use wsrpc_futures::wsrpc_tls as tls;
use wsrpc_futures::{BoxFuture, Runtime, net};
pub use wsrpc_futures::{Client, Subscription, TlsOptions};

/// The smol runtime: `smol::spawn`, `smol::unblock` and `smol::Timer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        smol::spawn(future).detach();
    }

    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send + 'static>) {
        smol::unblock(f).detach();
    }

    fn timer(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            smol::Timer::at(deadline).await;
        })
    }
}

/// A running server on smol: start it with [`Server::builder`]`()…`[`start`](ServerBuilder::start)`()?`,
/// then [`local_addr`](wsrpc_core::service::Running::local_addr), [`publish`](wsrpc_core::service::Running::publish),
/// [`publisher`](wsrpc_core::service::Running::publisher) (a cloneable handle for other threads),
/// [`metrics`](wsrpc_core::service::Running::metrics), [`serve`](net::Server::serve) (a stream you accepted
/// yourself), [`set_tls`](net::Server::set_tls) (a renewed certificate), and
/// [`shutdown`](Self::shutdown)`(deadline).await`.
///
/// Those methods are reached through [`Deref`](std::ops::Deref) to the runtime-generic
/// [`wsrpc_futures::net::Server`], listed below under "Methods from Deref". Dropping the
/// server stops accepting and closes its connections gracefully in the background.
#[derive(Debug)]
pub struct Server(net::Server<SmolRuntime>);

impl Server {
    /// A builder: `.router(router)`, the configuration setters, `.bind(addr)`, `.tls(config)`;
    /// then `.start()` binds and returns the running server or a [`StartError`].
    pub fn builder() -> ServerBuilder<Smol> {
        ServerBuilder::new()
    }

    /// Graceful shutdown: stops accepting, answers in-flight calls, closes every WebSocket
    /// with 1001 and drops what is still open after `deadline`; completes when every
    /// connection is gone.
    pub async fn shutdown(self, deadline: std::time::Duration) {
        self.0.shutdown(deadline).await;
    }

    /// The runtime-generic server inside, for code written against `wsrpc-futures`.
    pub fn into_inner(self) -> net::Server<SmolRuntime> {
        self.0
    }
}

impl std::ops::Deref for Server {
    type Target = net::Server<SmolRuntime>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Starts servers on smol: the [`Launch`] behind [`Server::builder`], named to keep a builder
/// (`ServerBuilder<Smol>`) before starting it.
#[derive(Debug)]
pub struct Smol(());

impl Launch for Smol {
    type Output = Result<Server, StartError>;
    type Tls = std::sync::Arc<tls::ServerConfig>;

    fn launch(builder: ServerBuilder<Self>) -> Self::Output {
        net::launch::<SmolRuntime, _>(builder).map(Server)
    }
}

/// Connects a client to `url` (`ws://host:port/path`, or `wss://` over TLS: the options'
/// `rustls::ClientConfig` given with [`TlsOptions::tls`], else this build's default trust).
pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
    net::connect_client::<SmolRuntime>(url, options).await
}
