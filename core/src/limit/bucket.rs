//! Token buckets with exact integer refills: one rate ([`TokenBucket`]) or several at once
//! ([`TieredBucket`]).

use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A refill rate of `tokens` per `per`; `tokens` is also the bucket's capacity (its burst).
///
/// `Rate::per_second(10)` allows a burst of 10 calls, then one every 100 ms. Two degenerate
/// rates are accepted: zero `tokens` blocks every take, and a zero `per` (with tokens) never
/// blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Capacity of the bucket and the number of tokens refilled over `per`.
    pub tokens: u32,
    /// Period over which `tokens` tokens are refilled.
    pub per: Duration,
}

impl Rate {
    /// `tokens` per `per`.
    pub const fn new(tokens: u32, per: Duration) -> Self {
        Self { tokens, per }
    }

    /// `tokens` per second.
    pub const fn per_second(tokens: u32) -> Self {
        Self::new(tokens, Duration::from_secs(1))
    }

    /// `tokens` per minute.
    pub const fn per_minute(tokens: u32) -> Self {
        Self::new(tokens, Duration::from_secs(60))
    }

    /// `tokens` per hour.
    pub const fn per_hour(tokens: u32) -> Self {
        Self::new(tokens, Duration::from_secs(3600))
    }

    /// Level units one token costs: `per` in nanoseconds.
    fn token_cost(self) -> u128 {
        self.per.as_nanos()
    }

    /// Level units of a full bucket. At most `u32::MAX * Duration::MAX` in nanoseconds, which
    /// fits in a `u128`.
    fn capacity(self) -> u128 {
        u128::from(self.tokens) * self.token_cost()
    }
}

/// A token bucket: holds up to `rate.tokens` tokens and refills them continuously at `rate`.
///
/// Create it full with [`new`](Self::new), then call [`try_take`](Self::try_take) once per
/// event with the current time. To take from several buckets all-or-nothing, first ask each
/// [`retry_after`](Self::retry_after) (which does not consume), then `try_take` from each.
/// A bucket that [`is_full`](Self::is_full) behaves exactly like a new one and may be dropped.
///
/// Refills are exact: the level is kept in units where one token is `per` nanoseconds' worth
/// and every elapsed nanosecond adds `tokens` units, so nothing is rounded and nothing drifts.
/// A `now` earlier than the last take counts as no time passed.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    /// Current level in units (see the type docs), at most `rate.capacity()`.
    level: u128,
    /// Time the level was last brought up to date; never moves backwards.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self { rate, level: rate.capacity(), last: now }
    }

    /// The rate this bucket refills at.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token, or returns how long from `now` until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        match self.retry_after(now) {
            Some(wait) => Err(wait),
            None => {
                self.level = self.level_at(now).saturating_sub(self.rate.token_cost());
                self.last = self.last.max(now);
                Ok(())
            }
        }
    }

    /// `None` if a token is available at `now`, else how long from `now` until one is.
    /// Does not consume.
    ///
    /// A rate of zero tokens never refills; it reports `per` as the wait.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        let cost = self.rate.token_cost();
        let level = self.level_at(now);
        if level >= cost && self.rate.tokens > 0 {
            return None;
        }
        if self.rate.tokens == 0 {
            return Some(self.rate.per);
        }
        let missing = cost - level;
        let wait = missing.div_ceil(u128::from(self.rate.tokens));
        // The level is measured at `last` when `now` lags behind it, so the wait starts there.
        Some(nanos_to_duration(wait).saturating_add(self.last.saturating_duration_since(now)))
    }

    /// Whole tokens available at `now` (the capacity when `per` is zero).
    pub fn available(&self, now: Instant) -> u32 {
        let cost = self.rate.token_cost();
        if cost == 0 {
            return self.rate.tokens;
        }
        // The level never exceeds the capacity, so the quotient fits in a u32.
        u32::try_from(self.level_at(now) / cost).unwrap_or(u32::MAX)
    }

    /// Whether the bucket is full at `now`, so that it is indistinguishable from a new one.
    pub fn is_full(&self, now: Instant) -> bool {
        self.level_at(now) >= self.rate.capacity()
    }

    /// The level refilled up to `now`, without storing it.
    fn level_at(&self, now: Instant) -> u128 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let refill = elapsed.saturating_mul(u128::from(self.rate.tokens));
        self.level.saturating_add(refill).min(self.rate.capacity())
    }
}

/// Several token buckets taken from together, such as 1 per second, 10 per minute and 100
/// per hour.
///
/// Call [`try_take`](Self::try_take) once per event: it takes a token from every tier or from
/// none. [`retry_after`](Self::retry_after) and [`is_full`](Self::is_full) work as on
/// [`TokenBucket`]. With no tiers every take succeeds.
#[derive(Clone, Debug)]
pub struct TieredBucket {
    tiers: Box<[TokenBucket]>,
}

impl TieredBucket {
    /// Full buckets, one per rate.
    pub fn new(rates: &[Rate], now: Instant) -> Self {
        Self { tiers: rates.iter().map(|&rate| TokenBucket::new(rate, now)).collect() }
    }

    /// Takes one token from every tier, or from none and returns the longest wait among the
    /// empty tiers.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(wait) = self.retry_after(now) {
            return Err(wait);
        }
        for tier in &mut self.tiers {
            let taken = tier.try_take(now);
            debug_assert!(taken.is_ok(), "every tier had a token at the same `now`");
        }
        Ok(())
    }

    /// `None` if every tier has a token at `now`, else the longest wait among the tiers that
    /// do not. Does not consume.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        self.tiers.iter().filter_map(|tier| tier.retry_after(now)).max()
    }

    /// Whether every tier is full at `now`.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tiers.iter().all(|tier| tier.is_full(now))
    }

    /// The tiers, in the order of the rates given to [`new`](Self::new).
    pub fn tiers(&self) -> &[TokenBucket] {
        &self.tiers
    }
}

/// A nanosecond count as a `Duration`, saturating at `Duration::MAX`.
fn nanos_to_duration(nanos: u128) -> Duration {
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits in a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    use crate::test_origin as origin;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn fresh_bucket_is_full_and_gives_its_capacity() {
        let t0 = origin();
        let mut bucket = TokenBucket::new(Rate::per_second(10), t0);
        assert!(bucket.is_full(t0));
        assert_eq!(bucket.available(t0), 10);
        for _ in 0..10 {
            assert_eq!(bucket.try_take(t0), Ok(()));
        }
        assert_eq!(bucket.try_take(t0), Err(ms(100)));
        assert_eq!(bucket.available(t0), 0);
        assert!(!bucket.is_full(t0));
    }

    #[test]
    fn retry_after_is_exact_to_the_nanosecond() {
        let t0 = origin();
        let mut bucket = TokenBucket::new(Rate::per_second(10), t0);
        for _ in 0..10 {
            bucket.try_take(t0).unwrap();
        }
        assert_eq!(bucket.retry_after(t0 + ms(30)), Some(ms(70)));
        let just_before = t0 + ms(100) - Duration::from_nanos(1);
        assert_eq!(bucket.try_take(just_before), Err(Duration::from_nanos(1)));
        assert_eq!(bucket.try_take(t0 + ms(100)), Ok(()));
        assert_eq!(bucket.try_take(t0 + ms(100)), Err(ms(100)));
        // A failed take consumes nothing: the wait keeps shrinking with time.
        assert_eq!(bucket.try_take(t0 + ms(150)), Err(ms(50)));
        assert!(bucket.is_full(t0 + ms(1100)));
        assert!(!bucket.is_full(t0 + ms(1100) - Duration::from_nanos(1)));
    }

    #[test]
    fn rates_that_do_not_divide_the_period_never_drift() {
        let t0 = origin();
        let mut bucket = TokenBucket::new(Rate::per_second(3), t0);
        let mut now = t0;
        let mut taken = 0u64;
        // Take as soon as allowed, for one virtual hour (bounded, so a zero wait fails).
        for _ in 0..30_000 {
            if now > t0 + secs(3600) {
                break;
            }
            match bucket.try_take(now) {
                Ok(()) => taken += 1,
                Err(wait) => now += wait,
            }
        }
        assert!(now > t0 + secs(3600), "waits too short to reach the hour");
        // Capacity 3 plus exactly 3 per second for 3600 s.
        assert_eq!(taken, 3 + 3 * 3600);
        let mut fresh = TokenBucket::new(Rate::per_second(3), t0);
        for _ in 0..3 {
            fresh.try_take(t0).unwrap();
        }
        // One third of a second, rounded up to the nanosecond.
        assert_eq!(fresh.retry_after(t0), Some(Duration::from_nanos(333_333_334)));
        assert!(fresh.try_take(t0 + Duration::from_nanos(333_333_333)).is_err());
        assert!(fresh.try_take(t0 + Duration::from_nanos(333_333_334)).is_ok());
    }

    #[test]
    fn time_going_backwards_counts_as_no_time() {
        let t0 = origin();
        let t1 = t0 + secs(10);
        let mut bucket = TokenBucket::new(Rate::per_second(1), t0);
        bucket.try_take(t1).unwrap();
        // An earlier `now` neither refills nor rewinds the bucket.
        assert_eq!(bucket.try_take(t0), Err(secs(11)));
        assert!(!bucket.is_full(t0 + secs(5)));
        assert_eq!(bucket.try_take(t1 + ms(999)), Err(ms(1)));
        assert_eq!(bucket.try_take(t1 + secs(1)), Ok(()));
    }

    #[test]
    fn huge_idle_gaps_and_extreme_rates_do_not_overflow() {
        let t0 = origin();
        // About 35,000 years: more nanoseconds than a u64 holds.
        let far = t0 + secs(1 << 40);
        let mut bucket = TokenBucket::new(Rate::new(u32::MAX, Duration::MAX), t0);
        assert_eq!(bucket.available(t0), u32::MAX);
        bucket.try_take(t0).unwrap();
        assert!(bucket.is_full(far));
        assert_eq!(bucket.available(far), u32::MAX);

        let mut hourly = TokenBucket::new(Rate::per_hour(u32::MAX), t0);
        for _ in 0..3 {
            hourly.try_take(t0).unwrap();
        }
        assert!(hourly.is_full(far));
        assert_eq!(hourly.available(far), u32::MAX);

        let mut yearly = TokenBucket::new(Rate::new(1, secs(1 << 40)), t0);
        yearly.try_take(t0).unwrap();
        assert_eq!(yearly.try_take(t0 + secs(1)), Err(secs((1 << 40) - 1)));
        assert_eq!(yearly.try_take(far), Ok(()));
        assert_eq!(nanos_to_duration(u128::MAX), Duration::MAX);
    }

    #[test]
    fn degenerate_rates() {
        let t0 = origin();
        let mut blocked = TokenBucket::new(Rate::per_second(0), t0);
        assert_eq!(blocked.try_take(t0), Err(secs(1)));
        assert_eq!(blocked.try_take(t0 + secs(3600)), Err(secs(1)));
        assert!(blocked.is_full(t0));
        let mut unlimited = TokenBucket::new(Rate::new(1, Duration::ZERO), t0);
        for _ in 0..1000 {
            assert_eq!(unlimited.try_take(t0), Ok(()));
        }
        assert_eq!(unlimited.available(t0), 1);
        let mut none = TieredBucket::new(&[], t0);
        assert_eq!(none.try_take(t0), Ok(()));
        assert!(none.is_full(t0));
    }

    #[test]
    fn tiers_block_in_turn_and_refill_over_an_hour() {
        let t0 = origin();
        let rates = [Rate::per_second(1), Rate::per_minute(10), Rate::per_hour(100)];
        let mut bucket = TieredBucket::new(&rates, t0);
        // The second tier blocks a quick second take.
        bucket.try_take(t0).unwrap();
        assert_eq!(bucket.try_take(t0 + ms(400)), Err(ms(600)));
        // One take a second: the minute tier (one token per 6 s) keeps up for 11 takes, then
        // holds 10 - 11 + 11/6 tokens and needs one more second.
        for second in 1..11 {
            assert_eq!(bucket.try_take(t0 + secs(second)), Ok(()), "second {second}");
        }
        assert_eq!(bucket.try_take(t0 + secs(11)), Err(secs(1)));
        assert_eq!(bucket.tiers()[0].available(t0 + secs(11)), 1);
        assert_eq!(bucket.try_take(t0 + secs(12)), Ok(()));
        // The hour tier (one token per 36 s) is 12 - 12/36 tokens short: full 420 s later.
        assert!(!bucket.is_full(t0 + secs(12 + 420) - Duration::from_nanos(1)));
        assert!(bucket.is_full(t0 + secs(12 + 420)));
        assert!(bucket.is_full(t0 + secs(12 + 3600)));
    }

    #[test]
    fn hour_tier_blocks_with_the_longest_wait() {
        let t0 = origin();
        let rates = [Rate::per_second(100), Rate::per_minute(100), Rate::per_hour(10)];
        let mut bucket = TieredBucket::new(&rates, t0);
        for _ in 0..10 {
            bucket.try_take(t0).unwrap();
        }
        // Only the hour tier is empty: one token per 6 minutes.
        assert_eq!(bucket.try_take(t0), Err(secs(360)));
        let rates = [Rate::per_second(1), Rate::per_minute(1)];
        let mut both = TieredBucket::new(&rates, t0);
        both.try_take(t0).unwrap();
        // Both tiers are empty; the minute tier's wait is the longer one.
        assert_eq!(both.try_take(t0 + ms(500)), Err(ms(59_500)));
    }

    #[test]
    fn a_rejected_take_consumes_from_no_tier() {
        let t0 = origin();
        let rates = [Rate::per_second(1), Rate::per_minute(10)];
        let mut bucket = TieredBucket::new(&rates, t0);
        bucket.try_take(t0).unwrap();
        for _ in 0..100 {
            assert!(bucket.try_take(t0).is_err());
        }
        assert_eq!(bucket.tiers()[1].available(t0), 9);
        assert_eq!(bucket.retry_after(t0), Some(secs(1)));
        assert_eq!(bucket.retry_after(t0 + secs(1)), None);
    }

    /// Successful takes in any window of the bucket's clock never exceed the capacity plus
    /// what the rate refills over the window; a reported wait is exact.
    fn check_window_bound(rates: &[Rate], steps: &[(u64, bool)]) -> Result<(), TestCaseError> {
        let t0 = origin() + secs(1_000_000);
        let mut bucket = TieredBucket::new(rates, t0);
        let (mut now, mut clock) = (t0, t0);
        let mut successes = Vec::new();
        for &(step, backwards) in steps {
            now = if backwards { now - Duration::from_nanos(step) } else { now + ms(step) };
            clock = clock.max(now);
            match bucket.try_take(now) {
                Ok(()) => successes.push(clock),
                Err(wait) => {
                    let mut at = bucket.clone();
                    prop_assert!(at.try_take(now + wait).is_ok(), "a token after the wait");
                    if let Some(early) = wait.checked_sub(Duration::from_nanos(1)) {
                        let mut before = bucket.clone();
                        prop_assert!(before.try_take(now + early).is_err(), "not earlier");
                    }
                }
            }
        }
        for rate in rates {
            for (i, &start) in successes.iter().enumerate() {
                for (j, &end) in successes.iter().enumerate().skip(i) {
                    let elapsed = (end - start).as_nanos();
                    let refilled = elapsed * u128::from(rate.tokens) / rate.per.as_nanos();
                    let bound = u128::from(rate.tokens) + refilled;
                    prop_assert!((j - i + 1) as u128 <= bound, "{rate:?} {i}..={j}");
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn takes_in_any_window_stay_within_capacity_plus_refill(
            rates in prop::collection::vec(
                (1u32..8, 1u64..5_000).prop_map(|(n, per)| Rate::new(n, ms(per))),
                1..4,
            ),
            steps in prop::collection::vec((0u64..400, prop::bool::weighted(0.05)), 1..150),
        ) {
            check_window_bound(&rates, &steps)?;
        }
    }

    #[test]
    fn exhaustive_small_rates_stay_within_the_bound() {
        // Every rate of 1..=4 tokens per 1..=7 ms, taking every 0..=3 ms.
        for tokens in 1..=4 {
            for per in 1..=7 {
                for step in 0..=3 {
                    let steps = vec![(step, false); 60];
                    check_window_bound(&[Rate::new(tokens, ms(per))], &steps).unwrap();
                }
            }
        }
    }
}
