//! Hooks: application code run at fixed points of every call and every WebSocket connection
//! of a server, to log, trace, audit, count or refuse.
//!
//! A [`Hook`] is registered on the server builder (`ServerBuilder::hook`) and shared by all
//! connections, so it is `Send + Sync`; each method has a default that does nothing. The
//! built-in metrics and `log` output are observers of the same points, run before the
//! application's hooks, so what a hook sees is exactly what the metrics count.
//!
//! The points, for each JSON-RPC request (every entry of a batch on its own):
//!
//! 1. the message's rate token, then its signature (when signing is on): a refusal ends the
//!    call there;
//! 2. the method is looked up (subscribe, unsubscribe, the `rpc.` built-ins, the router):
//!    an unknown method ends with -32601;
//! 3. the method class's rate token (router methods and the `rpc.` built-ins; subscribe and
//!    unsubscribe take none);
//! 4. [`Hook::before_call`] of each hook in registration order: the first `Err` refuses the
//!    call with that JSON-RPC error and the handler never runs; values a hook inserts into
//!    [`CallStart::extensions`] reach the handler in its context's `extensions`;
//! 5. the handler (a synchronous one inside the core; async and blocking ones on the
//!    adapter's runtime or workers);
//! 6. [`Hook::after_call`], with the outcome and how long the handler ran: at once for a
//!    synchronous handler or a refusal, when the work completes for async and blocking
//!    handlers (`Input::Completed`), when the broker answers for a bridged subscription.
//!
//! Every request with a method gets exactly one `after_call`, refused or not, notification or
//! not; a call still running when its connection ends gets none. Durations come from the
//! times the core is given (the adapter's clock), never from a clock of its own.
//!
//! Connection hooks fire for WebSocket connections: [`Hook::connection_opened`] right after
//! the upgrade was accepted, [`Hook::connection_closed`] once with the close code and reason
//! (1006 when the transport ended without a close frame, including a connection dropped by
//! its adapter). An HTTP POST is a request, not a session: its calls reach `before_call` and
//! `after_call` with [`Transport::Http`](super::Transport::Http), and no connection hook
//! fires for it.

use core::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::RpcError;
use super::extensions::Extensions;
use super::router::{CallContext, ConnectionId, Params};
use crate::auth::Principal;
use crate::metrics::{ErrorKind, MethodId, Metrics};
use crate::ws::{CloseCode, Initiator};

/// Code run at fixed points of every call and WebSocket connection of a server (see the
/// [module docs](self) for the order). Register with `ServerBuilder::hook`; the functions
/// [`before_call`], [`after_call`], [`on_connection_opened`] and [`on_connection_closed`]
/// make one from a closure.
///
/// Hooks run on the connection's thread (an I/O thread of the blocking adapter), inside the
/// dispatch of the call: keep them quick, and hand slow work (a database write) to a channel.
pub trait Hook: Send + Sync {
    /// Before the handler runs, after the limits and the signature: `Err` refuses the call
    /// with that error (the handler never runs). May insert values into the call's
    /// extensions, which the handler sees in its [`CallContext`].
    fn before_call(&self, call: &mut CallStart<'_>) -> Result<(), RpcError> {
        let _ = call;
        Ok(())
    }

    /// After each call, with its outcome and duration.
    fn after_call(&self, call: &CallEnd<'_>) {
        let _ = call;
    }

    /// A WebSocket connection was upgraded.
    fn connection_opened(&self, connection: &ConnectionOpened<'_>) {
        let _ = connection;
    }

    /// A WebSocket connection ended (once per opened connection).
    fn connection_closed(&self, connection: &ConnectionClosed<'_>) {
        let _ = connection;
    }
}

/// A shared hook (one instance registered on several servers, or kept by the application).
impl<H: Hook + ?Sized> Hook for Arc<H> {
    fn before_call(&self, call: &mut CallStart<'_>) -> Result<(), RpcError> {
        (**self).before_call(call)
    }
    fn after_call(&self, call: &CallEnd<'_>) {
        (**self).after_call(call);
    }
    fn connection_opened(&self, connection: &ConnectionOpened<'_>) {
        (**self).connection_opened(connection);
    }
    fn connection_closed(&self, connection: &ConnectionClosed<'_>) {
        (**self).connection_closed(connection);
    }
}

/// A call about to run, for [`Hook::before_call`].
#[non_exhaustive]
pub struct CallStart<'a> {
    /// The method called.
    pub method: &'a str,
    /// The params as sent.
    pub params: Params<'a>,
    /// The request id, connection, origin, principal and transport of the call.
    pub context: &'a CallContext,
    /// What the handler will find in its context's
    /// [`extensions`](CallContext::extensions): insert values here (a decoded account, a
    /// trace span). Hooks that ran before this one may have added some.
    pub extensions: &'a mut Extensions,
}

impl std::fmt::Debug for CallStart<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStart")
            .field("method", &self.method)
            .field("id", &self.context.id)
            .field("connection", &self.context.connection)
            .finish_non_exhaustive()
    }
}

/// How a call ended.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// It returned a result.
    Ok,
    /// It was answered with this error (a notification's error goes nowhere, but is
    /// reported here all the same).
    Error(&'a RpcError),
}

impl Outcome<'_> {
    /// The error code, when it failed.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Ok => None,
            Self::Error(e) => Some(e.code),
        }
    }

    /// Whether it returned a result.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// What refused a call before its handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A rate, size or in-flight limit (-32005).
    Limit,
    /// The request's signature did not verify.
    Signature,
    /// No such method (-32601).
    NotFound,
    /// A [`Hook::before_call`] returned an error.
    Hook,
}

/// A finished call, as [`Hook::after_call`] receives it: what was called, by whom, how it
/// ended and how long it ran.
#[non_exhaustive]
pub struct CallEnd<'a> {
    /// The method called.
    pub method: &'a str,
    /// Bytes of the params as sent (0 without params).
    pub params_len: usize,
    /// The request id, connection, origin, principal and transport of the call, with the
    /// extensions its hooks attached.
    pub context: &'a CallContext,
    /// Its result or error.
    pub outcome: Outcome<'a>,
    /// What refused it before the handler ran; `None` when it ran.
    pub refused: Option<Refusal>,
    /// How long the handler ran: measured with the adapter's clock for synchronous handlers
    /// (zero when the server does not measure them), from the call to its completion for
    /// async and blocking ones; zero for a refusal.
    pub duration: Duration,
    /// When it ended, by the clock the core is given.
    pub now: Instant,
    /// The metrics slot of a router method whose handler ran.
    pub(crate) method_id: Option<MethodId>,
}

impl std::fmt::Debug for CallEnd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEnd")
            .field("method", &self.method)
            .field("id", &self.context.id)
            .field("connection", &self.context.connection)
            .field("outcome", &self.outcome)
            .field("refused", &self.refused)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

/// A WebSocket connection just upgraded, for [`Hook::connection_opened`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ConnectionOpened<'a> {
    /// The connection.
    pub connection: ConnectionId,
    /// The handshake's `Origin` header.
    pub origin: Option<&'a str>,
    /// Who connected (anonymous unless an authenticator recognised credentials).
    pub principal: &'a Principal,
    /// The client's address: the TCP peer, or what a trusted proxy named; `None` when the
    /// adapter does not know it.
    pub client: Option<IpAddr>,
    /// The request target's path.
    pub path: &'a str,
    /// The negotiated subprotocol.
    pub protocol: Option<&'a str>,
    /// When it opened, by the clock the core is given.
    pub now: Instant,
}

/// A WebSocket connection that ended, for [`Hook::connection_closed`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ConnectionClosed<'a> {
    /// The connection.
    pub connection: ConnectionId,
    /// The handshake's `Origin` header.
    pub origin: Option<&'a str>,
    /// Who was connected.
    pub principal: &'a Principal,
    /// The client's address, as when it opened.
    pub client: Option<IpAddr>,
    /// The close code that ended it (1006 when no close frame was exchanged).
    pub code: CloseCode,
    /// The reason that came with it.
    pub reason: &'a str,
    /// Both close frames were exchanged.
    pub clean: bool,
    /// Who started the end.
    pub initiator: Initiator,
    /// How long it was open.
    pub duration: Duration,
}

/// A [`Hook`] that refuses calls or adds to their extensions: `f` runs as
/// [`Hook::before_call`].
///
/// ```
/// use wsrpc_core::rpc::RpcError;
/// use wsrpc_core::rpc::hooks::before_call;
/// let readers_only = before_call(|call| {
///     if call.method.starts_with("admin_") && !call.context.principal.authenticated {
///         return Err(RpcError::forbidden("admin methods need a token"));
///     }
///     Ok(())
/// });
/// # let _ = readers_only;
/// ```
pub fn before_call<F>(f: F) -> impl Hook
where
    F: Fn(&mut CallStart<'_>) -> Result<(), RpcError> + Send + Sync,
{
    struct BeforeCall<F>(F);
    impl<F> Hook for BeforeCall<F>
    where
        F: Fn(&mut CallStart<'_>) -> Result<(), RpcError> + Send + Sync,
    {
        fn before_call(&self, call: &mut CallStart<'_>) -> Result<(), RpcError> {
            (self.0)(call)
        }
    }
    BeforeCall(f)
}

/// A [`Hook`] that observes every finished call: `f` runs as [`Hook::after_call`].
///
/// ```
/// use wsrpc_core::rpc::hooks::after_call;
/// let audit = after_call(|call| {
///     if call.method == "eth_sendTransaction" {
///         log::info!("{} by {:?}: {:?}", call.method, call.context.origin, call.outcome);
///     }
/// });
/// # let _ = audit;
/// ```
pub fn after_call<F>(f: F) -> impl Hook
where
    F: Fn(&CallEnd<'_>) + Send + Sync,
{
    struct AfterCall<F>(F);
    impl<F: Fn(&CallEnd<'_>) + Send + Sync> Hook for AfterCall<F> {
        fn after_call(&self, call: &CallEnd<'_>) {
            (self.0)(call)
        }
    }
    AfterCall(f)
}

/// A [`Hook`] told of each WebSocket connection that opens: `f` runs as
/// [`Hook::connection_opened`].
pub fn on_connection_opened<F>(f: F) -> impl Hook
where
    F: Fn(&ConnectionOpened<'_>) + Send + Sync,
{
    struct Opened<F>(F);
    impl<F: Fn(&ConnectionOpened<'_>) + Send + Sync> Hook for Opened<F> {
        fn connection_opened(&self, connection: &ConnectionOpened<'_>) {
            (self.0)(connection)
        }
    }
    Opened(f)
}

/// A [`Hook`] told of each WebSocket connection that ends: `f` runs as
/// [`Hook::connection_closed`].
pub fn on_connection_closed<F>(f: F) -> impl Hook
where
    F: Fn(&ConnectionClosed<'_>) + Send + Sync,
{
    struct Closed<F>(F);
    impl<F: Fn(&ConnectionClosed<'_>) + Send + Sync> Hook for Closed<F> {
        fn connection_closed(&self, connection: &ConnectionClosed<'_>) {
            (self.0)(connection)
        }
    }
    Closed(f)
}

/// The built-in observer: the metrics registry and the `log` lines of calls and connections.
/// It runs first at every point, statically dispatched, so a server without hooks of its own
/// pays no virtual call and no allocation per call.
pub(crate) struct Builtin<'s> {
    pub(crate) metrics: &'s Metrics,
}

impl Hook for Builtin<'_> {
    #[inline]
    fn after_call(&self, call: &CallEnd<'_>) {
        if let Some(method) = call.method_id {
            self.metrics.record_call(method, call.duration, call.now);
        }
        let Outcome::Error(e) = call.outcome else {
            log::trace!(target: "wsrpc::rpc", "call conn={} method={} ok in {:?}", call.context.connection, call.method, call.duration);
            return;
        };
        let kind = match call.refused {
            Some(Refusal::Limit) => {
                self.metrics.call_rate_limited();
                ErrorKind::LimitExceeded
            }
            Some(Refusal::Signature) => ErrorKind::Auth,
            _ => ErrorKind::from_rpc_code(e.code),
        };
        self.metrics.record_error(kind);
        log::debug!(target: "wsrpc::rpc", "call conn={} method={} error={} refused={:?} in {:?}: {}", call.context.connection, call.method, e.code, call.refused, call.duration, e.message);
    }

    fn connection_opened(&self, c: &ConnectionOpened<'_>) {
        log::debug!(target: "wsrpc::ws", "upgraded conn={} client={:?} path={} origin={:?} principal={}", c.connection, c.client, c.path, c.origin, c.principal.id);
    }

    fn connection_closed(&self, c: &ConnectionClosed<'_>) {
        log::debug!(target: "wsrpc::ws", "closed conn={} code={} clean={} after {:?}", c.connection, c.code, c.clean, c.duration);
    }
}

/// The hooks of a server: the built-in observer first, then the application's in
/// registration order. Each point has one function here, and the core calls it from one
/// place. A panicking hook is caught (a refusal with -32603 before a call, logged elsewhere):
/// it runs on a thread that serves other connections too.
#[derive(Default)]
pub(crate) struct HookSet {
    hooks: Box<[Arc<dyn Hook>]>,
}

impl std::fmt::Debug for HookSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSet").field("hooks", &self.hooks.len()).finish()
    }
}

impl HookSet {
    pub(crate) fn new(hooks: Vec<Arc<dyn Hook>>) -> Self {
        Self { hooks: hooks.into() }
    }

    /// Whether the application registered any hook (the before-call point is skipped when
    /// not: the built-in observer has nothing to do there).
    pub(crate) fn has_user_hooks(&self) -> bool {
        !self.hooks.is_empty()
    }

    pub(crate) fn before_call(&self, call: &mut CallStart<'_>) -> Result<(), RpcError> {
        for h in self.hooks.iter() {
            match catch_unwind(AssertUnwindSafe(|| h.before_call(call))) {
                Ok(r) => r?,
                Err(panic) => {
                    let why = panic_message(&*panic);
                    log::error!(target: "wsrpc::rpc", "before_call hook panicked on {}: {why}", call.method);
                    return Err(RpcError::internal(format_args!("a hook panicked: {why}")));
                }
            }
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn after_call(&self, metrics: &Metrics, call: &CallEnd<'_>) {
        Builtin { metrics }.after_call(call);
        for h in self.hooks.iter() {
            guarded("after_call", || h.after_call(call));
        }
    }

    pub(crate) fn connection_opened(&self, metrics: &Metrics, c: &ConnectionOpened<'_>) {
        Builtin { metrics }.connection_opened(c);
        for h in self.hooks.iter() {
            guarded("connection_opened", || h.connection_opened(c));
        }
    }

    pub(crate) fn connection_closed(&self, metrics: &Metrics, c: &ConnectionClosed<'_>) {
        Builtin { metrics }.connection_closed(c);
        for h in self.hooks.iter() {
            guarded("connection_closed", || h.connection_closed(c));
        }
    }
}

/// Runs an observing hook; a panic is logged and goes no further.
fn guarded(point: &str, f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        log::error!(target: "wsrpc::rpc", "{point} hook panicked: {}", panic_message(&*panic));
    }
}

/// The message of a panic payload, when it has one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
