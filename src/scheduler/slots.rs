//! Slot arithmetic: pure functions, no clocks of their own.
//!
//! A meter's slots are `origin + phase + k * interval`. Computing each slot
//! from the origin (instead of sleeping `interval` after each poll) is what
//! keeps ticks from drifting; the phase, derived from the cloud id, spreads
//! meters evenly over the interval so the relay sees a steady rate.

use std::time::Duration;

use crate::cloud_id::CloudId;

/// The meter's offset inside the interval, stable across restarts.
///
/// Fibonacci hashing of the id: consecutive ids (as simulators and bulk
/// provisioning produce) land far apart, and any set of ids spreads close to
/// evenly over the interval.
pub fn phase_for(id: CloudId, interval: Duration) -> Duration {
    let h = (u64::from(id.as_u32()).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32;
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
}
