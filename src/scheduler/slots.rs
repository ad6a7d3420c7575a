//! Slot arithmetic: pure functions, no clocks of their own.
//!
//! A meter's slots are `origin + phase + k * interval`. Computing each slot
//! from the origin (instead of sleeping `interval` after each poll) is what
//! keeps ticks from drifting; the phase, derived from the cloud id, spreads
//! meters evenly over the interval so the relay sees a steady rate.
//!
//! The origin is aligned to the wall clock: the last multiple of the
//! interval since the Unix epoch before the scheduler started
//! ([`epoch_offset`]). Every pinger thus puts a meter's slots at the same
//! instants (`epoch + phase + k * interval`, up to the hosts' clock skew),
//! so a meter handed from one pinger to another keeps its grid, and the
//! slot a reading belongs to is a name two pingers agree on. Once started,
//! slots follow the monotonic clock: a step of the wall clock does not
//! move them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cloud_id::CloudId;

/// How far `now` is past the last multiple of `interval` since the epoch:
/// the scheduler's origin is `now` minus this.
pub fn epoch_offset(now: DateTime<Utc>, interval: Duration) -> Duration {
    let i = interval.as_nanos().max(1);
    let since_epoch = now
        .timestamp_nanos_opt()
        .and_then(|n| u128::try_from(n).ok())
        .unwrap_or(0);
    Duration::from_nanos((since_epoch % i) as u64)
}

/// The meter's offset inside the interval, stable across restarts.
///
/// Fibonacci hashing of the id: consecutive ids (as simulators and bulk
/// provisioning produce) land far apart, and any set of ids spreads close to
/// evenly over the interval.
pub fn phase_for(id: CloudId, interval: Duration) -> Duration {
    phase_of_key(u64::from(id.as_u32()), interval)
}

/// The offset inside the interval for any 64-bit key (a cloud id, or an id
/// salted by a stream kind so one meter's streams fall apart).
pub fn phase_of_key(key: u64, interval: Duration) -> Duration {
    let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let nanos = interval.as_nanos() * u128::from(h) / (1u128 << 32);
    Duration::from_nanos(nanos as u64)
}

/// Index of the first slot at or after `elapsed` (time since the origin).
pub fn first_slot_at_or_after(elapsed: Duration, phase: Duration, interval: Duration) -> u64 {
    let Some(since_phase) = elapsed.checked_sub(phase) else {
        return 0;
    };
    let i = interval.as_nanos().max(1);
    since_phase.as_nanos().div_ceil(i) as u64
}

/// Time from the origin to slot `k`.
pub fn slot_offset(k: u64, phase: Duration, interval: Duration) -> Duration {
    phase + interval.saturating_mul(k.min(u64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIX: Duration = Duration::from_secs(6);

    #[test]
    fn phases_of_consecutive_ids_spread_evenly() {
        // 10,000 meters into 60 buckets of 100 ms: each should hold ~167.
        let mut buckets = [0u32; 60];
        for i in 0..10_000 {
            let p = phase_for(CloudId::from_index(0xa00000 + i), SIX);
            assert!(p < SIX);
            buckets[(p.as_millis() / 100) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 140 && *max < 195, "uneven spread {min}..{max}");
    }

    #[test]
    fn slots_do_not_drift_and_overruns_skip() {
        let phase = Duration::from_millis(1500);
        assert_eq!(first_slot_at_or_after(Duration::ZERO, phase, SIX), 0);
        assert_eq!(first_slot_at_or_after(phase, phase, SIX), 0);
        assert_eq!(
            first_slot_at_or_after(phase + Duration::from_millis(1), phase, SIX),
            1
        );
        // A poll that ran past two slots resumes at the third, not at a queue.
        assert_eq!(
            first_slot_at_or_after(phase + SIX * 2 + Duration::from_millis(5), phase, SIX),
            3
        );
        assert_eq!(slot_offset(1000, phase, SIX), phase + SIX * 1000);
    }

    #[test]
    fn origins_taken_at_different_times_share_one_wall_clock_grid() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // 12:00:00 is a multiple of 6 s since the epoch; 12:00:04.5 is 4.5 s past it.
        assert_eq!(
            epoch_offset(at("2025-01-15T12:00:00Z"), SIX),
            Duration::ZERO
        );
        let a = at("2025-01-15T12:00:04.500Z");
        let b = at("2025-01-15T12:07:13.250Z");
        let origin_a = a - chrono::Duration::from_std(epoch_offset(a, SIX)).unwrap();
        let origin_b = b - chrono::Duration::from_std(epoch_offset(b, SIX)).unwrap();
        assert_eq!(origin_a, at("2025-01-15T12:00:00Z"));
        assert_eq!(origin_b, at("2025-01-15T12:07:12Z"));
        // Two pingers started 7 minutes apart compute the same slot instants.
        assert_eq!((origin_b - origin_a).num_milliseconds() % 6_000, 0);
    }
}
