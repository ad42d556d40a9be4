//! Buckets per (Origin header, method class), shared by every connection of a server.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::LOG_TARGET;
use super::bucket::TieredBucket;
use super::classes::MethodClass;
use super::config::LimitConfig;

/// Least time between two sweeps triggered by the clock (arrivals trigger them too).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Buckets per (origin, [`MethodClass`]), shared by all connections of a server.
///
/// Create one per server with [`new`](Self::new), share it (it is `Send + Sync`; put it in an
/// `Arc`), and call [`check`](Self::check) per call, or let
/// [`ConnectionLimiter::check_call`](super::ConnectionLimiter::check_call) do it together with
/// the connection's own buckets.
///
/// Memory is bounded whatever origins peers invent: at most
/// [`LimitConfig::max_origin_keys`] buckets (plus one overflow bucket per class), and keys
/// longer than [`MAX_ORIGIN_LEN`](Self::MAX_ORIGIN_LEN) are never stored. When the table is
/// full, buckets that are full (idle, so identical to new ones) are swept out; if none are, new
/// origins share the overflow bucket of their class until a sweep makes room, so inventing
/// origins neither grows memory nor escapes the limits.
pub struct OriginLimiter {
    config: Arc<LimitConfig>,
    table: Mutex<OriginTable>,
}

/// The mutable state behind the lock.
#[derive(Debug, Default)]
struct OriginTable {
    /// Indexed by [`MethodClass::index`], so lookups borrow the origin as `&str`.
    buckets: [HashMap<Box<str>, TieredBucket>; 4],
    /// Shared by new origins while the table is full, per class.
    overflow: [Option<TieredBucket>; 4],
    last_sweep: Option<Instant>,
    /// Origins sent to overflow since the last sweep.
    overflowed_since_sweep: usize,
    /// Whether new origins currently go to overflow; logged once per episode.
    overflowing: bool,
    /// Sweeps run so far, to check they stay amortised.
    sweeps: u64,
}

impl OriginLimiter {
    /// Longest origin given its own bucket: a scheme, a 253-byte host name and a port fit;
    /// longer values are not origins a browser sends and share the overflow bucket.
    pub const MAX_ORIGIN_LEN: usize = 300;

    /// An empty table using `config`'s class tiers and `max_origin_keys`.
    pub fn new(config: Arc<LimitConfig>) -> Self {
        Self { config, table: Mutex::new(OriginTable::default()) }
    }

    /// Takes a token for `class` from `origin`'s bucket, or returns how long from `now` until
    /// one is available. Ignores [`LimitConfig::per_origin`]; callers decide whether to ask.
    pub fn check(&self, origin: &str, class: MethodClass, now: Instant) -> Result<(), Duration> {
        let result = self.with_bucket(origin, class, now, |bucket| bucket.try_take(now));
        if let Err(wait) = result {
            log::debug!(
                target: LOG_TARGET,
                "rate limited scope=origin origin={origin:?} class={class} retry_after_ms={}",
                wait.as_nanos().div_ceil(1_000_000)
            );
        }
        result
    }

    /// Number of (origin, class) buckets held, not counting the overflow buckets.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no (origin, class) bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configuration this limiter was built with.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Runs `f` on the bucket of (`origin`, `class`) under the lock, creating it (or falling
    /// back to the overflow bucket) first.
    pub(crate) fn with_bucket<R>(
        &self,
        origin: &str,
        class: MethodClass,
        now: Instant,
        f: impl FnOnce(&mut TieredBucket) -> R,
    ) -> R {
        let mut guard = self.lock();
        let table = &mut *guard;
        let i = class.index();
        if let Some(bucket) = table.buckets[i].get_mut(origin) {
            return f(bucket);
        }
        let tiers = self.config.classes.tiers(class);
        if origin.len() <= Self::MAX_ORIGIN_LEN && table.make_room(self.config.max_origin_keys, now)
        {
            let bucket = table.buckets[i]
                .entry(origin.into())
                .or_insert_with(|| TieredBucket::new(tiers, now));
            return f(bucket);
        }
        f(table.overflow[i].get_or_insert_with(|| TieredBucket::new(tiers, now)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OriginTable> {
        // Buckets stay consistent even if a holder panicked: every update is a single store.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OriginTable {
    fn len(&self) -> usize {
        self.buckets.iter().map(HashMap::len).sum()
    }

    /// Whether a new key may be inserted, sweeping idle buckets first when the table is full.
    ///
    /// A sweep costs one pass over the table, so at most one runs per `SWEEP_INTERVAL` of
    /// `now` or per `max / 16` origins sent to overflow.
    fn make_room(&mut self, max: usize, now: Instant) -> bool {
        if self.len() < max {
            return true;
        }
        let by_time = self
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_INTERVAL);
        if by_time || self.overflowed_since_sweep >= (max / 16).max(1) {
            self.sweep(now);
        }
        if self.len() < max {
            self.overflowing = false;
            return true;
        }
        self.overflowed_since_sweep += 1;
        if !std::mem::replace(&mut self.overflowing, true) {
            log::warn!(
                target: LOG_TARGET,
                "origin table full, new origins share the overflow bucket max_origin_keys={max}"
            );
        }
        false
    }

    /// Drops every bucket that is full: a new bucket would be identical.
    fn sweep(&mut self, now: Instant) {
        let before = self.len();
        for map in &mut self.buckets {
            map.retain(|_, bucket| !bucket.is_full(now));
            // Give back the memory of a flood once it has drained.
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to_fit();
            }
        }
        self.last_sweep = Some(now);
        self.overflowed_since_sweep = 0;
        self.sweeps += 1;
        log::trace!(target: LOG_TARGET, "swept origin table before={before} after={}", self.len());
    }
}

impl fmt::Debug for OriginLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The table may hold thousands of attacker-chosen keys; print its size only.
        f.debug_struct("OriginLimiter")
            .field("len", &self.len())
            .field("max_origin_keys", &self.config.max_origin_keys)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{MethodClasses, Rate};

    use crate::test_origin as origin;

    fn limiter(max_origin_keys: usize) -> OriginLimiter {
        OriginLimiter::new(Arc::new(LimitConfig { max_origin_keys, ..LimitConfig::default() }))
    }

    #[test]
    fn origins_and_classes_are_isolated() {
        let t0 = origin();
        let limiter = limiter(100);
        let evil = "https://evil.example";
        for _ in 0..10 {
            limiter.check(evil, MethodClass::Default, t0).unwrap();
        }
        assert_eq!(limiter.check(evil, MethodClass::Default, t0), Err(Duration::from_millis(100)));
        // Another origin, and another class of the same origin, are untouched.
        for _ in 0..10 {
            limiter.check("http://localhost:3000", MethodClass::Default, t0).unwrap();
        }
        limiter.check(evil, MethodClass::Sensitive, t0).unwrap();
        assert_eq!(limiter.check(evil, MethodClass::Sensitive, t0), Err(Duration::from_secs(1)));
        assert_eq!(limiter.len(), 3);
    }

    #[test]
    fn attacker_origins_stay_bounded_and_share_the_overflow_bucket() {
        let t0 = origin();
        let limiter = limiter(1000);
        let mut passed = 0;
        for n in 0..100_000 {
            if limiter.check(&format!("https://{n}.evil"), MethodClass::Default, t0).is_ok() {
                passed += 1;
            }
            assert!(limiter.len() <= 1000);
        }
        // 1000 origins got their own bucket; the other 99,000 shared 10 tokens per second.
        assert_eq!(passed, 1000 + 10);
        assert_eq!(limiter.len(), 1000);
        // One pass over the table per 62 origins sent to overflow, not one per origin.
        assert!(limiter.lock().sweeps <= 99_000 / 62 + 1);
        assert!(limiter.check("https://legit.example", MethodClass::Default, t0).is_err());
        // Once the flood's buckets refill (the hour tier is the slowest), a sweep makes room.
        let later = t0 + Duration::from_secs(360);
        assert!(limiter.check("https://legit.example", MethodClass::Default, later).is_ok());
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn default_cap_holds_under_a_flood_spread_over_time() {
        let t0 = origin();
        let limiter = limiter(LimitConfig::default().max_origin_keys);
        let mut passed = 0u64;
        let mut now = t0;
        for n in 0..100_000u64 {
            now += Duration::from_micros(50);
            if limiter.check(&format!("https://{n}.evil"), MethodClass::Sensitive, now).is_ok() {
                passed += 1;
            }
            assert!(limiter.len() <= 10_000);
        }
        // A used sensitive bucket is full again only after 36 s (its hour tier), so in these
        // 5 s no sweep frees anything; the overflow bucket, first used at 0.5 s, gives one
        // call then one per second.
        assert_eq!(limiter.len(), 10_000);
        assert_eq!(passed, 10_000 + 5);
    }

    #[test]
    fn overlong_origins_never_get_their_own_bucket() {
        let t0 = origin();
        let limiter = limiter(100);
        let long = "x".repeat(OriginLimiter::MAX_ORIGIN_LEN + 1);
        limiter.check(&long, MethodClass::Sensitive, t0).unwrap();
        assert_eq!(limiter.len(), 0);
        // The next overlong origin shares that bucket.
        let other = "y".repeat(OriginLimiter::MAX_ORIGIN_LEN + 1);
        assert!(limiter.check(&other, MethodClass::Sensitive, t0).is_err());
        let fits = "z".repeat(OriginLimiter::MAX_ORIGIN_LEN);
        limiter.check(&fits, MethodClass::Sensitive, t0).unwrap();
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn zero_keys_sends_everyone_to_overflow() {
        let t0 = origin();
        let classes =
            MethodClasses::default().with_tiers(MethodClass::Default, &[Rate::per_second(2)]);
        let config = LimitConfig { max_origin_keys: 0, classes, ..LimitConfig::default() };
        let limiter = OriginLimiter::new(Arc::new(config));
        limiter.check("a", MethodClass::Default, t0).unwrap();
        limiter.check("b", MethodClass::Default, t0).unwrap();
        assert!(limiter.check("c", MethodClass::Default, t0).is_err());
        assert!(limiter.is_empty());
    }

    #[test]
    fn is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<OriginLimiter>();
    }
}
