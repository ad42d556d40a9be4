//! The per-connection JSON-RPC session: whole text messages in, responses, notifications and
//! async work out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::error::{self, RpcError};
use super::extensions::Extensions;
use super::hooks::{CallEnd, CallStart, Outcome, Refusal};
use super::message::{self, Incoming, Invalid, Request};
use super::router::{
    CallContext, ConnectionId, Entry, Handler, Params, RequestId, Transport, Work,
};
use super::subscription::SubscribeCall;
use crate::auth::Principal;
use crate::hub::{Outbox, OutboxItem, SubscribeError, TopicKey, topic_kind};
use crate::limit::{AbuseVerdict, ConnectionLimiter, LimitExceeded};
use crate::metrics::{ErrorKind, MethodId};
use crate::service::Service;
use crate::ws::{CloseCode, SharedFrame};

/// Identifies an async call handed out with [`SessionOutput::Spawn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallId(pub u64);

/// What a session asks its transport to do, from [`RpcSession::poll_output`].
#[non_exhaustive]
pub enum SessionOutput {
    /// Send this text message (a response, a batch response, or a notice).
    Message(Vec<u8>),
    /// Send this notification, encoded once for all subscribers (over a WebSocket send the
    /// frame as is; elsewhere send its payload).
    Notification(SharedFrame),
    /// Run this handler (a future on the runtime, a blocking call on a worker thread), then
    /// call [`RpcSession::complete`] with its output.
    Spawn(CallId, Work),
    /// Close the connection (abuse of limits, slow consumer under the close policy).
    Close(CloseCode, &'static str),
}

impl std::fmt::Debug for SessionOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Message(m) => {
                f.debug_tuple("Message").field(&String::from_utf8_lossy(m)).finish()
            }
            Self::Notification(n) => {
                f.debug_tuple("Notification").field(&String::from_utf8_lossy(n.payload())).finish()
            }
            Self::Spawn(id, _) => f.debug_tuple("Spawn").field(id).finish(),
            Self::Close(code, why) => f.debug_tuple("Close").field(code).field(why).finish(),
        }
    }
}

/// A subscription of this connection.
#[derive(Debug)]
struct Held {
    key: Arc<TopicKey>,
    /// Made with a filter: never the answer to another subscribe call.
    filtered: bool,
}

/// Where the response of a call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Single,
    Batch { batch: u64, index: usize },
}

/// A call answered later: async or blocking work, or a subscription waiting for the broker.
#[derive(Debug)]
struct PendingCall {
    /// The request's id as the context had it (inline: no allocation per async call).
    id: Option<RequestId>,
    /// The router method (none: the subscribe method).
    method_index: Option<usize>,
    params_len: usize,
    extensions: Extensions,
    started: Instant,
    slot: Slot,
}

/// Where a call goes once it passed the per-message checks.
enum Target<'r> {
    Subscribe,
    Unsubscribe,
    Health,
    Metrics,
    Discover,
    Method(&'r Entry),
}

/// How far a call got in [`RpcSession::call`].
enum Called {
    /// Its handler ran: `Ok` when the result is written (or it was a notification).
    Ran { result: Result<(), RpcError>, method_id: Option<MethodId>, duration: Duration },
    /// Refused before its handler ran.
    Refused(RpcError, Refusal),
    /// Handed out; observed when it completes.
    Pending,
}

#[derive(Debug)]
struct PendingBatch {
    parts: Vec<Option<Vec<u8>>>,
    waiting: usize,
}

/// One connection's JSON-RPC state: it dispatches whole messages through the service's
/// router, applies limits, serves the subscription methods, and collects output.
///
/// Call [`handle_message`](Self::handle_message) for each incoming text message and
/// [`complete`](Self::complete) for each finished async call, then drain
/// [`poll_output`](Self::poll_output) until `None`. Register a waker with
/// [`register_waker`](Self::register_waker) so a publish on another thread can wake the
/// transport to drain notifications.
pub struct RpcSession {
    service: Arc<Service>,
    ctx: CallContext,
    limiter: ConnectionLimiter,
    outbox: Arc<Outbox>,
    /// Active subscriptions by subscription id.
    subscriptions: HashMap<Arc<str>, Held>,
    /// Subscribe calls waiting for a broker-bridged topic to be in step, by subscription id.
    /// Subscribe calls waiting for their topic's broker side: call, and whether to answer
    /// with the bare id.
    pending_subscribes: HashMap<Arc<str>, Vec<(u64, bool)>>,
    out: VecDeque<SessionOutput>,
    drained: VecDeque<OutboxItem>,
    pending: HashMap<u64, PendingCall>,
    batches: HashMap<u64, PendingBatch>,
    next_call: u64,
    closing: bool,
    /// For the monitoring policy of `rpc.metrics`.
    client_address: Option<core::net::IpAddr>,
}

impl std::fmt::Debug for RpcSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcSession")
            .field("connection", &self.ctx.connection)
            .field("subscriptions", &self.subscriptions.len())
            .field("pending_calls", &self.pending.len())
            .field("queued_output", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl RpcSession {
    /// A session for a new connection of `service`.
    pub fn new(
        service: Arc<Service>,
        connection: ConnectionId,
        origin: Option<Arc<str>>,
        principal: Arc<Principal>,
        transport: Transport,
        now: Instant,
    ) -> Self {
        let mut limiter =
            ConnectionLimiter::new(service.limit_config().clone()).with_connection(connection.0);
        limiter.set_origin(origin.clone());
        limiter.set_principal(principal.authenticated.then_some(principal.id.as_str()));
        let outbox = service.hub().new_outbox();
        let mut ctx = CallContext::new(connection, transport, now);
        ctx.origin = origin;
        ctx.principal = principal;
        Self {
            service,
            ctx,
            limiter,
            outbox,
            subscriptions: HashMap::new(),
            pending_subscribes: HashMap::new(),
            out: VecDeque::new(),
            drained: VecDeque::new(),
            pending: HashMap::new(),
            batches: HashMap::new(),
            next_call: 1,
            closing: false,
            client_address: None,
        }
    }

    /// The context handlers see.
    pub fn context(&self) -> &CallContext {
        &self.ctx
    }

    /// Replaces origin and principal (HTTP: each request on a keep-alive connection brings
    /// its own).
    pub fn set_identity(&mut self, origin: Option<Arc<str>>, principal: Arc<Principal>) {
        self.limiter.set_origin(origin.clone());
        self.limiter.set_principal(principal.authenticated.then_some(principal.id.as_str()));
        self.ctx.origin = origin;
        self.ctx.principal = principal;
    }

    /// The client's address (the TCP peer, or what trusted proxies forwarded), for rate
    /// limits keyed per address, the monitoring policy of `rpc.metrics` and logs; unknown
    /// until set.
    pub fn set_client_address(&mut self, address: Option<core::net::IpAddr>) {
        self.limiter.set_address(address);
        self.client_address = address;
    }

    /// Whether the server's monitoring policy lets this connection read `rpc.metrics` and
    /// the details of `rpc.health`.
    fn may_read_details(&self) -> bool {
        let config = self.service.config();
        config.http.monitoring.allows(
            self.client_address,
            self.ctx.principal.authenticated,
            config.auth.require_auth,
        )
    }

    /// Wakes `waker` when a notification arrives for this connection.
    pub fn register_waker(&self, waker: &Waker) {
        self.outbox.set_waker(waker);
    }

    /// Async calls in flight.
    pub fn pending_calls(&self) -> usize {
        self.pending.len()
    }

    /// Active subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Handles one incoming text message.
    pub fn handle_message(&mut self, now: Instant, text: &[u8]) {
        self.ctx.now = now;
        let metrics = self.service.metrics();
        metrics.message_received();
        let config = &self.service.config().rpc;
        if text.len() > config.max_request_size {
            metrics.record_error(ErrorKind::InvalidRequest);
            let e = RpcError::count_limit("request size", config.max_request_size);
            return self.push_error(None, &e);
        }
        let message_limited = self.limiter.check_message(now).err();
        match message::parse(text, self.service.config().rpc.max_batch) {
            Incoming::Unanswerable(e) => {
                metrics.record_error(ErrorKind::from_rpc_code(e.code));
                self.push_error(None, &e);
            }
            Incoming::Single(entry) => {
                let mut out = Vec::new();
                self.dispatch(now, entry, &mut out, Slot::Single, message_limited.as_ref());
                if !out.is_empty() {
                    self.out.push_back(SessionOutput::Message(out));
                }
            }
            Incoming::Batch(entries) => {
                let batch = self.next_call;
                self.next_call += 1;
                let mut parts = Vec::with_capacity(entries.len());
                let mut waiting = 0;
                for (index, entry) in entries.into_iter().enumerate() {
                    let mut out = Vec::new();
                    let pending = self.dispatch(
                        now,
                        entry,
                        &mut out,
                        Slot::Batch { batch, index },
                        message_limited.as_ref(),
                    );
                    waiting += usize::from(pending);
                    parts.push((!out.is_empty()).then_some(out));
                }
                let pending = PendingBatch { parts, waiting };
                if waiting == 0 {
                    self.emit_batch(pending);
                } else {
                    self.batches.insert(batch, pending);
                }
            }
        }
        if let Some(limited) = message_limited {
            self.note_limited(&limited);
        }
    }

    /// Reports the result of an async call handed out as [`SessionOutput::Spawn`]. Unknown
    /// ids (a call already answered) are ignored.
    pub fn complete(
        &mut self,
        call: CallId,
        result: Result<Box<RawValue>, RpcError>,
        now: Instant,
    ) {
        let Some(p) = self.pending.remove(&call.0) else { return };
        let mut out = Vec::new();
        // The id's text was admitted as JSON when the request was parsed.
        let id: Option<&RawValue> =
            p.id.as_ref().and_then(|i| serde_json::from_str(i.as_json()).ok());
        let result = match (id, result) {
            (Some(id), Ok(value)) => self.write_value(&mut out, Some(id), &value),
            (_, result) => result.map(drop),
        };
        if let (Err(e), Some(id)) = (&result, id) {
            self.write_error_response(&mut out, Some(id), e);
        }
        // The context of this call again, as its hooks and handler saw it (this may run
        // inside another call, an unsubscribe ending a waiting subscribe: kept aside).
        let id = std::mem::replace(&mut self.ctx.id, p.id);
        let extensions = std::mem::replace(&mut self.ctx.extensions, p.extensions);
        let service = &self.service;
        let call = CallEnd {
            method: p
                .method_index
                .map_or(&service.config().hub.methods.subscribe, |i| service.router().name(i)),
            params_len: p.params_len,
            context: &self.ctx,
            outcome: result.as_ref().err().map_or(Outcome::Ok, Outcome::Error),
            refused: None,
            duration: now.saturating_duration_since(p.started),
            now,
            method_id: p.method_index.map(|i| service.method_id(i)),
        };
        service.after_call(&call);
        self.ctx.id = id;
        self.ctx.extensions = extensions;
        match p.slot {
            Slot::Single => {
                if !out.is_empty() {
                    self.out.push_back(SessionOutput::Message(out));
                }
            }
            Slot::Batch { batch, index } => {
                let Some(b) = self.batches.get_mut(&batch) else { return };
                b.parts[index] = (!out.is_empty()).then_some(out);
                b.waiting -= 1;
                if b.waiting == 0 {
                    let b = self.batches.remove(&batch).expect("present");
                    self.emit_batch(b);
                }
            }
        }
    }

    /// The next output: queued responses first, then notifications from the outbox.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.poll_output_with(true)
    }

    /// [`poll_output`](Self::poll_output), leaving notifications in the outbox when
    /// `notifications` is false (the transport is backed up; the outbox's slow-consumer policy
    /// then applies).
    #[must_use]
    pub fn poll_output_with(&mut self, notifications: bool) -> Option<SessionOutput> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        if self.closing || !notifications {
            return None;
        }
        if self.drained.is_empty() && self.outbox.drain_into(&mut self.drained, 64) == 0 {
            // Nothing queued: an idle connection keeps no grown buffers (small ones stay, so a
            // steady call rate does not allocate per call).
            if self.drained.capacity() > 8 {
                self.drained = VecDeque::new();
            }
            if self.out.capacity() > 8 {
                self.out = VecDeque::new();
            }
            return None;
        }
        match self.drained.pop_front()? {
            // Unsubscribing purges the outbox and `drained`: everything here is for a live
            // subscription.
            OutboxItem::Notification(d) => {
                self.service.metrics().message_sent();
                Some(SessionOutput::Notification(d.frame))
            }
            item => self.poll_rare(item),
        }
    }

    /// The output for anything but a notification, kept out of the notification path.
    #[cold]
    #[inline(never)]
    fn poll_rare(&mut self, mut item: OutboxItem) -> Option<SessionOutput> {
        loop {
            match item {
                // A subscription that waited for the broker: its answer goes out first (into
                // `out`), then what follows it in the outbox.
                OutboxItem::Subscribed { topic, seq, epoch } => {
                    self.finish_subscribe(&topic, Ok((seq, epoch)));
                }
                OutboxItem::SubscribeFailed { topic } => {
                    self.finish_subscribe(&topic, Err(SubscribeError::Unavailable));
                }
                other => return Some(self.notice(other)),
            }
            if let Some(o) = self.out.pop_front() {
                return Some(o);
            }
            if self.drained.is_empty() && self.outbox.drain_into(&mut self.drained, 64) == 0 {
                return None;
            }
            item = self.drained.pop_front()?;
            if let OutboxItem::Notification(d) = item {
                self.service.metrics().message_sent();
                return Some(SessionOutput::Notification(d.frame));
            }
        }
    }

    /// The message of a notice (lagged, gap, reset, stalled) or the close of an overflow.
    #[cold]
    fn notice(&mut self, item: OutboxItem) -> SessionOutput {
        let hub = self.service.hub();
        match item {
            OutboxItem::Lagged { topic, from, to } => {
                let mut out = Vec::new();
                hub.write_notice(&mut out, true, &topic, from, to);
                SessionOutput::Message(out)
            }
            OutboxItem::Gap { topic, from, to } => {
                let mut out = Vec::new();
                hub.write_notice(&mut out, false, &topic, from, to);
                SessionOutput::Message(out)
            }
            OutboxItem::Overflowed => {
                self.closing = true;
                SessionOutput::Close(CloseCode::POLICY_VIOLATION, "slow consumer")
            }
            OutboxItem::Reset { topic, epoch } => {
                let mut out = Vec::new();
                hub.write_link_notice(&mut out, &topic, Some(epoch), None);
                SessionOutput::Message(out)
            }
            OutboxItem::Stalled { topic, from } => {
                let mut out = Vec::new();
                hub.write_link_notice(&mut out, &topic, None, Some(from));
                SessionOutput::Message(out)
            }
            // Taken in `poll_output_with`.
            OutboxItem::Notification(_)
            | OutboxItem::Subscribed { .. }
            | OutboxItem::SubscribeFailed { .. } => unreachable!("handled before"),
        }
    }

    /// Answers the subscribe calls that waited for `topic`'s broker side.
    fn finish_subscribe(&mut self, topic: &TopicKey, result: Result<(u64, u64), SubscribeError>) {
        let Some(calls) = self.pending_subscribes.remove(&topic.subscription) else { return };
        let result = result.map_err(|e| {
            if self.subscriptions.remove(&topic.subscription).is_some() {
                self.service.metrics().subscriptions_closed(1);
            }
            subscribe_error(e)
        });
        let now = self.ctx.now;
        for (call, bare) in calls {
            let answer = match result.clone() {
                Ok((seq, epoch)) => subscribe_result(bare, topic, Some(seq), epoch),
                Err(e) => Err(e),
            };
            self.complete(CallId(call), answer, now);
        }
    }

    /// Whether [`poll_output`](Self::poll_output) has something (cheap; locks the outbox).
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
            || (!self.closing && (!self.drained.is_empty() || self.outbox.has_pending()))
    }

    fn push_error(&mut self, id: Option<&RawValue>, e: &RpcError) {
        let mut out = Vec::new();
        self.write_error_response(&mut out, id, e);
        self.out.push_back(SessionOutput::Message(out));
    }

    fn emit_batch(&mut self, batch: PendingBatch) {
        let mut out = Vec::new();
        for part in batch.parts.into_iter().flatten() {
            out.push(if out.is_empty() { b'[' } else { b',' });
            out.extend_from_slice(&part);
        }
        if !out.is_empty() {
            out.push(b']');
            self.out.push_back(SessionOutput::Message(out));
        }
    }

    /// Takes a rate token for `method`'s class (from every bucket its keys select); when
    /// there is none, the -32005 error to answer with `retry_after_ms`.
    fn take_call_token(&mut self, method: &str, now: Instant) -> Result<(), RpcError> {
        // The limiter logs the refusal with the connection and client address.
        let Err(limited) = self.limiter.check_call(self.service.shared_limits(), method, now)
        else {
            return Ok(());
        };
        self.note_limited(&limited);
        let what = format!("{} calls", limited.class.map_or("", |c| c.as_str()));
        Err(RpcError::limit_exceeded(&what, limited.retry_after_ms()))
    }

    fn note_limited(&mut self, limited: &LimitExceeded) {
        if limited.verdict == AbuseVerdict::Close && !self.closing {
            self.closing = true;
            log::info!(target: "wsrpc::limit", "closing abusive connection conn={}", self.ctx.connection);
            self.out
                .push_back(SessionOutput::Close(CloseCode::POLICY_VIOLATION, "rate limit abuse"));
        }
    }

    /// Handles one entry; writes its response to `out` unless it is a notification or
    /// async. Returns true when the call was handed out (async work, a subscription waiting
    /// for the broker); it is observed when it completes.
    fn dispatch(
        &mut self,
        now: Instant,
        entry: Result<Request<'_>, Invalid<'_>>,
        out: &mut Vec<u8>,
        slot: Slot,
        message_limited: Option<&LimitExceeded>,
    ) -> bool {
        let req = match entry {
            Ok(req) => req,
            Err(invalid) => {
                self.service.metrics().record_error(ErrorKind::InvalidRequest);
                self.write_error_response(out, invalid.id, &invalid.error);
                return false;
            }
        };
        // Every call's context names it, refused or not, for the hooks and the handler.
        self.ctx.id = req.id.map(RequestId::from_raw);
        let (result, refused, method_id, duration) =
            match self.call(now, &req, out, slot, message_limited) {
                Called::Pending => return true,
                Called::Ran { result, method_id, duration } => (result, None, method_id, duration),
                Called::Refused(e, why) => (Err(e), Some(why), None, Duration::ZERO),
            };
        if let (Err(e), Some(id)) = (&result, req.id) {
            self.write_error_response(out, Some(id), e);
        }
        let call = CallEnd {
            method: &req.method,
            params_len: req.params.map_or(0, |p| p.get().len()),
            context: &self.ctx,
            outcome: result.as_ref().err().map_or(Outcome::Ok, Outcome::Error),
            refused,
            duration,
            now,
            method_id,
        };
        self.service.after_call(&call);
        // What hooks attached belongs to this call only.
        if !self.ctx.extensions.is_empty() {
            self.ctx.extensions.clear();
        }
        false
    }

    /// Runs one call to the point where it is answered (into `out`, unless a notification)
    /// or handed out: the limits, the method lookup, the before-call hooks, the handler.
    fn call(
        &mut self,
        now: Instant,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        slot: Slot,
        message_limited: Option<&LimitExceeded>,
    ) -> Called {
        if let Some(limited) = message_limited {
            let e = RpcError::limit_exceeded("messages", limited.retry_after_ms());
            return Called::Refused(e, Refusal::Limit);
        }
        let service = self.service.clone();
        if let Some(signer) = service.config().signing.as_ref() {
            let id_raw = req.id.map_or("null", RawValue::get);
            let params_raw = req.params.map_or("null", RawValue::get);
            let sig =
                req.sig.and_then(|s| serde_json::from_str::<&str>(s.get()).ok()).unwrap_or("");
            if signer.verify_request(&req.method, id_raw, params_raw, sig).is_err() {
                let e = RpcError::new(error::BAD_SIGNATURE, "Bad signature");
                return Called::Refused(e, Refusal::Signature);
            }
        }
        let methods = &service.config().hub.methods;
        let target = if req.method == methods.subscribe {
            // Subscriptions take no rate token: a reconnecting client resubscribes everything
            // at once, and `max_subscriptions` with O(1) topic bookkeeping already bounds them.
            Target::Subscribe
        } else if req.method == methods.unsubscribe {
            Target::Unsubscribe
        } else if let Some(builtin) = req.method.strip_prefix("rpc.") {
            match builtin {
                "health" => Target::Health,
                "metrics" => Target::Metrics,
                "discover" => Target::Discover,
                _ => return Called::Refused(RpcError::method_not_found(), Refusal::NotFound),
            }
        } else {
            match service.router().get(&req.method) {
                Some(method) => Target::Method(method),
                None => return Called::Refused(RpcError::method_not_found(), Refusal::NotFound),
            }
        };
        if matches!(target, Target::Method(_) | Target::Health | Target::Metrics | Target::Discover)
        {
            if let Err(e) = self.take_call_token(&req.method, now) {
                return Called::Refused(e, Refusal::Limit);
            }
        }
        if let Target::Method(Entry { handler: Handler::Deferred(_), .. }) = target {
            let max = service.config().rpc.max_inflight_async;
            if self.pending.len() >= max {
                let e = RpcError::count_limit("async calls in flight", max);
                return Called::Refused(e, Refusal::Limit);
            }
        }
        self.ctx.now = now;
        let params = Params(req.params);
        if service.hooks().has_user_hooks() {
            // Taken out while the hooks fill it, so they can read the rest of the context.
            let mut extensions = std::mem::take(&mut self.ctx.extensions);
            let mut start = CallStart {
                method: &req.method,
                params,
                context: &self.ctx,
                extensions: &mut extensions,
            };
            let decided = service.hooks().before_call(&mut start);
            self.ctx.extensions = extensions;
            if let Err(e) = decided {
                return Called::Refused(e, Refusal::Hook);
            }
        }
        let value = match target {
            Target::Method(method) => {
                return self.run_method(&service, now, req, method, out, slot);
            }
            Target::Subscribe => match self.subscribe(params) {
                Ok(SubscribeAnswer::Now(value)) => Ok(value),
                Ok(SubscribeAnswer::Pending(subscription, bare)) => {
                    // Answered when the broker side is ready (`finish_subscribe`).
                    self.hand_out(req, None, now, slot);
                    let call = self.next_call - 1;
                    self.pending_subscribes.entry(subscription).or_default().push((call, bare));
                    return Called::Pending;
                }
                Err(e) => Err(e),
            },
            Target::Unsubscribe => self.unsubscribe(params),
            Target::Health if !self.may_read_details() => {
                // Status and what a client checks a server by; not its details.
                let health = service.health(now);
                let bare = serde_json::json!({
                    "status": health.status,
                    "name": health.name,
                    "pubsub": health.pubsub,
                });
                serde_json::value::to_raw_value(&bare).map_err(RpcError::internal)
            }
            Target::Health => {
                serde_json::value::to_raw_value(&service.health(now)).map_err(RpcError::internal)
            }
            Target::Metrics if !self.may_read_details() => {
                log::info!(target: "wsrpc::auth", "refused conn={} client={:?} method=rpc.metrics code={} reason=\"monitoring policy\"", self.ctx.connection, self.client_address, error::FORBIDDEN);
                Err(RpcError::forbidden("metrics are not served to this client"))
            }
            Target::Metrics => {
                serde_json::value::to_raw_value(&service.snapshot(now)).map_err(RpcError::internal)
            }
            Target::Discover => Ok(service.openrpc().to_owned()),
        };
        let result = value.and_then(|v| self.write_value(out, req.id, &v));
        Called::Ran { result, method_id: None, duration: Duration::ZERO }
    }

    /// Runs a router method: a synchronous one here, timed with the service's clock; an
    /// async or blocking one is handed out.
    fn run_method(
        &mut self,
        service: &Service,
        now: Instant,
        req: &Request<'_>,
        method: &Entry,
        out: &mut Vec<u8>,
        slot: Slot,
    ) -> Called {
        let method_id = Some(service.method_id(method.index));
        let params = Params(req.params);
        match &method.handler {
            Handler::Sync(f) => {
                let start = service.clock_now().unwrap_or(now);
                let ctx = &self.ctx;
                let call = |o: &mut Vec<u8>| unwind_to_error(&req.method, || f(params, ctx, o));
                let result = match req.id {
                    // The result is serialized straight into the response.
                    Some(id) => self.write_result_of(out, id, call),
                    None => call(&mut Vec::new()),
                };
                let end = service.clock_now().unwrap_or(now);
                Called::Ran { result, method_id, duration: end.saturating_duration_since(start) }
            }
            // The handler's code before its first `.await` runs here, in the core.
            Handler::Deferred(f) => match unwind_to_error(&req.method, || f(params, &self.ctx)) {
                Ok(work) => {
                    self.hand_out(req, Some(method.index), now, slot);
                    self.out.push_back(SessionOutput::Spawn(CallId(self.next_call - 1), work));
                    Called::Pending
                }
                Err(e) => Called::Ran { result: Err(e), method_id, duration: Duration::ZERO },
            },
        }
    }

    /// Records a call answered later, under the id `self.next_call - 1`.
    fn hand_out(
        &mut self,
        req: &Request<'_>,
        method_index: Option<usize>,
        now: Instant,
        slot: Slot,
    ) {
        let call = self.next_call;
        self.next_call += 1;
        let pending = PendingCall {
            id: req.id.and(self.ctx.id.clone()),
            method_index,
            params_len: req.params.map_or(0, |p| p.get().len()),
            // The handler has its own copy; these are for the observer at completion.
            extensions: std::mem::take(&mut self.ctx.extensions),
            started: now,
            slot,
        };
        self.pending.insert(call, pending);
    }

    /// Writes the response carrying `value` (nothing for a notification).
    fn write_value(
        &self,
        out: &mut Vec<u8>,
        id: Option<&RawValue>,
        value: &RawValue,
    ) -> Result<(), RpcError> {
        let Some(id) = id else { return Ok(()) };
        self.write_result_of(out, id, |o| {
            o.extend_from_slice(value.get().as_bytes());
            Ok(())
        })
    }

    /// Writes the response carrying what `write` produces; the error it returns (or a result
    /// over `max_response_size`) is returned with nothing written, for the caller to answer.
    fn write_result_of(
        &self,
        out: &mut Vec<u8>,
        id: &RawValue,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError>,
    ) -> Result<(), RpcError> {
        let start = out.len();
        let mut result_range = 0..0;
        let mut failed = None;
        message::write_response_with(out, id, |o| {
            let s = o.len();
            if let Err(e) = write(o) {
                failed = Some(e);
            }
            result_range = s..o.len();
        });
        if let Some(e) = failed {
            out.truncate(start);
            return Err(e);
        }
        let max = self.service.config().rpc.max_response_size;
        if out.len() - start > max {
            out.truncate(start);
            return Err(RpcError::count_limit("response size", max));
        }
        if let Some(signer) = self.service.config().signing.as_ref() {
            let body = std::str::from_utf8(&out[result_range]).unwrap_or("");
            let sig = signer.sign_response(id.get(), body);
            insert_sig(out, &sig);
        }
        self.service.metrics().message_sent();
        Ok(())
    }

    /// Writes an error response, signed and counted as sent like a result: every error on
    /// the wire goes through here (the caller counts the error itself).
    fn write_error_response(&self, out: &mut Vec<u8>, id: Option<&RawValue>, e: &RpcError) {
        message::write_error(out, id, e);
        if let Some(signer) = self.service.config().signing.as_ref() {
            let mut body = Vec::new();
            e.write_json(&mut body);
            let sig = signer.sign_response(
                id.map_or("null", RawValue::get),
                std::str::from_utf8(&body).unwrap_or(""),
            );
            insert_sig(out, &sig);
        }
        self.service.metrics().message_sent();
    }

    fn subscribe(&mut self, params: Params<'_>) -> Result<SubscribeAnswer, RpcError> {
        if self.ctx.transport == Transport::Http {
            return Err(RpcError::new(
                error::METHOD_NOT_FOUND,
                "Subscriptions need a WebSocket connection",
            ));
        }
        let service = self.service.clone();
        let hub = service.hub();
        let cfg = hub.config();
        let eth_style = cfg.methods.eth_style;
        // In the eth style, `[name, {"since": N|null, "epoch": E}]` is wsrpc's resume
        // extension: only a client that sends `since` gets the full object answer below.
        let mut eth_resume = false;
        // Whether a filter param came (beyond the resume keys), for names without a handler.
        let filter_given;
        let (name, since, epoch): (String, Option<u64>, Option<u64>) = if eth_style {
            let v: Vec<serde_json::Value> = params.parse()?;
            let Some(t) = v.first().and_then(|t| t.as_str()) else {
                return Err(RpcError::invalid_params("[0]: expected a subscription name"));
            };
            filter_given = v.get(1).is_some_and(|f| match f {
                serde_json::Value::Null => false,
                serde_json::Value::Object(o) => o.keys().any(|k| k != "since" && k != "epoch"),
                _ => true,
            });
            let (since, epoch) = match v.get(1).and_then(|o| o.get("since")) {
                Some(since) => {
                    eth_resume = true;
                    let number = |v: Option<&serde_json::Value>, what: &str| match v {
                        None | Some(serde_json::Value::Null) => Ok(None),
                        Some(n) => n.as_u64().map(Some).ok_or_else(|| {
                            RpcError::invalid_params(format!(
                                "[1].{what}: expected an unsigned integer"
                            ))
                        }),
                    };
                    (number(Some(since), "since")?, number(v[1].get("epoch"), "epoch")?)
                }
                None => (None, None),
            };
            (t.to_owned(), since, epoch)
        } else {
            #[derive(serde::Deserialize)]
            struct Sub {
                topic: String,
                #[serde(default)]
                since: Option<u64>,
                #[serde(default)]
                epoch: Option<u64>,
                /// For the subscription handler (`SubscribeCall::filter`).
                #[serde(default)]
                filter: Option<serde::de::IgnoredAny>,
            }
            let s: Sub = params.parse()?;
            filter_given = s.filter.is_some();
            (s.topic, s.since, s.epoch)
        };
        // The application's handler for the name decides the topic and the filter.
        let (topic, filter) = match service.router().subscription_handler(&name) {
            Some(handler) => {
                let call = SubscribeCall {
                    name: &name,
                    params,
                    context: &self.ctx,
                    eth_style,
                    state: &(),
                };
                let decided = unwind_to_error(&cfg.methods.subscribe, || handler(&call))?;
                (decided.topic, decided.filter)
            }
            None if filter_given => {
                let at = if eth_style { "[1]" } else { "filter" };
                return Err(RpcError::invalid_params(format!(
                    "{at}: subscriptions to {name:?} take no filter"
                )));
            }
            None => (name, None),
        };
        hub.authorize(&topic, &self.ctx.principal).map_err(subscribe_error)?;
        // eth style answers the bare subscription id, unless the client resumes.
        let bare = eth_style && !eth_resume;
        // A plain subscription is idempotent; a filtered one is a new subscription each time.
        let already = match filter {
            None => self.subscriptions.values().find(|h| !h.filtered && *h.key.name == *topic),
            Some(_) => None,
        };
        let key = match already {
            Some(held) => held.key.clone(),
            None => {
                if self.subscriptions.len() >= cfg.max_subscriptions {
                    return Err(subscribe_error(SubscribeError::TooMany {
                        limit: "subscriptions".into(),
                        max: cfg.max_subscriptions,
                    }));
                }
                let kind = topic_kind(&topic);
                if let Some((_, max)) = cfg.kind_limits.iter().find(|(k, _)| k == kind) {
                    // Derived from the subscriptions (at most `max_subscriptions` of them).
                    let held = self
                        .subscriptions
                        .values()
                        .filter(|h| topic_kind(&h.key.name) == kind)
                        .count();
                    if held >= *max {
                        return Err(subscribe_error(SubscribeError::TooMany {
                            limit: kind.to_owned(),
                            max: *max,
                        }));
                    }
                }
                let since = since.map(|s| (s, epoch));
                let filtered = filter.is_some();
                let sub = match filter {
                    None => hub.subscribe(&self.outbox, &topic, since),
                    Some(filter) => hub.subscribe_filtered(&self.outbox, &topic, since, filter),
                }
                .map_err(subscribe_error)?;
                service.metrics().subscription_opened();
                let held = Held { key: sub.key.clone(), filtered };
                self.subscriptions.insert(sub.key.subscription.clone(), held);
                log::debug!(target: "wsrpc::hub", "subscribed conn={} topic={topic} id={} filtered={filtered} since={since:?} pending={}", self.ctx.connection, sub.key.subscription, sub.pending);
                if sub.pending {
                    return Ok(SubscribeAnswer::Pending(sub.key.subscription.clone(), bare));
                }
                return subscribe_result(bare, &sub.key, Some(sub.seq), sub.epoch)
                    .map(SubscribeAnswer::Now);
            }
        };
        // Already subscribed: the same id again, nothing replayed twice.
        if !self.pending_subscribes.is_empty()
            && self.pending_subscribes.contains_key(&key.subscription)
        {
            return Ok(SubscribeAnswer::Pending(key.subscription.clone(), bare));
        }
        subscribe_result(bare, &key, None, hub.epoch_of(&topic)).map(SubscribeAnswer::Now)
    }

    fn unsubscribe(&mut self, params: Params<'_>) -> Result<Box<RawValue>, RpcError> {
        let (id,): (String,) = params.parse()?;
        let removed = match self.subscriptions.remove(id.as_str()) {
            Some(Held { key, .. }) => {
                self.service.hub().unsubscribe(&self.outbox, &key);
                self.drained.retain(|item| item.topic().is_none_or(|t| !Arc::ptr_eq(t, &key)));
                self.service.metrics().subscriptions_closed(1);
                let waiting = if self.pending_subscribes.is_empty() {
                    None
                } else {
                    self.pending_subscribes.remove(&key.subscription)
                };
                if let Some(calls) = waiting {
                    let e = RpcError::new(
                        error::UNAVAILABLE,
                        "Unsubscribed before the subscription was established",
                    );
                    let now = self.ctx.now;
                    for (call, _) in calls {
                        self.complete(CallId(call), Err(e.clone()), now);
                    }
                }
                true
            }
            None => false,
        };
        Ok(RawValue::from_string(removed.to_string()).expect("a bool is JSON"))
    }

    /// Ends the session: subscriptions are removed and the outbox released. Also done on
    /// drop.
    pub fn shutdown(&mut self) {
        let n = self.subscriptions.len() as u64;
        for (_, held) in self.subscriptions.drain() {
            self.service.hub().unsubscribe(&self.outbox, &held.key);
        }
        if n > 0 {
            self.service.metrics().subscriptions_closed(n);
        }
        self.outbox.close();
    }
}

impl Drop for RpcSession {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a subscribe call answers: now, or once the broker side of the topic is ready.
enum SubscribeAnswer {
    Now(Box<RawValue>),
    /// Answered once the broker side is ready; with the bare id (`true`) or the object.
    Pending(Arc<str>, bool),
}

/// The result of a subscribe call: the bare id (eth style), or the id, topic, position and
/// epoch (`seq` is left out when answering a repeated subscribe).
fn subscribe_result(
    bare: bool,
    key: &TopicKey,
    seq: Option<u64>,
    epoch: u64,
) -> Result<Box<RawValue>, RpcError> {
    if bare {
        return serde_json::value::to_raw_value(&*key.subscription).map_err(RpcError::internal);
    }
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        subscription: &'a str,
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        epoch: u64,
    }
    let r = Answer { subscription: &key.subscription, topic: &key.name, seq, epoch };
    serde_json::value::to_raw_value(&r).map_err(RpcError::internal)
}

fn subscribe_error(e: SubscribeError) -> RpcError {
    match e {
        SubscribeError::Unavailable => RpcError::new(error::UNAVAILABLE, "Broker unavailable")
            .with_data(serde_json::json!({ "broker": "down" })),
        SubscribeError::Forbidden => {
            RpcError::forbidden("Not permitted to subscribe to this topic")
        }
        SubscribeError::TooMany { limit, max } => {
            RpcError::new(error::LIMIT_EXCEEDED, format!("Limit exceeded: {limit} subscriptions"))
                .with_data(serde_json::json!({ "limit": limit, "max": max }))
        }
        e => RpcError::invalid_params(e),
    }
}

/// Runs handler code; a panic becomes -32603 (its message logged), so it never unwinds into
/// the adapter and the connection lives on. Handlers only see the call's context and output
/// buffer, and a failed call's partial output is discarded, so nothing half-updated remains.
fn unwind_to_error<T>(
    method: &str,
    call: impl FnOnce() -> Result<T, RpcError>,
) -> Result<T, RpcError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let why = super::hooks::panic_message(&*panic);
        Err(RpcError::internal(format_args!("handler {method} panicked: {why}")))
    })
}

/// Adds `,"sig":"<hex>"` before the final `}` of a response object.
fn insert_sig(out: &mut Vec<u8>, sig: &str) {
    if out.last() == Some(&b'}') {
        out.pop();
        out.extend_from_slice(b",\"sig\":\"");
        out.extend_from_slice(sig.as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rpc::Router;
    use crate::service::ServiceConfig;

    #[test]
    fn subscribe_unsubscribe_cycles_on_invented_topics_leave_nothing_behind() {
        let now = crate::test_origin();
        let config = ServiceConfig {
            limits: crate::limit::LimitConfig::disabled(),
            ..ServiceConfig::default()
        };
        let service = Service::new(
            config,
            Router::new(),
            crate::Now::new(now, crate::UnixTime(Duration::from_secs(1_700_000_000))),
        );
        let mut s = RpcSession::new(
            service,
            ConnectionId(1),
            None,
            Arc::new(Principal::anonymous()),
            Transport::Messages,
            now,
        );
        let call = |s: &mut RpcSession, method: &str, param: &str| {
            let msg =
                format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":["{param}"],"id":1}}"#);
            s.handle_message(now, msg.as_bytes());
            match s.poll_output() {
                Some(SessionOutput::Message(m)) => {
                    serde_json::from_slice::<serde_json::Value>(&m).unwrap()
                }
                other => panic!("{other:?}"),
            }
        };
        for i in 0..1_000 {
            let r = call(&mut s, "subscribe", &format!("invented{i}"));
            let id = r["result"]["subscription"].as_str().expect("subscribed").to_owned();
            assert_eq!(call(&mut s, "unsubscribe", &id)["result"], true);
        }
        assert!(s.subscriptions.is_empty());
        assert_eq!(s.service.hub().stats().topics, 0, "no topic left behind");
    }
}
