//! The client side of JSON-RPC as a sans-IO session: request ids, pending calls with
//! timeouts, a bound on calls in flight, batches, subscriptions that survive reconnects
//! (resubscribed with `since`, deduplicated by sequence number), and the reconnect backoff.
//!
//! [`ClientConnection`](crate::engine::ClientConnection) drives a [`ClientSession`] over
//! WebSocket transports that come and go; the session itself only sees whole text messages
//! ([`ClientSession::poll_message`], [`ClientSession::handle_message`]) and whether a
//! transport is up ([`ClientSession::handle_connected`] / [`ClientSession::handle_disconnected`]),
//! so it also runs over other message transports.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::error::RpcError;
use super::message::write_request;
use crate::entropy::Entropy;
use crate::hub::SubscriptionMethods;
use crate::ws::{self, CloseCode, HandshakeError};

/// Identifies a call (or a batch entry) of this client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallToken(pub u64);

/// Identifies a subscription of this client; stable across reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionToken(pub u64);

/// Why a transport could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nobody listens there (connection refused).
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The host name did not resolve.
    Dns(String),
    /// The network or host is unreachable.
    Unreachable,
    /// The transport layer cannot reach this kind of URL (say `wss://` without TLS support).
    Unsupported(String),
    /// The TLS handshake of a `wss://` connection failed (the server's certificate was
    /// refused, or the two ends could not agree); never retried on its own.
    Tls(TlsError),
    /// Another I/O failure.
    Io {
        /// Its kind.
        kind: std::io::ErrorKind,
        /// What the system said.
        message: String,
    },
}

impl ConnectError {
    /// Classifies an I/O error from connecting.
    pub fn from_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Self::Refused,
            K::TimedOut | K::WouldBlock => Self::TimedOut,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => Self::Unreachable,
            kind => Self::Io { kind, message: e.to_string() },
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused => f.write_str("connection refused"),
            Self::TimedOut => f.write_str("connect timed out"),
            Self::Dns(why) => write!(f, "name resolution failed: {why}"),
            Self::Unreachable => f.write_str("host or network unreachable"),
            Self::Unsupported(what) => write!(f, "not supported by this transport: {what}"),
            Self::Tls(e) => write!(f, "TLS: {e}"),
            Self::Io { message, .. } => f.write_str(message),
        }
    }
}

/// Why a TLS handshake failed, as the adapter's TLS library reported it (the core itself has
/// no TLS; adapters map their library's errors onto these kinds).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The server's certificate does not chain to a trusted root (a self-signed certificate,
    /// or a private CA the client was not given).
    UnknownIssuer,
    /// The server's certificate (or one in its chain) has expired or is not valid yet.
    Expired,
    /// The server's certificate is not for the host name connected to.
    NameMismatch,
    /// The server's certificate was revoked.
    Revoked,
    /// The server's certificate was refused for another reason (what the verifier said).
    BadCertificate(String),
    /// The handshake failed otherwise: no common protocol version or cipher suite, an alert
    /// from the server, or a peer that does not speak TLS (what the library said).
    Handshake(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownIssuer => f.write_str("certificate issued by an unknown authority"),
            Self::Expired => f.write_str("certificate expired or not yet valid"),
            Self::NameMismatch => f.write_str("certificate is not valid for this host name"),
            Self::Revoked => f.write_str("certificate revoked"),
            Self::BadCertificate(why) => write!(f, "certificate refused: {why}"),
            Self::Handshake(why) => write!(f, "handshake failed: {why}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Why a client operation failed. Match on it; the text is for people.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered the call with an error object.
    Rpc(RpcError),
    /// No answer within the call timeout.
    Timeout,
    /// The connection dropped before the answer arrived (the call may or may not have run;
    /// it is never re-sent).
    Disconnected,
    /// The client was closed.
    Closed,
    /// The result did not deserialize into the expected type, or the params did not
    /// serialize.
    Decode(String),
    /// The URL cannot be used (scheme, host, port).
    InvalidUrl(String),
    /// The transport could not be opened.
    Connect(ConnectError),
    /// The server refused the WebSocket upgrade with this HTTP status (401 bad or missing
    /// token, 403 origin refused, 429 or 503 busy, …).
    Rejected {
        /// The HTTP status.
        status: u16,
    },
    /// The server's handshake answer broke RFC 6455.
    Handshake(HandshakeError),
    /// The WebSocket was closed with this code: by the server, or by us because the server
    /// broke the protocol.
    Protocol {
        /// The close code (1006 when the transport ended without a close frame).
        code: CloseCode,
        /// The reason sent with it, or what went wrong.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of a refused handshake.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Rejected { status } => Some(*status),
            _ => None,
        }
    }

    /// The TLS failure of a `wss://` connect.
    pub fn tls(&self) -> Option<&TlsError> {
        match self {
            Self::Connect(ConnectError::Tls(e)) => Some(e),
            _ => None,
        }
    }

    /// Whether trying again later can succeed (refusals for bad credentials or a foreign
    /// origin cannot).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rejected { status } => matches!(status, 408 | 429 | 500..=599),
            Self::InvalidUrl(_) | Self::Handshake(_) | Self::Decode(_) | Self::Closed => false,
            Self::Connect(ConnectError::Unsupported(_)) => false,
            // A refused certificate or a protocol mismatch does not fix itself; a reset during
            // the handshake is an I/O error, which stays transient.
            Self::Connect(ConnectError::Tls(_)) => false,
            _ => true,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rpc(e) => write!(f, "server error: {e}"),
            Self::Timeout => f.write_str("call timed out"),
            Self::Disconnected => f.write_str("connection lost before the response arrived"),
            Self::Closed => f.write_str("client closed"),
            Self::Decode(e) => write!(f, "unexpected value: {e}"),
            Self::InvalidUrl(e) => write!(f, "invalid URL: {e}"),
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Rejected { status } => {
                write!(f, "server refused the connection with HTTP {status}")
            }
            Self::Handshake(e) => write!(f, "bad handshake answer: {e}"),
            Self::Protocol { code, reason } => write!(f, "connection closed with {code}: {reason}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rpc(e) => Some(e),
            Self::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RpcError> for ClientError {
    fn from(e: RpcError) -> Self {
        Self::Rpc(e)
    }
}

/// Deserializes a raw result.
pub fn decode<T: DeserializeOwned>(raw: &RawValue) -> Result<T, ClientError> {
    serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Serializes call params; `()` (JSON `null`) means none.
pub fn encode_params(params: impl serde::Serialize) -> Result<Option<Box<RawValue>>, ClientError> {
    let raw =
        serde_json::value::to_raw_value(&params).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(if raw.get() == "null" { None } else { Some(raw) })
}

/// Exponential backoff with jitter for reconnecting (defaults: 1 s doubling to 30 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

/// Delays between reconnect attempts: the `n`th is `min(initial · 2ⁿ, max)`, of which a random
/// half is jitter (so many clients dropped at once do not reconnect in lockstep).
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, entropy: &mut dyn Entropy) -> Duration {
        let base = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let mut r = [0u8; 8];
        entropy.fill(&mut r);
        let fraction = (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64;
        base / 2 + base.mul_f64(fraction / 2.0)
    }

    /// The most the `n`th delay (from 0) can be: `min(initial · 2ⁿ, max)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.config.initial.saturating_mul(1u32 << n.min(20)).min(self.config.max)
    }

    /// Attempts made since the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A client's call settings, given with `ClientOptions::default().config(config)`: calls in
/// flight, the call timeout and the subscription method names (start from
/// `ClientConfig::default()` and change fields).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Calls sent and not yet answered; more wait in a queue \[64\].
    pub max_in_flight: usize,
    /// Time a call may wait for its answer, queueing included [30 s].
    pub call_timeout: Duration,
    /// Method names of the server's subscription protocol.
    pub methods: SubscriptionMethods,
    /// Reconnect delays; `None` disables reconnecting [1 s doubling to 30 s].
    pub reconnect: Option<BackoffConfig>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            call_timeout: Duration::from_secs(30),
            methods: SubscriptionMethods::default(),
            reconnect: Some(BackoffConfig::default()),
        }
    }
}

/// Settings for the adapter's transport that the core does not interpret (a TLS client
/// configuration), at most one value per type. Adapters fill it through typed setters of
/// their own (`TlsOptions::tls`) and read it back by type, so the core names no TLS library.
#[derive(Clone, Default)]
pub struct TransportSettings {
    entries: Vec<(std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>)>,
}

impl fmt::Debug for TransportSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportSettings").field("entries", &self.entries.len()).finish()
    }
}

impl TransportSettings {
    /// Stores `value`, replacing a value of the same type.
    pub fn insert<T: std::any::Any + Send + Sync>(&mut self, value: T) {
        let id = std::any::TypeId::of::<T>();
        self.entries.retain(|(t, _)| *t != id);
        self.entries.push((id, Arc::new(value)));
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        let id = std::any::TypeId::of::<T>();
        self.entries.iter().find(|(t, _)| *t == id).and_then(|(_, v)| v.downcast_ref())
    }
}

/// How to reach the server and behave; built with its setters.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    transport: TransportSettings,
    config: ClientConfig,
    ws: ws::Config,
    headers: Vec<(String, String)>,
    token: Option<String>,
    protocols: Vec<String>,
    fallbacks: Vec<String>,
}

impl ClientOptions {
    /// Calls in flight, timeouts, subscription method names, reconnect backoff.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Reconnect delays; `None` disables reconnecting.
    pub fn reconnect(mut self, backoff: Option<BackoffConfig>) -> Self {
        self.config.reconnect = backoff;
        self
    }

    /// Sends `Authorization: Bearer <token>` with the handshake.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Adds a handshake header (an `Origin`, for instance).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offers the WebSocket subprotocol `protocol` in `Sec-WebSocket-Protocol`; call it once
    /// per protocol, in order of preference.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// The WebSocket limits and timers (the handshake timeout also bounds connecting).
    pub fn websocket(mut self, ws: ws::Config) -> Self {
        self.ws = ws;
        self
    }

    /// Offers permessage-deflate with its defaults (see [`ws::deflate::DeflateConfig`]);
    /// used when the server accepts it.
    pub fn compression(mut self) -> Self {
        self.ws.enable_compression();
        self
    }

    /// Another server of the same service: reconnects rotate through the URL given to
    /// `connect` and these, in order, resuming subscriptions with `since` on whichever
    /// answers.
    pub fn fallback(mut self, url: impl Into<String>) -> Self {
        self.fallbacks.push(url.into());
        self
    }

    /// Stores a setting for the adapter's transport (one per type). Applications use the
    /// adapters' typed setters instead (`TlsOptions::tls` for a `rustls::ClientConfig`).
    pub fn transport_setting<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.transport.insert(value);
        self
    }

    /// The adapter's transport settings.
    pub fn transport_settings(&self) -> &TransportSettings {
        &self.transport
    }

    /// The session configuration.
    pub fn client_config(&self) -> &ClientConfig {
        &self.config
    }

    /// The WebSocket configuration.
    pub fn ws_config(&self) -> &ws::Config {
        &self.ws
    }

    pub(crate) fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// The handshake request for `target`.
    pub(crate) fn request(&self, authority: &str, path: &str) -> ws::ClientRequest {
        let mut request = ws::ClientRequest::new(authority, path);
        for (k, v) in &self.headers {
            request = request.header(k.clone(), v.clone());
        }
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        for p in &self.protocols {
            request = request.protocol(p.clone());
        }
        request
    }
}

/// A subscription's events, in order.
#[derive(Clone, Debug)]
pub enum SubscriptionEvent {
    /// A published value with its per-topic sequence number.
    Notification {
        /// The sequence number.
        seq: u64,
        /// The value, as JSON.
        value: Box<RawValue>,
    },
    /// Values `from..=to` will not arrive (the client was too slow, or away longer than the
    /// server's replay window).
    Gap {
        /// First missed sequence number.
        from: u64,
        /// Last missed sequence number.
        to: u64,
        /// Dropped because this client read too slowly (else: replay could not reach back).
        lagged: bool,
    },
    /// The topic's history was lost where the server keeps it (a shared topic whose broker
    /// lost its data): sequence numbers start over in `epoch`, and values before it will
    /// not come. Reload what depends on the topic.
    Reset {
        /// The new epoch.
        epoch: u64,
    },
    /// Values from `from` on are held up: the server's broker is down. They arrive, or a
    /// [`Gap`](Self::Gap) says which will not, once it is back.
    Stalled {
        /// The first value that may be late.
        from: u64,
    },
    /// The server refused the subscription after a reconnect; no more events follow.
    Ended(ClientError),
}

impl SubscriptionEvent {
    /// The value deserialized, for a notification.
    pub fn value<T: DeserializeOwned>(&self) -> Option<Result<T, ClientError>> {
        match self {
            Self::Notification { value, .. } => Some(decode(value)),
            _ => None,
        }
    }
}

/// What the session reports to its callers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The answer to a call.
    Response {
        /// Which call.
        call: CallToken,
        /// Its result, raw.
        result: Result<Box<RawValue>, ClientError>,
    },
    /// A published value for a subscription, in sequence order, each at most once.
    Notification {
        /// Which subscription.
        subscription: SubscriptionToken,
        /// The topic.
        topic: Arc<str>,
        /// The per-topic sequence number.
        seq: u64,
        /// The value.
        value: Box<RawValue>,
    },
    /// Values `from..=to` of a subscription's topic will never arrive: the client read too
    /// slowly (`lagged`), or was away longer than the server's replay buffer covers.
    Gap {
        /// Which subscription.
        subscription: SubscriptionToken,
        /// First missed sequence number.
        from: u64,
        /// Last missed sequence number.
        to: u64,
        /// True for a slow-consumer drop, false for a replay that could not reach back.
        lagged: bool,
    },
    /// A subscription's topic started over in a new epoch (see [`SubscriptionEvent::Reset`]).
    Reset {
        /// Which subscription.
        subscription: SubscriptionToken,
        /// The new epoch.
        epoch: u64,
    },
    /// A subscription's values from `from` on are held up (see
    /// [`SubscriptionEvent::Stalled`]).
    Stalled {
        /// Which subscription.
        subscription: SubscriptionToken,
        /// The first value that may be late.
        from: u64,
    },
    /// The server accepted (or re-accepted after a reconnect) a subscription.
    Subscribed {
        /// Which subscription.
        subscription: SubscriptionToken,
    },
    /// The server refused a subscription; it is dropped.
    SubscribeFailed {
        /// Which subscription.
        subscription: SubscriptionToken,
        /// Why.
        error: ClientError,
    },
}

#[derive(Debug)]
enum PendingKind {
    Call(CallToken),
    Subscribe(SubscriptionToken),
    Unsubscribe,
}

#[derive(Debug)]
struct Pending {
    kind: PendingKind,
    deadline: Instant,
}

#[derive(Debug)]
struct Queued {
    message: Vec<u8>,
    ids: Vec<u64>,
    deadline: Instant,
}

#[derive(Debug)]
struct Subscription {
    topic: Arc<str>,
    /// The filter param sent with every (re)subscription; the server applies it at fan-out.
    filter: Option<Box<RawValue>>,
    server_id: Option<Arc<str>>,
    last_seq: Option<u64>,
    epoch: Option<u64>,
    /// The server accepted it once: a transient refusal of its renewal is retried.
    established: bool,
    /// Renew it then (after a transient refusal).
    retry_at: Option<Instant>,
    /// The delay before the last renewal asked again (zero: none yet); doubles.
    retry_delay: Duration,
}

/// The first delay before a refused renewal is asked again, doubling to the reconnect cap.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// The sans-IO client session. See the module docs for how to drive it.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    connected: bool,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    in_flight: usize,
    queued: VecDeque<Queued>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    subscriptions: HashMap<SubscriptionToken, Subscription>,
    /// The local subscriptions behind each server subscription: a server answers a second
    /// subscribe to the same topic on one connection with the same id.
    by_server_id: HashMap<Arc<str>, Vec<SubscriptionToken>>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    /// Present even when it is `null` (a method that returns nothing).
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<WireError<'a>>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// A member that is there, whatever its value (`Option` alone reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct WireError<'a> {
    code: i64,
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NotificationParams<'a> {
    #[serde(borrow)]
    subscription: std::borrow::Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    missed_from: Option<u64>,
    #[serde(default)]
    missed_to: Option<u64>,
    #[serde(default)]
    epoch: Option<u64>,
}

#[derive(Deserialize)]
struct SubscribeResult {
    subscription: String,
    #[serde(default)]
    epoch: Option<u64>,
}

impl ClientSession {
    /// A session, disconnected until [`handle_connected`](Self::handle_connected).
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            connected: false,
            next_id: 1,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            in_flight: 0,
            queued: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            subscriptions: HashMap::new(),
            by_server_id: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Calls waiting for an answer or for a slot.
    pub fn pending_calls(&self) -> usize {
        self.pending.values().filter(|p| matches!(p.kind, PendingKind::Call(_))).count()
            + self.queued.len()
    }

    /// Whether the transport is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Starts a call; its answer comes as [`ClientEvent::Response`].
    pub fn call(&mut self, now: Instant, method: &str, params: Option<&RawValue>) -> CallToken {
        self.call_with_timeout(now, method, params, self.config.call_timeout)
    }

    /// [`call`](Self::call) with its own timeout.
    pub fn call_with_timeout(
        &mut self,
        now: Instant,
        method: &str,
        params: Option<&RawValue>,
        timeout: Duration,
    ) -> CallToken {
        let id = self.new_id();
        let mut message = Vec::new();
        write_request(&mut message, method, params, Some(id));
        self.enqueue(Queued { message, ids: vec![id], deadline: crate::later(now, timeout) });
        CallToken(id)
    }

    /// Sends a notification (no answer). Dropped while disconnected.
    pub fn notify(&mut self, method: &str, params: Option<&RawValue>) -> bool {
        if !self.connected {
            return false;
        }
        let mut message = Vec::new();
        write_request(&mut message, method, params, None);
        self.out.push_back(message);
        true
    }

    /// Sends calls as one batch message; each answer comes as its own
    /// [`ClientEvent::Response`]. The batch takes one in-flight slot per call.
    pub fn batch(&mut self, now: Instant, calls: &[(&str, Option<&RawValue>)]) -> Vec<CallToken> {
        if calls.is_empty() {
            // `[]` is an invalid request; an empty batch has nothing to ask.
            return Vec::new();
        }
        let mut message = vec![b'['];
        let mut ids = Vec::with_capacity(calls.len());
        for (i, (method, params)) in calls.iter().enumerate() {
            if i > 0 {
                message.push(b',');
            }
            let id = self.new_id();
            write_request(&mut message, method, *params, Some(id));
            ids.push(id);
        }
        message.push(b']');
        let tokens = ids.iter().map(|&i| CallToken(i)).collect();
        self.enqueue(Queued {
            message,
            ids,
            deadline: crate::later(now, self.config.call_timeout),
        });
        tokens
    }

    fn enqueue(&mut self, q: Queued) {
        self.queued.push_back(q);
        self.send_queued();
    }

    fn send_queued(&mut self) {
        while self.connected && self.in_flight < self.config.max_in_flight {
            let Some(q) = self.queued.pop_front() else { break };
            for &id in &q.ids {
                self.pending.insert(
                    id,
                    Pending { kind: PendingKind::Call(CallToken(id)), deadline: q.deadline },
                );
                self.deadlines.insert((q.deadline, id));
            }
            self.in_flight += q.ids.len();
            self.out.push_back(q.message);
        }
    }

    /// Subscribes to `topic`; notifications come as [`ClientEvent::Notification`], also
    /// across reconnects (resubscribed with the last sequence number seen).
    pub fn subscribe(&mut self, now: Instant, topic: &str) -> SubscriptionToken {
        self.subscribe_filtered(now, topic, None)
    }

    /// Subscribes to `topic` with a filter param (JSON), which the server's subscription
    /// handler for `topic` reads (`SubscribeCall::filter`) and applies to every publish:
    /// `{"topic": …, "filter": …}` in wsrpc style, `[topic, filter]` in Ethereum style. It
    /// goes with every renewal too. A filtered subscription is never shared with another
    /// subscription to the same topic: the server gives each its own id.
    pub fn subscribe_filtered(
        &mut self,
        now: Instant,
        topic: &str,
        filter: Option<Box<RawValue>>,
    ) -> SubscriptionToken {
        let token = SubscriptionToken(self.new_id());
        self.subscriptions.insert(
            token,
            Subscription {
                topic: topic.into(),
                filter,
                server_id: None,
                last_seq: None,
                epoch: None,
                established: false,
                retry_at: None,
                retry_delay: Duration::ZERO,
            },
        );
        if self.connected {
            self.send_subscribe(now, token);
        }
        token
    }

    /// Ends a subscription.
    pub fn unsubscribe(&mut self, now: Instant, token: SubscriptionToken) {
        let Some(sub) = self.subscriptions.remove(&token) else { return };
        if let (Some(server_id), true) = (sub.server_id, self.connected) {
            let shared = self.by_server_id.get_mut(&server_id).is_some_and(|tokens| {
                tokens.retain(|t| *t != token);
                !tokens.is_empty()
            });
            // The server's subscription ends with the last local one it serves.
            if !shared {
                self.by_server_id.remove(&server_id);
                self.send_unsubscribe(now, &server_id);
            }
        }
    }

    fn send_unsubscribe(&mut self, now: Instant, server_id: &str) {
        let id = self.new_id();
        let params = serde_json::value::to_raw_value(&[server_id]).expect("strings serialize");
        let mut message = Vec::new();
        write_request(&mut message, &self.config.methods.unsubscribe, Some(&params), Some(id));
        let deadline = crate::later(now, self.config.call_timeout);
        self.pending.insert(id, Pending { kind: PendingKind::Unsubscribe, deadline });
        self.deadlines.insert((deadline, id));
        self.out.push_back(message);
    }

    fn send_subscribe(&mut self, now: Instant, token: SubscriptionToken) {
        let Some(sub) = self.subscriptions.get(&token) else { return };
        /// wsrpc style: the filter goes as its raw JSON text, byte for byte.
        #[derive(serde::Serialize)]
        struct Params<'a> {
            topic: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            since: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            epoch: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            filter: Option<&'a RawValue>,
        }
        let topic = &*sub.topic;
        let filter = sub.filter.as_deref();
        let params = if self.config.methods.eth_style {
            match filter {
                Some(filter) => serde_json::value::to_raw_value(&(topic, filter)),
                None => serde_json::value::to_raw_value(&[topic]),
            }
        } else {
            // A first subscription asks for the whole replay window only after a reconnect.
            let since = sub.last_seq;
            let epoch = since.and(sub.epoch);
            serde_json::value::to_raw_value(&Params { topic, since, epoch, filter })
        }
        .expect("strings, numbers and raw JSON serialize");
        let id = self.new_id();
        let mut message = Vec::new();
        write_request(&mut message, &self.config.methods.subscribe, Some(&params), Some(id));
        let deadline = crate::later(now, self.config.call_timeout);
        self.pending.insert(id, Pending { kind: PendingKind::Subscribe(token), deadline });
        self.deadlines.insert((deadline, id));
        self.out.push_back(message);
    }

    /// The transport is up: queued calls go out and every subscription is (re)made.
    pub fn handle_connected(&mut self, now: Instant) {
        self.connected = true;
        let tokens: Vec<SubscriptionToken> = self.subscriptions.keys().copied().collect();
        for t in tokens {
            if let Some(sub) = self.subscriptions.get_mut(&t) {
                sub.retry_at = None;
            }
            self.send_subscribe(now, t);
        }
        self.send_queued();
    }

    /// The transport went down: calls in flight fail with [`ClientError::Disconnected`];
    /// queued calls wait for the next connection; subscriptions are kept for resubscribing.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        self.connected = false;
        self.out.clear();
        let mut failed: Vec<u64> = Vec::new();
        for (id, p) in self.pending.drain() {
            if let PendingKind::Call(token) = p.kind {
                failed.push(token.0);
            }
            self.deadlines.remove(&(p.deadline, id));
        }
        failed.sort_unstable();
        for id in failed {
            self.events.push_back(ClientEvent::Response {
                call: CallToken(id),
                result: Err(ClientError::Disconnected),
            });
        }
        self.in_flight = 0;
        self.by_server_id.clear();
        for sub in self.subscriptions.values_mut() {
            sub.server_id = None;
        }
    }

    /// Fails every call and drops everything: the client is shutting down.
    pub fn close(&mut self) {
        self.handle_disconnected_with(ClientError::Closed);
    }

    fn handle_disconnected_with(&mut self, error: ClientError) {
        self.connected = false;
        self.out.clear();
        let mut ids: Vec<u64> = self
            .pending
            .drain()
            .filter_map(|(_, p)| match p.kind {
                PendingKind::Call(t) => Some(t.0),
                _ => None,
            })
            .collect();
        ids.extend(self.queued.drain(..).flat_map(|q| q.ids));
        ids.sort_unstable();
        for id in ids {
            self.events.push_back(ClientEvent::Response {
                call: CallToken(id),
                result: Err(error.clone()),
            });
        }
        self.deadlines.clear();
        self.in_flight = 0;
    }

    /// Fails calls whose timeout passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.connected {
            let due: Vec<SubscriptionToken> = self
                .subscriptions
                .iter_mut()
                .filter(|(_, s)| s.retry_at.is_some_and(|at| at <= now))
                .map(|(t, s)| {
                    s.retry_at = None;
                    *t
                })
                .collect();
            for token in due {
                self.send_subscribe(now, token);
            }
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.pending.remove(&id) {
                match p.kind {
                    PendingKind::Call(token) => {
                        // Only calls hold an in-flight slot.
                        self.in_flight = self.in_flight.saturating_sub(1);
                        self.events.push_back(ClientEvent::Response {
                            call: token,
                            result: Err(ClientError::Timeout),
                        });
                    }
                    PendingKind::Subscribe(token) => {
                        // A failed subscription is dropped, not retried on every reconnect.
                        self.subscriptions.remove(&token);
                        self.events.push_back(ClientEvent::SubscribeFailed {
                            subscription: token,
                            error: ClientError::Timeout,
                        });
                    }
                    PendingKind::Unsubscribe => {}
                }
            }
        }
        while self.queued.front().is_some_and(|q| q.deadline <= now) {
            let q = self.queued.pop_front().expect("checked");
            for id in q.ids {
                self.events.push_back(ClientEvent::Response {
                    call: CallToken(id),
                    result: Err(ClientError::Timeout),
                });
            }
        }
        self.send_queued();
    }

    /// The next deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.deadlines.first().map(|&(d, _)| d);
        let queued = self.queued.front().map(|q| q.deadline);
        let renew = if self.connected {
            self.subscriptions.values().filter_map(|s| s.retry_at).min()
        } else {
            None
        };
        [pending, queued, renew].into_iter().flatten().min()
    }

    /// The next text message to send.
    #[must_use]
    pub fn poll_message(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event for callers.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Handles a received text message (a response, a batch of them, or a notification).
    /// Returns false when it is not JSON-RPC.
    pub fn handle_message(&mut self, now: Instant, text: &[u8]) -> bool {
        let first = text.iter().copied().find(|b| !b.is_ascii_whitespace());
        if first == Some(b'[') {
            // A batch answers calls of ours: entries beyond the pending count cannot match one,
            // so they are checked to be JSON but not kept (a hostile server's array of
            // millions of entries costs no memory).
            let keep = self.pending.len().max(1);
            let Ok((items, _)) = super::message::bounded_array(text, keep) else { return false };
            let mut ok = true;
            for item in items {
                ok &= self.handle_one(now, item.get().as_bytes());
            }
            return ok;
        }
        self.handle_one(now, text)
    }

    fn handle_one(&mut self, now: Instant, text: &[u8]) -> bool {
        let Ok(msg) = serde_json::from_slice::<Incoming<'_>>(text) else { return false };
        if let Some(method) = msg.method {
            self.handle_notification(&method, msg.params);
            return true;
        }
        let Some(id) = msg.id.and_then(|i| i.get().parse::<u64>().ok()) else { return false };
        let Some(p) = self.pending.remove(&id) else { return true };
        self.deadlines.remove(&(p.deadline, id));
        let result = match (msg.result, msg.error) {
            (_, Some(e)) => Err(RpcError {
                code: e.code,
                message: e.message.into_owned().into(),
                data: e.data.map(|d| d.to_owned()),
            }),
            (Some(r), None) => Ok(r.to_owned()),
            (None, None) => Err(RpcError::invalid_request("response without result or error")),
        };
        match p.kind {
            PendingKind::Call(token) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.events.push_back(ClientEvent::Response {
                    call: token,
                    result: result.map_err(ClientError::Rpc),
                });
                self.send_queued();
            }
            PendingKind::Subscribe(token) => self.handle_subscribed(now, token, result),
            PendingKind::Unsubscribe => {}
        }
        true
    }

    fn handle_subscribed(
        &mut self,
        now: Instant,
        token: SubscriptionToken,
        result: Result<Box<RawValue>, RpcError>,
    ) {
        let eth = self.config.methods.eth_style;
        let parsed = result.map_err(ClientError::Rpc).and_then(|raw| {
            if eth {
                serde_json::from_str::<String>(raw.get()).map(|s| (s, None))
            } else {
                serde_json::from_str::<SubscribeResult>(raw.get())
                    .map(|r| (r.subscription, r.epoch))
            }
            .map_err(|e| ClientError::Decode(e.to_string()))
        });
        let Some(sub) = self.subscriptions.get_mut(&token) else {
            // Unsubscribed while the answer was on its way: end it on the server too.
            if let Ok((server_id, _)) = parsed {
                self.send_unsubscribe(now, &server_id);
            }
            return;
        };
        match parsed {
            Ok((server_id, epoch)) => {
                if epoch.is_some() && sub.epoch.is_some() && epoch != sub.epoch {
                    // The server restarted: its sequence numbers started over.
                    sub.last_seq = None;
                }
                sub.epoch = epoch.or(sub.epoch);
                sub.established = true;
                sub.retry_at = None;
                sub.retry_delay = Duration::ZERO;
                let server_id: Arc<str> = server_id.into();
                sub.server_id = Some(server_id.clone());
                let tokens = self.by_server_id.entry(server_id).or_default();
                if !tokens.contains(&token) {
                    tokens.push(token);
                }
                self.events.push_back(ClientEvent::Subscribed { subscription: token });
            }
            // A renewal refused for now (the server's broker is down, a limit): asked again
            // later, the subscription kept with its position.
            Err(ClientError::Rpc(e))
                if sub.established
                    && matches!(
                        e.code,
                        super::error::UNAVAILABLE | super::error::LIMIT_EXCEEDED
                    ) =>
            {
                let cap = self.config.reconnect.map_or(Duration::from_secs(30), |b| b.max);
                let delay = (sub.retry_delay * 2).clamp(RENEW_RETRY, cap.max(RENEW_RETRY));
                log::debug!(target: "wsrpc::rpc", "renewing {} refused ({}); again in {delay:?}", sub.topic, e.message);
                sub.retry_at = Some(crate::later(now, delay));
                sub.retry_delay = delay;
            }
            Err(error) => {
                self.subscriptions.remove(&token);
                self.events.push_back(ClientEvent::SubscribeFailed { subscription: token, error });
            }
        }
    }

    fn handle_notification(&mut self, method: &str, params: Option<&RawValue>) {
        let methods = &self.config.methods;
        let kind: u8 = if method == methods.notification {
            0
        } else if method == methods.lagged {
            1
        } else if method == methods.gap {
            2
        } else if method == methods.reset {
            3
        } else {
            return;
        };
        let Some(params) =
            params.and_then(|p| serde_json::from_str::<NotificationParams<'_>>(p.get()).ok())
        else {
            return;
        };
        let Some(tokens) = self.by_server_id.get(&*params.subscription) else { return };
        for &token in tokens {
            if let Some(sub) = self.subscriptions.get_mut(&token) {
                Self::deliver(&mut self.events, token, sub, kind, &params);
            }
        }
    }

    /// One notification (`kind`: 0 a message, 1 lagged, 2 gap, 3 reset) for one local
    /// subscription.
    fn deliver(
        events: &mut VecDeque<ClientEvent>,
        token: SubscriptionToken,
        sub: &mut Subscription,
        kind: u8,
        params: &NotificationParams<'_>,
    ) {
        match kind {
            0 => {
                let Some(value) = params.result else { return };
                if let Some(seq) = params.seq {
                    if sub.last_seq.is_some_and(|last| seq <= last) {
                        return; // already delivered (a replay overlapping what we saw)
                    }
                    sub.last_seq = Some(seq);
                }
                events.push_back(ClientEvent::Notification {
                    subscription: token,
                    topic: sub.topic.clone(),
                    seq: params.seq.unwrap_or(0),
                    value: value.to_owned(),
                });
            }
            3 => {
                let Some(epoch) = params.epoch else { return };
                // Numbers start over: whatever comes next is new.
                sub.epoch = Some(epoch);
                sub.last_seq = None;
                events.push_back(ClientEvent::Reset { subscription: token, epoch });
            }
            // A lag notice without an end: held up while the server's broker is down.
            1 if params.missed_to.is_none() => {
                let Some(from) = params.missed_from else { return };
                events.push_back(ClientEvent::Stalled { subscription: token, from });
            }
            _ => {
                let (Some(from), Some(to)) = (params.missed_from, params.missed_to) else { return };
                if kind == 1 {
                    sub.last_seq = Some(sub.last_seq.map_or(to, |l| l.max(to)));
                }
                events.push_back(ClientEvent::Gap {
                    subscription: token,
                    from,
                    to,
                    lagged: kind == 1,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Xoshiro256;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut e = Xoshiro256::from_seed(1);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut e)).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_secs(1 << i.min(5)).min(Duration::from_secs(30));
            assert!(*d >= base / 2 && *d <= base, "{i}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay(&mut e) <= Duration::from_secs(1));
    }

    #[test]
    fn calls_queue_beyond_max_in_flight_and_time_out() {
        let now = crate::test_origin();
        let mut s =
            ClientSession::new(ClientConfig { max_in_flight: 2, ..ClientConfig::default() });
        s.handle_connected(now);
        let t: Vec<CallToken> = (0..3).map(|_| s.call(now, "m", None)).collect();
        assert!(s.poll_message().is_some() && s.poll_message().is_some());
        assert!(s.poll_message().is_none(), "the third waits for a slot");
        assert!(s.handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":1,"id":{}}}"#, t[0].0).as_bytes()
        ));
        assert!(
            matches!(s.poll_event(), Some(ClientEvent::Response { call, result: Ok(_) }) if call == t[0])
        );
        assert!(s.poll_message().is_some(), "a slot freed up");
        s.handle_timeout(now + Duration::from_secs(31));
        let mut timed_out = Vec::new();
        while let Some(ClientEvent::Response { call, result: Err(ClientError::Timeout) }) =
            s.poll_event()
        {
            timed_out.push(call);
        }
        assert_eq!(timed_out, vec![t[1], t[2]]);
    }

    #[test]
    fn disconnect_fails_in_flight_calls_and_reconnect_resubscribes_with_since() {
        let now = crate::test_origin();
        let mut s = ClientSession::new(ClientConfig::default());
        s.handle_connected(now);
        let sub = s.subscribe(now, "prices");
        let req: serde_json::Value = serde_json::from_slice(&s.poll_message().unwrap()).unwrap();
        assert_eq!(req["params"], serde_json::json!({"topic": "prices"}));
        let id = req["id"].as_u64().unwrap();
        s.handle_message(now, format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x1","seq":0,"epoch":7}},"id":{id}}}"#).as_bytes());
        assert!(matches!(s.poll_event(), Some(ClientEvent::Subscribed { .. })));
        for seq in 1..=3 {
            let n = format!(
                r#"{{"jsonrpc":"2.0","method":"subscription","params":{{"subscription":"0x1","topic":"prices","seq":{seq},"result":{seq}}}}}"#
            );
            s.handle_message(now, n.as_bytes());
        }
        let seqs: Vec<u64> = std::iter::from_fn(|| match s.poll_event() {
            Some(ClientEvent::Notification { seq, .. }) => Some(seq),
            _ => None,
        })
        .collect();
        assert_eq!(seqs, [1, 2, 3]);
        let call = s.call(now, "m", Some(&raw("[1]")));
        let _ = s.poll_message();
        s.handle_disconnected(now);
        assert!(
            matches!(s.poll_event(), Some(ClientEvent::Response { call: c, result: Err(ClientError::Disconnected) }) if c == call)
        );
        s.handle_connected(now);
        let req: serde_json::Value = serde_json::from_slice(&s.poll_message().unwrap()).unwrap();
        assert_eq!(req["params"], serde_json::json!({"topic": "prices", "since": 3, "epoch": 7}));
        let id = req["id"].as_u64().unwrap();
        s.handle_message(now, format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x9","seq":5,"epoch":7}},"id":{id}}}"#).as_bytes());
        let _ = s.poll_event();
        // Replayed overlap is dropped; new ones pass.
        for seq in [3, 4, 5] {
            let n = format!(
                r#"{{"jsonrpc":"2.0","method":"subscription","params":{{"subscription":"0x9","topic":"prices","seq":{seq},"result":{seq}}}}}"#
            );
            s.handle_message(now, n.as_bytes());
        }
        let seqs: Vec<u64> = std::iter::from_fn(|| match s.poll_event() {
            Some(ClientEvent::Notification { seq, subscription, .. }) if subscription == sub => {
                Some(seq)
            }
            _ => None,
        })
        .collect();
        assert_eq!(seqs, [4, 5]);
    }

    #[test]
    fn a_new_epoch_resets_the_sequence() {
        let now = crate::test_origin();
        let mut s = ClientSession::new(ClientConfig::default());
        s.handle_connected(now);
        s.subscribe(now, "t");
        let id =
            serde_json::from_slice::<serde_json::Value>(&s.poll_message().unwrap()).unwrap()["id"]
                .as_u64()
                .unwrap();
        s.handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x1","epoch":1}},"id":{id}}}"#)
                .as_bytes(),
        );
        s.handle_message(now, br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"0x1","seq":9,"result":0}}"#);
        s.handle_disconnected(now);
        s.handle_connected(now);
        let id =
            serde_json::from_slice::<serde_json::Value>(&s.poll_message().unwrap()).unwrap()["id"]
                .as_u64()
                .unwrap();
        s.handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x1","epoch":2}},"id":{id}}}"#)
                .as_bytes(),
        );
        s.handle_message(now, br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"0x1","seq":1,"result":0}}"#);
        let seqs: Vec<u64> = std::iter::from_fn(|| s.poll_event())
            .filter_map(|e| {
                if let ClientEvent::Notification { seq, .. } = e { Some(seq) } else { None }
            })
            .collect();
        assert_eq!(seqs, [9, 1]);
    }

    /// The subscribe request the session just queued: its id and params.
    fn sent_subscribe(s: &mut ClientSession) -> (u64, serde_json::Value) {
        let req: serde_json::Value = serde_json::from_slice(&s.poll_message().unwrap()).unwrap();
        (req["id"].as_u64().unwrap(), req["params"].clone())
    }

    /// A connected session subscribed to `t`, answered as subscription `0x1` in epoch 7.
    fn subscribed_to_t(now: Instant) -> (ClientSession, SubscriptionToken) {
        let mut s = ClientSession::new(ClientConfig::default());
        s.handle_connected(now);
        let sub = s.subscribe(now, "t");
        let (id, _) = sent_subscribe(&mut s);
        s.handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x1","epoch":7}},"id":{id}}}"#)
                .as_bytes(),
        );
        (s, sub)
    }

    #[test]
    fn a_filter_is_sent_byte_for_byte_in_both_styles() {
        let now = crate::test_origin();
        // A number no f64 holds: a round trip through serde_json::Value would refuse it.
        let filter = r#"{"min":1e999999,"tags":["a"]}"#;
        let mut s = ClientSession::new(ClientConfig::default());
        s.handle_connected(now);
        s.subscribe_filtered(now, "t", Some(raw(filter)));
        let sent = String::from_utf8(s.poll_message().unwrap()).unwrap();
        assert!(sent.contains(&format!(r#""params":{{"topic":"t","filter":{filter}}}"#)), "{sent}");
        let config =
            ClientConfig { methods: crate::hub::SubscriptionMethods::eth(), ..Default::default() };
        let mut s = ClientSession::new(config);
        s.handle_connected(now);
        s.subscribe_filtered(now, "logs", Some(raw(filter)));
        let sent = String::from_utf8(s.poll_message().unwrap()).unwrap();
        assert!(sent.contains(&format!(r#""params":["logs",{filter}]"#)), "{sent}");
    }

    #[test]
    fn reset_and_stalled_notices_reach_the_subscription() {
        let now = crate::test_origin();
        let (mut s, sub) = subscribed_to_t(now);
        s.handle_message(now, br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"0x1","seq":4,"result":4}}"#);
        s.handle_message(now, br#"{"jsonrpc":"2.0","method":"lagged","params":{"subscription":"0x1","topic":"t","missed_from":5,"broker":"down"}}"#);
        s.handle_message(now, br#"{"jsonrpc":"2.0","method":"reset","params":{"subscription":"0x1","topic":"t","epoch":9}}"#);
        // After the reset, sequence numbers start over and are not taken for duplicates.
        s.handle_message(now, br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"0x1","seq":1,"result":1}}"#);
        let events: Vec<ClientEvent> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(matches!(events[1], ClientEvent::Notification { seq: 4, .. }), "{events:?}");
        assert!(
            matches!(events[2], ClientEvent::Stalled { subscription, from: 5 } if subscription == sub)
        );
        assert!(matches!(events[3], ClientEvent::Reset { epoch: 9, .. }));
        assert!(matches!(events[4], ClientEvent::Notification { seq: 1, .. }));
        // A renewal asks from the new epoch.
        s.handle_disconnected(now);
        s.handle_connected(now);
        let (_, params) = sent_subscribe(&mut s);
        assert_eq!(params, serde_json::json!({"topic": "t", "since": 1, "epoch": 9}));
    }

    #[test]
    fn a_renewal_refused_for_now_is_asked_again_with_a_doubling_delay() {
        let now = crate::test_origin();
        let (mut s, sub) = subscribed_to_t(now);
        s.handle_disconnected(now);
        s.handle_connected(now);
        let refuse = |s: &mut ClientSession, id: u64| {
            s.handle_message(now, format!(r#"{{"jsonrpc":"2.0","error":{{"code":-32002,"message":"broker unavailable"}},"id":{id}}}"#).as_bytes())
        };
        let (id, _) = sent_subscribe(&mut s);
        refuse(&mut s, id);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(1)));
        assert!(s.poll_message().is_none());
        s.handle_timeout(now + Duration::from_secs(1));
        let (id, _) = sent_subscribe(&mut s);
        refuse(&mut s, id);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(2)), "doubled");
        s.handle_timeout(now + Duration::from_secs(2));
        let (id, _) = sent_subscribe(&mut s);
        s.handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x2","epoch":7}},"id":{id}}}"#)
                .as_bytes(),
        );
        let ended = std::iter::from_fn(|| s.poll_event())
            .any(|e| matches!(e, ClientEvent::SubscribeFailed { subscription, .. } if subscription == sub));
        assert!(!ended, "kept through the refusals");
        // A first subscribe refused the same way is the caller's to handle.
        let other = s.subscribe(now, "u");
        let (id, _) = sent_subscribe(&mut s);
        refuse(&mut s, id);
        let failed = std::iter::from_fn(|| s.poll_event())
            .any(|e| matches!(e, ClientEvent::SubscribeFailed { subscription, .. } if subscription == other));
        assert!(failed);
    }

    #[test]
    fn a_null_result_is_a_result() {
        let now = crate::test_origin();
        let mut s = ClientSession::new(ClientConfig::default());
        s.handle_connected(now);
        let t = s.call(now, "m", None);
        let _ = s.poll_message();
        assert!(s.handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":null,"id":{}}}"#, t.0).as_bytes()
        ));
        match s.poll_event() {
            Some(ClientEvent::Response { call, result: Ok(v) }) => {
                assert_eq!((call, v.get()), (t, "null"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batches_answer_each_call() {
        let now = crate::test_origin();
        let mut s = ClientSession::new(ClientConfig::default());
        s.handle_connected(now);
        let p = raw("[1,2]");
        let tokens = s.batch(now, &[("add", Some(&p)), ("add", Some(&p))]);
        let msg: serde_json::Value = serde_json::from_slice(&s.poll_message().unwrap()).unwrap();
        assert_eq!(msg.as_array().unwrap().len(), 2);
        let resp = format!(
            r#"[{{"jsonrpc":"2.0","result":3,"id":{}}},{{"jsonrpc":"2.0","error":{{"code":-32601,"message":"Method not found"}},"id":{}}}]"#,
            tokens[1].0, tokens[0].0
        );
        assert!(s.handle_message(now, resp.as_bytes()));
        let mut got = Vec::new();
        while let Some(ClientEvent::Response { call, result }) = s.poll_event() {
            got.push((call, result.is_ok()));
        }
        assert_eq!(got, vec![(tokens[1], true), (tokens[0], false)]);
    }

    #[test]
    fn timed_out_subscribe_frees_no_call_slot_and_is_dropped() {
        let now = crate::test_origin();
        let mut s =
            ClientSession::new(ClientConfig { max_in_flight: 1, ..ClientConfig::default() });
        s.handle_connected(now);
        let _sub = s.subscribe(now, "t");
        let _ = s.poll_message();
        let _call = s.call(now, "m", None);
        assert!(s.poll_message().is_some());
        let _ = s.call(now + Duration::from_secs(20), "m2", None);
        s.handle_timeout(now + Duration::from_secs(31));
        // The subscribe and the first call timed out: one slot frees, not two.
        assert!(s.poll_message().is_some());
        assert!(s.poll_message().is_none());
        s.handle_disconnected(now);
        s.handle_connected(now);
        let resubscribed = std::iter::from_fn(|| s.poll_message())
            .any(|m| String::from_utf8_lossy(&m).contains("\"subscribe\""));
        assert!(!resubscribed, "a failed subscription is not renewed");
    }

    #[test]
    fn unsubscribing_while_the_subscribe_is_pending_ends_it_on_the_server() {
        let now = crate::test_origin();
        let mut s = ClientSession::new(ClientConfig::default());
        s.handle_connected(now);
        let sub = s.subscribe(now, "t");
        let req: serde_json::Value = serde_json::from_slice(&s.poll_message().unwrap()).unwrap();
        s.unsubscribe(now, sub);
        assert!(s.poll_message().is_none());
        let id = req["id"].as_u64().unwrap();
        s.handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x7"}},"id":{id}}}"#)
                .as_bytes(),
        );
        let unsub: serde_json::Value = serde_json::from_slice(&s.poll_message().unwrap()).unwrap();
        assert_eq!(
            (unsub["method"].as_str(), &unsub["params"]),
            (Some("unsubscribe"), &serde_json::json!(["0x7"]))
        );
        assert!(
            s.batch(now, &[]).is_empty() && s.poll_message().is_none(),
            "an empty batch sends nothing"
        );
    }
}
