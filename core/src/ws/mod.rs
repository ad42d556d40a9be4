//! RFC 6455 WebSocket: handshake, frame codec, masking, UTF-8, message assembly, close and
//! the connection state machine; permessage-deflate (RFC 7692).
//!
//! The server's connections ([`engine::ServerConnection`](crate::engine::ServerConnection))
//! use this layer under JSON-RPC; [`Connection`] is also usable alone, as a bare WebSocket
//! (the `echo` example that the Autobahn|Testsuite runs against).
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
//! loop {
//!     while let Some(bytes) = conn.poll_transmit() {
//!         let n = sock.write(bytes)?;
//!         conn.advance_transmit(n);
//!     }
//!     if conn.wants_shutdown_write() && !std::mem::replace(&mut shut, true) {
//!         sock.shutdown(std::net::Shutdown::Write)?; // our last bytes are out: FIN
//!     }
//!     if conn.is_finished() {
//!         break; // drop the socket (after a clean close at once; else after EOF or timeout)
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

pub mod budget;
pub mod close;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub(crate) mod state;
pub(crate) mod transmit;
pub mod utf8;

pub use budget::AssemblyBudget;
pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use connection::{Connection, Stats};
pub use deflate::{CompressionCounters, CompressionTotals, DeflateConfig};
pub use error::{Error, ExtensionResponseError, HandshakeError, ProtocolError, SendError};
pub use frame::{FrameDecoder, FrameHeader, OpCode};
pub use handshake::ClientRequest;
pub use message::{Closed, Connected, Event, Initiator, Message, MessageKind, SharedFrame};

/// Which end of the connection this endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts connections; receives masked frames, sends unmasked ones.
    Server,
    /// Opens connections; masks every frame it sends.
    Client,
}
