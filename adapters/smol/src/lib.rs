//! wsrpc on [smol](https://docs.rs/smol): a JSON-RPC 2.0 over WebSocket server (HTTP on the
//! same port) and a reconnecting client. This crate only supplies spawning and timers; the
//! drive loop and the async-io listener are `wsrpc-futures`, the protocol is `wsrpc-core`.
//!
//! ```no_run
//! use wsrpc_smol::{Router, Server, connect};
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

use std::time::Instant;

pub use wsrpc_core::prelude::*;
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

/// A running server on smol: `Server::builder()…start()`, then `local_addr`, `publish`, `publisher`,
/// `metrics` and `shutdown(deadline).await`.
pub type Server = net::Server<SmolRuntime>;

/// Starts servers on smol (the `Launch` of [`Server::builder`]).
pub type Smol = net::Launcher<SmolRuntime>;

/// Connects a client to `url` (`ws://host:port/path`, or `wss://` over TLS: the options'
/// `rustls::ClientConfig` given with [`TlsOptions::tls`], else this build's default trust).
pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
    net::connect_client::<SmolRuntime>(url, options).await
}
