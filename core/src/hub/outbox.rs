//! A connection's bounded queue of notifications, filled by publishers on any thread and
//! drained by the connection, which it wakes through a `std::task::Waker`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

#[cfg(doc)]
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
    /// Where the published value starts in the frame's payload (it ends before the
    /// closing `}}`).
    pub(super) result_at: usize,
}

impl Delivery {
    fn size(&self) -> usize {
        self.frame.wire_bytes().len()
    }

    /// The published value's JSON, as it is inside the notification.
    pub fn result(&self) -> &[u8] {
        let payload = self.frame.payload();
        payload.get(self.result_at..payload.len().saturating_sub(2)).unwrap_or(&[])
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

/// Bounds of one outbox (defaults: 1024 messages and 4 MiB, drop oldest).
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
    /// A subscription that waited for the broker was refused because the broker became
    /// unavailable ([`SubscribeError::Unavailable`]): answer the subscribe call so; the
    /// subscription is gone.
    SubscribeFailed {
        /// The topic.
        topic: Arc<TopicKey>,
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

impl OutboxItem {
    /// The topic it is about (none for an overflow).
    pub fn topic(&self) -> Option<&Arc<TopicKey>> {
        match self {
            Self::Notification(d) => Some(&d.topic),
            Self::Lagged { topic, .. }
            | Self::Gap { topic, .. }
            | Self::Subscribed { topic, .. }
            | Self::SubscribeFailed { topic }
            | Self::Reset { topic, .. }
            | Self::Stalled { topic, .. } => Some(topic),
            Self::Overflowed => None,
        }
    }
}

/// Notices about a subscription itself, never dropped for a slow consumer (a dropped
/// answer would leave a call unanswered).
#[derive(Clone, Debug)]
pub(crate) enum Control {
    Subscribed { topic: Arc<TopicKey>, seq: u64, epoch: u64 },
    SubscribeFailed { topic: Arc<TopicKey> },
    Reset { topic: Arc<TopicKey>, epoch: u64 },
    Stalled { topic: Arc<TopicKey>, from: u64 },
}

impl Control {
    fn into_item(self) -> OutboxItem {
        match self {
            Self::Subscribed { topic, seq, epoch } => OutboxItem::Subscribed { topic, seq, epoch },
            Self::SubscribeFailed { topic } => OutboxItem::SubscribeFailed { topic },
            Self::Reset { topic, epoch } => OutboxItem::Reset { topic, epoch },
            Self::Stalled { topic, from } => OutboxItem::Stalled { topic, from },
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Notifications, gap notices and control notices, in order: stored as they are
    /// drained, so draining only moves them.
    queue: VecDeque<OutboxItem>,
    bytes: usize,
    /// What must go out before the queue, oldest first: control notices taken out of the
    /// queue to make room (they were older than all of it) and the ranges dropped for a slow
    /// consumer (`Lagged`).
    notices: VecDeque<OutboxItem>,
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
                            Some(OutboxItem::Notification(old)) => {
                                *dropped += 1;
                                inner.bytes -= old.size();
                                note_lag(&mut inner.notices, &old.topic, old.seq, old.seq);
                            }
                            Some(OutboxItem::Gap { topic, from, to }) => {
                                note_lag(&mut inner.notices, &topic, from, to)
                            }
                            Some(item) => inner.notices.push_back(item),
                            None => break,
                        }
                    }
                    if full(&inner) {
                        // Larger than the whole outbox: it can never be delivered.
                        *dropped += 1;
                        note_lag(&mut inner.notices, &delivery.topic, delivery.seq, delivery.seq);
                        return was_empty.then(|| inner.waker.clone()).flatten();
                    }
                }
            }
        }
        inner.bytes += size;
        inner.queue.push_back(OutboxItem::Notification(delivery));
        if was_empty { inner.waker.clone() } else { None }
    }

    /// Queues a gap notice (replay could not cover what the client asked for).
    pub(crate) fn push_gap(&self, topic: Arc<TopicKey>, from: u64, to: u64) -> Option<Waker> {
        self.push_queued(OutboxItem::Gap { topic, from, to })
    }

    /// Queues a notice about a subscription (never dropped for a slow consumer).
    pub(crate) fn push_control(&self, control: Control) -> Option<Waker> {
        self.push_queued(control.into_item())
    }

    fn push_queued(&self, item: OutboxItem) -> Option<Waker> {
        let mut inner = self.lock();
        if inner.closed || inner.overflowed {
            return None;
        }
        let was_empty = inner.is_empty();
        inner.queue.push_back(item);
        if was_empty { inner.waker.clone() } else { None }
    }

    /// Moves up to `max` items into `out`, the notices (control, lagged) first; returns how
    /// many.
    pub fn drain_into(&self, out: &mut VecDeque<OutboxItem>, max: usize) -> usize {
        let mut inner = self.lock();
        if inner.overflowed {
            out.push_back(OutboxItem::Overflowed);
            return 1;
        }
        let mut n = 0;
        while n < max {
            let Some(notice) = inner.notices.pop_front() else { break };
            out.push_back(notice);
            n += 1;
        }
        while n < max {
            let Some(item) = inner.queue.pop_front() else { break };
            if let OutboxItem::Notification(d) = &item {
                inner.bytes -= d.size();
            }
            out.push_back(item);
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

    /// Drops everything queued for the subscription `topic` (it ended), so the connection
    /// never has to check each notification against its subscriptions.
    pub fn purge(&self, topic: &TopicKey) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut freed = 0;
        let other = |t: &Arc<TopicKey>| !std::ptr::eq(&**t, topic);
        inner.queue.retain(|q| match q {
            OutboxItem::Notification(d) if !other(&d.topic) => {
                freed += d.size();
                false
            }
            q => q.topic().is_none_or(other),
        });
        inner.bytes -= freed;
        inner.notices.retain(|c| c.topic().is_none_or(other));
    }

    /// Refuses further deliveries and releases what is queued (the connection is gone).
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queue = VecDeque::new();
        inner.notices = VecDeque::new();
        inner.bytes = 0;
        inner.waker = None;
    }
}

impl Inner {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.notices.is_empty()
    }
}

/// Records a dropped range: extends the topic's last range when contiguous, and past
/// `MAX_LAG_RANGES` widens it instead of adding one; a topic's first range is always added,
/// so the list is bounded by the number of subscribed topics (and of control notices).
fn note_lag(notices: &mut VecDeque<OutboxItem>, topic: &Arc<TopicKey>, from: u64, to: u64) {
    let full = notices.len() >= MAX_LAG_RANGES;
    // Only the topic's last notice may grow: a range never moves across a control notice.
    let last = notices.iter_mut().rev().find(|n| n.topic().is_some_and(|t| Arc::ptr_eq(t, topic)));
    if let Some(OutboxItem::Lagged { from: f, to: t, .. }) = last {
        if *t + 1 == from || full {
            *f = (*f).min(from);
            *t = (*t).max(to);
            return;
        }
    }
    notices.push_back(OutboxItem::Lagged { topic: topic.clone(), from, to });
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
            result_at: 0,
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
