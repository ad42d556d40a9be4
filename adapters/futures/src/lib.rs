//! The async drive loop of wsrpc over any `futures-io` stream.
//!
//! [`serve_connection`] drives one [`wsrpc_core::engine::ServerConnection`] over an
//! `AsyncRead + AsyncWrite` stream; [`serve_messages`] runs the JSON-RPC session over a
//! stream of whole text messages you bring (say, an async-tungstenite `WebSocketStream`);
//! [`Client`] is the reconnecting client. A [`Runtime`] supplies spawning, timers and the
//! clock, so the same loop serves smol and async-std (`wsrpc-smol`, `wsrpc-async-std`);
//! with the `async-io` feature, [`net`] has the TCP listener and connector both use.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

pub mod client;
mod completions;
mod messages;
#[cfg(feature = "async-io")]
pub mod net;
pub mod server;

pub use client::{Client, Subscription};
pub use messages::serve_messages;
pub use server::{Registry, ServerHandle, serve_connection};
pub use wsrpc_core;
pub use wsrpc_core::rpc::client::{ClientError, ClientOptions, SubscriptionEvent};

/// A boxed `Send` future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the drive loops need from an async runtime: spawning, a timer, and the clock.
pub trait Runtime: Clone + Send + Sync + Unpin + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<()>);
    /// A future that completes at `deadline`.
    fn timer(&self, deadline: Instant) -> BoxFuture<()>;
    /// The current instant.
    fn now(&self) -> Instant {
        Instant::now()
    }
    /// Time since the UNIX epoch (for JWT expiry).
    fn unix_time(&self) -> Duration {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
    }
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
