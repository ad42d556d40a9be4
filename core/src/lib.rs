//! wsrpc-core contains no networking code and does not get timestamps from the OS.
//!
//! It is the sans-IO engine of wsrpc, JSON-RPC 2.0 over WebSocket: deterministic state
//! machines that turn bytes and time into bytes, events and deadlines. Applications use an
//! adapter, which owns the sockets, clocks and threads and re-exports what they need from
//! here: `wsrpc-smol`, `wsrpc-async-std` or `wsrpc-blocking` (`wsrpc-futures` for another
//! runtime). This crate is for writing an adapter, testing on a virtual clock, or reading how
//! the protocol is decided.
//!
//! # The pieces
//!
//! - A [`Router`](rpc::Router) maps method names to handlers: synchronous ones run in the
//!   connection, async and blocking ones are handed to the adapter as work.
//! - A [`Service`](service::Service) is what a server's connections share: the router, the
//!   configuration ([`ServiceConfig`](service::ServiceConfig)), the pub/sub [`hub`], rate
//!   tokens ([`limit`]) and [`metrics`]. [`ServerBuilder`](service::ServerBuilder) makes one
//!   for an adapter.
//! - A [`ServerConnection`](engine::ServerConnection) is one accepted transport of a server:
//!   HTTP/1.1 and the WebSocket upgrade on one port, JSON-RPC over both. A
//!   [`ClientConnection`](engine::ClientConnection) is a reconnecting client whose transports
//!   come and go. Both are [`Endpoint`](engine::Endpoint)s: input goes in with
//!   [`handle(now, Input)`](engine::Endpoint::handle), output comes out of
//!   [`poll_output(now)`](engine::Endpoint::poll_output), drained until it returns
//!   [`Output::Wait(deadline)`](engine::Output::Wait). [`Now`] carries both clocks, read by
//!   the caller.
//!
//! # A server connection and a client, in memory
//!
//! No socket and no runtime: the server's connection and a WebSocket client (the core's
//! [`ws::Connection`] in the client role) hand each other bytes, and the clock is a value.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use wsrpc_core::engine::{Endpoint, Input, Output, ServerConnection};
//! use wsrpc_core::rpc::Router;
//! use wsrpc_core::service::{Service, ServiceConfig};
//! use wsrpc_core::ws::{self, ClientRequest, Event};
//! use wsrpc_core::{Now, UnixTime, Xoshiro256};
//!
//! // The server: its methods, what its connections share, and one accepted transport.
//! let mut router = Router::new();
//! router.method("add", |(a, b): (i64, i64), _ctx| Ok(a + b));
//! let now = Now::new(Instant::now(), UnixTime(Duration::from_secs(1_700_000_000)));
//! let service = Service::new(ServiceConfig::default(), router, now);
//! let mut server = ServerConnection::new(service, now);
//!
//! // The client: the upgrade request is queued as soon as it is made.
//! let request = ClientRequest::new("127.0.0.1:8766", "/");
//! let mask_keys = Box::new(Xoshiro256::from_seed(7));
//! let mut client = ws::Connection::client(ws::Config::default(), &request, mask_keys, now.mono);
//!
//! let mut answer = None;
//! while answer.is_none() {
//!     // Client to server: whatever the client has queued.
//!     while let Some(bytes) = client.poll_transmit() {
//!         let taken = server.handle(now, Input::Bytes(bytes));
//!         client.advance_transmit(taken);
//!     }
//!     // Server to client: drain the outputs until the server says how long to wait.
//!     loop {
//!         match server.poll_output(now) {
//!             Output::Transmit(mut tx) => {
//!                 let taken = client.handle_input(now.mono, tx.first());
//!                 tx.advance(taken);
//!             }
//!             Output::Wait(_deadline) => break, // an adapter arms its timer here
//!             Output::Finished => unreachable!("nobody closed"),
//!             _ => {} // events (the upgrade), and work for async handlers (none here)
//!         }
//!     }
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             Event::Connected(_) => {
//!                 let call = r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#;
//!                 client.send_text(now.mono, call)?;
//!             }
//!             Event::Message(reply) => answer = reply.as_text().map(str::to_owned),
//!             other => panic!("unexpected: {other:?}"), // Closed: nobody closes here
//!         }
//!     }
//! }
//! assert_eq!(answer.as_deref(), Some(r#"{"jsonrpc":"2.0","result":5,"id":1}"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! An adapter is this exchange with a socket on one side: it reads into
//! [`Input::Bytes`](engine::Input::Bytes), writes what [`Transmit`](engine::Transmit) holds,
//! runs the work of [`Output::Spawn`](engine::Output::Spawn), and sleeps until the deadline
//! or the next input (`ARCHITECTURE.md` in the repository describes both drive loops).
//!
//! # Layers
//!
//! One module per layer; each depends only on the ones above it in this list.
//!
//! - [`time`] and [`entropy`]: [`Now`] (monotonic and wall clock, passed in) and the injected
//!   randomness for client mask keys and reconnect jitter.
//! - [`http`]: HTTP/1.1 heads and bodies, shared by the upgrade and plain requests on the
//!   same port.
//! - [`ws`]: RFC 6455 handshake, frames, masking, UTF-8, close, permessage-deflate and the
//!   bare [`ws::Connection`] (either role).
//! - [`auth`]: origin policy, bearer tokens and HS256 JWTs, principals, message signing.
//! - [`limit`]: token buckets per method class, origin and connection.
//! - [`metrics`]: counters, latency histograms, snapshots and Prometheus text.
//! - [`hub`]: topics, per-topic sequence numbers and replay, fan-out into bounded outboxes,
//!   and the broker bridge through which several servers share topics (commands out, events
//!   in; `wsrpc-redis` drives it).
//! - [`rpc`]: JSON-RPC messages, the [`Router`](rpc::Router), the server and client
//!   sessions.
//! - [`service`]: the [`Service`](service::Service) a server's connections share, its
//!   configuration and the [`ServerBuilder`](service::ServerBuilder) adapters start.
//! - [`engine`]: the two connections and their [`Endpoint`](engine::Endpoint) contract.
//! - [`prelude`]: the names each adapter re-exports at its top level.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

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
