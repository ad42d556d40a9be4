//! Routing a [`ClientSession`]'s events to the callers waiting for them, over whatever
//! channels an adapter uses (futures oneshots and mpsc, crossbeam, …), so every client adapter
//! shares one implementation of commands, replies, batches and subscription delivery.
//!
//! An adapter's client handle turns each method into a [`Command`] and sends it to the task or
//! thread that drives the [`ClientConnection`](crate::engine::ClientConnection); the answer
//! comes back through the adapter's own channel types, named by its [`Channels`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::client::{
    CallToken, ClientError, ClientEvent, ClientSession, SubscriptionEvent, SubscriptionToken,
    encode_params,
};
use super::typed::{Method, NotifyTo};

/// The result of one call.
pub type CallResult = Result<Box<RawValue>, ClientError>;

/// A channel that delivers one value (a reply). A gone receiver is ignored.
pub trait OneShot<T> {
    /// Delivers `value`.
    fn send(self, value: T);
}

/// Why an event could not be handed to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkError {
    /// The subscriber has not taken the earlier events yet.
    Full,
    /// The subscriber is gone.
    Gone,
}

/// A bounded channel of subscription events.
pub trait EventSink {
    /// Queues `event` without waiting.
    fn try_send(&mut self, event: SubscriptionEvent) -> Result<(), SinkError>;
}

/// The channel types of one adapter: a one-value reply channel and a bounded event channel.
pub trait Channels: 'static {
    /// Delivers one reply: a call's result, a batch's results, a subscribe's outcome, the
    /// end of a close.
    type Reply<T: Send + 'static>: OneShot<T> + Send;
    /// Receives a subscription's events.
    type Events: EventSink + Send;
}

/// Where a call's result goes.
pub type CallReply<C> = <C as Channels>::Reply<CallResult>;
/// Where a batch's results go.
pub type BatchReply<C> = <C as Channels>::Reply<Vec<CallResult>>;
/// Where a subscribe's outcome goes.
pub type SubscribeReply<C> = <C as Channels>::Reply<Result<SubscriptionToken, ClientError>>;

/// A request from a client handle to the connection that serves it.
pub enum Command<C: Channels> {
    /// A call; its result goes to `reply`.
    Call {
        /// The method.
        method: String,
        /// Its params (`None`: no params member).
        params: Option<Box<RawValue>>,
        /// Replaces the configured call timeout.
        timeout: Option<Duration>,
        /// Where the result goes.
        reply: CallReply<C>,
    },
    /// Calls sent as one batch; their results go to `reply` in order.
    Batch {
        /// Method and params of each call.
        calls: Vec<(String, Option<Box<RawValue>>)>,
        /// Where the results go.
        reply: BatchReply<C>,
    },
    /// A notification (dropped while disconnected).
    Notify {
        /// The method.
        method: String,
        /// Its params.
        params: Option<Box<RawValue>>,
    },
    /// A subscription: its outcome goes to `reply`, then its events to `events`.
    Subscribe {
        /// The topic.
        topic: String,
        /// A filter param for the server's subscription handler (`None`: unfiltered).
        filter: Option<Box<RawValue>>,
        /// Where the events go.
        events: C::Events,
        /// Where the outcome goes.
        reply: SubscribeReply<C>,
    },
    /// Ends a subscription.
    Unsubscribe(SubscriptionToken),
    /// Closes the client; `done` is told once it has.
    Close(C::Reply<()>),
}

impl<C: Channels> std::fmt::Debug for Command<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Call { method, .. } => f.debug_struct("Call").field("method", method).finish(),
            Self::Batch { calls, .. } => {
                f.debug_struct("Batch").field("len", &calls.len()).finish()
            }
            Self::Notify { method, .. } => {
                f.debug_struct("Notify").field("method", method).finish()
            }
            Self::Subscribe { topic, .. } => {
                f.debug_struct("Subscribe").field("topic", topic).finish()
            }
            Self::Unsubscribe(t) => f.debug_tuple("Unsubscribe").field(t).finish(),
            Self::Close(_) => f.write_str("Close"),
        }
    }
}

impl<C: Channels> Command<C> {
    /// A call of `method` with `params` (anything serializable; `()` sends none).
    pub fn call(
        method: &str,
        params: impl serde::Serialize,
        timeout: Option<Duration>,
        reply: CallReply<C>,
    ) -> Result<Self, ClientError> {
        Ok(Self::Call { method: method.to_owned(), params: encode_params(params)?, timeout, reply })
    }

    /// A batch of calls.
    pub fn batch<P: serde::Serialize>(
        calls: Vec<(&str, P)>,
        reply: BatchReply<C>,
    ) -> Result<Self, ClientError> {
        let calls = calls
            .into_iter()
            .map(|(m, p)| Ok((m.to_owned(), encode_params(p)?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self::Batch { calls, reply })
    }

    /// A call of a typed [`Method`]: `params` must be its `P` (the caller decodes the
    /// result as its `R`).
    pub fn request<P: serde::Serialize, R>(
        method: Method<P, R>,
        params: P,
        timeout: Option<Duration>,
        reply: CallReply<C>,
    ) -> Result<Self, ClientError> {
        Self::call(method.name(), params, timeout, reply)
    }

    /// A notification: of a typed [`Notification<P>`](super::Notification) (`params` must be a
    /// `P`) or of a method named by a string.
    pub fn notify<P: serde::Serialize>(
        method: impl NotifyTo<P>,
        params: P,
    ) -> Result<Self, ClientError> {
        Ok(Self::Notify { method: method.method_name().to_owned(), params: encode_params(params)? })
    }

    /// A subscription to `topic` with a `filter` param for the server's subscription handler
    /// (anything serializable; `()` or `None` subscribes unfiltered).
    pub fn subscribe(
        topic: &str,
        filter: impl serde::Serialize,
        events: C::Events,
        reply: SubscribeReply<C>,
    ) -> Result<Self, ClientError> {
        Ok(Self::Subscribe {
            topic: topic.to_owned(),
            filter: encode_params(filter)?,
            events,
            reply,
        })
    }

    /// Answers the command with `error` without running it (the client is closed).
    pub fn refuse(self, error: ClientError) {
        match self {
            Self::Call { reply, .. } => reply.send(Err(error)),
            Self::Batch { calls, reply } => {
                reply.send(calls.iter().map(|_| Err(error.clone())).collect());
            }
            Self::Subscribe { reply, .. } => reply.send(Err(error)),
            Self::Close(done) => done.send(()),
            Self::Notify { .. } | Self::Unsubscribe(_) => {}
        }
    }
}

struct Batch<C: Channels> {
    results: Vec<Option<CallResult>>,
    reply: Option<BatchReply<C>>,
}

struct Sink<E> {
    events: E,
    /// Values dropped because the subscriber did not keep up, reported as a gap.
    dropped: Option<(u64, u64)>,
}

/// A [`ClientSession`] plus the callers waiting on it. Adapters feed commands in
/// ([`call`](Self::call), [`subscribe`](Self::subscribe), …), drive the session's transport
/// through [`session`](Self::session), and call [`dispatch`](Self::dispatch) after each
/// change to hand results and events out.
pub(crate) struct ClientDispatch<C: Channels> {
    session: ClientSession,
    calls: HashMap<CallToken, CallReply<C>>,
    batch_entries: HashMap<CallToken, (u64, usize)>,
    batches: HashMap<u64, Batch<C>>,
    next_batch: u64,
    subscriptions: HashMap<SubscriptionToken, Sink<C::Events>>,
    pending_subscribes: HashMap<SubscriptionToken, SubscribeReply<C>>,
}

impl<C: Channels> std::fmt::Debug for ClientDispatch<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDispatch")
            .field("session", &self.session)
            .field("calls", &self.calls.len())
            .field("subscriptions", &self.subscriptions.len())
            .finish_non_exhaustive()
    }
}

impl<C: Channels> ClientDispatch<C> {
    /// Routes `session`'s events.
    pub(crate) fn new(session: ClientSession) -> Self {
        Self {
            session,
            calls: HashMap::new(),
            batch_entries: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            subscriptions: HashMap::new(),
            pending_subscribes: HashMap::new(),
        }
    }

    /// The session.
    pub(crate) fn session(&self) -> &ClientSession {
        &self.session
    }

    /// The session, for its transport side (`poll_message`, `handle_message`, connected and
    /// disconnected, timers).
    pub(crate) fn session_mut(&mut self) -> &mut ClientSession {
        &mut self.session
    }

    /// Starts a call whose result goes to `reply`; `timeout` overrides the configured one.
    pub(crate) fn call(
        &mut self,
        now: Instant,
        method: &str,
        params: Option<&RawValue>,
        timeout: Option<Duration>,
        reply: CallReply<C>,
    ) {
        let timeout = timeout.unwrap_or(self.session.config().call_timeout);
        let token = self.session.call_with_timeout(now, method, params, timeout);
        self.calls.insert(token, reply);
    }

    /// Starts a batch whose results go to `reply`, in order.
    pub(crate) fn batch(
        &mut self,
        now: Instant,
        calls: &[(&str, Option<&RawValue>)],
        reply: BatchReply<C>,
    ) {
        let tokens = self.session.batch(now, calls);
        if tokens.is_empty() {
            reply.send(Vec::new());
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        for (i, t) in tokens.iter().enumerate() {
            self.batch_entries.insert(*t, (batch, i));
        }
        self.batches.insert(
            batch,
            Batch { results: (0..tokens.len()).map(|_| None).collect(), reply: Some(reply) },
        );
    }

    /// Sends a notification (dropped while disconnected).
    pub(crate) fn notify(&mut self, method: &str, params: Option<&RawValue>) {
        self.session.notify(method, params);
    }

    /// Subscribes to `topic`: the outcome goes to `reply`, the events to `events`.
    pub(crate) fn subscribe(
        &mut self,
        now: Instant,
        topic: &str,
        filter: Option<Box<RawValue>>,
        events: C::Events,
        reply: SubscribeReply<C>,
    ) {
        let token = self.session.subscribe_filtered(now, topic, filter);
        self.subscriptions.insert(token, Sink { events, dropped: None });
        self.pending_subscribes.insert(token, reply);
    }

    /// Ends a subscription.
    pub(crate) fn unsubscribe(&mut self, now: Instant, token: SubscriptionToken) {
        self.subscriptions.remove(&token);
        self.session.unsubscribe(now, token);
    }

    /// Hands every pending session event to its caller; true when there was any.
    pub(crate) fn dispatch(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.session.poll_event() {
            any = true;
            match event {
                ClientEvent::Response { call, result } => self.answer(call, result),
                ClientEvent::Subscribed { subscription } => {
                    if let Some(reply) = self.pending_subscribes.remove(&subscription) {
                        reply.send(Ok(subscription));
                    }
                }
                ClientEvent::SubscribeFailed { subscription, error } => {
                    let sink = self.subscriptions.remove(&subscription);
                    if let Some(reply) = self.pending_subscribes.remove(&subscription) {
                        reply.send(Err(error));
                    } else if let Some(mut sink) = sink {
                        let _ = sink.events.try_send(SubscriptionEvent::Ended(error));
                    }
                }
                ClientEvent::Notification { subscription, seq, value, .. } => {
                    self.deliver(subscription, SubscriptionEvent::Notification { seq, value }, seq);
                }
                ClientEvent::Gap { subscription, from, to, lagged } => {
                    self.deliver(subscription, SubscriptionEvent::Gap { from, to, lagged }, to);
                }
                ClientEvent::Reset { subscription, epoch } => {
                    self.deliver(subscription, SubscriptionEvent::Reset { epoch }, 0);
                }
                ClientEvent::Stalled { subscription, from } => {
                    self.deliver(subscription, SubscriptionEvent::Stalled { from }, from);
                }
            }
        }
        any
    }

    fn answer(&mut self, call: CallToken, result: CallResult) {
        if let Some(reply) = self.calls.remove(&call) {
            return reply.send(result);
        }
        let Some((batch, index)) = self.batch_entries.remove(&call) else { return };
        let Some(b) = self.batches.get_mut(&batch) else { return };
        b.results[index] = Some(result);
        if b.results.iter().all(Option::is_some) {
            let b = self.batches.remove(&batch).expect("present");
            if let Some(reply) = b.reply {
                reply.send(b.results.into_iter().flatten().collect());
            }
        }
    }

    /// Hands an event to its subscription; a subscriber that does not keep up loses values
    /// (reported as a gap) instead of growing memory without bound.
    fn deliver(&mut self, token: SubscriptionToken, event: SubscriptionEvent, seq: u64) {
        let Some(sink) = self.subscriptions.get_mut(&token) else { return };
        if let Some((from, to)) = sink.dropped {
            match sink.events.try_send(SubscriptionEvent::Gap { from, to, lagged: true }) {
                Ok(()) => sink.dropped = None,
                Err(SinkError::Gone) => return,
                Err(SinkError::Full) => {
                    sink.dropped = Some((from, to.max(seq)));
                    return;
                }
            }
        }
        if let Err(SinkError::Full) = sink.events.try_send(event) {
            sink.dropped = Some((seq, seq));
        }
    }

    /// Fails everything pending with `error` and ends every subscription: the client is
    /// closing.
    pub(crate) fn fail_all(&mut self, error: ClientError) {
        self.session.close();
        self.dispatch();
        for (_, reply) in self.calls.drain() {
            reply.send(Err(error.clone()));
        }
        for (_, b) in self.batches.drain() {
            if let Some(reply) = b.reply {
                let n = b.results.len();
                reply.send((0..n).map(|_| Err(error.clone())).collect());
            }
        }
        self.batch_entries.clear();
        for (_, reply) in self.pending_subscribes.drain() {
            reply.send(Err(error.clone()));
        }
        self.subscriptions.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::rpc::client::ClientConfig;

    type Log<T> = Arc<Mutex<Vec<T>>>;

    struct To<T>(Log<T>);
    impl<T> OneShot<T> for To<T> {
        fn send(self, value: T) {
            self.0.lock().unwrap().push(value);
        }
    }

    struct Bounded(Log<SubscriptionEvent>, usize);
    impl EventSink for Bounded {
        fn try_send(&mut self, event: SubscriptionEvent) -> Result<(), SinkError> {
            if self.0.lock().unwrap().len() >= self.1 {
                return Err(SinkError::Full);
            }
            self.0.lock().unwrap().push(event);
            Ok(())
        }
    }

    struct Test;
    impl Channels for Test {
        type Reply<T: Send + 'static> = To<T>;
        type Events = Bounded;
    }

    fn id_of(d: &mut ClientDispatch<Test>) -> u64 {
        let m: serde_json::Value =
            serde_json::from_slice(&d.session_mut().poll_message().unwrap()).unwrap();
        m["id"].as_u64().unwrap_or_else(|| m[0]["id"].as_u64().unwrap())
    }

    #[test]
    fn replies_batches_and_a_slow_subscriber() {
        let now = crate::test_origin();
        let mut d = ClientDispatch::<Test>::new(ClientSession::new(ClientConfig::default()));
        d.session_mut().handle_connected(now);
        let calls: Log<CallResult> = Log::default();
        d.call(now, "m", None, None, To(calls.clone()));
        let id = id_of(&mut d);
        d.session_mut()
            .handle_message(now, format!(r#"{{"jsonrpc":"2.0","result":7,"id":{id}}}"#).as_bytes());
        assert!(d.dispatch());
        assert_eq!(calls.lock().unwrap()[0].as_ref().unwrap().get(), "7");

        let batches: Log<Vec<CallResult>> = Log::default();
        d.batch(now, &[("a", None), ("b", None)], To(batches.clone()));
        let first = id_of(&mut d);
        d.session_mut().handle_message(
            now,
            format!(r#"[{{"jsonrpc":"2.0","result":2,"id":{}}},{{"jsonrpc":"2.0","result":1,"id":{first}}}]"#, first + 1).as_bytes(),
        );
        d.dispatch();
        let got: Vec<String> = batches.lock().unwrap()[0]
            .iter()
            .map(|r| r.as_ref().unwrap().get().to_owned())
            .collect();
        assert_eq!(got, ["1", "2"], "results in request order");
        d.batch(now, &[], To(batches.clone()));
        assert!(batches.lock().unwrap()[1].is_empty(), "an empty batch answers at once");

        let events: Log<SubscriptionEvent> = Log::default();
        let outcome: Log<Result<SubscriptionToken, ClientError>> = Log::default();
        d.subscribe(now, "t", None, Bounded(events.clone(), 2), To(outcome.clone()));
        let id = id_of(&mut d);
        d.session_mut().handle_message(
            now,
            format!(r#"{{"jsonrpc":"2.0","result":{{"subscription":"0x1"}},"id":{id}}}"#)
                .as_bytes(),
        );
        for seq in 1..=5 {
            let n = format!(
                r#"{{"jsonrpc":"2.0","method":"subscription","params":{{"subscription":"0x1","seq":{seq},"result":{seq}}}}}"#
            );
            d.session_mut().handle_message(now, n.as_bytes());
        }
        d.dispatch();
        assert!(outcome.lock().unwrap()[0].is_ok());
        assert_eq!(events.lock().unwrap().len(), 2, "the subscriber holds two and loses the rest");
        events.lock().unwrap().clear();
        let n = r#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"0x1","seq":6,"result":6}}"#;
        d.session_mut().handle_message(now, n.as_bytes());
        d.dispatch();
        assert!(
            matches!(
                events.lock().unwrap()[0],
                SubscriptionEvent::Gap { from: 3, to: 5, lagged: true }
            ),
            "{:?}",
            events.lock().unwrap()
        );
        assert!(matches!(
            events.lock().unwrap()[1],
            SubscriptionEvent::Notification { seq: 6, .. }
        ));

        d.call(now, "pending", None, None, To(calls.clone()));
        d.fail_all(ClientError::Closed);
        assert_eq!(calls.lock().unwrap()[1].as_ref().unwrap_err(), &ClientError::Closed);
    }
}
