//! Latency histograms over a rolling window of time slices.
//!
//! Buckets are log-linear (as in HdrHistogram): microseconds below 32 have a bucket each, and
//! every power of two above is split into 32 equal buckets, so a bucket is at most 1/32 of its
//! lower bound wide. A quantile reports its bucket's midpoint, within 1/64 (1.6 %) of the true
//! sample. 736 buckets cover 0 µs to 2^27 µs (134 s); longer latencies count in the last one
//! (the exact maximum is kept apart).

use std::fmt;
use std::time::{Duration, Instant};

use super::snapshot::LatencyStats;

/// log2 of the number of linear buckets per power of two.
const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Latencies of 2^MAX_POWER µs or more share the last bucket.
const MAX_POWER: u32 = 27;
const MAX_BUCKETED_US: u64 = (1 << MAX_POWER) - 1;
const BUCKET_COUNT: usize = ((MAX_POWER - SUB_BUCKET_BITS + 1) as usize) << SUB_BUCKET_BITS;

/// Index of the bucket holding `us` microseconds.
fn bucket_index(us: u64) -> usize {
    let us = us.min(MAX_BUCKETED_US);
    if us < SUB_BUCKETS {
        return us as usize;
    }
    let power = us.ilog2();
    let sub = (us >> (power - SUB_BUCKET_BITS)) - SUB_BUCKETS;
    (((power - SUB_BUCKET_BITS + 1) as usize) << SUB_BUCKET_BITS) + sub as usize
}

/// Lower bound and width of bucket `index`, in microseconds.
fn bucket_bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, 1);
    }
    let shift = (index >> SUB_BUCKET_BITS) - 1;
    let sub = index & (SUB_BUCKETS - 1);
    ((SUB_BUCKETS + sub) << shift, 1 << shift)
}

/// The middle of the whole microseconds in bucket `index` (rounded down).
fn bucket_midpoint(index: usize) -> u64 {
    let (lower, width) = bucket_bounds(index);
    lower + (width - 1) / 2
}

/// A duration in whole microseconds, saturating (after 584,000 years).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How long a [`LatencyHistogram`] remembers samples: `slices` slices of `slice` each.
///
/// Samples age out a whole slice at a time, so the window a snapshot covers is between
/// `slices - 1` and `slices` slices long. Each slice costs about 3 KiB per histogram.
/// The default is 60 s as 6 slices of 10 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollingWindow {
    slice: Duration,
    slices: usize,
}

impl RollingWindow {
    /// A window of `slices` slices of `slice` each, or `None` if `slice` is shorter than a
    /// microsecond or `slices` is zero.
    pub fn new(slice: Duration, slices: usize) -> Option<Self> {
        (slice >= Duration::from_micros(1) && slices > 0).then_some(Self { slice, slices })
    }

    /// Length of one slice.
    pub fn slice(&self) -> Duration {
        self.slice
    }

    /// Number of slices.
    pub fn slices(&self) -> usize {
        self.slices
    }

    /// Length of the whole window, `slice * slices` (saturating).
    pub fn length(&self) -> Duration {
        let slices = u32::try_from(self.slices).unwrap_or(u32::MAX);
        self.slice.checked_mul(slices).unwrap_or(Duration::MAX)
    }
}

impl Default for RollingWindow {
    fn default() -> Self {
        Self { slice: Duration::from_secs(10), slices: 6 }
    }
}

/// The samples recorded during one epoch (one slice-long stretch of time since the origin).
#[derive(Clone)]
struct Slice {
    epoch: u64,
    count: u64,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
    // u32 halves the memory; 4 billion calls of one method in one slice are out of reach.
    buckets: [u32; BUCKET_COUNT],
}

impl Slice {
    fn empty(epoch: u64) -> Self {
        Self { epoch, count: 0, sum_us: 0, min_us: u64::MAX, max_us: 0, buckets: [0; BUCKET_COUNT] }
    }

    fn add(&mut self, us: u64) {
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
        let bucket = &mut self.buckets[bucket_index(us)];
        *bucket = bucket.saturating_add(1);
    }
}

/// Latencies recorded over a [`RollingWindow`], plus an all-time count and sum.
///
/// Time is only a parameter: the window is cut into epochs counted from `origin`, and
/// [`record`](Self::record) and [`stats`](Self::stats) say what time it is. Recording is a few
/// arithmetic operations and never allocates; a slice is cleared when it is reused for a newer
/// epoch. Samples recorded out of order are fine as long as they are still inside the window;
/// older ones count only in the all-time totals.
///
/// It is not synchronised: [`Metrics`](super::Metrics) keeps one behind a mutex per method.
#[derive(Clone)]
pub struct LatencyHistogram {
    origin: Instant,
    window: RollingWindow,
    slice_us: u64,
    count: u64,
    sum_us: u64,
    slices: Box<[Slice]>,
}

impl LatencyHistogram {
    /// An empty histogram whose epochs count from `origin`.
    pub fn new(origin: Instant, window: RollingWindow) -> Self {
        Self {
            origin,
            window,
            slice_us: micros(window.slice),
            count: 0,
            sum_us: 0,
            slices: vec![Slice::empty(0); window.slices].into_boxed_slice(),
        }
    }

    /// The window this histogram keeps.
    pub fn window(&self) -> RollingWindow {
        self.window
    }

    /// Records one call that took `latency` and finished at `now` (microsecond resolution).
    pub fn record(&mut self, latency: Duration, now: Instant) {
        let us = micros(latency);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        let epoch = self.epoch(now);
        let len = self.slices.len() as u64;
        let slice = &mut self.slices[(epoch % len) as usize];
        if slice.epoch != epoch {
            if slice.epoch > epoch {
                return; // a whole window late: its slice already holds newer samples
            }
            *slice = Slice::empty(epoch);
        }
        slice.add(us);
    }

    /// Count, min, mean, max and quantiles of the window ending at `now`, with the all-time
    /// count and sum.
    pub fn stats(&self, now: Instant) -> LatencyStats {
        let mut window = WindowSamples::new();
        self.merge_window(now, &mut window);
        window.stats(self.count, self.sum_us)
    }

    /// Adds the live slices at `now` into `window` and returns the all-time count and sum, so
    /// that a caller holding a lock can release it before computing quantiles.
    pub(super) fn merge_window(&self, now: Instant, window: &mut WindowSamples) -> (u64, u64) {
        let current = self.epoch(now);
        let len = self.slices.len() as u64;
        // A slice from the future (a racing recorder read a later clock) counts as current.
        for slice in self.slices.iter().filter(|s| s.count > 0) {
            if current.saturating_sub(slice.epoch) < len {
                window.add(slice);
            }
        }
        (self.count, self.sum_us)
    }

    fn epoch(&self, now: Instant) -> u64 {
        micros(now.saturating_duration_since(self.origin)) / self.slice_us
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The buckets are thousands of numbers; the stats say more.
        f.debug_struct("LatencyHistogram")
            .field("origin", &self.origin)
            .field("window", &self.window)
            .field("count", &self.count)
            .field("sum_us", &self.sum_us)
            .finish_non_exhaustive()
    }
}

/// The live slices of one histogram, added together.
pub(super) struct WindowSamples {
    count: u64,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
    buckets: Box<[u64; BUCKET_COUNT]>,
}

impl WindowSamples {
    pub(super) fn new() -> Self {
        Self {
            count: 0,
            sum_us: 0,
            min_us: u64::MAX,
            max_us: 0,
            buckets: Box::new([0; BUCKET_COUNT]),
        }
    }

    /// Empties it for the next histogram, keeping the allocation.
    pub(super) fn clear(&mut self) {
        self.count = 0;
        self.sum_us = 0;
        self.min_us = u64::MAX;
        self.max_us = 0;
        self.buckets.fill(0);
    }

    fn add(&mut self, slice: &Slice) {
        self.count += slice.count;
        self.sum_us = self.sum_us.saturating_add(slice.sum_us);
        self.min_us = self.min_us.min(slice.min_us);
        self.max_us = self.max_us.max(slice.max_us);
        for (sum, &n) in self.buckets.iter_mut().zip(&slice.buckets) {
            *sum += u64::from(n);
        }
    }

    /// The statistics of these samples, with the all-time `count` and `sum_us`.
    pub(super) fn stats(&self, count: u64, sum_us: u64) -> LatencyStats {
        if self.count == 0 {
            return LatencyStats { count, sum_us, ..LatencyStats::default() };
        }
        LatencyStats {
            count,
            sum_us,
            window_count: self.count,
            min_us: self.min_us,
            mean_us: self.sum_us as f64 / self.count as f64,
            max_us: self.max_us,
            p50_us: self.quantile(500),
            p90_us: self.quantile(900),
            p99_us: self.quantile(990),
        }
    }

    /// The sample of rank ⌈count × permille / 1000⌉, as its bucket's midpoint within min..=max.
    fn quantile(&self, permille: u64) -> u64 {
        let rank = (u128::from(self.count) * u128::from(permille)).div_ceil(1000).max(1);
        let mut seen = 0u128;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += u128::from(n);
            if seen >= rank {
                return bucket_midpoint(index).clamp(self.min_us, self.max_us);
            }
        }
        self.max_us // unreachable while the buckets add up to count, which add() keeps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_origin as origin;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn buckets_cover_the_range_contiguously_and_narrowly() {
        assert_eq!(BUCKET_COUNT, 736);
        let mut expected_lower = 0;
        for index in 0..BUCKET_COUNT {
            let (lower, width) = bucket_bounds(index);
            assert_eq!(lower, expected_lower, "bucket {index} leaves a gap");
            assert!(width == 1 || width * 32 <= lower, "bucket {index} is too wide");
            assert_eq!(bucket_index(lower), index);
            assert_eq!(bucket_index(lower + width - 1), index);
            expected_lower = lower + width;
        }
        assert_eq!(expected_lower, MAX_BUCKETED_US + 1);
        assert_eq!(bucket_index(u64::MAX), BUCKET_COUNT - 1);
    }

    #[test]
    fn a_midpoint_is_within_one_sixty_fourth_of_every_sample_in_its_bucket() {
        for us in (1..100_000).chain([1 << 20, (1 << 26) + 12_345, MAX_BUCKETED_US]) {
            let mid = bucket_midpoint(bucket_index(us));
            assert!(mid.abs_diff(us) * 64 <= us, "{us} µs reported as {mid}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_distribution() {
        let t0 = origin();
        let mut h = LatencyHistogram::new(t0, RollingWindow::default());
        for us in (1..=1000).rev() {
            h.record(Duration::from_micros(us), t0 + secs(1.0));
        }
        let s = h.stats(t0 + secs(2.0));
        assert_eq!((s.count, s.window_count, s.sum_us), (1000, 1000, 500_500));
        assert_eq!((s.min_us, s.max_us), (1, 1000));
        assert_eq!(s.mean_us, 500.5);
        for (got, want) in [(s.p50_us, 500), (s.p90_us, 900), (s.p99_us, 990)] {
            assert!(got.abs_diff(want) * 64 <= want, "got {got}, want {want}");
        }
        // The midpoints of the buckets these ranks fall in: 496..=503, 896..=911, 976..=991.
        assert_eq!((s.p50_us, s.p90_us, s.p99_us), (499, 903, 983));
    }

    #[test]
    fn quantiles_of_a_skewed_distribution_and_a_long_tail() {
        let t0 = origin();
        let mut h = LatencyHistogram::new(t0, RollingWindow::default());
        for _ in 0..98 {
            h.record(Duration::from_micros(100), t0);
        }
        h.record(Duration::from_millis(250), t0);
        h.record(Duration::from_secs(500), t0); // beyond the last bucket: max stays exact
        let s = h.stats(t0);
        assert_eq!((s.p50_us, s.p90_us, s.min_us, s.max_us), (100, 100, 100, 500_000_000));
        assert!(s.p99_us.abs_diff(250_000) * 64 <= 250_000, "p99 {}", s.p99_us);
    }

    #[test]
    fn one_sample_is_every_quantile_exactly() {
        let t0 = origin();
        let mut h = LatencyHistogram::new(t0, RollingWindow::default());
        h.record(Duration::from_micros(12_345), t0);
        let s = h.stats(t0);
        assert_eq!([s.min_us, s.p50_us, s.p90_us, s.p99_us, s.max_us], [12_345; 5]);
    }

    #[test]
    fn submicrosecond_latencies_count_as_zero() {
        let t0 = origin();
        let mut h = LatencyHistogram::new(t0, RollingWindow::default());
        h.record(Duration::from_nanos(999), t0);
        let s = h.stats(t0);
        assert_eq!((s.window_count, s.max_us, s.p99_us), (1, 0, 0));
    }

    #[test]
    fn samples_age_out_of_the_window_but_not_out_of_the_total() {
        let t0 = origin();
        let mut h = LatencyHistogram::new(t0, RollingWindow::default());
        h.record(Duration::from_micros(10), t0 + secs(5.0)); // epoch 0
        h.record(Duration::from_micros(30), t0 + secs(35.0)); // epoch 3
        let at = |s: f64| h.stats(t0 + secs(s));
        assert_eq!(at(59.9).window_count, 2, "epoch 5: both epochs live");
        let s = at(60.0);
        assert_eq!((s.window_count, s.min_us, s.max_us), (1, 30, 30), "epoch 6 ends epoch 0");
        assert_eq!(at(89.9).window_count, 1);
        let s = at(90.0);
        assert_eq!((s.count, s.sum_us, s.window_count), (2, 40, 0), "epoch 9 ends epoch 3");
        assert_eq!((s.min_us, s.mean_us, s.max_us, s.p99_us), (0, 0.0, 0, 0));
    }

    #[test]
    fn a_stale_slice_is_reset_before_reuse() {
        let t0 = origin();
        let mut h = LatencyHistogram::new(t0, RollingWindow::default());
        for us in [1, 2, 3, 1000, 5000] {
            h.record(Duration::from_micros(us), t0 + secs(1.0)); // epoch 0, slice 0
        }
        h.record(Duration::from_micros(70), t0 + secs(61.0)); // epoch 6, slice 0 again
        // Reading at epoch 5 keeps epoch 0 live, so leftovers of it would show here.
        let s = h.stats(t0 + secs(59.0));
        assert_eq!((s.count, s.window_count), (6, 1));
        assert_eq!((s.min_us, s.max_us, s.p50_us), (70, 70, 70));
        assert_eq!(s.sum_us, 6076);
    }

    #[test]
    fn a_sample_a_whole_window_late_counts_only_in_the_total() {
        let t0 = origin();
        let mut h = LatencyHistogram::new(t0, RollingWindow::default());
        h.record(Duration::from_micros(50), t0 + secs(65.0)); // epoch 6, slice 0
        h.record(Duration::from_micros(9), t0 + secs(5.0)); // epoch 0, slice 0: too old
        h.record(Duration::from_micros(7), t0 + secs(15.0)); // epoch 1, slice 1: still live
        let s = h.stats(t0 + secs(65.0));
        assert_eq!((s.count, s.window_count, s.min_us, s.max_us), (3, 2, 7, 50));
    }

    #[test]
    fn a_custom_window_and_instants_before_the_origin() {
        let t0 = origin();
        let window = RollingWindow::new(Duration::from_millis(100), 3).unwrap();
        assert_eq!(window.length(), Duration::from_millis(300));
        let ms = Duration::from_millis;
        let mut h = LatencyHistogram::new(t0 + ms(1000), window);
        h.record(Duration::from_micros(5), t0); // before the origin: epoch 0
        assert_eq!(h.stats(t0 + ms(1299)).window_count, 1);
        assert_eq!(h.stats(t0 + ms(1300)).window_count, 0);
        assert_eq!(h.window(), window);
    }

    #[test]
    fn windows_need_a_slice_of_a_microsecond_and_one_slice() {
        assert_eq!(RollingWindow::new(Duration::from_nanos(999), 6), None);
        assert_eq!(RollingWindow::new(Duration::from_secs(1), 0), None);
        let w = RollingWindow::new(Duration::from_micros(1), 1).unwrap();
        assert_eq!((w.slice(), w.slices()), (Duration::from_micros(1), 1));
        let d = RollingWindow::default();
        assert_eq!((d.slice(), d.slices(), d.length()), (secs(10.0), 6, secs(60.0)));
        assert_eq!(RollingWindow::new(Duration::MAX, 2).unwrap().length(), Duration::MAX);
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let t0 = origin();
        let s = LatencyHistogram::new(t0, RollingWindow::default()).stats(t0);
        assert_eq!(s, LatencyStats::default());
    }
}
