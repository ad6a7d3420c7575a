//! One meter-day's slots: which of the expected slots hold a reading, and
//! the gaps between. Pure arithmetic over milliseconds, no I/O.
//!
//! The expected slots are `day_start + phase + k * cadence` inside the day
//! (up to `now` for the day in progress). The phase is taken from the
//! day's first reading, so a meter's grid is found from its own data, which
//! is what lets the report agree with a plain count of the archived lines.
//! A reading counts for the nearest slot (a late poll whose line has no
//! `slot` still lands on its own slot as long as it was less than half a
//! cadence late); two readings for one slot count once.

use serde::Serialize;

use crate::record::format_time;

/// A run of expected slots without a reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Gap {
    /// The first missing slot (UTC RFC 3339).
    pub from: String,
    /// The slot after the last missing one, where readings resume or the
    /// day ends (exclusive).
    pub to: String,
    /// Slots missing in this run.
    pub missing_slots: u64,
    /// Length of the run in seconds (`missing_slots * cadence`).
    pub seconds: u64,
}

/// The slots of one meter-day seen so far.
#[derive(Debug, Clone)]
pub struct DayGrid {
    day_start: i64,
    cadence: i64,
    phase: Option<i64>,
    seen: Vec<bool>,
}

impl DayGrid {
    /// An empty grid for the day starting at `day_start_ms`.
    pub fn new(day_start_ms: i64, cadence_ms: i64) -> DayGrid {
        DayGrid {
            day_start: day_start_ms,
            cadence: cadence_ms.max(1),
            phase: None,
            seen: Vec::new(),
        }
    }

    /// Marks the slot nearest to `slot_ms` (a time inside the day).
    pub fn mark(&mut self, slot_ms: i64) {
        let phase = *self
            .phase
            .get_or_insert((slot_ms - self.day_start).rem_euclid(self.cadence));
        let k = (slot_ms - self.day_start - phase + self.cadence / 2).div_euclid(self.cadence);
        let Ok(k) = usize::try_from(k) else {
            return;
        };
        if k >= self.seen.len() {
            self.seen.resize(k + 1, false);
        }
        self.seen[k] = true;
    }

    /// Expected slots up to `end_ms` (the day's end, or now for today).
    pub fn expected(&self, end_ms: i64) -> u64 {
        let first = self.day_start + self.phase.unwrap_or(0);
        if end_ms <= first {
            return 0;
        }
        ((end_ms - first) as u64).div_ceil(self.cadence as u64)
    }

    /// Expected slots holding a reading, and the gaps, up to `end_ms`.
    pub fn finish(&self, end_ms: i64) -> (u64, Vec<Gap>) {
        let expected = self.expected(end_ms);
        let first = self.day_start + self.phase.unwrap_or(0);
        let slot_time = |k: u64| first + k as i64 * self.cadence;
        let mut present = 0;
        let mut gaps = Vec::new();
        let mut run_start: Option<u64> = None;
        for k in 0..expected {
            let hit = self.seen.get(k as usize).copied().unwrap_or(false);
            if hit {
                present += 1;
                if let Some(s) = run_start.take() {
                    gaps.push(self.gap(slot_time(s), slot_time(k), k - s));
                }
            } else if run_start.is_none() {
                run_start = Some(k);
            }
        }
        if let Some(s) = run_start {
            gaps.push(self.gap(slot_time(s), slot_time(expected), expected - s));
        }
        (present, gaps)
    }

    fn gap(&self, from: i64, to: i64, missing: u64) -> Gap {
        let time = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(format_time)
                .unwrap_or_default()
        };
        Gap {
            from: time(from),
            to: time(to),
            missing_slots: missing,
            seconds: missing * self.cadence as u64 / 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn gaps_are_the_runs_of_missing_slots_on_the_meters_own_phase() {
        // 6 s cadence, phase 1.5 s: 14,400 slots; slots 10..20 and the last
        // 100 missing; a late poll (+0.4 s) still counts for its slot.
        let mut g = DayGrid::new(0, 6000);
        for k in 0..14_300 {
            if (10..20).contains(&k) {
                continue;
            }
            let late = if k == 5 { 400 } else { 0 };
            g.mark(1500 + k * 6000 + late);
        }
        g.mark(1500 + 7 * 6000); // a duplicate
        assert_eq!(g.expected(DAY), 14_400);
        let (present, gaps) = g.finish(DAY);
        assert_eq!(present, 14_290);
        assert_eq!(gaps.len(), 2);
        assert_eq!(gaps[0].from, "1970-01-01T00:01:01.500Z");
        assert_eq!(gaps[0].to, "1970-01-01T00:02:01.500Z");
        assert_eq!((gaps[0].missing_slots, gaps[0].seconds), (10, 60));
        assert_eq!(gaps[1].missing_slots, 100);
        assert_eq!(gaps[1].to, "1970-01-02T00:00:01.500Z");
    }

    #[test]
    fn a_day_without_readings_is_one_gap_and_today_counts_up_to_now() {
        let g = DayGrid::new(0, 60_000);
        let (present, gaps) = g.finish(DAY);
        assert_eq!((present, gaps.len()), (0, 1));
        assert_eq!(gaps[0].missing_slots, 1440);
        assert_eq!(g.expected(3_600_000), 60);
    }
}
