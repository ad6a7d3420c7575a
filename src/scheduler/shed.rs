//! Planned shedding: when the caps cannot carry every slot, the share they
//! cannot carry is skipped at the slot, not after queueing.
//!
//! Owns the shed fraction and each stream's shedding debt. Skipping only at
//! the start deadline (`max_start_lag`) keeps the grid, but the polls that
//! do run have waited in a queue at the caps first, so under overload most
//! of them start up to `max_start_lag` after their slot. Once a second the
//! controller here works out, by Little's law on the requests' own round
//! trip (as [`super::Capacity`] does for the warning), how many requests a
//! second the caps can carry, and sheds the rest of the slots as they come
//! due (summation and price first, then demand; see [`shares`]), aiming
//! a little below the caps so no queue forms, and shedding any queue that
//! formed anyway over the next second. Each meter's stream adds its
//! fraction to its debt at every slot and skips the slot that takes the
//! debt to one, so every meter sheds the same share, spread over its
//! slots: over any run of the same number of slots, two meters' skips
//! differ by at most one. The debts start spread over `0..1` (from the id),
//! so the sheds spread evenly over time too. The cost of that smoothness:
//! when a round of skips ends, a meter whose debt started near one can
//! shed again before a meter whose debt started near zero has reached its
//! slot, so for up to one interval the skip counts span two. The start
//! deadline stays as the backstop for what the estimate misses (a burst, a
//! relay slowing down), and its skips count against the meter's debt.
//! Nothing here sends requests or reads the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Capacity, ReadMeter, Shared};
use crate::cloud_id::CloudId;

/// How often the shed fraction is worked out again: often enough that a
/// relay that speeds up is followed within an interval.
pub const EVERY: Duration = Duration::from_secs(1);

/// The share of the caps planned shedding leaves free, so the slots that
/// run find a permit at once despite the round trips' spread.
const HEADROOM: f64 = 0.97;

/// Never plan to shed more than this: a meter still gets one slot in ten.
const MAX_SHED: f64 = 0.9;

/// The shares of slots being shed at the slot (0: none), shared by the
/// demand tasks, the streams' driver and the controller.
#[derive(Debug, Default)]
pub struct Shed {
    demand: AtomicU32,
    other: AtomicU32,
    /// Summation and price slots that came due (shed or not): what those
    /// streams ask of the caps.
    pub(super) other_due: AtomicU64,
}

impl Shed {
    /// A summation or price slot came due.
    pub fn other_due(&self) {
        self.other_due.fetch_add(1, Ordering::Relaxed);
    }

    /// The share of each meter's demand slots to skip, in `0.0..=0.9`.
    pub fn demand(&self) -> f32 {
        f32::from_bits(self.demand.load(Ordering::Relaxed))
    }

    /// The share of each summation and price slot to skip, in `0.0..=0.9`.
    pub fn other(&self) -> f32 {
        f32::from_bits(self.other.load(Ordering::Relaxed))
    }

    pub(super) fn set(&self, shares: Shares) {
        self.demand
            .store(shares.demand.to_bits(), Ordering::Relaxed);
        self.other.store(shares.other.to_bits(), Ordering::Relaxed);
    }
}

/// What to shed of each kind of slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shares {
    /// Of the demand slots.
    pub demand: f32,
    /// Of the summation and price slots.
    pub other: f32,
}

/// What to shed when `demand_per_s` demand slots and `other_per_s`
/// summation and price slots come due a second, `backlog_per_s` requests
/// already wait, and the caps carry `achievable_per_s`. Summation and
/// price yield first: a missed summation read loses no energy (the next
/// one counts it) and price changes seldom, while a missed demand reading
/// is gone. Neither sheds more than [`MAX_SHED`].
pub fn shares(
    demand_per_s: f64,
    other_per_s: f64,
    backlog_per_s: f64,
    achievable_per_s: f64,
) -> Shares {
    let (demand_per_s, other_per_s) = (demand_per_s.max(0.0), other_per_s.max(0.0));
    let room = achievable_per_s * HEADROOM - backlog_per_s.max(0.0);
    let excess = demand_per_s + other_per_s - room.max(0.0);
    if excess <= 0.0 {
        return Shares::default();
    }
    let other = if other_per_s > 0.0 {
        (excess / other_per_s).min(MAX_SHED)
    } else {
        0.0
    };
    let left = excess - other * other_per_s;
    let demand = if demand_per_s > 0.0 {
        (left / demand_per_s).clamp(0.0, MAX_SHED)
    } else {
        0.0
    };
    Shares {
        demand: demand as f32,
        other: other as f32,
    }
}

/// A stream's part of the shedding, carried from slot to slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Debt(f32);

impl Debt {
    /// A meter's debt starts anywhere in `0..1`, from its id, so meters
    /// come due for shedding at different slots. The hash is not the
    /// phase's: meters due at neighbouring instants must not shed together.
    pub fn new(id: CloudId) -> Debt {
        Debt::for_key(u64::from(id.as_u32()))
    }

    /// No debt: a stream before [`Debt::for_key`] places it.
    pub const ZERO: Debt = Debt(0.0);

    /// The starting debt for any 64-bit key (an id, or an id salted by a
    /// stream's kind), spread over `0..1` by SplitMix64's finaliser.
    pub fn for_key(key: u64) -> Debt {
        let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Debt((z >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// At a slot, with `fraction` being shed: whether to skip this slot.
    pub fn at_slot(&mut self, fraction: f32) -> bool {
        if fraction <= 0.0 {
            return false;
        }
        self.0 += fraction;
        if self.0 >= 1.0 {
            self.0 -= 1.0;
            return true;
        }
        false
    }

    /// A slot skipped at the start deadline counts as shed.
    pub fn paid(&mut self) {
        self.0 = (self.0 - 1.0).max(-1.0);
    }
}

/// Works the shed fraction out once every [`EVERY`] from the caps the
/// reads go through, until `shutdown`; without caps (a stand-in reader)
/// nothing is shed.
pub(super) async fn control<R: ReadMeter>(shared: Arc<Shared<R>>, shutdown: CancellationToken) {
    let Some(caps) = shared.poller.caps() else {
        return;
    };
    let counters = &shared.counters;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = caps.usage();
    let mut last_other = shared.shed.other_due.load(Ordering::Relaxed);
    let mut achievable = f64::INFINITY;
    let mut other_per_s: f64 = 0.0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let usage = caps.usage();
        let used = usage.since(&last);
        let due = counters.meters.load(Ordering::Relaxed)
            - counters.meters_in_backoff.load(Ordering::Relaxed);
        // The warning's own estimate, over the last second.
        let capacity = Capacity::estimate(
            EVERY,
            shared.opts.poll_interval,
            due,
            used,
            caps.max_concurrent(),
            caps.max_per_second(),
        );
        // A second in which nothing finished keeps the last estimate: with
        // round trips longer than a second that is most seconds' news.
        if used.finished > 0 {
            achievable = capacity.achievable_per_s;
        }
        // Summation and price slots come a minute or more apart per meter,
        // so a second's count is smoothed over a few.
        let other = shared.shed.other_due.load(Ordering::Relaxed);
        let other_now = other.saturating_sub(last_other) as f64 / EVERY.as_secs_f64();
        other_per_s += (other_now - other_per_s) * 0.25;
        // A queue at the caps is load they could not carry either: shed it
        // over the next second too, or it only drains at the headroom's
        // pace while every poll behind it starts late.
        let backlog = caps.waiting() as f64 / EVERY.as_secs_f64();
        shared.shed.set(shares(
            capacity.needed_per_s,
            other_per_s,
            backlog,
            achievable.min(f64::from(caps.max_per_second())),
        ));
        last = usage;
        last_other = other;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_what_the_caps_cannot_carry_and_nothing_when_they_can() {
        let none = Shares::default();
        assert_eq!(shares(100.0, 10.0, 0.0, 200.0), none);
        assert_eq!(shares(0.0, 0.0, 0.0, 0.0), none);
        // 80/s of caps for 100/s of demand: a bit more than a fifth, so a
        // queue never forms.
        let only_demand = shares(100.0, 0.0, 0.0, 80.0);
        assert!((only_demand.demand - 0.224).abs() < 1e-6, "{only_demand:?}");
        // Summation and price yield first, up to nine in ten...
        let some = shares(100.0, 10.0, 0.0, 110.0);
        assert!((some.other - 0.33).abs() < 1e-6, "{some:?}");
        assert_eq!(some.demand, 0.0);
        // ...then demand sheds the rest.
        let more = shares(100.0, 10.0, 0.0, 80.0);
        assert!((more.other - 0.9).abs() < 1e-6, "{more:?}");
        assert!((more.demand - 0.234).abs() < 1e-6, "{more:?}");
        // A queue already waiting leaves less room.
        assert!(shares(100.0, 0.0, 20.0, 80.0).demand > only_demand.demand);
        assert_eq!(shares(100.0, 0.0, 500.0, 80.0).demand, MAX_SHED as f32);
    }

    #[test]
    fn each_meter_sheds_its_share_evenly() {
        let mut debts: Vec<Debt> = (0..1000)
            .map(|i| Debt::new(CloudId::from_index(i)))
            .collect();
        let starts: Vec<f32> = debts.iter().map(|d| d.0).collect();
        assert!(starts.iter().all(|d| (0.0..1.0).contains(d)));
        let low = starts.iter().filter(|d| **d < 0.5).count();
        assert!(
            (400..600).contains(&low),
            "{low} of 1000 start below a half"
        );
        // A quarter shed over 20 slots: every meter skips exactly 5.
        let mut skipped = vec![0; debts.len()];
        for _ in 0..20 {
            for (d, s) in debts.iter_mut().zip(&mut skipped) {
                if d.at_slot(0.25) {
                    *s += 1;
                }
            }
        }
        assert!(skipped.iter().all(|s| *s == 5), "{skipped:?}");
        // A deadline skip counts against the next shed one.
        let mut d = Debt(0.9);
        d.paid();
        assert!(!d.at_slot(0.25));
        assert!(!d.at_slot(0.0), "nothing is shed at a fraction of 0");
        assert!(!d.at_slot(0.5));
        assert!(d.at_slot(0.5));
    }
}
