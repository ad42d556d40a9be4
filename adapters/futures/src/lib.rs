//! The async drive loop of wsrpc over any `futures-io` stream, shared by `wsrpc-smol` and
//! `wsrpc-async-std`. Use one of those for an application; use this crate to run wsrpc on
//! another runtime, or over streams you accept or open yourself.
//!
//! One loop drives both kinds of [`Endpoint`](wsrpc_core::engine::Endpoint): a server
//! connection on an accepted stream, and the reconnecting [`Client`], which opens its own
//! transports through a [`Connector`]. A [`Runtime`] supplies spawning, timers and the
//! clocks; with the `async-io` feature (default), [`net`] has the TCP listener and connector
//! both runtimes use, and [`tls`] puts `futures-rustls` on them (`wss://` clients, TLS
//! ports). [`serve_messages`] runs the JSON-RPC session over whole text messages you bring
//! (say, an async-tungstenite `WebSocketStream`).
//!
//! A runtime is three functions. Here is smol's, then a server and a client on it:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use wsrpc_futures::wsrpc_core::prelude::{ClientOptions, Router};
//! use wsrpc_futures::{BoxFuture, Runtime, net};
//!
//! #[derive(Clone, Copy, Debug, Default)]
//! struct Smol;
//!
//! impl Runtime for Smol {
//!     fn spawn(&self, future: BoxFuture<()>) {
//!         smol::spawn(future).detach();
//!     }
//!     fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send + 'static>) {
//!         smol::unblock(f).detach();
//!     }
//!     fn timer(&self, deadline: Instant) -> BoxFuture<()> {
//!         Box::pin(async move {
//!             smol::Timer::at(deadline).await;
//!         })
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     smol::block_on(async {
//!         let mut router = Router::new();
//!         router.method("add", |(a, b): (i64, i64), _ctx| Ok(a + b));
//!         let server =
//!             net::Server::<Smol>::builder().router(router).bind("127.0.0.1:0".parse()?).start()?;
//!
//!         let url = format!("ws://{}", server.local_addr());
//!         let client = net::connect_client::<Smol>(&url, ClientOptions::default()).await?;
//!         let sum: i64 = client.call("add", (2, 3)).await?;
//!         assert_eq!(sum, 5);
//!
//!         client.close().await;
//!         server.shutdown(Duration::from_secs(5)).await;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! Without the `async-io` feature, serve streams from your own listener with
//! [`ServerHandle::serve`] and give [`Client::connect`] a [`Connector`] that opens them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::future::Future;
use std::pin::Pin;
use std::time::{Instant, SystemTime};

mod client;
mod completions;
mod drive;
mod messages;
#[cfg(feature = "async-io")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-io")))]
pub mod net;
mod server;
#[cfg(feature = "async-io")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-io")))]
pub mod tls;

pub use client::{Client, Subscription};
pub use drive::Connector;
pub use messages::serve_messages;
pub use server::ServerHandle;
pub use wsrpc_core;
pub use wsrpc_tls::{self, TlsOptions};

/// A boxed `Send` future: what [`Runtime::spawn`] takes and [`Runtime::timer`] returns
/// (`Box::pin(async move { .. })`).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the drive loop needs from an async runtime: spawning, a blocking pool, a timer, and
/// the clocks.
pub trait Runtime: Clone + Send + Sync + Unpin + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<()>);
    /// Runs `f` on a thread that may block (methods registered with `blocking_method`).
    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send + 'static>);
    /// A future that completes at `deadline`.
    fn timer(&self, deadline: Instant) -> BoxFuture<()>;
    /// Both clocks now: monotonic for timers, wall for dates (token expiry).
    fn now(&self) -> wsrpc_core::Now {
        system_now()
    }
}

/// Both clocks of the operating system.
pub fn system_now() -> wsrpc_core::Now {
    let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    wsrpc_core::Now::new(Instant::now(), wsrpc_core::UnixTime(wall))
}

/// An entropy source seeded from the operating system, for client mask keys and jitter.
pub fn os_entropy() -> Box<wsrpc_core::Xoshiro256> {
    let mut seed = [0u8; 8];
    // Without OS entropy fall back to the wall clock and an address: masks stay unpredictable
    // enough for a non-browser client.
    if getrandom::fill(&mut seed).is_err() {
        let nanos =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
                as u64;
        seed = (nanos ^ (&seed as *const _ as u64).rotate_left(32)).to_le_bytes();
    }
    Box::new(wsrpc_core::Xoshiro256::from_seed(u64::from_le_bytes(seed)))
}

/// The operating system's monotonic clock, for measuring handler latency.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl wsrpc_core::service::Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Bytes read per `poll_read`: one buffer per executor thread, so it can be generous.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// One read buffer per executor thread, shared by every connection it drives: an idle
    /// connection holds no read buffer, and no buffer is zeroed per read.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's read buffer (64 KiB; a fresh one if `f` is re-entered on this
/// thread). Drive loops read into it and feed the bytes on at once, so idle connections hold
/// no read buffer and no buffer is zeroed per read.
pub fn with_read_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.is_empty() {
                buf.resize(READ_CHUNK, 0);
            }
            f(&mut buf)
        }
        Err(_) => f(&mut vec![0u8; READ_CHUNK]),
    })
}
