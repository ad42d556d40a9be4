//! The method table: typed registration, params, and the per-call context.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::value::RawValue;

use super::error::RpcError;
use super::extensions::Extensions;
use super::openrpc::{ApiInfo, MethodDoc, TopicDoc};
use super::subscription::{SubscribeCall, SubscriptionHandler, SubscriptionTarget};
use super::typed::{Method, Notification, Topic};
use crate::auth::Principal;

/// The future an async handler returns: it resolves to the serialized result.
pub type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Box<RawValue>, RpcError>> + Send + 'static>>;

/// Identifies one connection of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// How a call arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// A WebSocket text message.
    WebSocket,
    /// An HTTP POST body.
    Http,
    /// Messages from elsewhere (a user-provided stream, stdin lines, a pipe).
    Messages,
}

/// The id of a request as its client sent it (a number, a string or `null`), for handlers
/// and hooks (logs, traces, correlating with the client).
///
/// ```
/// use wsrpc_core::rpc::RequestId;
///
/// let id = RequestId::from_json("42").unwrap();
/// assert_eq!(id.as_i64(), Some(42));
/// let id = RequestId::from_json(r#""a\u0062c""#).unwrap();
/// assert_eq!(id.as_str().as_deref(), Some("abc"));
/// assert_eq!(id.to_string(), r#""a\u0062c""#, "displayed as sent");
/// ```
// Kept as the JSON text, inline up to 23 bytes (every numeric id, most string ones): taking
// the id of each call then costs a copy, never a parse or an allocation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(IdText);

#[derive(Clone, PartialEq, Eq, Hash)]
enum IdText {
    Inline { len: u8, bytes: [u8; 23] },
    Shared(Arc<str>),
}

impl RequestId {
    /// The id of a request from its raw JSON, as the message parser admitted it.
    pub fn from_raw(raw: &RawValue) -> Self {
        let text = raw.get().as_bytes();
        let mut bytes = [0; 23];
        match bytes.get_mut(..text.len()) {
            Some(inline) => {
                inline.copy_from_slice(text);
                #[allow(clippy::cast_possible_truncation)] // at most 23
                Self(IdText::Inline { len: text.len() as u8, bytes })
            }
            None => Self(IdText::Shared(Arc::from(raw.get()))),
        }
    }

    /// The id from JSON text; `None` unless it is a JSON string, number or `null` (what
    /// JSON-RPC allows).
    pub fn from_json(text: &str) -> Option<Self> {
        let value: &RawValue = serde_json::from_str(text).ok()?;
        matches!(value.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9' | b'n'))
            .then(|| Self::from_raw(value))
    }

    /// The id as JSON text, exactly as the client sent it (`42`, `"abc"`, `null`).
    pub fn as_json(&self) -> &str {
        match &self.0 {
            // Only ever copied from a `&str`, whole.
            IdText::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            IdText::Shared(text) => text,
        }
    }

    /// The id as an integer, when it is one that fits.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_json().parse().ok()
    }

    /// The id as an unsigned integer, when it is one that fits.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_json().parse().ok()
    }

    /// The id as a string (unescaped), when it is a string.
    pub fn as_str(&self) -> Option<Cow<'_, str>> {
        let json = self.as_json();
        json.starts_with('"').then(|| serde_json::from_str(json).ok()).flatten()
    }

    /// Whether the id is `null` (allowed by JSON-RPC 2.0, though discouraged).
    pub fn is_null(&self) -> bool {
        self.as_json() == "null"
    }
}

impl fmt::Display for RequestId {
    /// The id as JSON text, as sent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_json()).finish()
    }
}

/// What a handler knows about the call: who, from where, on which connection, which request,
/// and what hooks attached to it.
///
/// Handlers see it through [`HandlerContext`] (which dereferences to it); hooks fill
/// [`extensions`](Self::extensions) before a handler runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CallContext {
    /// The id of the request; `None` for a notification.
    pub id: Option<RequestId>,
    /// The connection the call came on.
    pub connection: ConnectionId,
    /// The `Origin` header of the connection's handshake or HTTP request, if any.
    pub origin: Option<Arc<str>>,
    /// Who is calling (anonymous unless an authenticator recognised credentials).
    pub principal: Arc<Principal>,
    /// The time the call is being handled.
    pub now: Instant,
    /// How the call arrived.
    pub transport: Transport,
    /// Values hooks attached to the call, by type (empty unless a hook adds one).
    pub extensions: Extensions,
}

impl CallContext {
    /// The context of an anonymous call without id on `connection` (for sessions run by hand
    /// and for testing handlers); set the public fields to say more.
    pub fn new(connection: ConnectionId, transport: Transport, now: Instant) -> Self {
        Self {
            id: None,
            connection,
            origin: None,
            principal: Arc::new(Principal::anonymous()),
            now,
            transport,
            extensions: Extensions::new(),
        }
    }
}

/// What a handler of a [`Router<S>`] gets besides its params: the call's [`CallContext`]
/// (through `Deref`: `ctx.id`, `ctx.connection`, `ctx.principal`, …) and the router's state
/// ([`state`](Self::state)).
///
/// A synchronous handler's context borrows both (nothing is copied per call); an async or
/// blocking handler's context owns them (`HandlerContext<'static, S>`), so it can move into
/// the future or onto the worker thread.
pub struct HandlerContext<'a, S = ()> {
    call: Cow<'a, CallContext>,
    state: Cow<'a, Arc<S>>,
}

impl<'a, S> HandlerContext<'a, S> {
    /// A context borrowing the call and the state (for running a handler by hand, in tests).
    pub fn new(call: &'a CallContext, state: &'a Arc<S>) -> Self {
        Self { call: Cow::Borrowed(call), state: Cow::Borrowed(state) }
    }

    /// A context that owns its parts.
    pub fn owned(call: CallContext, state: Arc<S>) -> HandlerContext<'static, S> {
        HandlerContext { call: Cow::Owned(call), state: Cow::Owned(state) }
    }

    /// The state given to [`Router::with_state`].
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state as its shared `Arc` (to keep beyond the call).
    pub fn shared_state(&self) -> Arc<S> {
        Arc::clone(&self.state)
    }

    /// The call's context.
    pub fn call(&self) -> &CallContext {
        &self.call
    }

    /// The call's context, owned (cloned when borrowed).
    pub fn into_call(self) -> CallContext {
        self.call.into_owned()
    }
}

impl<S> Clone for HandlerContext<'_, S> {
    fn clone(&self) -> Self {
        Self { call: self.call.clone(), state: self.state.clone() }
    }
}

impl<S> fmt::Debug for HandlerContext<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext").field("call", &*self.call).finish_non_exhaustive()
    }
}

impl<S> std::ops::Deref for HandlerContext<'_, S> {
    type Target = CallContext;

    fn deref(&self) -> &CallContext {
        &self.call
    }
}

/// The params of a call, borrowed from the message.
#[derive(Clone, Copy, Debug)]
pub struct Params<'a>(pub(crate) Option<&'a RawValue>);

impl<'a> Params<'a> {
    /// Params from raw JSON text (an array or object), or none.
    pub fn new(raw: Option<&'a RawValue>) -> Self {
        Self(raw)
    }

    /// The params exactly as sent.
    pub fn raw(&self) -> Option<&'a RawValue> {
        self.0
    }

    /// Positional params (a JSON array).
    pub fn is_positional(&self) -> bool {
        self.0.is_some_and(|r| r.get().starts_with('['))
    }

    /// Deserializes the params, borrowing strings from the message where `T` allows.
    ///
    /// Structs accept both positional (`[42, 23]`) and named (`{"a": 42, "b": 23}`) params;
    /// absent params deserialize like `null`, `[]` or `{}`, whichever `T` accepts. Errors are
    /// -32602 with a message naming the offending param (`[1]: invalid type …` or
    /// `missing field \`subtrahend\``).
    pub fn parse<T: Deserialize<'a>>(&self) -> Result<T, RpcError> {
        match self.0.map(RawValue::get) {
            // Methods without params are often called with empty ones.
            Some(empty @ ("[]" | "{}")) => {
                from_json(empty).or_else(|e| from_json("null").map_err(|_| e))
            }
            Some(raw) => from_json(raw),
            None => from_json("null")
                .or_else(|e| from_json("[]").or_else(|_| from_json("{}")).map_err(|_| e)),
        }
    }
}

fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, RpcError> {
    // Tracking the path of an error costs every call about as much as the parse itself, so
    // params are parsed untracked first and again with tracking only to explain a failure.
    let mut de = serde_json::Deserializer::from_str(text);
    if let Ok(value) = T::deserialize(&mut de) {
        if de.end().is_ok() {
            return Ok(value);
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_json appends the position in the params text, which means nothing to a caller.
        let inner = inner.rsplit_once(" at line ").map_or(inner.as_str(), |(msg, _)| msg);
        // An array longer than the handler takes ends in serde_json's "trailing characters".
        if path == "." && inner == "trailing characters" && text.starts_with('[') {
            let given = super::message::bounded_array(text.as_bytes(), 0).map_or(0, |(_, n)| n);
            return RpcError::invalid_params(format!("too many positional params ({given} given)"));
        }
        if path == "." {
            RpcError::invalid_params(inner)
        } else {
            RpcError::invalid_params(format!("{path}: {inner}"))
        }
    })?;
    de.end().map_err(RpcError::invalid_params)?;
    Ok(value)
}

/// A call of a method registered with [`Router::blocking_method`]: params already parsed,
/// ready to run on a worker thread.
pub type BlockingCall = Box<dyn FnOnce() -> Result<Box<RawValue>, RpcError> + Send + 'static>;

/// Handler work the core hands to its adapter (it never runs it itself): an async handler's
/// future for the runtime, or a blocking handler's call for a worker thread.
pub enum Work {
    /// Poll it to completion on the runtime.
    Future(HandlerFuture),
    /// Run it on a thread that may block (a worker pool), never on the I/O thread.
    Blocking(BlockingCall),
}

impl fmt::Debug for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Future(_) => "Work::Future",
            Self::Blocking(_) => "Work::Blocking",
        })
    }
}

type SyncHandler =
    dyn Fn(Params<'_>, &CallContext, &mut Vec<u8>) -> Result<(), RpcError> + Send + Sync;
type AsyncHandler = dyn Fn(Params<'_>, &CallContext) -> Result<Work, RpcError> + Send + Sync;

pub(crate) enum Handler {
    /// Runs inside the core and writes its result's JSON.
    Sync(Box<SyncHandler>),
    /// Parses params inside the core and returns work for the adapter to run.
    Deferred(Box<AsyncHandler>),
}

/// Why a router cannot serve: a method name it refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterError {
    /// The name was registered twice.
    Duplicate(String),
    /// Names starting with `rpc.` belong to the built-ins.
    Reserved(String),
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate(n) => write!(f, "method {n:?} registered twice"),
            Self::Reserved(n) => write!(f, "method names starting with `rpc.` are reserved: {n:?}"),
        }
    }
}

impl std::error::Error for RouterError {}

/// A registered method: its handler and what `rpc.discover` says about it.
pub(crate) struct Entry {
    pub(crate) handler: Handler,
    /// Position in registration order, for per-method metrics.
    pub(crate) index: usize,
    pub(crate) doc: MethodDoc,
}

/// The table of methods a server answers, with the application state its handlers share.
///
/// ```
/// use wsrpc_core::rpc::{Router, RpcError};
/// let mut router = Router::new();
/// router
///     .method("add", |p: (i64, i64), _ctx| Ok(p.0 + p.1))
///     .method("echo", |p: serde_json::Value, _ctx| Ok::<_, RpcError>(p));
/// ```
///
/// With state, given once and reached from every handler as `ctx.state()`:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use wsrpc_core::rpc::Router;
///
/// #[derive(Default)]
/// struct Counter(AtomicU64);
///
/// let mut router = Router::with_state(Counter::default());
/// router.method("bump", |(): (), ctx| Ok(ctx.state().0.fetch_add(1, Ordering::Relaxed) + 1));
/// ```
///
/// Names starting with `rpc.` are reserved for built-ins (`rpc.health`, `rpc.metrics`,
/// `rpc.discover`). Registering one, or a name twice, is refused: [`check`](Self::check) says
/// so, and starting a server with such a router fails with that error.
// `S` defaults to `()` so `Router::new()` and `-> Router` keep meaning a router without state;
// each handler captures the `Arc<S>` when registered, so the server holds `Router<()>` only.
pub struct Router<S = ()> {
    methods: HashMap<Box<str>, Entry>,
    names: Vec<Box<str>>,
    refused: Vec<RouterError>,
    /// Subscription handlers by name or kind ([`Router::subscription`]).
    subscriptions: HashMap<Box<str>, Box<SubscriptionHandler>>,
    /// Topics declared for `rpc.discover`.
    topics: Vec<TopicDoc>,
    info: ApiInfo,
    state: Arc<S>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router").field("methods", &self.names).finish()
    }
}

impl Router {
    /// An empty router without state; add methods with [`method`](Self::method),
    /// [`register`](Self::register) and their async and blocking kinds. Handlers that share
    /// application state take a router from [`with_state`](Router::with_state) instead.
    pub fn new() -> Self {
        Self::with_shared_state(Arc::new(()))
    }
}

impl<S: Send + Sync + 'static> Router<S> {
    /// An empty router whose handlers get `&state` (as [`HandlerContext::state`]).
    pub fn with_state(state: S) -> Self {
        Self::with_shared_state(Arc::new(state))
    }

    /// [`with_state`](Self::with_state) with state already shared (kept by the caller too).
    pub fn with_shared_state(state: Arc<S>) -> Self {
        Self {
            methods: HashMap::new(),
            names: Vec::new(),
            refused: Vec::new(),
            subscriptions: HashMap::new(),
            topics: Vec::new(),
            info: ApiInfo::default(),
            state,
        }
    }

    /// The state handlers get.
    pub fn state(&self) -> &Arc<S> {
        &self.state
    }

    /// Registers a synchronous method with typed params, called by the core directly.
    pub fn method<P, R, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, HandlerContext<'_, S>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        let state = self.state.clone();
        self.insert(
            name,
            Handler::Sync(Box::new(move |params, ctx, out| {
                let result = f(params.parse()?, HandlerContext::new(ctx, &state))?;
                serde_json::to_writer(out, &result).map_err(RpcError::internal)
            })),
            MethodDoc::untyped::<P>(),
        )
    }

    /// Registers a synchronous method that reads its params itself, borrowing from the
    /// message (`params.parse::<&str>()`, `params.raw()`).
    pub fn method_raw<R, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        R: Serialize,
        F: for<'p> Fn(Params<'p>, HandlerContext<'_, S>) -> Result<R, RpcError>
            + Send
            + Sync
            + 'static,
    {
        let state = self.state.clone();
        self.insert(
            name,
            Handler::Sync(Box::new(move |params, ctx, out| {
                let result = f(params, HandlerContext::new(ctx, &state))?;
                serde_json::to_writer(out, &result).map_err(RpcError::internal)
            })),
            MethodDoc::raw(),
        )
    }

    /// Registers an async method. Params are parsed in the core (bad params are answered at
    /// once); the future is handed to the adapter, which runs it on its runtime and reports
    /// the result back, so the core never polls it.
    pub fn async_method<P, R, F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, HandlerContext<'static, S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        let state = self.state.clone();
        self.insert(
            name,
            Handler::Deferred(Box::new(move |params, ctx| {
                let fut = f(params.parse()?, HandlerContext::owned(ctx.clone(), state.clone()));
                Ok(Work::Future(Box::pin(async move {
                    let result = fut.await?;
                    serde_json::value::to_raw_value(&result).map_err(RpcError::internal)
                })))
            })),
            MethodDoc::untyped::<P>(),
        )
    }

    /// Registers a method that may block (disk, a database, a hardware wallet): params are
    /// parsed in the core, then the adapter runs it on a worker thread, so a slow call never
    /// stalls the connections served by the I/O thread. Use [`method`](Self::method) for quick
    /// synchronous work and [`async_method`](Self::async_method) for futures.
    pub fn blocking_method<P, R, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize,
        F: Fn(P, HandlerContext<'static, S>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let state = self.state.clone();
        self.insert(
            name,
            Handler::Deferred(Box::new(move |params, ctx| {
                let p: P = params.parse()?;
                let (f, ctx) = (f.clone(), HandlerContext::owned(ctx.clone(), state.clone()));
                Ok(Work::Blocking(Box::new(move || {
                    let result = f(p, ctx)?;
                    serde_json::value::to_raw_value(&result).map_err(RpcError::internal)
                })))
            })),
            MethodDoc::untyped::<P>(),
        )
    }

    /// Registers the synchronous handler of a typed [`Method`]: its params arrive as `P`, it
    /// answers an `R`, and `rpc.discover` describes it from the descriptor.
    ///
    /// ```
    /// use wsrpc_core::rpc::{Method, Router};
    ///
    /// const ADD: Method<(i64, i64), i64> = Method::new("add").params(&["a", "b"]);
    /// let mut router = Router::new();
    /// router.register(ADD, |(a, b), _ctx| Ok(a + b));
    /// ```
    pub fn register<P, R, F>(&mut self, method: Method<P, R>, f: F) -> &mut Self
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, HandlerContext<'_, S>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        let doc = MethodDoc::typed::<P>(method.doc);
        self.documented(method.name(), doc, |r| r.method(method.name(), f))
    }

    /// Registers the async handler of a typed [`Method`] (as [`async_method`](Self::async_method)).
    pub fn register_async<P, R, F, Fut>(&mut self, method: Method<P, R>, f: F) -> &mut Self
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, HandlerContext<'static, S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        let doc = MethodDoc::typed::<P>(method.doc);
        self.documented(method.name(), doc, |r| r.async_method(method.name(), f))
    }

    /// Registers the handler of a typed [`Method`] that may block (as
    /// [`blocking_method`](Self::blocking_method)).
    pub fn register_blocking<P, R, F>(&mut self, method: Method<P, R>, f: F) -> &mut Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize,
        F: Fn(P, HandlerContext<'static, S>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        let doc = MethodDoc::typed::<P>(method.doc);
        self.documented(method.name(), doc, |r| r.blocking_method(method.name(), f))
    }

    /// Registers the handler of a typed [`Notification`]; a call of it with an id gets
    /// `null` back (or the handler's error).
    pub fn register_notification<P, F>(&mut self, notification: Notification<P>, f: F) -> &mut Self
    where
        P: DeserializeOwned,
        F: Fn(P, HandlerContext<'_, S>) -> Result<(), RpcError> + Send + Sync + 'static,
    {
        let mut doc = MethodDoc::typed::<P>(notification.doc);
        doc.notification = true;
        self.documented(notification.name(), doc, |r| r.method(notification.name(), f))
    }

    /// Declares a topic the server publishes to, so `rpc.discover` lists it (subscribing
    /// works for any topic the hub's policies allow, declared or not).
    pub fn topic<T: ?Sized>(&mut self, topic: Topic<T>) -> &mut Self {
        self.topics.push(TopicDoc::of(topic));
        self
    }

    /// The title and version of the API, for `rpc.discover` (default: the server's name and
    /// `0.0.0`).
    pub fn info(&mut self, title: impl Into<String>, version: impl Into<String>) -> &mut Self {
        self.info.title = Some(title.into());
        self.info.version = Some(version.into());
        self
    }

    /// A description of the API (Markdown), for `rpc.discover`.
    pub fn description(&mut self, text: impl Into<String>) -> &mut Self {
        self.info.description = Some(text.into());
        self
    }

    /// Registers with `register` and, when the name was accepted, describes it with `doc`.
    fn documented(
        &mut self,
        name: &str,
        doc: MethodDoc,
        register: impl FnOnce(&mut Self) -> &mut Self,
    ) -> &mut Self {
        let refused = self.refused.len();
        register(self);
        if self.refused.len() == refused {
            if let Some(entry) = self.methods.get_mut(name) {
                entry.doc = doc;
            }
        }
        self
    }

    fn insert(&mut self, name: &str, handler: Handler, doc: MethodDoc) -> &mut Self {
        if name.starts_with("rpc.") {
            self.refused.push(RouterError::Reserved(name.into()));
        } else if self.methods.contains_key(name) {
            self.refused.push(RouterError::Duplicate(name.into()));
        } else {
            let index = self.names.len();
            self.names.push(name.into());
            self.methods.insert(name.into(), Entry { handler, index, doc });
        }
        self
    }

    /// Registers the handler of subscribe calls for `name`: the subscription name itself
    /// (`"logs"` of `eth_subscribe("logs", …)`), or a kind of topics (`"trades"` handles
    /// `"trades:btc"`, the kind being the name up to its first `:`); an exact name wins over
    /// a kind. The handler gets the whole call and decides the topic and an optional filter
    /// ([`SubscriptionTarget`]); its error is the call's answer. Subscriptions without a
    /// handler are to the topic they name, unfiltered. The topic policies and the
    /// per-connection limits apply to the topic it decides. The handler reaches the router's
    /// state as [`call.state()`](SubscribeCall::state).
    pub fn subscription<F>(&mut self, name: &str, handler: F) -> &mut Self
    where
        F: Fn(&SubscribeCall<'_, S>) -> Result<SubscriptionTarget, RpcError>
            + Send
            + Sync
            + 'static,
    {
        if self.subscriptions.contains_key(name) {
            self.refused.push(RouterError::Duplicate(name.into()));
        } else {
            let state = self.state.clone();
            let handler = move |call: &SubscribeCall<'_>| handler(&call.with_state(&*state));
            self.subscriptions.insert(name.into(), Box::new(handler));
        }
        self
    }

    /// The router as the server keeps it: every handler already holds the state it needs.
    pub fn into_stateless(self) -> Router {
        Router {
            methods: self.methods,
            names: self.names,
            refused: self.refused,
            subscriptions: self.subscriptions,
            topics: self.topics,
            info: self.info,
            state: Arc::new(()),
        }
    }
}

impl<S> Router<S> {
    /// Whether every registration was accepted; the first refusal otherwise.
    pub fn check(&self) -> Result<(), RouterError> {
        self.refused.first().map_or(Ok(()), |e| Err(e.clone()))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.methods.get(name)
    }

    /// The names (or kinds) that have a subscription handler, sorted.
    pub(crate) fn subscription_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.subscriptions.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names
    }

    /// The subscription handler for the subscription `name`: its own, or its kind's.
    pub(crate) fn subscription_handler(&self, name: &str) -> Option<&SubscriptionHandler> {
        if self.subscriptions.is_empty() {
            return None;
        }
        let kind = crate::hub::topic_kind(name);
        self.subscriptions.get(name).or_else(|| self.subscriptions.get(kind)).map(|h| &**h)
    }

    /// The name of the method registered at `index` (its [`Method::index`]).
    pub(crate) fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.names.iter().filter_map(|n| self.methods.get(n).map(|e| (&**n, e)))
    }

    pub(crate) fn declared_topics(&self) -> &[TopicDoc] {
        &self.topics
    }

    pub(crate) fn api_info(&self) -> &ApiInfo {
        &self.info
    }

    /// Registered method names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// Number of methods.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no method is registered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Subtract {
        minuend: i64,
        subtrahend: i64,
    }

    #[test]
    fn structs_take_positional_and_named_params() {
        let named = params(r#"{"subtrahend": 23, "minuend": 42}"#);
        let positional = params("[42, 23]");
        let want = Subtract { minuend: 42, subtrahend: 23 };
        assert_eq!(Params(Some(&named)).parse::<Subtract>().unwrap(), want);
        assert_eq!(Params(Some(&positional)).parse::<Subtract>().unwrap(), want);
    }

    #[test]
    fn bad_params_name_the_param() {
        let p = params(r#"[42, "x"]"#);
        let e = Params(Some(&p)).parse::<(i64, i64)>().unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("[1]"), "{}", e.message);
        let p = params(r#"{"minuend": 42}"#);
        let e = Params(Some(&p)).parse::<Subtract>().unwrap_err();
        assert!(e.message.contains("subtrahend"), "{}", e.message);
        let p = params(r#"{"minuend": 42, "subtrahend": "x"}"#);
        let e = Params(Some(&p)).parse::<Subtract>().unwrap_err();
        assert!(e.message.contains("subtrahend") && !e.message.contains("line"), "{}", e.message);
    }

    #[test]
    fn absent_params_fit_unit_vectors_and_defaults() {
        let none = Params(None);
        none.parse::<()>().unwrap();
        let empty = params("[]");
        Params(Some(&empty)).parse::<()>().unwrap();
        assert_eq!(Params(Some(&empty)).parse::<Vec<i64>>().unwrap(), Vec::<i64>::new());
        assert_eq!(none.parse::<Vec<i64>>().unwrap(), Vec::<i64>::new());
        assert_eq!(none.parse::<Option<i64>>().unwrap(), None);
        assert!(none.parse::<(i64,)>().is_err());
    }

    #[test]
    fn borrowed_params() {
        let p = params(r#"["no escapes here"]"#);
        let (s,): (&str,) = Params(Some(&p)).parse().unwrap();
        assert_eq!(s, "no escapes here");
    }

    #[test]
    fn reserved_and_duplicate_names_are_refused() {
        let mut r = Router::new();
        r.method("a", |(): (), _| Ok(1));
        assert_eq!(r.check(), Ok(()));
        r.method("rpc.mine", |(): (), _| Ok(1));
        r.method("a", |(): (), _| Ok(2));
        assert_eq!(r.check(), Err(RouterError::Reserved("rpc.mine".into())));
        assert_eq!(r.names().collect::<Vec<_>>(), ["a"], "neither refused name was added");
        let mut r = Router::new();
        r.method("a", |(): (), _| Ok(1)).async_method("a", |(): (), _| async { Ok(2) });
        assert_eq!(r.check(), Err(RouterError::Duplicate("a".into())));
    }
}
