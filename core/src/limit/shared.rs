//! Buckets shared by every connection of a server, per (key, method class): one table per
//! key kind (principal, origin, client address), each bounded whatever keys peers invent.

use core::net::IpAddr;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::LOG_TARGET;
use super::bucket::TieredBucket;
use super::classes::MethodClass;
use super::config::LimitConfig;
use super::error::Scope;

/// Least time between two sweeps triggered by the clock (arrivals trigger them too).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Buckets per (key, [`MethodClass`]) of one [`Scope`], shared by all connections of a
/// server: the calls of one principal, one origin or one client address, whichever
/// connections they come over.
///
/// A server has one per shared scope, in its [`SharedLimits`];
/// [`ConnectionLimiter::check_call`](super::ConnectionLimiter::check_call) takes from every
/// bucket of a call at once. It is `Send + Sync`.
///
/// Memory is bounded whatever keys peers invent (a flood of addresses, of origins): at most
/// [`LimitConfig::max_shared_keys`] buckets (plus one overflow bucket per class), and keys
/// longer than [`MAX_KEY_LEN`](Self::MAX_KEY_LEN) are never stored. When the table is full,
/// buckets that are full (idle, so identical to new ones) are swept out; if none are, new keys
/// share the overflow bucket of their class until a sweep makes room, so inventing keys
/// neither grows memory nor escapes the limits.
pub struct SharedBuckets {
    scope: Scope,
    config: Arc<LimitConfig>,
    table: Mutex<Table>,
}

/// The mutable state behind the lock.
#[derive(Debug, Default)]
struct Table {
    /// Indexed by [`MethodClass::index`], so lookups borrow the key as `&str`.
    buckets: [HashMap<Box<str>, TieredBucket>; 4],
    /// Shared by new keys while the table is full, per class.
    overflow: [Option<TieredBucket>; 4],
    last_sweep: Option<Instant>,
    /// Keys sent to overflow since the last sweep.
    overflowed_since_sweep: usize,
    /// Whether new keys currently go to overflow; logged once per episode.
    overflowing: bool,
    /// Sweeps run so far, to check they stay amortised.
    sweeps: u64,
}

impl SharedBuckets {
    /// Longest key given its own bucket: a scheme, a 253-byte host name and a port fit;
    /// longer origins are not ones a browser sends and share the overflow bucket (principals
    /// longer than this are keyed by a digest, see
    /// [`ConnectionLimiter::set_principal`](super::ConnectionLimiter::set_principal)).
    pub const MAX_KEY_LEN: usize = 300;

    /// An empty table for `scope`, using `config`'s class tiers and `max_shared_keys`.
    pub fn new(scope: Scope, config: Arc<LimitConfig>) -> Self {
        Self { scope, config, table: Mutex::new(Table::default()) }
    }

    /// Takes a token for `class` from `key`'s bucket, or returns how long from `now` until
    /// one is available (the tests' way in; calls take tokens through `check_call`).
    #[cfg(test)]
    pub(crate) fn check(
        &self,
        key: &str,
        class: MethodClass,
        now: Instant,
    ) -> Result<(), Duration> {
        let result = self.with_bucket(key, class, now, |bucket| bucket.try_take(now));
        if let Err(wait) = result {
            log::debug!(
                target: LOG_TARGET,
                "rate limited scope={} key={key:?} class={class} retry_after_ms={}",
                self.scope.as_str(),
                wait.as_nanos().div_ceil(1_000_000)
            );
        }
        result
    }

    /// The scope of this table's keys.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Number of (key, class) buckets held, not counting the overflow buckets.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no (key, class) bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configuration this table was built with.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Runs `f` on the bucket of (`key`, `class`) under the lock, creating it (or falling
    /// back to the overflow bucket) first.
    pub(crate) fn with_bucket<R>(
        &self,
        key: &str,
        class: MethodClass,
        now: Instant,
        f: impl FnOnce(&mut TieredBucket) -> R,
    ) -> R {
        let mut guard = self.lock();
        let table = &mut *guard;
        let i = class.index();
        if let Some(bucket) = table.buckets[i].get_mut(key) {
            return f(bucket);
        }
        let tiers = self.config.classes.tiers(class);
        if key.len() <= Self::MAX_KEY_LEN
            && table.make_room(self.scope, self.config.max_shared_keys, now)
        {
            let bucket =
                table.buckets[i].entry(key.into()).or_insert_with(|| TieredBucket::new(tiers, now));
            return f(bucket);
        }
        f(table.overflow[i].get_or_insert_with(|| TieredBucket::new(tiers, now)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Buckets stay consistent even if a holder panicked: every update is a single store.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shared tables of one server: per principal, per origin and per client address.
///
/// Create one per server from its `Arc<LimitConfig>` (the service does) and pass it to every
/// [`ConnectionLimiter::check_call`](super::ConnectionLimiter::check_call). Tables of scopes
/// the configuration does not key by stay empty.
#[derive(Debug)]
pub struct SharedLimits {
    principal: SharedBuckets,
    origin: SharedBuckets,
    address: SharedBuckets,
}

impl SharedLimits {
    /// Empty tables for `config`.
    pub fn new(config: Arc<LimitConfig>) -> Self {
        Self {
            principal: SharedBuckets::new(Scope::Principal, config.clone()),
            origin: SharedBuckets::new(Scope::Origin, config.clone()),
            address: SharedBuckets::new(Scope::Address, config),
        }
    }

    /// Buckets per authenticated principal.
    pub fn principal(&self) -> &SharedBuckets {
        &self.principal
    }

    /// Buckets per `Origin` header.
    pub fn origin(&self) -> &SharedBuckets {
        &self.origin
    }

    /// Buckets per client address.
    pub fn address(&self) -> &SharedBuckets {
        &self.address
    }
}

/// The key of a client address: the IPv4 address, or the /64 network of an IPv6 one (a
/// single host usually holds a whole /64, so its addresses are one client).
pub fn address_key(ip: IpAddr) -> Box<str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string().into(),
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", core::net::Ipv6Addr::from(network)).into()
        }
    }
}

impl Table {
    fn len(&self) -> usize {
        self.buckets.iter().map(HashMap::len).sum()
    }

    /// Whether a new key may be inserted, sweeping idle buckets first when the table is full.
    ///
    /// A sweep costs one pass over the table, so at most one runs per `SWEEP_INTERVAL` of
    /// `now` or per `max / 16` origins sent to overflow.
    fn make_room(&mut self, scope: Scope, max: usize, now: Instant) -> bool {
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
                "{} table full, new keys share the overflow bucket max_shared_keys={max}",
                scope.as_str()
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
        log::trace!(target: LOG_TARGET, "swept a shared table before={before} after={}", self.len());
    }
}

impl fmt::Debug for SharedBuckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The table may hold thousands of attacker-chosen keys; print its size only.
        f.debug_struct("SharedBuckets")
            .field("scope", &self.scope)
            .field("len", &self.len())
            .field("max_shared_keys", &self.config.max_shared_keys)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{MethodClasses, Rate};

    use crate::test_origin as origin;

    fn limiter(max_shared_keys: usize) -> SharedBuckets {
        let config = LimitConfig { max_shared_keys, ..LimitConfig::default() };
        SharedBuckets::new(Scope::Origin, Arc::new(config))
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
        let limiter = limiter(LimitConfig::default().max_shared_keys);
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
        let long = "x".repeat(SharedBuckets::MAX_KEY_LEN + 1);
        limiter.check(&long, MethodClass::Sensitive, t0).unwrap();
        assert_eq!(limiter.len(), 0);
        // The next overlong origin shares that bucket.
        let other = "y".repeat(SharedBuckets::MAX_KEY_LEN + 1);
        assert!(limiter.check(&other, MethodClass::Sensitive, t0).is_err());
        let fits = "z".repeat(SharedBuckets::MAX_KEY_LEN);
        limiter.check(&fits, MethodClass::Sensitive, t0).unwrap();
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn zero_keys_sends_everyone_to_overflow() {
        let t0 = origin();
        let classes =
            MethodClasses::default().with_tiers(MethodClass::Default, &[Rate::per_second(2)]);
        let config = LimitConfig { max_shared_keys: 0, classes, ..LimitConfig::default() };
        let limiter = SharedBuckets::new(Scope::Origin, Arc::new(config));
        limiter.check("a", MethodClass::Default, t0).unwrap();
        limiter.check("b", MethodClass::Default, t0).unwrap();
        assert!(limiter.check("c", MethodClass::Default, t0).is_err());
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_flood_of_distinct_addresses_stays_bounded() {
        let t0 = origin();
        let config = LimitConfig { max_shared_keys: 500, ..LimitConfig::default() };
        let table = SharedBuckets::new(Scope::Address, Arc::new(config));
        let mut passed = 0;
        // 200,000 distinct IPv4 addresses, 10 µs apart: 2 s of a spoofed flood.
        let mut now = t0;
        for n in 0..200_000u32 {
            now += Duration::from_micros(10);
            let key = address_key(IpAddr::from(core::net::Ipv4Addr::from(0x0a00_0000 + n)));
            if table.check(&key, MethodClass::Default, now).is_ok() {
                passed += 1;
            }
            assert!(table.len() <= 500);
        }
        // Each used bucket refills its hour tier only after 3.6 s, so no sweep freed one:
        // 500 addresses got a bucket; the rest shared 10 tokens and one per 100 ms of the
        // 1.995 s after the overflow bucket was made.
        assert_eq!(table.len(), 500);
        assert_eq!(passed, 500 + 10 + 19);
        let capacity: usize = table.lock().buckets.iter().map(HashMap::capacity).sum();
        assert!(capacity < 4 * 500, "capacity {capacity}");
        // Once the flood's buckets are full again they are swept, and memory is given back.
        let later = now + Duration::from_secs(400);
        let key = address_key("198.51.100.7".parse().unwrap());
        assert!(table.check(&key, MethodClass::Default, later).is_ok());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn address_keys_group_an_ipv6_host_and_canonicalise_mapped_ipv4() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(&*key("198.51.100.7"), "198.51.100.7");
        assert_eq!(&*key("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(&*key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(&*key("::1"), "::/64");
    }

    #[test]
    fn is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<SharedBuckets>();
        shared::<SharedLimits>();
    }
}
