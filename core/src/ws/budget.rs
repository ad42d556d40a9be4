//! A byte budget shared by many connections for the messages they are assembling, so the
//! memory held by unfinished messages is bounded across a whole server, not only per
//! connection (1,024 connections × 16 MiB would otherwise be 16 GiB).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes reserved at a time: a connection touches the shared counter once per 64 KiB of
/// message, not once per frame. The first 64 KiB of each message are not counted, so the
/// small messages of ordinary traffic never touch it (per connection they are bounded anyway).
const STEP: u64 = 64 * 1024;

/// The shared counter. Cloning an [`AssemblyBudget`] shares it.
#[derive(Debug)]
struct Shared {
    limit: u64,
    used: AtomicU64,
}

/// A budget for message bytes being assembled, shared by the connections whose
/// [`Config`](super::Config) carries it (a server's HTTP request bodies draw on it too). A
/// message that would take it over its limit is refused with close 1013 (try again later), a
/// body with 503; what is reserved is given back when the message is complete or dropped.
#[derive(Clone, Debug)]
pub struct AssemblyBudget(Arc<Shared>);

impl AssemblyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self(Arc::new(Shared { limit, used: AtomicU64::new(0) }))
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Bytes reserved now by unfinished messages (in 64 KiB steps, beyond each message's
    /// first 64 KiB).
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: u64) -> bool {
        let limit = self.0.limit;
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|v| *v <= limit)
            })
            .is_ok()
    }
}

/// Configurations compare equal when they share the same budget.
impl PartialEq for AssemblyBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AssemblyBudget {}

/// What one message in progress holds of a budget; given back on drop. It holds nothing (and
/// no reference to the budget) until the message outgrows its free first 64 KiB.
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    budget: Option<AssemblyBudget>,
    bytes: u64,
}

impl Reservation {
    /// Makes sure a message buffer of `total` bytes is covered by `budget`; false when the
    /// budget cannot cover it.
    pub(crate) fn cover(&mut self, budget: Option<&AssemblyBudget>, total: u64) -> bool {
        let counted = total.saturating_sub(STEP);
        if counted <= self.bytes {
            return true;
        }
        let Some(budget) = budget else { return true };
        let grow = (counted - self.bytes).div_ceil(STEP) * STEP;
        if budget.try_take(grow) {
            self.budget.get_or_insert_with(|| budget.clone());
            self.bytes += grow;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.0.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_in_steps_and_are_given_back() {
        let budget = AssemblyBudget::new(3 * STEP);
        let mut a = Reservation::default();
        assert!(a.cover(Some(&budget), STEP), "the first 64 KiB are free");
        assert_eq!(budget.used(), 0);
        assert!(a.cover(Some(&budget), STEP + 1));
        assert_eq!(budget.used(), STEP);
        assert!(a.cover(Some(&budget), 3 * STEP));
        assert_eq!(budget.used(), 2 * STEP);
        let mut b = Reservation::default();
        assert!(b.cover(Some(&budget), 2 * STEP));
        assert!(!b.cover(Some(&budget), 2 * STEP + 1), "over the limit");
        assert_eq!(budget.used(), 3 * STEP);
        drop(a);
        assert_eq!(budget.used(), STEP);
        assert!(b.cover(Some(&budget), 4 * STEP));
        drop(b);
        assert_eq!(budget.used(), 0);
        // Without a budget everything is covered.
        assert!(Reservation::default().cover(None, u64::MAX));
    }
}
