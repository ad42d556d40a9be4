//! A connection's bounded queue of notifications, filled by publishers on any thread and
//! drained by the connection, which it wakes through a `std::task::Waker`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use super::SubscribeError;
use crate::ws::SharedFrame;

/// A topic as its notifications name it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TopicKey {
    /// The topic name.
    pub name: Arc<str>,
    /// The subscription id clients see for this topic.
    pub subscription: Arc<str>,
}

/// One published message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its topic.
    pub topic: Arc<TopicKey>,
    /// Its per-topic sequence number.
    pub seq: u64,
    /// The notification, encoded once as a WebSocket frame and shared by all subscribers.
    pub frame: SharedFrame,
}

impl Delivery {
    fn size(&self) -> usize {
        self.frame.wire_bytes().len()
    }
}

/// What a slow consumer's full outbox does with the next notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Drop the oldest queued notifications and tell the client which sequence numbers it
    /// missed (a `lagged` notice).
    DropOldest,
    /// Stop delivering and close the connection with 1008.
    Close,
}

/// Bounds of one outbox (DESIGN.md: 1024 messages and 4 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most queued notifications.
    pub max_messages: usize,
    /// Most queued bytes.
    pub max_bytes: usize,
    /// What happens when a notification does not fit.
    pub slow_consumer: SlowConsumer,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self { max_messages: 1024, max_bytes: 4 << 20, slow_consumer: SlowConsumer::DropOldest }
    }
}

/// What a connection takes out of its outbox.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum OutboxItem {
    /// A notification to send.
    Notification(Delivery),
    /// Notifications `from..=to` of `topic` were dropped because the client read too slowly.
    Lagged {
        /// The topic.
        topic: Arc<TopicKey>,
        /// First missed sequence number.
        from: u64,
        /// Last missed sequence number.
        to: u64,
    },
    /// A resubscription asked for messages older than the replay buffer holds: `from..=to`
    /// are gone.
    Gap {
        /// The topic.
        topic: Arc<TopicKey>,
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
    },
    /// The outbox overflowed under [`SlowConsumer::Close`]: close the connection with 1008.
    Overflowed,
    /// A subscription to a broker-bridged topic that waited for the broker is established:
    /// answer the subscribe call (what follows for the topic is its replay, then live
    /// notifications).
    Subscribed {
        /// The topic.
        topic: Arc<TopicKey>,
        /// The topic's latest sequence number.
        seq: u64,
        /// The epoch the sequence numbers count in.
        epoch: u64,
    },
    /// A subscription that waited for the broker was refused: answer the subscribe call with
    /// this error; the subscription is gone.
    SubscribeFailed {
        /// The topic.
        topic: Arc<TopicKey>,
        /// Why.
        error: SubscribeError,
    },
    /// The topic's epoch changed (the broker lost its history): sequence numbers start over
    /// in `epoch`; what the client kept of the old epoch is not continued.
    Reset {
        /// The topic.
        topic: Arc<TopicKey>,
        /// The new epoch.
        epoch: u64,
    },
    /// The broker went away: notifications from `from` on are held up until it is back,
    /// then delivered from its history or reported as a gap.
    Stalled {
        /// The topic.
        topic: Arc<TopicKey>,
        /// The first sequence number that may be late or missing.
        from: u64,
    },
}

/// Notices about a subscription itself, never dropped for a slow consumer (a dropped
/// answer would leave a call unanswered).
#[derive(Clone, Debug)]
pub(crate) enum Control {
    Subscribed { topic: Arc<TopicKey>, seq: u64, epoch: u64 },
    SubscribeFailed { topic: Arc<TopicKey>, error: SubscribeError },
    Reset { topic: Arc<TopicKey>, epoch: u64 },
    Stalled { topic: Arc<TopicKey>, from: u64 },
}

impl Control {
    fn topic(&self) -> &Arc<TopicKey> {
        match self {
            Self::Subscribed { topic, .. }
            | Self::SubscribeFailed { topic, .. }
            | Self::Reset { topic, .. }
            | Self::Stalled { topic, .. } => topic,
        }
    }

    fn into_item(self) -> OutboxItem {
        match self {
            Self::Subscribed { topic, seq, epoch } => OutboxItem::Subscribed { topic, seq, epoch },
            Self::SubscribeFailed { topic, error } => OutboxItem::SubscribeFailed { topic, error },
            Self::Reset { topic, epoch } => OutboxItem::Reset { topic, epoch },
            Self::Stalled { topic, from } => OutboxItem::Stalled { topic, from },
        }
    }
}

#[derive(Debug)]
enum Queued {
    Delivery(Delivery),
    Gap { topic: Arc<TopicKey>, from: u64, to: u64 },
    Control(Control),
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Queued>,
    bytes: usize,
    /// Control notices taken out of the queue to make room, oldest first; sent before
    /// anything else (they were older than all of it).
    control: VecDeque<Control>,
    /// Dropped ranges not yet reported, oldest first.
    lagged: Vec<(Arc<TopicKey>, u64, u64)>,
    overflowed: bool,
    closed: bool,
    waker: Option<Waker>,
}

/// Most distinct lag ranges kept; beyond it ranges of the same topic are merged (reporting
/// a wider miss is safe, losing one is not).
const MAX_LAG_RANGES: usize = 64;

/// The bounded notification queue of one connection. Shared (`Arc`) between the hub, which
/// pushes from any thread, and the connection, which drains it.
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    limits: OutboxLimits,
    inner: Mutex<Inner>,
}

impl Outbox {
    /// An empty outbox; `id` must be unique within its hub.
    pub fn new(id: u64, limits: OutboxLimits) -> Self {
        Self { id, limits, inner: Mutex::new(Inner::default()) }
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the waker to wake when the outbox goes from empty to non-empty.
    pub fn set_waker(&self, waker: &Waker) {
        let mut inner = self.lock();
        match &inner.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => inner.waker = Some(waker.clone()),
        }
    }

    /// Queues a delivery; returns the waker to wake (after the caller drops its own locks)
    /// when the connection should look, and how many notifications were dropped for a slow
    /// consumer to make room.
    pub(crate) fn push(&self, delivery: Delivery) -> (Option<Waker>, u64) {
        let mut dropped = 0;
        let waker = self.push_counting(delivery, &mut dropped);
        (waker, dropped)
    }

    fn push_counting(&self, delivery: Delivery, dropped: &mut u64) -> Option<Waker> {
        let mut inner = self.lock();
        if inner.closed || inner.overflowed {
            return None;
        }
        let was_empty = inner.is_empty();
        let size = delivery.size();
        let full = |i: &Inner| {
            i.queue.len() >= self.limits.max_messages || i.bytes + size > self.limits.max_bytes
        };
        if full(&inner) {
            match self.limits.slow_consumer {
                SlowConsumer::Close => {
                    *dropped += inner.queue.len() as u64 + 1;
                    inner.overflowed = true;
                    inner.queue.clear();
                    inner.bytes = 0;
                    log::debug!(target: "wsrpc::hub", "outbox overflow outbox={} policy=close", self.id);
                    return inner.waker.clone();
                }
                SlowConsumer::DropOldest => {
                    while full(&inner) {
                        match inner.queue.pop_front() {
                            Some(Queued::Delivery(old)) => {
                                *dropped += 1;
                                inner.bytes -= old.size();
                                note_lag(&mut inner.lagged, &old.topic, old.seq, old.seq);
                            }
                            Some(Queued::Gap { topic, from, to }) => {
                                note_lag(&mut inner.lagged, &topic, from, to)
                            }
                            Some(Queued::Control(c)) => inner.control.push_back(c),
                            None => break,
                        }
                    }
                    if full(&inner) {
                        // Larger than the whole outbox: it can never be delivered.
                        *dropped += 1;
                        note_lag(&mut inner.lagged, &delivery.topic, delivery.seq, delivery.seq);
                        return was_empty.then(|| inner.waker.clone()).flatten();
                    }
                }
            }
        }
        inner.bytes += size;
        inner.queue.push_back(Queued::Delivery(delivery));
        if was_empty { inner.waker.clone() } else { None }
    }

    /// Queues a gap notice (replay could not cover what the client asked for).
    pub(crate) fn push_gap(&self, topic: Arc<TopicKey>, from: u64, to: u64) -> Option<Waker> {
        self.push_queued(Queued::Gap { topic, from, to })
    }

    /// Queues a notice about a subscription (never dropped for a slow consumer).
    pub(crate) fn push_control(&self, control: Control) -> Option<Waker> {
        self.push_queued(Queued::Control(control))
    }

    fn push_queued(&self, item: Queued) -> Option<Waker> {
        let mut inner = self.lock();
        if inner.closed || inner.overflowed {
            return None;
        }
        let was_empty = inner.is_empty();
        inner.queue.push_back(item);
        if was_empty { inner.waker.clone() } else { None }
    }

    /// Moves up to `max` items into `out`, rescued control notices first, then lag notices;
    /// returns how many.
    pub fn drain_into(&self, out: &mut VecDeque<OutboxItem>, max: usize) -> usize {
        let mut inner = self.lock();
        if inner.overflowed {
            out.push_back(OutboxItem::Overflowed);
            return 1;
        }
        let mut n = 0;
        while n < max {
            let Some(c) = inner.control.pop_front() else { break };
            out.push_back(c.into_item());
            n += 1;
        }
        let lag_count = inner.lagged.len().min(max - n);
        for (topic, from, to) in inner.lagged.drain(..lag_count) {
            out.push_back(OutboxItem::Lagged { topic, from, to });
            n += 1;
        }
        while n < max {
            let Some(item) = inner.queue.pop_front() else { break };
            out.push_back(match item {
                Queued::Delivery(d) => {
                    inner.bytes -= d.size();
                    OutboxItem::Notification(d)
                }
                Queued::Gap { topic, from, to } => OutboxItem::Gap { topic, from, to },
                Queued::Control(c) => c.into_item(),
            });
            n += 1;
        }
        if inner.queue.is_empty() && inner.queue.capacity() > 64 {
            inner.queue = VecDeque::new();
        }
        n
    }

    /// Whether anything is waiting.
    pub fn has_pending(&self) -> bool {
        let inner = self.lock();
        inner.overflowed || !inner.is_empty()
    }

    /// Queued notifications and bytes.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.queue.len(), inner.bytes)
    }

    /// Drops everything queued for `topic` (its subscription ended), so the connection never
    /// has to check each notification against its subscriptions.
    pub fn purge(&self, topic: &Arc<TopicKey>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut freed = 0;
        inner.queue.retain(|q| match q {
            Queued::Delivery(d) if Arc::ptr_eq(&d.topic, topic) => {
                freed += d.size();
                false
            }
            Queued::Gap { topic: t, .. } => !Arc::ptr_eq(t, topic),
            Queued::Control(c) => !Arc::ptr_eq(c.topic(), topic),
            Queued::Delivery(_) => true,
        });
        inner.bytes -= freed;
        inner.lagged.retain(|(t, ..)| !Arc::ptr_eq(t, topic));
        inner.control.retain(|c| !Arc::ptr_eq(c.topic(), topic));
    }

    /// Refuses further deliveries and releases what is queued (the connection is gone).
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queue = VecDeque::new();
        inner.control = VecDeque::new();
        inner.lagged = Vec::new();
        inner.bytes = 0;
        inner.waker = None;
    }
}

impl Inner {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.lagged.is_empty() && self.control.is_empty()
    }
}

/// Records a dropped range: extends the topic's last range when contiguous, and past
/// `MAX_LAG_RANGES` widens it instead of adding one; a topic's first range is always added,
/// so the list is bounded by the number of subscribed topics.
fn note_lag(
    lagged: &mut Vec<(Arc<TopicKey>, u64, u64)>,
    topic: &Arc<TopicKey>,
    from: u64,
    to: u64,
) {
    let full = lagged.len() >= MAX_LAG_RANGES;
    if let Some(last) = lagged.iter_mut().rev().find(|(t, ..)| Arc::ptr_eq(t, topic)) {
        if last.2 + 1 == from || full {
            last.1 = last.1.min(from);
            last.2 = last.2.max(to);
            return;
        }
    }
    lagged.push((topic.clone(), from, to));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::MessageKind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    fn key(name: &str) -> Arc<TopicKey> {
        Arc::new(TopicKey { name: name.into(), subscription: "0x1".into() })
    }

    fn delivery(topic: &Arc<TopicKey>, seq: u64, size: usize) -> Delivery {
        Delivery {
            topic: topic.clone(),
            seq,
            frame: SharedFrame::new(MessageKind::Text, &vec![b'x'; size]),
        }
    }

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn drain(o: &Outbox) -> Vec<OutboxItem> {
        let mut q = VecDeque::new();
        o.drain_into(&mut q, usize::MAX);
        q.into_iter().collect()
    }

    #[test]
    fn wakes_only_on_empty_to_non_empty() {
        let o = Outbox::new(1, OutboxLimits::default());
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        o.set_waker(&Waker::from(counter.clone()));
        let t = key("t");
        for seq in 1..=3 {
            if let (Some(w), _) = o.push(delivery(&t, seq, 10)) {
                w.wake();
            }
        }
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(drain(&o).len(), 3);
        if let (Some(w), _) = o.push(delivery(&t, 4, 10)) {
            w.wake();
        }
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn drop_oldest_reports_the_missed_range_first() {
        let o = Outbox::new(
            1,
            OutboxLimits {
                max_messages: 3,
                max_bytes: 1 << 20,
                slow_consumer: SlowConsumer::DropOldest,
            },
        );
        let t = key("t");
        for seq in 1..=10 {
            let _ = o.push(delivery(&t, seq, 10));
        }
        assert_eq!(o.usage().0, 3);
        let items = drain(&o);
        match &items[0] {
            OutboxItem::Lagged { from, to, .. } => assert_eq!((*from, *to), (1, 7)),
            other => panic!("{other:?}"),
        }
        let seqs: Vec<u64> = items[1..]
            .iter()
            .map(|i| match i {
                OutboxItem::Notification(d) => d.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [8, 9, 10]);
    }

    #[test]
    fn byte_limit_applies_too() {
        let o = Outbox::new(
            1,
            OutboxLimits {
                max_messages: 100,
                max_bytes: 100,
                slow_consumer: SlowConsumer::DropOldest,
            },
        );
        let t = key("t");
        for seq in 1..=5 {
            let _ = o.push(delivery(&t, seq, 40));
        }
        assert!(o.usage().1 <= 100);
        // Too big for the whole outbox: reported as missed, never queued.
        let _ = o.push(delivery(&t, 6, 500));
        let items = drain(&o);
        assert!(
            items.iter().any(|i| matches!(
                i,
                OutboxItem::Lagged { to: 6, .. } | OutboxItem::Lagged { from: 6, .. }
            )),
            "{items:?}"
        );
    }

    #[test]
    fn close_policy_overflows_once_and_stops() {
        let o = Outbox::new(
            1,
            OutboxLimits {
                max_messages: 2,
                max_bytes: 1 << 20,
                slow_consumer: SlowConsumer::Close,
            },
        );
        let t = key("t");
        for seq in 1..=5 {
            let _ = o.push(delivery(&t, seq, 10));
        }
        assert!(matches!(drain(&o)[..], [OutboxItem::Overflowed]));
        assert_eq!(o.usage(), (0, 0));
    }

    #[test]
    fn purge_drops_one_topic_only() {
        let o = Outbox::new(
            1,
            OutboxLimits {
                max_messages: 4,
                max_bytes: 1 << 20,
                slow_consumer: SlowConsumer::DropOldest,
            },
        );
        let (a, b) = (key("a"), key("b"));
        for seq in 1..=6 {
            let _ = o.push(delivery(&a, seq, 10));
        }
        let _ = o.push(delivery(&b, 1, 10));
        o.purge(&a);
        let items = drain(&o);
        assert!(
            matches!(&items[..], [OutboxItem::Notification(d)] if Arc::ptr_eq(&d.topic, &b)),
            "{items:?}"
        );
        assert_eq!(o.usage(), (0, 0));
    }

    #[test]
    fn control_notices_survive_drop_oldest_and_come_first() {
        let o = Outbox::new(
            1,
            OutboxLimits {
                max_messages: 3,
                max_bytes: 1 << 20,
                slow_consumer: SlowConsumer::DropOldest,
            },
        );
        let t = key("t");
        let _ = o.push_control(Control::Subscribed { topic: t.clone(), seq: 0, epoch: 9 });
        for seq in 1..=10 {
            let _ = o.push(delivery(&t, seq, 10));
        }
        let items = drain(&o);
        assert!(
            matches!(items[0], OutboxItem::Subscribed { seq: 0, epoch: 9, .. }),
            "the answer is never dropped: {items:?}"
        );
        assert!(matches!(items[1], OutboxItem::Lagged { from: 1, to: 7, .. }), "{items:?}");
        assert_eq!(items.len(), 5);
        // Purged with its topic like everything else.
        let _ = o.push_control(Control::Reset { topic: t.clone(), epoch: 2 });
        o.purge(&t);
        assert!(!o.has_pending());
    }

    #[test]
    fn closed_outbox_refuses_and_frees() {
        let o = Outbox::new(1, OutboxLimits::default());
        let t = key("t");
        let _ = o.push(delivery(&t, 1, 10));
        o.close();
        assert!(o.push(delivery(&t, 2, 10)).0.is_none());
        assert!(!o.has_pending());
    }
}
