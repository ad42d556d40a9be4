//! Pub/sub: topics, subscriptions, per-topic sequence numbers and replay, fan-out into the
//! bounded outboxes of connections.
//!
//! A [`Hub`] is shared by every connection of a server across threads without a runtime:
//! publishing locks one topic, encodes the notification once, and pushes a shared frame into
//! each subscriber's [`Outbox`], waking connections whose outbox was empty.
//!
//! A subscription may carry a [`Filter`]: the hub runs it on each publish and queues the
//! shared frame only for the subscriptions it matches, so a filter never costs an encoding.
//! A connection's first subscription to a topic has the topic's subscription id; a further
//! one (with another filter) gets the id of another *channel* of the topic, whose frame is
//! encoded once per publish for all the connections that hold that channel: a publish costs
//! one encoding per channel in use, never one per subscriber. Sequence numbers stay per
//! topic, so a filtered subscription sees increasing numbers with holes where messages did
//! not match; replay with `since` is filtered the same way, and `lagged` and `gap` notices
//! name only what was dropped or lost.
//!
//! With a broker (`ServerBuilder::broker`), topics covered by [`BridgeConfig::topics`] are
//! shared with other servers: the broker numbers their messages and every server delivers
//! them in that order (see the bridge's [`BrokerCommand`] and [`BrokerEvent`]).

mod bridge;
mod eth;
mod filter;
mod outbox;
mod policy;

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::task::Waker;

pub use bridge::{
    BridgeConfig, BridgedTopics, BrokerCommand, BrokerDriver, BrokerEvent, BrokerLink,
    BrokerRunning, PublishTicket, Sequenced,
};
pub use eth::LogFilter;
pub use filter::{Filter, Payload, SubscriptionFilter};
pub use outbox::{Delivery, Outbox, OutboxItem, OutboxLimits, SlowConsumer, TopicKey};
pub use policy::{
    SubscribeError, TopicPattern, TopicPolicy, check_policy, topic_kind, validate_topic,
};
use serde::Serialize;

use crate::auth::Principal;
use crate::ws::{MessageKind, SharedFrame};

/// Method names of the subscription protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionMethods {
    /// Subscribes: `subscribe(topic[, since[, epoch]])`.
    pub subscribe: String,
    /// Unsubscribes: `unsubscribe(subscription_id)` → `true`/`false`.
    pub unsubscribe: String,
    /// The notification method carrying published values.
    pub notification: String,
    /// The notice for notifications dropped from a slow consumer's outbox.
    pub lagged: String,
    /// The notice for a resubscription whose `since` is older than the replay buffer.
    pub gap: String,
    /// The notice that a broker-bridged topic's epoch changed (the broker lost its history):
    /// sequence numbers start over.
    pub reset: String,
    /// `eth_subscribe` style: the subscribe result is the bare subscription id, and the
    /// first param names the topic (`["newHeads"]`). wsrpc's resume extension: a second
    /// param with a `since` key (`["newHeads", {"since": N|null, "epoch": E}]`) replays as
    /// `since` does and answers with the full `{subscription, topic, seq, epoch}` object.
    pub eth_style: bool,
}

impl Default for SubscriptionMethods {
    fn default() -> Self {
        Self {
            subscribe: "subscribe".into(),
            unsubscribe: "unsubscribe".into(),
            notification: "subscription".into(),
            lagged: "lagged".into(),
            gap: "gap".into(),
            reset: "reset".into(),
            eth_style: false,
        }
    }
}

impl SubscriptionMethods {
    /// `eth_subscribe` / `eth_unsubscribe` / `eth_subscription`, as Ethereum clients expect.
    pub fn eth() -> Self {
        Self {
            subscribe: "eth_subscribe".into(),
            unsubscribe: "eth_unsubscribe".into(),
            notification: "eth_subscription".into(),
            lagged: "eth_subscriptionLagged".into(),
            gap: "eth_subscriptionGap".into(),
            reset: "eth_subscriptionReset".into(),
            eth_style: true,
        }
    }
}

/// Hub configuration; the defaults are in brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubConfig {
    /// Most subscriptions per connection \[50\].
    pub max_subscriptions: usize,
    /// Most subscriptions per connection to topics of one kind (the name up to `:`),
    /// e.g. `[("intent", 20), ("user", 10)]`.
    pub kind_limits: Vec<(String, usize)>,
    /// Who may subscribe to what; the first matching pattern decides, public otherwise.
    pub policies: Vec<(TopicPattern, TopicPolicy)>,
    /// Messages kept per topic for resubscription with `since` \[256\].
    pub replay_capacity: usize,
    /// Bounds of each connection's outbox [1024 messages, 4 MiB, drop oldest].
    pub outbox: OutboxLimits,
    /// Longest topic name \[128\].
    pub max_topic_len: usize,
    /// Topics kept \[10,000\]. A new topic beyond it evicts the one without subscribers idle
    /// longest (with its replay buffer); when every topic has subscribers, new topics are
    /// refused (subscribing answers -32005 `{"limit":"topics"}`, publishing reaches no one).
    pub max_topics: usize,
    /// Method names.
    pub methods: SubscriptionMethods,
    /// Which topics go through the broker, when the server has one.
    pub bridge: BridgeConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: 50,
            kind_limits: Vec::new(),
            policies: Vec::new(),
            replay_capacity: 256,
            outbox: OutboxLimits::default(),
            max_topic_len: 128,
            max_topics: 10_000,
            methods: SubscriptionMethods::default(),
            bridge: BridgeConfig::default(),
        }
    }
}

/// Why a publish failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic name is not valid.
    InvalidTopic(SubscribeError),
    /// The value could not be serialized, or the given text is not JSON.
    Json(serde_json::Error),
    /// The topic goes through a broker that is down: nothing was published (delivering it
    /// locally would fork the topic's numbering between instances).
    BrokerUnavailable,
    /// The broker refused the publish, or went away before it answered (then the message
    /// may have been published).
    BrokerFailed(String),
    /// Too many publishes are waiting for the broker's answer.
    Backlog {
        /// The configured bound ([`BridgeConfig::max_in_flight`]).
        max: usize,
    },
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidTopic(e) => write!(f, "cannot publish: {e}"),
            Self::Json(e) => write!(f, "cannot publish: {e}"),
            Self::BrokerUnavailable => f.write_str("cannot publish: the broker is unavailable"),
            Self::BrokerFailed(why) => write!(f, "publish failed at the broker: {why}"),
            Self::Backlog { max } => {
                write!(f, "cannot publish: {max} publishes already wait for the broker")
            }
        }
    }
}

impl PublishError {
    /// The JSON-RPC error a `publish` method answers with: -32602 for a bad topic or value,
    /// -32002 when the broker is unavailable or failed, -32005 for a backlog.
    pub fn to_rpc_error(&self) -> crate::rpc::RpcError {
        use crate::rpc::RpcError;
        use crate::rpc::error::{LIMIT_EXCEEDED, UNAVAILABLE};
        match self {
            Self::InvalidTopic(_) | Self::Json(_) => RpcError::invalid_params(self),
            Self::BrokerUnavailable => RpcError::new(UNAVAILABLE, "Broker unavailable")
                .with_data(serde_json::json!({ "broker": "down" })),
            Self::BrokerFailed(why) => RpcError::new(UNAVAILABLE, "Broker failed")
                .with_data(serde_json::json!({ "broker": "failed", "detail": why })),
            Self::Backlog { max } => {
                RpcError::new(LIMIT_EXCEEDED, "Limit exceeded: publishes waiting for the broker")
                    .with_data(serde_json::json!({ "limit": "broker_in_flight", "max": max }))
            }
        }
    }
}

impl std::error::Error for PublishError {}

/// What a publish did.
///
/// On a topic bridged through a broker the broker numbers the message, so the publish
/// returns as soon as it is queued for the broker, with `seq` 0 and the [`PublishTicket`] in
/// `pending`; [`wait`](Self::wait) (or awaiting the ticket) gives the number.
#[derive(Debug)]
#[non_exhaustive]
pub struct Published {
    /// The sequence number it got (0 while `pending`).
    pub seq: u64,
    /// The epoch the number counts in (0 while `pending`).
    pub epoch: u64,
    /// Subscribers on this server it was queued for (0 while `pending`: they receive it when
    /// it comes back from the broker, like everyone else's).
    pub subscribers: usize,
    /// The broker's answer to come, for a bridged topic.
    pub pending: Option<PublishTicket>,
}

impl Published {
    /// The message's sequence number and epoch, blocking until the broker answers for a
    /// bridged topic.
    pub fn wait(self) -> Result<Sequenced, PublishError> {
        match self.pending {
            Some(ticket) => ticket.wait(),
            None => Ok(Sequenced { seq: self.seq, epoch: self.epoch }),
        }
    }
}

/// A new subscription.
#[derive(Clone, Debug)]
pub struct Subscribed {
    /// The topic and the subscription id.
    pub key: Arc<TopicKey>,
    /// The topic's latest sequence number at the time of subscribing.
    pub seq: u64,
    /// The hub's epoch (a bridged topic's: the broker's); sequence numbers restart when it
    /// changes (a server restart, a broker that lost its history).
    pub epoch: u64,
    /// A bridged topic is not in step with the broker yet: `seq` and `epoch` are 0, the
    /// outbox gets [`OutboxItem::Subscribed`] (or `SubscribeFailed`) when it is, then the
    /// replay.
    pub pending: bool,
}

/// Counters of a hub, from [`Hub::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HubStats {
    /// Topics alive.
    pub topics: usize,
    /// Subscriptions alive.
    pub subscriptions_active: u64,
    /// Subscriptions ever made.
    pub subscriptions_total: u64,
    /// Messages published.
    pub published: u64,
    /// Notifications queued into outboxes.
    pub deliveries: u64,
    /// Notifications dropped from slow consumers' outboxes.
    pub dropped: u64,
}

/// One subscription of one connection to a topic.
#[derive(Clone, Debug)]
struct Subscriber {
    outbox: Arc<Outbox>,
    /// Its channel's key: the subscription id it sees.
    key: Arc<TopicKey>,
    /// 0: the topic's own key; others are in `Topic::channels`.
    channel: usize,
    filter: Option<SubscriptionFilter>,
}

impl Subscriber {
    /// Whether it is `outbox`'s subscription with key `key`.
    fn is(&self, outbox: &Outbox, key: &TopicKey) -> bool {
        self.outbox.id() == outbox.id() && std::ptr::eq(&*self.key, key)
    }

    /// Whether it is `outbox`'s subscription without a filter.
    fn is_plain_of(&self, outbox: &Outbox) -> bool {
        self.outbox.id() == outbox.id() && self.filter.is_none()
    }
}

#[derive(Debug)]
struct Topic {
    key: Arc<TopicKey>,
    /// Keys of the topic's channels after the first (`key`), made on first use: a
    /// connection's second subscription to the topic is on channel 1, and so on.
    channels: Vec<Arc<TopicKey>>,
    seq: u64,
    subscribers: Vec<Subscriber>,
    replay: VecDeque<Delivery>,
    /// In the hub's idle queue (at most once), as an eviction candidate.
    idle_queued: bool,
    /// Removed from the map: whoever still holds it looks the name up again.
    dead: bool,
    /// Set for a topic shared through the broker.
    link: Option<Box<bridge::TopicLink>>,
}

impl Topic {
    /// Whether someone is subscribed (or waiting to be).
    fn in_use(&self) -> bool {
        !self.subscribers.is_empty() || self.link.as_ref().is_some_and(|l| l.has_pending())
    }

    /// Whether the topic may leave the map: unused, and for a local topic without replay
    /// (a bridged topic's replay is stale once the broker channel is left).
    fn removable(&self) -> bool {
        !self.in_use() && (self.link.is_some() || self.replay.is_empty())
    }
}

/// A topic that had no subscribers when queued: an eviction candidate. Stale when the map
/// holds another topic (or none) under the name, or when it has subscribers again.
type IdleEntry = (Arc<str>, Weak<Mutex<Topic>>);

/// The pub/sub hub of a server. `Send + Sync`: publish from any thread.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    epoch: u64,
    topics: RwLock<HashMap<Arc<str>, Arc<Mutex<Topic>>>>,
    /// Topics that were without subscribers, oldest first: evicting one at `max_topics` takes
    /// amortized O(1), never a scan of every topic under the write lock.
    idle: Mutex<VecDeque<IdleEntry>>,
    /// The highest sequence number of any removed topic: a topic made again under an old name
    /// starts above it, so a resubscription with `since` gets a gap notice, never a reused
    /// number.
    seq_floor: AtomicU64,
    next_topic: AtomicU64,
    next_outbox: AtomicU64,
    subscriptions_active: AtomicU64,
    subscriptions_total: AtomicU64,
    published: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    /// Set when the server has a broker.
    bridge: Option<bridge::Bridge>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub; `epoch` identifies this run (sequence numbers start over when it changes), so
    /// seed it from something that differs between restarts, such as the start time.
    pub fn new(config: HubConfig, epoch: u64) -> Self {
        Self::build(config, epoch, false)
    }

    /// A hub whose topics covered by `config.bridge` go through a broker, driven through the
    /// [`BrokerLink`] the service gives the driver. The broker counts as down until the
    /// driver reports it up.
    pub(crate) fn with_bridge(config: HubConfig, epoch: u64) -> Self {
        Self::build(config, epoch, true)
    }

    fn build(config: HubConfig, epoch: u64, bridged: bool) -> Self {
        let bridge = bridged.then(|| bridge::Bridge::new(config.bridge.clone(), config.max_topics));
        Self {
            config,
            epoch,
            topics: RwLock::new(HashMap::new()),
            idle: Mutex::new(VecDeque::new()),
            seq_floor: AtomicU64::new(0),
            next_topic: AtomicU64::new(1),
            next_outbox: AtomicU64::new(1),
            subscriptions_active: AtomicU64::new(0),
            subscriptions_total: AtomicU64::new(0),
            published: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            bridge,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// This run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A new outbox for a connection.
    pub fn new_outbox(&self) -> Arc<Outbox> {
        Arc::new(Outbox::new(self.next_outbox.fetch_add(1, Ordering::Relaxed), self.config.outbox))
    }

    /// Publishes `value` to `topic`: serialized once, queued for every subscriber, kept for
    /// replay.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Published, PublishError> {
        let json = serde_json::to_vec(value).map_err(PublishError::Json)?;
        self.publish_serialized(topic, &json)
    }

    /// Publishes JSON text as is (checked to be JSON).
    pub fn publish_json(&self, topic: &str, json: &str) -> Result<Published, PublishError> {
        serde_json::from_str::<serde::de::IgnoredAny>(json).map_err(PublishError::Json)?;
        self.publish_serialized(topic, json.as_bytes())
    }

    fn publish_serialized(&self, topic: &str, json: &[u8]) -> Result<Published, PublishError> {
        validate_topic(topic, self.config.max_topic_len).map_err(PublishError::InvalidTopic)?;
        if let Some(bridge) = &self.bridge {
            if bridge.config.topics.covers(topic) {
                return self.publish_bridged(bridge, topic, json.to_vec());
            }
        }
        let name = topic;
        let mut wakers = Vec::new();
        let published = loop {
            let Some(topic) = self.topic(name, true) else {
                // A new topic while every kept one has subscribers: nobody can receive it.
                self.published.fetch_add(1, Ordering::Relaxed);
                return Ok(Published { seq: 0, epoch: self.epoch, subscribers: 0, pending: None });
            };
            let mut t = lock(&topic);
            if t.dead {
                continue;
            }
            t.seq += 1;
            let t = &mut *t;
            let n = self.fan_out(&t.key, &t.subscribers, &mut t.replay, t.seq, json, &mut wakers);
            break Published { seq: t.seq, epoch: self.epoch, subscribers: n, pending: None };
        };
        // Wake outside the topic lock: waking may be a syscall (a thread unpark).
        for w in wakers {
            w.wake();
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        self.deliveries.fetch_add(published.subscribers as u64, Ordering::Relaxed);
        Ok(published)
    }

    /// Queues notification `seq` carrying `json` for every subscriber whose filter matches
    /// and keeps it for replay; returns how many subscribers it was queued for.
    // Inlined: the local publish path must not pay a call with seven arguments for sharing
    // this loop with the bridge.
    #[inline(always)]
    fn fan_out(
        &self,
        key: &Arc<TopicKey>,
        subscribers: &[Subscriber],
        replay: &mut VecDeque<Delivery>,
        seq: u64,
        json: &[u8],
        wakers: &mut Vec<Waker>,
    ) -> usize {
        let delivery = self.delivery(key, seq, json);
        let payload = Payload::new(json);
        // Frames of the other channels (dense indices), each encoded once, when a subscriber
        // of it matches; empty (no allocation) while only channel 0 is in use.
        let mut channels: Vec<Option<Delivery>> = Vec::new();
        let (mut queued, mut dropped) = (0, 0);
        for s in subscribers {
            if s.filter.as_ref().is_some_and(|f| !f.matches(&payload)) {
                continue;
            }
            let d = if s.channel == 0 {
                delivery.clone()
            } else {
                if channels.len() < s.channel {
                    channels.resize(s.channel, None);
                }
                channels[s.channel - 1]
                    .get_or_insert_with(|| self.delivery(&s.key, seq, json))
                    .clone()
            };
            let (waker, n) = s.outbox.push(d);
            wakers.extend(waker);
            dropped += n;
            queued += 1;
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if self.config.replay_capacity > 0 {
            if replay.len() == self.config.replay_capacity {
                replay.pop_front();
            }
            replay.push_back(delivery);
        }
        queued
    }

    /// Notification `seq` carrying `json` under `key`, encoded once.
    fn delivery(&self, key: &Arc<TopicKey>, seq: u64, json: &[u8]) -> Delivery {
        let (payload, result_at) = self.notification(key, seq, json);
        let frame = SharedFrame::new(MessageKind::Text, &payload);
        Delivery { topic: key.clone(), seq, frame, result_at }
    }

    /// `d` as `s` receives it: `None` when its filter does not match, else the same frame
    /// or, on another channel, the message encoded under that channel's key.
    fn for_subscriber(&self, s: &Subscriber, d: &Delivery) -> Option<Delivery> {
        if s.filter.as_ref().is_some_and(|f| !f.matches(&Payload::new(d.result()))) {
            return None;
        }
        Some(if s.channel == 0 { d.clone() } else { self.delivery(&s.key, d.seq, d.result()) })
    }

    /// A new subscription of `outbox` to `t`, on the first channel it does not use yet
    /// (`pending`: subscriptions still waiting for the broker, which hold channels too).
    fn new_subscriber<'p>(
        &self,
        t: &mut Topic,
        pending: impl Iterator<Item = &'p Subscriber> + Clone,
        outbox: &Arc<Outbox>,
        filter: Option<SubscriptionFilter>,
    ) -> Subscriber {
        let holds = |s: &Subscriber, c: usize| s.outbox.id() == outbox.id() && s.channel == c;
        let used = |c: usize| {
            t.subscribers.iter().any(|s| holds(s, c)) || pending.clone().any(|s| holds(s, c))
        };
        let channel = (0..).find(|c| !used(*c)).expect("a free channel");
        while t.channels.len() < channel {
            let serial = self.next_topic.fetch_add(1, Ordering::Relaxed);
            t.channels.push(Arc::new(TopicKey {
                name: t.key.name.clone(),
                subscription: format!("0x{serial:x}").into(),
            }));
        }
        let key = if channel == 0 { t.key.clone() } else { t.channels[channel - 1].clone() };
        Subscriber { outbox: outbox.clone(), key, channel, filter }
    }

    /// `{"jsonrpc":"2.0","method":M,"params":{"subscription":S,"topic":T,"seq":N,"result":V}}`,
    /// and where `V` starts in it.
    fn notification(&self, key: &TopicKey, seq: u64, json: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(json.len() + 128);
        let mut result_at = 0;
        crate::rpc::message::write_notification(&mut out, &self.config.methods.notification, |o| {
            o.extend_from_slice(b"{\"subscription\":");
            let _ = serde_json::to_writer(&mut *o, &*key.subscription);
            o.extend_from_slice(b",\"topic\":");
            let _ = serde_json::to_writer(&mut *o, &*key.name);
            let _ = write!(o, ",\"seq\":{seq},\"result\":");
            result_at = o.len();
            o.extend_from_slice(json);
            o.push(b'}');
        });
        (out, result_at)
    }

    /// Writes a `lagged` or `gap` notice for `key`, missed `from..=to`.
    pub(crate) fn write_notice(
        &self,
        out: &mut Vec<u8>,
        lagged: bool,
        key: &TopicKey,
        from: u64,
        to: u64,
    ) {
        let method = if lagged { &self.config.methods.lagged } else { &self.config.methods.gap };
        crate::rpc::message::write_notification(out, method, |o| {
            o.extend_from_slice(b"{\"subscription\":");
            let _ = serde_json::to_writer(&mut *o, &*key.subscription);
            o.extend_from_slice(b",\"topic\":");
            let _ = serde_json::to_writer(&mut *o, &*key.name);
            let _ = write!(o, ",\"missed_from\":{from},\"missed_to\":{to}}}");
        });
    }

    /// Writes a `reset` notice (`epoch` is the topic's new epoch), or with `stalled_from` a
    /// `lagged` notice without an end: the broker went away, what follows `stalled_from - 1`
    /// arrives when it is back, or is reported as a gap.
    pub(crate) fn write_link_notice(
        &self,
        out: &mut Vec<u8>,
        key: &TopicKey,
        epoch: Option<u64>,
        stalled_from: Option<u64>,
    ) {
        let methods = &self.config.methods;
        let method = if stalled_from.is_some() { &methods.lagged } else { &methods.reset };
        crate::rpc::message::write_notification(out, method, |o| {
            o.extend_from_slice(b"{\"subscription\":");
            let _ = serde_json::to_writer(&mut *o, &*key.subscription);
            o.extend_from_slice(b",\"topic\":");
            let _ = serde_json::to_writer(&mut *o, &*key.name);
            if let Some(epoch) = epoch {
                let _ = write!(o, ",\"epoch\":{epoch}");
            }
            if let Some(from) = stalled_from {
                let _ = write!(o, ",\"missed_from\":{from},\"broker\":\"down\"");
            }
            o.push(b'}');
        });
    }

    /// The topic named `name`; with `create`, made when missing. `None` when it is missing
    /// and either `create` is false or `max_topics` topics exist and all have subscribers.
    fn topic(&self, name: &str, create: bool) -> Option<Arc<Mutex<Topic>>> {
        if let Some(t) = self.topics.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Some(t.clone());
        }
        if !create {
            return None;
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = topics.get(name) {
            return Some(t.clone());
        }
        // Topics nobody listens to are only kept for their replay buffers: at the cap, the
        // one idle longest goes (a later resubscription gets a gap notice), so names invented
        // by publishers or clients cannot grow memory. When every topic has subscribers, no
        // new one is made.
        if topics.len() >= self.config.max_topics && !self.evict_one(&mut topics) {
            log::debug!(target: "wsrpc::hub", "topic {name} refused: {} topics, all subscribed", topics.len());
            return None;
        }
        let serial = self.next_topic.fetch_add(1, Ordering::Relaxed);
        let key: Arc<str> = name.into();
        let link = self
            .bridge
            .as_ref()
            .filter(|b| b.config.topics.covers(name))
            .map(|_| Box::new(bridge::TopicLink::new()));
        let t = Arc::new(Mutex::new(Topic {
            key: Arc::new(TopicKey {
                name: key.clone(),
                subscription: format!("0x{serial:x}").into(),
            }),
            channels: Vec::new(),
            seq: self.seq_floor.load(Ordering::Acquire),
            subscribers: Vec::new(),
            replay: VecDeque::new(),
            idle_queued: true,
            dead: false,
            link,
        }));
        let mut idle = lock(&self.idle);
        idle.push_back((key.clone(), Arc::downgrade(&t)));
        // Entries of topics gone from the map are dropped once they outnumber the cap.
        if idle.len() > 2 * self.config.max_topics + 64 {
            idle.retain(|(name, weak)| {
                topics.get(name).is_some_and(|t| std::ptr::eq(Arc::as_ptr(t), weak.as_ptr()))
            });
        }
        drop(idle);
        topics.insert(key, t.clone());
        Some(t)
    }

    /// Marks a topic about to leave the map (the caller holds the map's write lock).
    fn retire(&self, t: &mut Topic) {
        t.dead = true;
        if t.link.is_some() {
            // The broker numbers it; only its channel subscription is left to end.
            self.unlink(t);
        } else {
            self.seq_floor.fetch_max(t.seq, Ordering::AcqRel);
        }
    }

    /// Removes the topic named `name` when nobody uses it any more (a look under the read
    /// lock first: mostly it is still used).
    fn remove_if_unused(&self, name: &str) {
        let unused = |topics: &HashMap<Arc<str>, Arc<Mutex<Topic>>>| {
            topics.get(name).is_some_and(|t| lock(t).removable())
        };
        if unused(&self.topics.read().unwrap_or_else(|p| p.into_inner())) {
            self.remove_unused(name);
        }
    }

    /// Removes the topic named `name` if nobody uses it, under the map's write lock.
    fn remove_unused(&self, name: &str) {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = topics.get(name) {
            let mut g = lock(t);
            if g.removable() {
                self.retire(&mut g);
                drop(g);
                topics.remove(name);
            }
        }
    }

    /// Removes the topic idle longest; false when every topic has subscribers.
    fn evict_one(&self, topics: &mut HashMap<Arc<str>, Arc<Mutex<Topic>>>) -> bool {
        loop {
            // Popped without holding a topic lock (the order is topic, then idle queue).
            let Some((name, weak)) = lock(&self.idle).pop_front() else { return false };
            let Some(t) = topics.get(&name) else { continue };
            if !std::ptr::eq(Arc::as_ptr(t), weak.as_ptr()) {
                continue;
            }
            let mut g = lock(t);
            if !g.in_use() {
                self.retire(&mut g);
                drop(g);
                topics.remove(&name);
                log::debug!(target: "wsrpc::hub", "evicted topic {name} (no subscribers)");
                return true;
            }
            // Subscribed again: queued anew when its last subscriber leaves.
            g.idle_queued = false;
        }
    }

    /// Checks the name and the policy for `principal`.
    pub fn authorize(&self, topic: &str, principal: &Principal) -> Result<(), SubscribeError> {
        validate_topic(topic, self.config.max_topic_len)?;
        check_policy(&self.config.policies, topic, principal)
    }

    /// Subscribes `outbox` to `topic` without a filter (idempotent: a second call gives the
    /// same subscription). With `since = Some((seq, epoch))` the messages after `seq` still
    /// in the replay buffer are queued first, in order, after a gap notice when some are
    /// already gone; a different `epoch` (the server restarted) replays the whole buffer.
    ///
    /// The caller checks [`authorize`](Self::authorize) and the per-connection limits first.
    pub fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        topic: &str,
        since: Option<(u64, Option<u64>)>,
    ) -> Result<Subscribed, SubscribeError> {
        self.subscribe_with(outbox, topic, since, None)
    }

    /// Subscribes `outbox` to what `filter` matches of `topic`: a new subscription each call,
    /// with its own id when `outbox` already has one to the topic. Replay with `since` is
    /// filtered too. See [`subscribe`](Self::subscribe).
    pub fn subscribe_filtered(
        &self,
        outbox: &Arc<Outbox>,
        topic: &str,
        since: Option<(u64, Option<u64>)>,
        filter: SubscriptionFilter,
    ) -> Result<Subscribed, SubscribeError> {
        self.subscribe_with(outbox, topic, since, Some(filter))
    }

    fn subscribe_with(
        &self,
        outbox: &Arc<Outbox>,
        topic: &str,
        since: Option<(u64, Option<u64>)>,
        filter: Option<SubscriptionFilter>,
    ) -> Result<Subscribed, SubscribeError> {
        let mut wakers = Vec::new();
        let subscribed = loop {
            let t = self.topic(topic, true).ok_or_else(|| SubscribeError::TooMany {
                limit: "topics".into(),
                max: self.config.max_topics,
            })?;
            let mut t = lock(&t);
            // Removed between the lookup and the lock: subscribing to it would reach no one.
            if t.dead {
                continue;
            }
            if t.link.is_some() {
                let mut after = bridge::After::default();
                let r = self.subscribe_bridged(&mut t, outbox, since, filter, &mut after);
                drop(t);
                for w in after.wakers {
                    w.wake();
                }
                if r.is_err() {
                    self.remove_if_unused(topic);
                }
                return r;
            }
            let known = match &filter {
                None => t.subscribers.iter().find(|s| s.is_plain_of(outbox)).cloned(),
                Some(_) => None,
            };
            let sub = match known {
                Some(sub) => sub,
                None => {
                    let sub = self.new_subscriber(&mut t, std::iter::empty(), outbox, filter);
                    t.subscribers.push(sub.clone());
                    self.subscriptions_active.fetch_add(1, Ordering::Relaxed);
                    self.subscriptions_total.fetch_add(1, Ordering::Relaxed);
                    sub
                }
            };
            if let Some((since, epoch)) = since {
                let since = if epoch.is_some_and(|e| e != self.epoch) { 0 } else { since };
                let oldest = t.replay.front().map_or(t.seq + 1, |d| d.seq);
                // `since < t.seq` first: `since + 1` cannot overflow after it.
                if since < t.seq && since + 1 < oldest {
                    wakers.extend(outbox.push_gap(sub.key.clone(), since + 1, oldest - 1));
                }
                for d in t.replay.iter().filter(|d| d.seq > since) {
                    let Some(d) = self.for_subscriber(&sub, d) else { continue };
                    let (waker, dropped) = outbox.push(d);
                    wakers.extend(waker);
                    self.dropped.fetch_add(dropped, Ordering::Relaxed);
                }
            }
            break Subscribed { key: sub.key, seq: t.seq, epoch: self.epoch, pending: false };
        };
        for w in wakers {
            w.wake();
        }
        Ok(subscribed)
    }

    /// Removes `outbox`'s subscription `key` (as [`Subscribed::key`] gave it); false when
    /// there was none.
    pub fn unsubscribe(&self, outbox: &Outbox, key: &TopicKey) -> bool {
        let Some(topic_arc) = self.topic(&key.name, false) else { return false };
        let (removed, unused) = {
            let mut t = lock(&topic_arc);
            let before = t.subscribers.len();
            t.subscribers.retain(|s| !s.is(outbox, key));
            let was_pending = t.link.as_mut().is_some_and(|l| l.remove_pending(outbox, key));
            // No publish reaches this subscription any more (the topic lock orders them); drop
            // what is still queued so it is never delivered after the unsubscribe.
            outbox.purge(key);
            let topic_idle = !t.in_use();
            if topic_idle && !t.idle_queued {
                t.idle_queued = true;
                let entry = (t.key.name.clone(), Arc::downgrade(&topic_arc));
                lock(&self.idle).push_back(entry);
            }
            (t.subscribers.len() < before || was_pending, t.removable())
        };
        if removed {
            self.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
        }
        if unused {
            // Topics that only subscribers created go away with them, so names invented by
            // clients cannot accumulate.
            self.remove_unused(&key.name);
        }
        removed
    }

    /// The epoch of `topic`'s sequence numbers: the broker's for a bridged topic in step with
    /// it, else the hub's.
    pub fn epoch_of(&self, topic: &str) -> u64 {
        self.topic(topic, false)
            .and_then(|t| lock(&t).link.as_ref().map(|l| l.epoch()))
            .map_or(self.epoch, |e| e.unwrap_or(0))
    }

    /// Topics and subscriptions alive now, and messages, deliveries and drops counted so far
    /// (`service.hub().stats()`; the metrics snapshot reports the drops as `lagged_drops`).
    pub fn stats(&self) -> HubStats {
        HubStats {
            topics: self.topics.read().unwrap_or_else(|p| p.into_inner()).len(),
            subscriptions_active: self.subscriptions_active.load(Ordering::Relaxed),
            subscriptions_total: self.subscriptions_total.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}
