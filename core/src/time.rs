//! The two clocks the caller passes in with every input.
//!
//! A monotonic [`Instant`] drives timers (it never jumps, but it stops while a laptop
//! sleeps); the wall clock gives dates (JWT `exp`/`nbf`, the hub's epoch), which must still be
//! right after the machine wakes up. The core reads neither: adapters read both and pass them.

use std::time::{Duration, Instant};

/// Wall-clock time as the time since the UNIX epoch (what `SystemTime` measures, which the
/// core does not touch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub Duration);

impl UnixTime {
    /// The epoch itself (1970-01-01T00:00:00Z).
    pub const EPOCH: Self = Self(Duration::ZERO);

    /// Whole seconds since the epoch.
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Nanoseconds since the epoch, saturating in the year 2554.
    pub fn as_nanos_u64(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }
}

/// The time of an input: both clocks, read by the caller at the same moment.
///
/// Timers use [`mono`](Self::mono); anything that means a date (token expiry) uses
/// [`wall`](Self::wall). Tests make both up: advancing `mono` by a second while `wall` jumps
/// three hours is what a suspended laptop looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// The monotonic clock.
    pub mono: Instant,
    /// The wall clock.
    pub wall: UnixTime,
}

impl Now {
    /// Both clocks, read by the caller at the same moment:
    /// `Now::new(Instant::now(), UnixTime(SystemTime::now().duration_since(UNIX_EPOCH)?))` in
    /// an adapter, a fixed origin moved with [`after`](Self::after) or [`at`](Self::at) in a test.
    pub fn new(mono: Instant, wall: UnixTime) -> Self {
        Self { mono, wall }
    }

    /// Both clocks advanced by `d` (a virtual clock in tests).
    #[must_use]
    pub fn after(self, d: Duration) -> Self {
        Self { mono: crate::later(self.mono, d), wall: self.wall.saturating_add(d) }
    }

    /// The monotonic clock moved to `mono`, the wall clock by as much (never backwards).
    #[must_use]
    pub fn at(self, mono: Instant) -> Self {
        let d = mono.saturating_duration_since(self.mono);
        Self { mono: self.mono.max(mono), wall: self.wall.saturating_add(d) }
    }
}
