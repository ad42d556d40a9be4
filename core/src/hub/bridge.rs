//! The broker bridge: topics shared by several server instances through a broker (Redis,
//! driven by `wsrpc-redis`), sans-IO.
//!
//! The hub turns what happens to bridged topics into [`BrokerCommand`]s (subscribe a topic on
//! the broker when its first local subscriber arrives, unsubscribe after its last one leaves,
//! publish, read history) queued for a driver, and takes the driver's [`BrokerEvent`]s back
//! through a [`BrokerLink`]. The broker numbers every message of a topic (`seq`, counting in an
//! `epoch` that changes when the broker lost the topic's history), so every instance agrees;
//! a publish is delivered to no one locally until it comes back from the broker.
//!
//! Each bridged topic keeps `(epoch, last)`: a live message with `seq == last + 1` is
//! delivered, one with `seq <= last` is a duplicate and dropped, one further ahead starts a
//! history read that fills the hole or reports it as a `gap`. Live messages that arrive while
//! the topic is being subscribed or read are held and applied after the read, so nothing falls
//! between the subscription and the history. A subscriber resuming with `since` is served from
//! the local replay buffer when it covers `since + 1 ..= last`, else from the broker's history,
//! and is told `gap` for what neither holds.
//!
//! The per-topic states, one table:
//!
//! | state         | enters when                                  | live message            |
//! |---------------|----------------------------------------------|-------------------------|
//! | `Idle`        | the topic is made                            | ignored                 |
//! | `Subscribing` | first subscriber, or the broker is back      | held                    |
//! | `Reading`     | subscribed, a jump, an old `since`           | held                    |
//! | `Synced`      | the history read is applied                  | delivered in order      |
//! | `Down`        | the broker went away (subscribers: stalled)  | ignored                 |

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use super::outbox::Control;
use super::{
    Delivery, Hub, Outbox, PublishError, Published, SubscribeError, Subscribed, Subscriber,
    SubscriptionFilter, Topic, TopicKey, TopicPattern, lock,
};
use crate::metrics::{BrokerState, BrokerStats};

/// Which topics go through the broker.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BridgedTopics {
    /// Every topic \[default\].
    #[default]
    All,
    /// Topics matching one of these patterns; the others stay local to the instance.
    Matching(Vec<TopicPattern>),
}

impl BridgedTopics {
    /// Whether `topic` is bridged.
    pub fn covers(&self, topic: &str) -> bool {
        match self {
            Self::All => true,
            Self::Matching(patterns) => patterns.iter().any(|p| p.key(topic).is_some()),
        }
    }
}

/// How the hub uses a broker, when the server has one (`ServerBuilder::broker`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeConfig {
    /// Which topics are shared through the broker \[all\].
    pub topics: BridgedTopics,
    /// Publishes waiting for the broker's answer before further ones are refused
    /// ([`PublishError::Backlog`]) \[10,000\].
    pub max_in_flight: usize,
    /// Live messages held per topic while it is subscribed or read; beyond it they are dropped
    /// and read from the broker's history afterwards \[1,024\].
    pub max_held: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self { topics: BridgedTopics::All, max_in_flight: 10_000, max_held: 1024 }
    }
}

/// What the hub asks the broker driver to do, from [`BrokerLink::drain_commands`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerCommand {
    /// Subscribe to the topic's broker channel; answer [`BrokerEvent::Subscribed`] with
    /// `token` once the subscription is in effect.
    Subscribe {
        /// The topic.
        topic: Arc<str>,
        /// Echoed in the answer.
        token: u64,
    },
    /// Unsubscribe from the topic's channel (no answer).
    Unsubscribe {
        /// The topic.
        topic: Arc<str>,
    },
    /// Number and publish the payload; answer [`BrokerEvent::Published`] or
    /// [`BrokerEvent::PublishFailed`] with `id`.
    Publish {
        /// Echoed in the answer.
        id: u64,
        /// The topic.
        topic: Arc<str>,
        /// The value, as JSON text.
        payload: Vec<u8>,
    },
    /// Read the topic's epoch and latest sequence number (creating the epoch when the broker
    /// has none) and, with `since`, up to `limit` history entries after it, oldest first;
    /// answer [`BrokerEvent::History`] or [`BrokerEvent::HistoryFailed`] with `id`.
    History {
        /// Echoed in the answer.
        id: u64,
        /// The topic.
        topic: Arc<str>,
        /// Entries after this sequence number; `None`: none, only the position.
        since: Option<u64>,
        /// Most entries.
        limit: usize,
    },
}

/// What the broker driver reports, through [`BrokerLink::handle_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// Connected (again): publishes are accepted, every topic is subscribed anew.
    Up,
    /// The connection is gone: publishes fail fast until [`Up`](Self::Up), topics stall.
    Down {
        /// For the log.
        reason: String,
    },
    /// The answer to [`BrokerCommand::Subscribe`].
    Subscribed {
        /// The topic.
        topic: Arc<str>,
        /// The command's token.
        token: u64,
    },
    /// The answer to [`BrokerCommand::Publish`].
    Published {
        /// The command's id.
        id: u64,
        /// The sequence number the broker gave the message.
        seq: u64,
        /// The epoch it counts in.
        epoch: u64,
    },
    /// The broker refused a publish (the connection itself failing is [`Down`](Self::Down)).
    PublishFailed {
        /// The command's id.
        id: u64,
        /// The broker's error.
        reason: String,
    },
    /// The answer to [`BrokerCommand::History`].
    History {
        /// The command's id.
        id: u64,
        /// The topic.
        topic: Arc<str>,
        /// The topic's epoch.
        epoch: u64,
        /// The topic's latest sequence number (0: nothing published in this epoch).
        top: u64,
        /// `(seq, payload)` after the command's `since`, oldest first.
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// The broker refused a history read.
    HistoryFailed {
        /// The command's id.
        id: u64,
        /// The topic.
        topic: Arc<str>,
        /// The broker's error.
        reason: String,
    },
    /// A message on a topic's channel (see [`BrokerLink::handle_message`], which takes it
    /// without allocating).
    Message {
        /// The topic.
        topic: Arc<str>,
        /// Its sequence number.
        seq: u64,
        /// Its epoch.
        epoch: u64,
        /// The value, as JSON text.
        payload: Vec<u8>,
    },
}

/// Connects a server to a broker: started by the service with the [`BrokerLink`] it drives.
/// `wsrpc-redis` implements it for Redis.
pub trait BrokerDriver: Send + 'static {
    /// Starts moving commands and events between `link` and the broker (spawning the threads
    /// or tasks it needs); the service keeps the returned handle and stops it at shutdown.
    fn start(self: Box<Self>, link: BrokerLink) -> Box<dyn BrokerRunning>;
}

/// A started [`BrokerDriver`].
pub trait BrokerRunning: Send + Sync {
    /// Stops the driver; returns once it no longer calls into the link.
    fn stop(self: Box<Self>);
}

/// A broker-assigned position of a published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequenced {
    /// The message's sequence number in its topic.
    pub seq: u64,
    /// The epoch it counts in.
    pub epoch: u64,
}

#[derive(Debug, Default)]
struct TicketState {
    result: Option<Result<Sequenced, PublishError>>,
    waker: Option<Waker>,
    taken: bool,
}

#[derive(Debug, Default)]
struct TicketSlot {
    state: Mutex<TicketState>,
    ready: Condvar,
}

impl TicketSlot {
    fn resolve(&self, result: Result<Sequenced, PublishError>) {
        let waker = {
            let mut s = lock(&self.state);
            if s.result.is_some() || s.taken {
                return;
            }
            s.result = Some(result);
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The broker's answer to a publish on a bridged topic, to come: `.await` it, or
/// [`wait`](Self::wait) for it on a thread that may block. It always resolves: with the
/// broker's sequence number and epoch, or with an error when the broker refuses, goes away
/// (the driver gives up on an unanswered command after its timeout) or the server stops.
/// Dropping it does not cancel the publish.
#[derive(Debug)]
#[must_use = "a publish may still fail; await or wait for the ticket to learn its outcome"]
pub struct PublishTicket(Arc<TicketSlot>);

impl PublishTicket {
    fn new() -> (Self, Arc<TicketSlot>) {
        let slot = Arc::new(TicketSlot::default());
        (Self(slot.clone()), slot)
    }

    /// The outcome, if the broker has answered (taken once).
    pub fn try_take(&mut self) -> Option<Result<Sequenced, PublishError>> {
        let mut s = lock(&self.0.state);
        let r = s.result.take();
        s.taken |= r.is_some();
        r
    }

    /// Blocks the calling thread until the broker answers.
    pub fn wait(self) -> Result<Sequenced, PublishError> {
        let mut s = lock(&self.0.state);
        loop {
            if let Some(r) = s.result.take() {
                s.taken = true;
                return r;
            }
            if s.taken {
                return Err(PublishError::BrokerFailed("outcome already taken".into()));
            }
            s = self.0.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Future for PublishTicket {
    type Output = Result<Sequenced, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.0.state);
        if let Some(r) = s.result.take() {
            s.taken = true;
            return Poll::Ready(r);
        }
        if s.taken {
            return Poll::Ready(Err(PublishError::BrokerFailed("outcome already taken".into())));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[derive(Debug, Default)]
struct Counters {
    publishes: AtomicU64,
    publish_failures: AtomicU64,
    ups: AtomicU64,
    messages: AtomicU64,
    deliveries: AtomicU64,
    gaps: AtomicU64,
    resets: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    up: bool,
    /// After the service stopped the driver: never up again.
    closed: bool,
    commands: VecDeque<BrokerCommand>,
    tickets: HashMap<u64, Arc<TicketSlot>>,
    waker: Option<Waker>,
}

/// The hub's side of the bridge: the command queue, the publish tickets and the counters.
#[derive(Debug)]
pub(super) struct Bridge {
    pub(super) config: BridgeConfig,
    /// Most commands queued for a driver that does not keep up: beyond it subscribing to a
    /// bridged topic nobody here listens to yet is refused as if the broker were down.
    max_queued: usize,
    shared: Mutex<Shared>,
    up: AtomicBool,
    next_id: AtomicU64,
    counters: Counters,
}

impl Bridge {
    pub(super) fn new(config: BridgeConfig, max_topics: usize) -> Self {
        // Every topic has at most a subscribe and a read in flight, plus an unsubscribe of
        // an earlier incarnation; publishes are bounded by their tickets.
        let max_queued =
            config.max_in_flight.saturating_add(max_topics.saturating_mul(3)).max(1024);
        Self {
            max_queued,
            config,
            shared: Mutex::new(Shared::default()),
            up: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
        }
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues `command` when the broker is up; returns whether it did, and the driver's waker
    /// when the queue was empty (to wake after the caller's locks are released). A `new`
    /// topic's first subscribe is also refused while the driver is far behind (every other
    /// command is bounded by the topics that exist).
    fn push(&self, command: BrokerCommand, new: bool, wakers: &mut Vec<Waker>) -> bool {
        let mut s = lock(&self.shared);
        if !s.up || (new && s.commands.len() >= self.max_queued) {
            return false;
        }
        if s.commands.is_empty() {
            wakers.extend(s.waker.clone());
        }
        s.commands.push_back(command);
        true
    }

    pub(super) fn stats(&self) -> BrokerStats {
        let c = &self.counters;
        let ups = c.ups.load(Ordering::Relaxed);
        BrokerStats {
            state: if self.up.load(Ordering::Acquire) {
                BrokerState::Up
            } else {
                BrokerState::Down
            },
            publishes: c.publishes.load(Ordering::Relaxed),
            publish_failures: c.publish_failures.load(Ordering::Relaxed),
            reconnects: ups.saturating_sub(1),
            messages: c.messages.load(Ordering::Relaxed),
            deliveries: c.deliveries.load(Ordering::Relaxed),
            gaps: c.gaps.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
        }
    }
}

/// Where a bridged topic stands with the broker (the table in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    Idle,
    Subscribing { token: u64 },
    Reading { id: u64, since: Option<u64> },
    Synced,
    Down,
}

/// A live message held while its topic is subscribed or read.
#[derive(Debug)]
struct Held {
    seq: u64,
    epoch: u64,
    payload: Box<[u8]>,
}

/// A subscriber waiting for its topic to be in step with the broker.
#[derive(Debug)]
struct PendingSubscriber {
    sub: Subscriber,
    since: Option<(u64, Option<u64>)>,
}

/// The broker side of one bridged topic, kept under the topic's lock.
#[derive(Debug)]
pub(super) struct TopicLink {
    state: LinkState,
    /// Known once the topic was first read.
    epoch: Option<u64>,
    /// The last sequence number delivered (or reported missing) to subscribers here.
    last: u64,
    held: VecDeque<Held>,
    /// Live messages were dropped while held: read the history again afterwards.
    overflowed: bool,
    pending: Vec<PendingSubscriber>,
}

impl TopicLink {
    pub(super) fn new() -> Self {
        Self {
            state: LinkState::Idle,
            epoch: None,
            last: 0,
            held: VecDeque::new(),
            overflowed: false,
            pending: Vec::new(),
        }
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(super) fn remove_pending(&mut self, outbox: &Outbox, key: &TopicKey) -> bool {
        let before = self.pending.len();
        self.pending.retain(|p| !p.sub.is(outbox, key));
        self.pending.len() < before
    }

    /// The epoch subscribers see, once known.
    pub(super) fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The `since` a subscriber effectively needs: 0 when its epoch is not the topic's.
    fn need(&self, since: Option<(u64, Option<u64>)>) -> Option<u64> {
        since.map(|(s, e)| match (self.epoch, e) {
            (Some(mine), Some(theirs)) if mine != theirs => 0,
            _ => s,
        })
    }
}

/// The driver's handle on a hub: take commands, give events. `Clone + Send + Sync`.
#[derive(Clone, Debug)]
pub struct BrokerLink {
    hub: Arc<Hub>,
}

impl BrokerLink {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        debug_assert!(hub.bridge.is_some(), "a link needs a hub made with a bridge");
        Self { hub }
    }

    fn bridge(&self) -> &Bridge {
        // `new` is only called on a hub made with a bridge.
        self.hub.bridge.as_ref().expect("a bridged hub")
    }

    /// Registers the waker to wake when commands are queued after the queue was drained
    /// empty. Drain until [`drain_commands`](Self::drain_commands) gives nothing before
    /// waiting.
    pub fn set_waker(&self, waker: &Waker) {
        let mut s = lock(&self.bridge().shared);
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
    }

    /// Moves up to `max` queued commands into `out`, oldest first; returns how many.
    pub fn drain_commands(&self, out: &mut Vec<BrokerCommand>, max: usize) -> usize {
        let mut s = lock(&self.bridge().shared);
        let n = s.commands.len().min(max);
        out.extend(s.commands.drain(..n));
        if s.commands.is_empty() && s.commands.capacity() > 1024 {
            s.commands = VecDeque::new();
        }
        n
    }

    /// Takes one event from the driver.
    pub fn handle_event(&self, event: BrokerEvent) {
        self.hub.handle_broker_event(event);
    }

    /// Takes a message that arrived on a topic's channel (the hot path of
    /// [`BrokerEvent::Message`]).
    pub fn handle_message(&self, topic: &str, seq: u64, epoch: u64, payload: &[u8]) {
        self.hub.broker_message(topic, seq, epoch, payload);
    }

    /// How many messages per topic the broker should keep as history: the hub's replay size.
    pub fn history_size(&self) -> usize {
        self.hub.config.replay_capacity
    }

    /// Whether the hub considers the broker up.
    pub fn state(&self) -> BrokerState {
        self.bridge().stats().state
    }
}

/// What to do after a topic's lock is released.
#[derive(Debug, Default)]
pub(super) struct After {
    pub(super) wakers: Vec<Waker>,
}

impl Hub {
    fn bridge_ref(&self) -> &Bridge {
        // Only called for topics that have a link, which only a bridged hub makes.
        self.bridge.as_ref().expect("a bridged hub")
    }

    /// Publishes to a bridged topic: queued for the broker, delivered when it comes back.
    pub(super) fn publish_bridged(
        &self,
        bridge: &Bridge,
        topic: &str,
        json: Vec<u8>,
    ) -> Result<Published, PublishError> {
        let (ticket, slot) = PublishTicket::new();
        let waker = {
            let mut s = lock(&bridge.shared);
            let refused = if !s.up {
                Some(PublishError::BrokerUnavailable)
            } else if s.tickets.len() >= bridge.config.max_in_flight {
                Some(PublishError::Backlog { max: bridge.config.max_in_flight })
            } else {
                None
            };
            if let Some(e) = refused {
                drop(s);
                bridge.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            let id = bridge.id();
            s.tickets.insert(id, slot);
            let waker = if s.commands.is_empty() { s.waker.clone() } else { None };
            s.commands.push_back(BrokerCommand::Publish { id, topic: topic.into(), payload: json });
            waker
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(Published { seq: 0, epoch: 0, subscribers: 0, pending: Some(ticket) })
    }

    /// Subscribes `outbox` to a bridged topic (its lock held): served now when the topic is
    /// in step with the broker and its replay covers `since`, else queued until it is.
    pub(super) fn subscribe_bridged(
        &self,
        t: &mut Topic,
        outbox: &Arc<Outbox>,
        since: Option<(u64, Option<u64>)>,
        filter: Option<SubscriptionFilter>,
        after: &mut After,
    ) -> Result<Subscribed, SubscribeError> {
        let bridge = self.bridge_ref();
        let link = t.link.as_deref_mut().expect("a bridged topic");
        if filter.is_none() {
            let live = t.subscribers.iter().find(|s| s.is_plain_of(outbox));
            let waiting = link.pending.iter().map(|p| &p.sub).find(|s| s.is_plain_of(outbox));
            if let Some(s) = live.or(waiting) {
                return Ok(Subscribed {
                    key: s.key.clone(),
                    seq: link.last,
                    epoch: link.epoch.unwrap_or(0),
                    pending: live.is_none(),
                });
            }
        }
        let pending = std::mem::take(&mut link.pending);
        let sub = self.new_subscriber(t, pending.iter().map(|p| &p.sub), outbox, filter);
        let link = t.link.as_deref_mut().expect("a bridged topic");
        link.pending = pending;
        let key = sub.key.clone();
        match link.state {
            LinkState::Synced if self.covers_locally(link, &t.replay, since) => {
                let (seq, epoch) = (link.last, link.epoch.unwrap_or(0));
                self.serve(t, PendingSubscriber { sub, since }, false, after);
                self.subscriptions_active.fetch_add(1, Ordering::Relaxed);
                self.subscriptions_total.fetch_add(1, Ordering::Relaxed);
                return Ok(Subscribed { key, seq, epoch, pending: false });
            }
            LinkState::Synced => {
                // From no later than `last`: what the live subscribers have not seen yet comes
                // with it.
                let need = link.need(since).unwrap_or(link.last).min(link.last);
                let id = bridge.id();
                let cmd = self.history_command(id, &t.key.name, Some(need));
                if !bridge.push(cmd, false, &mut after.wakers) {
                    return Err(SubscribeError::Unavailable);
                }
                link.state = LinkState::Reading { id, since: Some(need) };
            }
            LinkState::Subscribing { .. } | LinkState::Reading { .. } => {}
            LinkState::Idle | LinkState::Down => {
                let token = bridge.id();
                let cmd = BrokerCommand::Subscribe { topic: t.key.name.clone(), token };
                if !bridge.push(cmd, true, &mut after.wakers) {
                    return Err(SubscribeError::Unavailable);
                }
                link.state = LinkState::Subscribing { token };
            }
        }
        link.pending.push(PendingSubscriber { sub, since });
        self.subscriptions_active.fetch_add(1, Ordering::Relaxed);
        self.subscriptions_total.fetch_add(1, Ordering::Relaxed);
        Ok(Subscribed { key, seq: 0, epoch: 0, pending: true })
    }

    /// Whether a subscriber resuming after `since` can be served from the replay buffer of a
    /// topic in step with the broker.
    fn covers_locally(
        &self,
        link: &TopicLink,
        replay: &VecDeque<Delivery>,
        since: Option<(u64, Option<u64>)>,
    ) -> bool {
        let Some(need) = link.need(since) else { return true };
        // Ahead of this instance (it saw more elsewhere): read up to it, or it would get
        // duplicates.
        if need > link.last {
            return false;
        }
        need == link.last || replay.front().is_some_and(|d| d.seq <= need + 1)
    }

    fn history_command(&self, id: u64, topic: &Arc<str>, since: Option<u64>) -> BrokerCommand {
        BrokerCommand::History {
            id,
            topic: topic.clone(),
            since,
            limit: self.config.replay_capacity.max(1),
        }
    }

    /// Makes `p` a live subscriber of `t` (in step with the broker): answers it when it was
    /// pending, tells it about an epoch change, replays what it missed with gaps for what
    /// neither the replay buffer nor the broker's history held.
    fn serve(&self, t: &mut Topic, p: PendingSubscriber, answer: bool, after: &mut After) {
        let link = t.link.as_deref().expect("a bridged topic");
        let (last, epoch) = (link.last, link.epoch.unwrap_or(0));
        let sub = p.sub;
        let (outbox, key) = (&sub.outbox, &sub.key);
        let push = |c: Control, after: &mut After| after.wakers.extend(outbox.push_control(c));
        if answer {
            push(Control::Subscribed { topic: key.clone(), seq: last, epoch }, after);
        }
        if let Some((since, theirs)) = p.since {
            let since = match theirs {
                Some(e) if e != epoch => {
                    push(Control::Reset { topic: key.clone(), epoch }, after);
                    self.bridge_ref().counters.resets.fetch_add(1, Ordering::Relaxed);
                    0
                }
                _ => since,
            };
            if since < last {
                let mut next = since + 1;
                for d in t.replay.iter().filter(|d| d.seq > since) {
                    if d.seq > next {
                        after.wakers.extend(outbox.push_gap(key.clone(), next, d.seq - 1));
                    }
                    next = d.seq + 1;
                    // Missing messages are a gap for everyone; unmatched ones are not.
                    let Some(d) = self.for_subscriber(&sub, d) else { continue };
                    let (waker, dropped) = outbox.push(d);
                    after.wakers.extend(waker);
                    self.dropped.fetch_add(dropped, Ordering::Relaxed);
                }
                if next <= last {
                    after.wakers.extend(outbox.push_gap(key.clone(), next, last));
                }
            }
        }
        t.subscribers.push(sub);
    }

    /// Tells every live subscriber of `t` that `from..=to` will not arrive.
    fn gap_all(&self, t: &Topic, from: u64, to: u64, after: &mut After) {
        self.bridge_ref().counters.gaps.fetch_add(1, Ordering::Relaxed);
        log::debug!(target: "wsrpc::hub", "topic {} lost {from}..={to}", t.key.name);
        for s in &t.subscribers {
            after.wakers.extend(s.outbox.push_gap(s.key.clone(), from, to));
        }
    }

    /// The broker gave the topic a new epoch (it lost the history): subscribers are told,
    /// numbering starts over.
    fn reset(&self, t: &mut Topic, epoch: u64, after: &mut After) {
        let link = t.link.as_deref_mut().expect("a bridged topic");
        log::info!(target: "wsrpc::hub", "topic {} epoch {:?} -> {epoch}: history lost", t.key.name, link.epoch);
        link.epoch = Some(epoch);
        link.last = 0;
        t.replay.clear();
        self.bridge_ref().counters.resets.fetch_add(1, Ordering::Relaxed);
        for s in &t.subscribers {
            after
                .wakers
                .extend(s.outbox.push_control(Control::Reset { topic: s.key.clone(), epoch }));
        }
    }

    /// Delivers the message `seq` (the next one) to the live subscribers of `t`.
    fn deliver(&self, t: &mut Topic, seq: u64, json: &[u8], after: &mut After) {
        let n = self.fan_out(&t.key, &t.subscribers, &mut t.replay, seq, json, &mut after.wakers);
        t.link.as_deref_mut().expect("a bridged topic").last = seq;
        self.bridge_ref().counters.deliveries.fetch_add(n as u64, Ordering::Relaxed);
        self.deliveries.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Starts a history read of `t` after `since`; a broker gone meanwhile stalls the topic.
    fn start_read(&self, t: &mut Topic, since: Option<u64>, after: &mut After) {
        let bridge = self.bridge_ref();
        let id = bridge.id();
        let cmd = self.history_command(id, &t.key.name, since);
        let link = t.link.as_deref_mut().expect("a bridged topic");
        if bridge.push(cmd, false, &mut after.wakers) {
            link.state = LinkState::Reading { id, since };
        } else {
            self.stall(t, after);
        }
    }

    /// The broker is gone for `t`: subscribers are told their stream stalls, waiting ones
    /// are refused, held messages dropped (the history read after reconnecting has them).
    fn stall(&self, t: &mut Topic, after: &mut After) {
        let link = t.link.as_deref_mut().expect("a bridged topic");
        let was = link.state;
        link.state = LinkState::Down;
        link.held.clear();
        link.overflowed = false;
        let pending = std::mem::take(&mut link.pending);
        if link.epoch.is_some() && !matches!(was, LinkState::Down | LinkState::Idle) {
            let from = link.last + 1;
            for s in &t.subscribers {
                let stalled = Control::Stalled { topic: s.key.clone(), from };
                after.wakers.extend(s.outbox.push_control(stalled));
            }
        }
        if !pending.is_empty() {
            self.subscriptions_active.fetch_sub(pending.len() as u64, Ordering::Relaxed);
        }
        for p in pending {
            let failed = Control::SubscribeFailed { topic: p.sub.key.clone() };
            after.wakers.extend(p.sub.outbox.push_control(failed));
        }
    }

    /// A live message from the broker.
    pub(super) fn broker_message(&self, topic: &str, seq: u64, epoch: u64, payload: &[u8]) {
        let Some(bridge) = &self.bridge else { return };
        bridge.counters.messages.fetch_add(1, Ordering::Relaxed);
        // Anything on the channel reaches clients inside a notification: it must be JSON.
        if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() {
            log::warn!(target: "wsrpc::hub", "topic {topic}: message {seq} from the broker is not JSON; dropped");
            return;
        }
        let Some(arc) = self.topic(topic, false) else { return };
        let mut after = After::default();
        {
            let mut guard = lock(&arc);
            let t = &mut *guard;
            if t.dead {
                return;
            }
            let Some(link) = t.link.as_deref_mut() else { return };
            match link.state {
                LinkState::Synced => {
                    self.apply_live(t, seq, epoch, payload, &mut after);
                }
                LinkState::Subscribing { .. } | LinkState::Reading { .. } => {
                    if link.held.len() < bridge.config.max_held {
                        link.held.push_back(Held { seq, epoch, payload: payload.into() });
                    } else {
                        link.overflowed = true;
                    }
                }
                LinkState::Idle | LinkState::Down => {}
            }
        }
        for w in after.wakers {
            w.wake();
        }
    }

    /// Applies a live message to a topic in step: delivered when next, dropped when already
    /// seen, else held while the history fills the hole. Another epoch is held too: only a
    /// history read says which epoch is current (a message of the old one may arrive late,
    /// through the other connection). Returns false when it started a read.
    fn apply_live(
        &self,
        t: &mut Topic,
        seq: u64,
        epoch: u64,
        payload: &[u8],
        after: &mut After,
    ) -> bool {
        let link = t.link.as_deref_mut().expect("a bridged topic");
        let last = link.last;
        if link.epoch == Some(epoch) {
            if seq <= last {
                return true;
            }
            if seq == last + 1 {
                self.deliver(t, seq, payload, after);
                return true;
            }
        }
        link.held.push_back(Held { seq, epoch, payload: payload.into() });
        log::debug!(target: "wsrpc::hub", "topic {}: {seq} (epoch {epoch}) after {last}; reading the history", t.key.name);
        self.start_read(t, Some(last), after);
        false
    }

    pub(super) fn handle_broker_event(&self, event: BrokerEvent) {
        let Some(bridge) = &self.bridge else { return };
        match event {
            BrokerEvent::Up => self.broker_up(bridge),
            BrokerEvent::Down { reason } => self.broker_down(bridge, &reason, false),
            BrokerEvent::Published { id, seq, epoch } => {
                let slot = lock(&bridge.shared).tickets.remove(&id);
                if let Some(slot) = slot {
                    bridge.counters.publishes.fetch_add(1, Ordering::Relaxed);
                    slot.resolve(Ok(Sequenced { seq, epoch }));
                }
            }
            BrokerEvent::PublishFailed { id, reason } => {
                let slot = lock(&bridge.shared).tickets.remove(&id);
                if let Some(slot) = slot {
                    bridge.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
                    slot.resolve(Err(PublishError::BrokerFailed(reason)));
                }
            }
            BrokerEvent::Message { topic, seq, epoch, payload } => {
                self.broker_message(&topic, seq, epoch, &payload)
            }
            BrokerEvent::Subscribed { topic, token } => {
                self.with_topic(&topic, |hub, t, after| {
                    let link = t.link.as_deref_mut().expect("a bridged topic");
                    if link.state != (LinkState::Subscribing { token }) {
                        return;
                    }
                    // The position only, unless someone here needs entries.
                    let mut since = link.epoch.is_some().then_some(link.last);
                    for p in &link.pending {
                        if let Some(n) = link.need(p.since) {
                            since = Some(since.map_or(n, |s: u64| s.min(n)));
                        }
                    }
                    hub.start_read(t, since, after);
                });
            }
            BrokerEvent::History { id, topic, epoch, top, entries } => {
                self.with_topic(&topic, |hub, t, after| {
                    let link = t.link.as_deref_mut().expect("a bridged topic");
                    let LinkState::Reading { id: reading, since } = link.state else { return };
                    if reading != id {
                        return;
                    }
                    hub.apply_history(t, since, epoch, top, entries, after);
                });
            }
            BrokerEvent::HistoryFailed { id, topic, reason } => {
                self.with_topic(&topic, |hub, t, after| {
                    let link = t.link.as_deref_mut().expect("a bridged topic");
                    if !matches!(link.state, LinkState::Reading { id: r, .. } if r == id) {
                        return;
                    }
                    log::error!(target: "wsrpc::hub", "topic {}: history read failed: {reason}", t.key.name);
                    hub.stall(t, after);
                });
            }
        }
    }

    /// Runs `f` on the live bridged topic named `name` under its lock, then wakes.
    fn with_topic(&self, name: &str, f: impl FnOnce(&Self, &mut Topic, &mut After)) {
        let Some(arc) = self.topic(name, false) else { return };
        let mut after = After::default();
        {
            let mut guard = lock(&arc);
            if guard.dead || guard.link.is_none() {
                return;
            }
            f(self, &mut guard, &mut after);
        }
        for w in after.wakers {
            w.wake();
        }
        self.remove_if_unused(name);
    }

    /// Applies a history read: catches the live subscribers up (or tells them what is gone),
    /// then the messages held meanwhile, then serves the waiting subscribers.
    fn apply_history(
        &self,
        t: &mut Topic,
        since: Option<u64>,
        epoch: u64,
        top: u64,
        entries: Vec<(u64, Vec<u8>)>,
        after: &mut After,
    ) {
        let link = t.link.as_deref_mut().expect("a bridged topic");
        match link.epoch {
            None => {
                // First read: nobody here has seen anything; live numbering starts at the top.
                link.epoch = Some(epoch);
                link.last = top;
            }
            Some(e) if e != epoch => {
                self.reset(t, epoch, after);
                if since != Some(0) {
                    // The read was for the old epoch's numbers: read the new one from its start
                    // (the held messages wait for it).
                    self.start_read(t, Some(0), after);
                    return;
                }
            }
            Some(_) => {}
        }
        let mut valid = Vec::with_capacity(entries.len());
        for (seq, payload) in entries {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
                valid.push((seq, payload));
            } else {
                log::warn!(target: "wsrpc::hub", "topic {}: history entry {seq} is not JSON; skipped", t.key.name);
            }
        }
        valid.sort_unstable_by_key(|(seq, _)| *seq);
        for (seq, payload) in valid {
            let last = t.link.as_deref().expect("a bridged topic").last;
            if seq > last {
                if seq > last + 1 {
                    self.gap_all(t, last + 1, seq - 1, after);
                }
                self.deliver(t, seq, &payload, after);
            } else {
                self.keep_older(t, seq, &payload);
            }
        }
        let last = t.link.as_deref().expect("a bridged topic").last;
        if last < top {
            self.gap_all(t, last + 1, top, after);
            t.link.as_deref_mut().expect("a bridged topic").last = top;
        }
        let link = t.link.as_deref_mut().expect("a bridged topic");
        link.state = LinkState::Synced;
        let held = std::mem::take(&mut link.held);
        let overflowed = std::mem::replace(&mut link.overflowed, false);
        let mut held = held.into_iter();
        while let Some(h) = held.next() {
            if Some(h.epoch) != t.link.as_deref().and_then(|l| l.epoch) {
                // Of an epoch the read did not find current: sent before it ended.
                continue;
            }
            if !self.apply_live(t, h.seq, h.epoch, &h.payload, after) {
                // A hole among the held messages: a new read started; keep the rest for it.
                let link = t.link.as_deref_mut().expect("a bridged topic");
                if matches!(link.state, LinkState::Reading { .. }) {
                    link.held.extend(held);
                }
                return;
            }
        }
        if overflowed {
            let last = t.link.as_deref().expect("a bridged topic").last;
            self.start_read(t, Some(last), after);
            return;
        }
        self.serve_pending(t, since, top, after);
    }

    /// Serves the waiting subscribers of a topic now in step; those that need older entries
    /// than the read that just ended fetched start another read.
    fn serve_pending(&self, t: &mut Topic, read_since: Option<u64>, top: u64, after: &mut After) {
        let link = t.link.as_deref_mut().expect("a bridged topic");
        let pending = std::mem::take(&mut link.pending);
        let mut again: Option<u64> = None;
        for p in pending {
            let link = t.link.as_deref_mut().expect("a bridged topic");
            let need = link.need(p.since);
            let covered = match need {
                None => true,
                Some(n) => {
                    n >= link.last
                        || t.replay.front().is_some_and(|d| d.seq <= n + 1)
                        || read_since.unwrap_or(top) <= n
                }
            };
            if covered {
                self.serve(t, p, true, after);
            } else {
                let n = need.unwrap_or(0);
                again = Some(again.map_or(n, |a| a.min(n)));
                t.link.as_deref_mut().expect("a bridged topic").pending.push(p);
            }
        }
        if let Some(since) = again {
            self.start_read(t, Some(since), after);
        }
    }

    /// Keeps a history entry older than what was delivered here in the replay buffer, for
    /// subscribers resuming from before it.
    fn keep_older(&self, t: &mut Topic, seq: u64, json: &[u8]) {
        let cap = self.config.replay_capacity;
        if cap == 0 {
            return;
        }
        let Err(at) = t.replay.binary_search_by_key(&seq, |d| d.seq) else { return };
        if t.replay.len() >= cap {
            if at == 0 {
                return;
            }
            t.replay.pop_front();
            t.replay.insert(at - 1, self.delivery(&t.key, seq, json));
        } else {
            t.replay.insert(at, self.delivery(&t.key, seq, json));
        }
    }

    fn broker_up(&self, bridge: &Bridge) {
        {
            let mut s = lock(&bridge.shared);
            if s.closed {
                return;
            }
            s.up = true;
            bridge.up.store(true, Ordering::Release);
        }
        bridge.counters.ups.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "wsrpc::hub", "broker up");
        // Every topic with subscribers here is subscribed anew and read from where it stalled.
        for (name, arc) in self.all_topics() {
            let mut after = After::default();
            {
                let mut guard = lock(&arc);
                let t = &mut *guard;
                if t.dead || t.subscribers.is_empty() {
                    continue;
                }
                let Some(link) = t.link.as_deref_mut() else { continue };
                if !matches!(link.state, LinkState::Down | LinkState::Idle) {
                    continue;
                }
                let token = bridge.id();
                let cmd = BrokerCommand::Subscribe { topic: name.clone(), token };
                if bridge.push(cmd, false, &mut after.wakers) {
                    link.state = LinkState::Subscribing { token };
                }
            }
            for w in after.wakers {
                w.wake();
            }
        }
    }

    fn broker_down(&self, bridge: &Bridge, reason: &str, close: bool) {
        let tickets = {
            let mut s = lock(&bridge.shared);
            s.closed |= close;
            if !s.up {
                // Already down: topics stalled then, nothing waits for an answer.
                return;
            }
            s.up = false;
            bridge.up.store(false, Ordering::Release);
            // Commands not taken yet are moot: every topic is subscribed and read anew.
            s.commands.clear();
            std::mem::take(&mut s.tickets)
        };
        if close {
            log::info!(target: "wsrpc::hub", "broker stopped; {} publishes without an answer", tickets.len());
        } else {
            log::warn!(target: "wsrpc::hub", "broker down: {reason}; {} publishes without an answer", tickets.len());
        }
        bridge.counters.publish_failures.fetch_add(tickets.len() as u64, Ordering::Relaxed);
        for slot in tickets.into_values() {
            slot.resolve(Err(PublishError::BrokerFailed(format!(
                "the broker went away before it answered ({reason}); the message may have been published"
            ))));
        }
        for (name, arc) in self.all_topics() {
            let mut after = After::default();
            {
                let mut guard = lock(&arc);
                if guard.dead || guard.link.is_none() {
                    continue;
                }
                self.stall(&mut guard, &mut after);
            }
            for w in after.wakers {
                w.wake();
            }
            self.remove_if_unused(&name);
        }
    }

    /// The service stopped the driver: the broker is down for good.
    pub(crate) fn close_bridge(&self) {
        if let Some(bridge) = &self.bridge {
            self.broker_down(bridge, "the server is stopping", true);
        }
    }

    /// Counters of the bridge, when there is one.
    pub fn broker_stats(&self) -> Option<BrokerStats> {
        self.bridge.as_ref().map(Bridge::stats)
    }

    fn all_topics(&self) -> Vec<(std::sync::Arc<str>, Arc<Mutex<Topic>>)> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Queues the broker unsubscribe of a bridged topic about to leave the map.
    pub(super) fn unlink(&self, t: &Topic) {
        if t.link.as_ref().is_some_and(|l| !matches!(l.state, LinkState::Idle)) {
            let mut wakers = Vec::new();
            self.bridge_ref().push(
                BrokerCommand::Unsubscribe { topic: t.key.name.clone() },
                false,
                &mut wakers,
            );
            for w in wakers {
                w.wake();
            }
        }
    }
}
