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
//! # use std::io::{Read, Write};
//! # use std::time::Instant;
//! use wsrpc_core::ws::{Config, Connection, Event};
//!
//! # fn serve(mut sock: std::net::TcpStream) -> std::io::Result<()> {
//! let mut conn = Connection::server(Config::default(), Instant::now());
//! let mut buf = vec![0u8; 16 * 1024];
//! while !conn.is_finished() {
//!     let now = Instant::now();
//!     let timeout = conn.poll_timeout().map(|t| t.saturating_duration_since(now));
//!     sock.set_read_timeout(timeout.map(|t| t.max(std::time::Duration::from_millis(1))))?;
//!     match sock.read(&mut buf) {
//!         Ok(0) => conn.handle_eof(Instant::now()),
//!         Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
//!             || e.kind() == std::io::ErrorKind::TimedOut => conn.handle_timeout(Instant::now()),
//!         Err(e) => return Err(e),
//!     }
//!     while let Some(event) = conn.poll_event() {
//!         if let Event::Message(msg) = event {
//!             let _ = conn.send(Instant::now(), msg); // echo
//!         }
//!     }
//!     while let Some(bytes) = conn.poll_transmit() {
//!         let n = sock.write(bytes)?;
//!         conn.advance_transmit(n);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layers
//!
//! - [`ws`]: RFC 6455 handshake, frames, masking, UTF-8, close and the [`ws::Connection`].
//! - [`http`]: HTTP/1.1 heads, shared by the upgrade and plain requests on the same port.
//! - [`entropy`]: the injected randomness for client mask keys.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod entropy;
pub mod http;
pub mod ws;

pub use entropy::{Entropy, Xoshiro256};
