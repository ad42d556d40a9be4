//! wsrpc on [async-std](https://docs.rs/async-std): a JSON-RPC 2.0 over WebSocket server (HTTP
//! on the same port) and a reconnecting client.
//!
//! async-std is discontinued upstream (RUSTSEC-2025-0052); this adapter stays thin for users
//! who still run it: it only supplies `async_std::task::spawn`, and shares the async-io based
//! listener, connector, timer and drive loop with `wsrpc-smol` through `wsrpc-futures`.
//!
//! ```no_run
//! use wsrpc_async_std::{Router, Server, connect};
//!
//! async_std::task::block_on(async {
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

/// The async-std runtime: `async_std::task::spawn`, `spawn_blocking` and the async-io timer
/// it runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStdRuntime;

impl Runtime for AsyncStdRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        async_std::task::spawn(future);
    }

    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send + 'static>) {
        async_std::task::spawn_blocking(f);
    }

    fn timer(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            async_io::Timer::at(deadline).await;
        })
    }
}

/// A running server on async-std: `Server::builder()…start()`, then `local_addr`, `publish`, `publisher`,
/// `metrics` and `shutdown(deadline).await`.
pub type Server = net::Server<AsyncStdRuntime>;

/// Starts servers on async-std (the `Launch` of [`Server::builder`]).
pub type AsyncStd = net::Launcher<AsyncStdRuntime>;

/// Connects a client to `url` (`ws://host:port/path`, or `wss://` over TLS: the options'
/// `rustls::ClientConfig` given with [`TlsOptions::tls`], else this build's default trust).
pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
    net::connect_client::<AsyncStdRuntime>(url, options).await
}
