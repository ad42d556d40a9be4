//! wsrpc without async: a JSON-RPC 2.0 over WebSocket server (HTTP on the same port) and a
//! reconnecting client on `std::net`, plain threads and crossbeam-channel. There is no async
//! runtime in this crate's tree; async handlers (`Router::async_method`) run on a small worker
//! pool with `futures_executor::block_on`. The protocol is `wsrpc-core`.
//!
//! ```no_run
//! use std::time::Duration;
//! use wsrpc_blocking::wsrpc_core::rpc::Router;
//! use wsrpc_blocking::{Server, SubscriptionEvent, connect};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut router = Router::new();
//! router.method("add", |(a, b): (i64, i64), _| Ok(a + b));
//! let server = Server::builder().router(router).start()?;
//!
//! let client = connect(&format!("ws://{}", server.local_addr()), Default::default())?;
//! let sum: i64 = client.call("add", (2, 3))?;
//! assert_eq!(sum, 5);
//!
//! let news = client.subscribe("news")?;
//! server.publish("news", "hello")?; // from any thread
//! if let Some(SubscriptionEvent::Notification { seq, value }) = news.recv() {
//!     println!("#{seq}: {}", value.get());
//! }
//!
//! client.close();
//! server.shutdown(Duration::from_secs(5));
//! # Ok(()) }
//! ```
//!
//! # Threads
//!
//! - Server: one accept thread; one thread per connection that owns its nonblocking socket:
//!   it waits with `poll` on that one descriptor (input, and output the socket did not take)
//!   until the connection's next deadline, then reads, runs the
//!   [`ServerConnection`](wsrpc_core::engine::ServerConnection) (synchronous handlers run
//!   here) and writes, so a request costs one wake-up of one thread. A shared pool of four
//!   workers runs the futures of async handlers. One notifier thread serves what starts on
//!   other threads (a publish, a finished async call, a shutdown): the connection's state is
//!   behind a mutex, the notifier locks it, runs the core and writes without blocking, and
//!   watches the sockets that did not take everything (slow consumers) itself, so a
//!   sleeping connection thread needs no second descriptor to be woken.
//! - Client: one driver thread owning the socket's write side, the WebSocket and the
//!   [`ClientSession`](wsrpc_core::rpc::client::ClientSession), plus a reader thread per TCP
//!   connection and a short-lived thread per connection attempt. [`Client`] handles talk to it
//!   over a channel.
//!
//! A connection thread writes for at most 200 ms per round, so its timers and a shutdown are
//! still served while a peer reads quickly but endlessly; a peer that takes no bytes at all
//! for the longer of the WebSocket `pong_timeout` and `close_timeout` while output waits is
//! dropped. With more than 64 connections per CPU, a thread woken by input yields once before
//! its round, so that the kernel serves woken connections in turn (fairness). An async
//! handler occupies a worker until its future completes: with four running long, the next
//! ones wait.
//!
//! Connection threads get small stacks (512 KiB reserved, of which only touched pages count)
//! and an idle connection holds no read or write buffer (a thread takes a read buffer from a
//! small shared pool when its socket is readable and gives it back before it sleeps): about
//! 16 KiB of resident memory per idle WebSocket connection in a release build on Linux
//! x86-64, three stack pages and the connection state, plus the kernel's own per-thread and
//! per-socket memory. One thread per connection costs four memory mappings (stack, guard
//! page, signal stack and its guard), so Linux's default `vm.max_map_count` (65,530) allows
//! some 15,000 connections; the process also needs a file descriptor per connection.
//!
//! A blocked `accept` cannot be interrupted, so shutting a server down raises a flag and then
//! connects to the listener once to wake the accept thread.
// Only `sys` (the `poll` system call) allows unsafe code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod client;
mod connection;
mod notifier;
mod pool;
mod registry;
mod server;
mod sys;
mod transport;

pub use client::{Client, Subscription, connect};
pub use crossbeam_channel::{RecvTimeoutError, TryRecvError};
pub use server::{Blocking, Server};
pub use wsrpc_core;
pub use wsrpc_core::rpc::client::{ClientError, ClientOptions, SubscriptionEvent};

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
