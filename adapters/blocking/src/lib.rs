//! wsrpc without async: a JSON-RPC 2.0 over WebSocket server (HTTP on the same port) and a
//! reconnecting client on `std::net`, the portable `polling` crate (epoll, kqueue, IOCP) and
//! crossbeam-channel. There is no async runtime in this crate's tree; async handlers
//! (`Router::async_method`) and methods registered with `Router::blocking_method` run on a
//! small worker pool. The protocol is `wsrpc-core`.
//!
//! A server with one method and a topic, and a client that calls it and subscribes:
//!
//! ```
//! use std::time::Duration;
//! use wsrpc_blocking::{ClientOptions, Router, Server, SubscriptionEvent, connect};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut router = Router::new();
//!     router.method("add", |(a, b): (i64, i64), _ctx| Ok(a + b));
//!     // Without `.bind(..)`: 127.0.0.1, the first free port of 8766..=8800.
//!     let server = Server::builder().router(router).bind("127.0.0.1:0".parse()?).start()?;
//!
//!     let client = connect(&format!("ws://{}", server.local_addr()), ClientOptions::default())?;
//!     let sum: i64 = client.call("add", (2, 3))?;
//!     assert_eq!(sum, 5);
//!
//!     let news = client.subscribe("news")?;
//!     server.publish("news", "hello")?; // from any thread
//!     match news.recv_timeout(Duration::from_secs(5))? {
//!         SubscriptionEvent::Notification { seq, value } => {
//!             assert_eq!((seq, value.get()), (1, r#""hello""#));
//!         }
//!         other => panic!("expected the notification, got {other:?}"),
//!     }
//!
//!     client.close(); // close 1000, so the server logs a clean close
//!     server.shutdown(Duration::from_secs(5)); // 1001 to every peer left
//!     Ok(())
//! }
//! ```
//!
//! [`Server`] is the running server, [`connect`] the client; everything else an application
//! names (the [`Router`], [`ClientOptions`], [`ClientError`], the configuration) is
//! re-exported from `wsrpc-core` at the top level, and the configuration layers as modules
//! ([`auth`], [`hub`], [`limit`], [`metrics`], [`ws`]). TLS (`wss://`, `https://`) goes
//! through [`tls`] and [`TlsOptions`]; see the cargo features in the README.
//!
//! # Threads
//!
//! - Server: a fixed number of I/O threads (1 by default, `ServerBuilder::io_threads`), each
//!   waiting on many nonblocking sockets at once with one `polling::Poller`, all of them on
//!   the listener. A turn reads what is ready, runs the core's
//!   [`ServerConnection`](wsrpc_core::engine::ServerConnection) (synchronous handlers run
//!   here) and writes without blocking, so a request costs no thread switch and a busy
//!   thread serves many ready sockets per wake-up. A worker pool (4 threads by default,
//!   `ServerBuilder::worker_threads`) runs async handlers to completion and blocking methods;
//!   work from other threads (a publish, a finished handler, a shutdown) reaches an I/O thread
//!   through a channel and the poller's notification.
//! - Client: one I/O thread per client running the same loop over the core's
//!   [`ClientConnection`](wsrpc_core::engine::ClientConnection), plus a short-lived thread per
//!   connect attempt (name resolution blocks). [`Client`] handles send it commands.
//!
//! An idle connection holds no read or write buffer (each I/O thread has one 64 KiB read
//! buffer), so its memory is the core's connection state.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod client;
mod pool;
mod reactor;
mod registration;
mod server;
mod tls_layer;

pub use client::{Client, Subscription, connect};
pub use crossbeam_channel::{RecvTimeoutError, TryRecvError};
pub use server::{Blocking, Server};
pub use wsrpc_core::prelude::*;
pub use wsrpc_core::{auth, hub, limit, metrics, ws};
pub use wsrpc_tls::{self as tls, TlsOptions};

/// Both clocks of the operating system.
fn system_now() -> wsrpc_core::Now {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    wsrpc_core::Now::new(Instant::now(), wsrpc_core::UnixTime(wall))
}

/// An entropy source seeded from the operating system, for client mask keys and jitter.
fn os_entropy() -> wsrpc_core::Xoshiro256 {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        // Without OS entropy fall back to the wall clock: masks stay unpredictable enough for
        // a non-browser client.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        seed = (nanos as u64 ^ 0x9E37_79B9_7F4A_7C15).to_le_bytes();
    }
    wsrpc_core::Xoshiro256::from_seed(u64::from_le_bytes(seed))
}

/// The operating system's monotonic clock, for measuring handler latency.
#[derive(Clone, Copy, Debug, Default)]
struct SystemClock;

impl wsrpc_core::service::Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
