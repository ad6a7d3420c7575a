//! Who yields when the caps are full: the fleet's skip ledger.
//!
//! Owns each meter's count of slots skipped for overload and the fleet's
//! minimum of those counts. A meter's count is its rank at the caps
//! ([`crate::protocol::Start::rank`]): a freed permit goes to the meter that
//! has skipped most, so the meters still waiting at their deadline, the
//! ones that skip, are those that skipped least. Skips at the deadline
//! therefore rotate; most skips under sustained overload are shed at the
//! slot instead ([`super::shed`]), and they count here too, so a meter shed
//! often waits at the caps with a high rank. A meter that joins starts at
//! the fleet's minimum, so it neither jumps the queue nor pays for skips
//! that happened before it existed. It knows nothing about slots or
//! requests.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The skip counts of the scheduled meters, as a histogram (skips -> meters).
#[derive(Debug, Default)]
pub struct SkipLedger {
    levels: Mutex<BTreeMap<u64, u64>>,
}

impl SkipLedger {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<u64, u64>) -> T) -> T {
        // Every change is one step under the lock, so a poisoned map is
        // still consistent.
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut levels)
    }

    /// A meter joins at the fleet's minimum; returns its count.
    pub fn join(&self) -> u64 {
        self.with(|levels| {
            let floor = levels.keys().next().copied().unwrap_or(0);
            *levels.entry(floor).or_default() += 1;
            floor
        })
    }

    /// A meter with `skips` skipped once more; `skips` is bumped.
    pub fn skipped(&self, skips: &mut u64) {
        self.with(|levels| {
            remove(levels, *skips);
            *skips += 1;
            *levels.entry(*skips).or_default() += 1;
        });
    }

    /// A meter with `skips` leaves.
    pub fn leave(&self, skips: u64) {
        self.with(|levels| remove(levels, skips));
    }

    /// The fewest and most skips of any scheduled meter.
    pub fn spread(&self) -> Option<(u64, u64)> {
        self.with(|levels| {
            let min = levels.keys().next().copied()?;
            let max = levels.keys().next_back().copied()?;
            Some((min, max))
        })
    }
}

fn remove(levels: &mut BTreeMap<u64, u64>, skips: u64) {
    if let Some(n) = levels.get_mut(&skips) {
        *n -= 1;
        if *n == 0 {
            levels.remove(&skips);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newcomers_start_at_the_floor_and_leavers_are_forgotten() {
        let ledger = SkipLedger::default();
        let mut a = ledger.join();
        let mut b = ledger.join();
        ledger.skipped(&mut a);
        ledger.skipped(&mut b);
        ledger.skipped(&mut a);
        assert_eq!(ledger.spread(), Some((1, 2)));
        let c = ledger.join();
        assert_eq!(c, 1, "joins at the fleet's minimum, not at zero");
        ledger.leave(b);
        ledger.leave(c);
        assert_eq!(ledger.spread(), Some((2, 2)));
        ledger.leave(a);
        assert_eq!(ledger.spread(), None);
    }
}
