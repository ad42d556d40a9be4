//! wsrpc-core contains no networking code and does not get timestamps from the OS.
//!
//! It is the sans-IO engine of wsrpc: deterministic state machines that turn bytes and time
//! into bytes, events and deadlines. Adapters (`wsrpc-smol`, `wsrpc-async-std`,
//! `wsrpc-blocking`) own the sockets, clocks and threads; tests drive it with a virtual clock.
//!
//! # Driving a connection
//!
//! Every state machine has the same four kinds of methods: `handle_*` takes input and `now`,
//! `poll_*` gives output and is drained until it returns `None`, getters take `&self`, and
//! commands (`send_*`, `close`) queue output. After every input, drain all three outputs:
//!
//! ```no_run
//! # use std::io::{ErrorKind, Read, Write};
//! # use std::time::{Duration, Instant};
//! use wsrpc_core::ws::{Config, Connection, Event};
//!
//! # fn serve(mut sock: std::net::TcpStream) -> std::io::Result<()> {
//! let mut conn = Connection::server(Config::default(), Instant::now());
//! let (mut buf, mut shut) = (vec![0u8; 16 * 1024], false);
//! while !conn.is_finished() {
//!     while let Some(bytes) = conn.poll_transmit() {
//!         let n = sock.write(bytes)?;
//!         conn.advance_transmit(n);
//!     }
//!     if conn.wants_shutdown_write() && !std::mem::replace(&mut shut, true) {
//!         sock.shutdown(std::net::Shutdown::Write)?; // lingering close: FIN, then read to EOF
//!     }
//!     let wait = conn.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
//!     sock.set_read_timeout(wait.map(|w| w.max(Duration::from_millis(1))))?;
//!     let now = Instant::now();
//!     match sock.read(&mut buf) {
//!         Ok(0) => conn.handle_eof(now),
//!         Ok(n) => conn.handle_all_input(now, &buf[..n], |conn, event| {
//!             if let Event::Message(msg) = event {
//!                 let _ = conn.send(now, msg); // echo
//!             }
//!         }),
//!         Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
//!         Err(e) => return Err(e),
//!     }
//!     conn.handle_timeout(Instant::now());
//!     while let Some(_event) = conn.poll_event() {} // Closed, after a timer or end of file
//! }
//! # Ok(()) }
//! ```
//!
//! # Layers
//!
//! - [`ws`]: RFC 6455 handshake, frames, masking, UTF-8, close and the [`ws::Connection`].
//! - [`http`]: HTTP/1.1 heads, shared by the upgrade and plain requests on the same port.
//! - [`entropy`]: the injected randomness for client mask keys.
//! - [`hub`]: topics, per-topic sequence numbers and replay, fan-out into bounded outboxes,
//!   and the broker bridge through which several servers share topics (commands out, events
//!   in; `wsrpc-redis` drives it).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod engine;
pub mod entropy;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod hub;
pub mod limit;
pub mod metrics;
pub mod prelude;
pub mod rpc;
pub mod service;
pub mod time;
pub mod ws;

pub use entropy::{Entropy, Xoshiro256};
pub use time::{Now, UnixTime};

/// `now + d`, with a duration too long to represent (say a configured `Duration::MAX` meant
/// as "never") capped at a century instead of panicking on `Instant` overflow.
pub fn later(now: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}

/// The origin of the tests' virtual clocks: the one real clock reading in this crate, and
/// only in its tests.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_origin() -> std::time::Instant {
    std::time::Instant::now()
}
