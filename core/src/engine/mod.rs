//! Connections, server and client, behind one contract.
//!
//! [`ServerConnection`] is one accepted transport of a server: HTTP/1.1 and the WebSocket
//! upgrade on one port, JSON-RPC over both. [`ClientConnection`] is a reconnecting JSON-RPC
//! client: its transports come and go, its calls and subscriptions stay. Both are sans-IO
//! [`Endpoint`]s that an adapter drives the same way:
//!
//! ```text
//! loop {
//!     // 1. input, each with both clocks: bytes read, end of file, a due timer, a wake-up
//!     //    (a publish or a finished call on another thread), a command, a connect result
//!     conn.handle(now, Input::Bytes(&buf[..n]));
//!     // 2. output, drained until it says how long to wait
//!     loop {
//!         match conn.poll_output(now) {
//!             Output::Event(e) => log or hook it,
//!             Output::Spawn(call, work) => run it, then handle(now, Input::Completed(call, result)),
//!             Output::Connect(req) => open a transport to req.target, then Input::Connected,
//!             Output::Transmit(tx) => write tx.slices(..), then tx.advance(written),
//!             Output::ShutdownWrite => half-close the transport,
//!             Output::CloseTransport => drop the transport,
//!             Output::Finished => drop the connection,
//!             Output::Wait(deadline) => break, and sleep until input or the deadline,
//!         }
//!     }
//! }
//! ```
//!
//! The order in which [`poll_output`](Endpoint::poll_output) hands things out is the same for
//! both: `CloseTransport`, then events, then spawns or a connect request, then `Transmit`,
//! then `ShutdownWrite`, then `Finished` or `Wait`. A drain is the calls up to and including
//! the one that returns `Wait`; `Transmit` is offered once per drain: when the transport takes
//! nothing (it would block) the adapter drops the [`Transmit`] without advancing, and the next
//! call moves on to the deadline. A write that made progress offers it again in the same
//! drain, and the next drain (after the transport became writable, say) offers it anew.
//! `Finished` repeats forever. Spurious inputs (a timer before its deadline, a wake-up with
//! nothing to do) are no-ops.

mod client;
mod server;

use std::io::IoSlice;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

pub use client::{ClientConnection, ConnectRequest, Target};
pub use server::ServerConnection;

use crate::auth::Principal;
use crate::rpc::client::{ClientError, ConnectError};
use crate::rpc::router::Work;
use crate::rpc::{CallId, RpcError};
pub use crate::time::{Now, UnixTime};
use crate::ws::{CloseCode, Initiator};

/// The result of an async or blocking handler, fed back with [`Input::Completed`].
pub type HandlerResult = Result<Box<serde_json::value::RawValue>, RpcError>;

/// Identifies one connect attempt of a [`ClientConnection`]; its result must name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempt(pub u64);

/// Something that happened to the transport or the outside world, for
/// [`Endpoint::handle`]. Inputs that do not apply to a role are ignored.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// Bytes read from the transport; `handle` returns how many it took (fewer, even none,
    /// while [`Endpoint::wants_read`] is false: keep the rest and offer it again).
    Bytes(&'a [u8]),
    /// The transport reached end of file: the peer will send nothing more (it may still
    /// read).
    Eof,
    /// The transport failed (a read or write error): nothing more can be sent or received.
    Broken,
    /// A deadline from [`Output::Wait`] passed; early or repeated calls are harmless.
    Timeout,
    /// The waker given to [`Endpoint::set_waker`] fired: a publish from another thread.
    Wakeup,
    /// Server: a handler handed out with [`Output::Spawn`] finished.
    Completed(CallId, HandlerResult),
    /// Close gracefully. Server: no new requests, in-flight calls are answered, then
    /// WebSocket peers get 1001 and HTTP connections close after their response. Client:
    /// close 1000 and fail what is pending with [`ClientError::Closed`].
    Shutdown,
    /// Client: the transport of [`Output::Connect`] is up.
    Connected(Attempt),
    /// Client: the transport of [`Output::Connect`] could not be opened.
    ConnectFailed(Attempt, ConnectError),
}

/// What a connection asks of its adapter, from [`Endpoint::poll_output`].
#[non_exhaustive]
pub enum Output<'a> {
    /// A lifecycle event, for logs and hooks.
    Event(ConnEvent),
    /// Server: run this handler (a future on the runtime, or a blocking call on a worker
    /// thread) and report its result with [`Input::Completed`].
    Spawn(CallId, Work),
    /// Client: open a transport to the target (dropping any previous one), then report
    /// [`Input::Connected`] or [`Input::ConnectFailed`] with the attempt.
    Connect(ConnectRequest<'a>),
    /// Bytes to write.
    Transmit(Transmit<'a>),
    /// Half-close the transport (send FIN; over TLS, close_notify first): the last bytes are
    /// written. Keep reading until [`Finished`](Output::Finished), which follows at once
    /// after a clean WebSocket close handshake and after end of file or the close timeout
    /// otherwise.
    ShutdownWrite,
    /// Client: drop the transport (a connect in progress too); a new
    /// [`Connect`](Output::Connect) may follow.
    CloseTransport,
    /// Done for good: drop the transport and the connection.
    Finished,
    /// Nothing more now: wait for input, a wake-up, or this deadline (then
    /// [`Input::Timeout`]).
    Wait(Option<Instant>),
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event(e) => f.debug_tuple("Event").field(e).finish(),
            Self::Spawn(call, _) => f.debug_tuple("Spawn").field(call).finish(),
            Self::Connect(r) => f.debug_tuple("Connect").field(r).finish(),
            Self::Transmit(t) => f.debug_tuple("Transmit").field(&t.len()).finish(),
            Self::ShutdownWrite => f.write_str("ShutdownWrite"),
            Self::CloseTransport => f.write_str("CloseTransport"),
            Self::Finished => f.write_str("Finished"),
            Self::Wait(d) => f.debug_tuple("Wait").field(d).finish(),
        }
    }
}

/// A lifecycle event of a connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ConnEvent {
    /// Server: a request was upgraded to a WebSocket.
    Upgraded {
        /// Who is calling.
        principal: Arc<Principal>,
        /// The request's `Origin` header.
        origin: Option<Arc<str>>,
        /// The request target's path.
        path: String,
        /// The negotiated subprotocol.
        protocol: Option<String>,
    },
    /// Client: the WebSocket handshake with `url` completed.
    Connected {
        /// The server reached.
        url: Arc<str>,
    },
    /// Client: the connection was lost or could not be made; the next attempt is in
    /// `after`.
    Reconnecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
        /// The delay before the next one (with jitter).
        after: Duration,
        /// Why the last one ended.
        error: ClientError,
    },
    /// A WebSocket ended (either role).
    Closed {
        /// The close code that ended it (1006 when no close frame was exchanged).
        code: CloseCode,
        /// The reason that came with it.
        reason: String,
        /// Both close frames were exchanged.
        clean: bool,
        /// Who started the end.
        initiator: Initiator,
    },
    /// Client: given up for good (the first connection failed, or reconnecting is off).
    Failed(ClientError),
}

/// Bytes to write, from [`Output::Transmit`]. Gather them with [`slices`](Self::slices)
/// (vectored) or [`first`](Self::first), write, then report with
/// [`advance`](Self::advance); dropping it without advancing means the transport took
/// nothing.
pub struct Transmit<'a> {
    out: &'a mut dyn Outgoing,
    now: Instant,
}

impl std::fmt::Debug for Transmit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transmit").field("len", &self.len()).finish()
    }
}

impl<'a> Transmit<'a> {
    /// Fills `dst` with the pending chunks in order; returns how many.
    pub fn slices<'s>(&'s mut self, dst: &mut [IoSlice<'s>]) -> usize {
        self.out.slices(dst)
    }

    /// The first pending chunk (for transports without vectored writes).
    pub fn first(&mut self) -> &[u8] {
        self.out.front()
    }

    /// Bytes pending in all.
    pub fn len(&self) -> usize {
        self.out.pending()
    }

    /// Whether nothing is pending (never true for a `Transmit` just handed out).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `n` bytes as written.
    ///
    /// # Panics
    /// If `n` is more than is pending.
    pub fn advance(self, n: usize) {
        self.out.advance(n, self.now);
    }
}

/// The transmit side of a connection, behind [`Transmit`].
pub(crate) trait Outgoing {
    fn slices<'s>(&'s mut self, dst: &mut [IoSlice<'s>]) -> usize;
    fn front(&mut self) -> &[u8];
    fn pending(&self) -> usize;
    fn advance(&mut self, n: usize, now: Instant);
}

/// One end of a connection, as an adapter drives it. See the [module docs](self) for the
/// loop and the order of outputs.
pub trait Endpoint: Send {
    /// Feeds one input at `now`; for [`Input::Bytes`] returns how many bytes were taken.
    fn handle(&mut self, now: Now, input: Input<'_>) -> usize;

    /// The next output at `now`; drain until [`Output::Wait`] or [`Output::Finished`].
    #[must_use]
    fn poll_output(&mut self, now: Now) -> Output<'_>;

    /// Whether to read more input now (false: the peer is not reading its answers, or a
    /// request is being answered; hold the input and offer it later).
    fn wants_read(&self) -> bool;

    /// Wakes `waker` when work arrives from another thread (then [`Input::Wakeup`]).
    fn set_waker(&mut self, waker: &Waker);

    /// Feeds `data` read at `now` as [`Input::Bytes`] until it is all taken or the
    /// connection takes no more; what it does not take yet is appended to `leftover`, to be
    /// offered again once [`wants_read`](Self::wants_read).
    fn feed(&mut self, now: Now, mut data: &[u8], leftover: &mut Vec<u8>) {
        while !data.is_empty() {
            let used = self.handle(now, Input::Bytes(data));
            if used == 0 {
                break;
            }
            data = &data[used..];
        }
        leftover.extend_from_slice(data);
    }

    /// Offers the input kept in `leftover` again when the connection wants to read; true when
    /// there was some to offer (what it still does not take stays in `leftover`).
    fn feed_kept(&mut self, now: Now, leftover: &mut Vec<u8>) -> bool {
        if leftover.is_empty() || !self.wants_read() {
            return false;
        }
        let kept = std::mem::take(leftover);
        self.feed(now, &kept, leftover);
        true
    }
}

/// How long a peer may take no bytes at all while output waits before it is given up: as
/// long as it has to answer a ping or a close, whichever is longer.
pub(crate) fn stall_limit(config: &crate::ws::Config) -> Duration {
    config.pong_timeout.max(config.close_timeout)
}

/// When output started waiting without the transport taking any: a peer that reads nothing
/// for [`stall_limit`] is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stall {
    since: Option<Instant>,
}

impl Stall {
    /// Output is waiting at `now` (started waiting now, unless it already was).
    pub(crate) fn waiting(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// The transport took some bytes at `now`; `left` still wait.
    pub(crate) fn progress(&mut self, now: Instant, left: bool) {
        self.since = left.then_some(now);
    }

    /// Nothing waits.
    pub(crate) fn clear(&mut self) {
        self.since = None;
    }

    /// When the stall under way reaches `limit`.
    pub(crate) fn deadline(&self, limit: Duration) -> Option<Instant> {
        self.since.map(|s| crate::later(s, limit))
    }
}
