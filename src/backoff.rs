//! The one backoff policy: capped exponential growth with ±20% jitter.
//!
//! A failing meter, a file whose upload failed, a Redis lock held by
//! someone else and an importer retrying a user all wait the same way: the
//! first wait, then doubling, never more than the cap, each wait scattered
//! by ±20% so many waiters (meters behind one relay, files of one hour,
//! two rotators) do not retry in lockstep. This module computes waits; it
//! never sleeps, so callers decide on which clock they wait.

use std::time::Duration;

/// How far a wait is scattered around its nominal value (±20%).
const JITTER: f64 = 0.2;
/// Doublings after which the wait stops growing even without a cap, so the
/// arithmetic never overflows.
const MAX_DOUBLINGS: u32 = 30;

/// A capped exponential backoff; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub first: Duration,
    /// Longest wait (before jitter). A cap below `first` is raised to it.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `first` doubling up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max }
    }

    /// The wait after `failures` consecutive failures (1 = the first),
    /// before jitter: `first`, then doubling, capped at `max`.
    pub fn nominal(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(MAX_DOUBLINGS);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.max.max(self.first))
    }

    /// The wait after `failures` consecutive failures, jittered with the
    /// thread's random generator.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, rand::random::<f64>())
    }

    /// [`delay`](Self::delay) with the jitter drawn by the caller: `unit`
    /// is a uniform sample in `[0, 1)` (tests pass fixed values).
    pub fn delay_with(&self, failures: u32, unit: f64) -> Duration {
        jitter(self.nominal(failures), unit)
    }
}

/// Scatters `d` by ±20%; `unit` is a uniform sample in `[0, 1)`.
pub fn jitter(d: Duration, unit: f64) -> Duration {
    d.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIX: Duration = Duration::from_secs(6);

    #[test]
    fn waits_double_from_the_first_then_cap() {
        let b = Backoff::new(SIX, Duration::from_secs(60));
        let secs: Vec<u64> = (1..=6).map(|n| b.nominal(n).as_secs()).collect();
        assert_eq!(secs, [6, 12, 24, 48, 60, 60]);
        // Zero failures is treated as the first; huge counts do not overflow.
        assert_eq!(b.nominal(0), SIX);
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn a_cap_below_the_first_wait_is_the_first_wait() {
        let b = Backoff::new(SIX, Duration::from_secs(1));
        assert_eq!(b.nominal(5), SIX);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(b.delay_with(1, 0.0), Duration::from_secs(8));
        assert_eq!(b.delay_with(1, 0.5), Duration::from_secs(10));
        assert!(b.delay_with(1, 0.999_999) < Duration::from_secs(12));
        for _ in 0..100 {
            let d = b.delay(1);
            assert!(
                d >= Duration::from_secs(8) && d < Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}
