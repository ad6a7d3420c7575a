//! A meter's last hour of demand, one average per minute, for the status
//! page's sparklines.
//!
//! Kept in the meter task (244 bytes per meter once it has an hour: 61
//! `f32` minutes, a gap stored as NaN, allocated once at their final size)
//! and handed out as a [`Sparkline`] only when a minute completes, so the
//! statistics batch carries it once a minute per meter rather than on every
//! poll. How a [`Sparkline`] is stored is [`Sparkline::encode`]'s business.

use std::collections::VecDeque;

use crate::stats::Sparkline;

/// Minutes kept.
pub const MINUTES: usize = 60;

/// Per-minute demand averages of the last hour.
#[derive(Debug, Default)]
pub struct Spark {
    minute: i64,
    sum: f64,
    n: u32,
    /// Completed minutes, oldest first; NaN: no reading that minute (an
    /// `Option<f32>` is twice the size, and 100,000 meters keep an hour).
    done: VecDeque<f32>,
}

impl Spark {
    /// Adds a reading taken at `unix_secs`; returns the hour when this
    /// reading starts a new minute (the previous one is complete).
    pub fn add(&mut self, unix_secs: f64, kw: f64) -> Option<Sparkline> {
        let minute = (unix_secs / 60.0).floor() as i64;
        let mut rendered = None;
        if self.n > 0 && minute != self.minute {
            self.close(minute);
            rendered = Some(self.render());
        }
        if self.n == 0 {
            self.minute = minute;
        }
        self.sum += kw;
        self.n += 1;
        rendered
    }

    /// Moves the current minute's average into the history, with gaps for
    /// minutes that had no reading.
    fn close(&mut self, next_minute: i64) {
        if self.done.capacity() == 0 {
            // Once, at the size it keeps: growing by doubling would end at
            // 64 slots, and pushing before dropping would need more.
            self.done.reserve_exact(MINUTES);
        }
        self.push((self.sum / f64::from(self.n)) as f32);
        let gap = (next_minute - self.minute - 1).clamp(0, MINUTES as i64);
        for _ in 0..gap {
            self.push(f32::NAN);
        }
        self.sum = 0.0;
        self.n = 0;
    }

    fn push(&mut self, minute: f32) {
        if self.done.len() == MINUTES {
            self.done.pop_front();
        }
        self.done.push_back(minute);
    }

    /// The completed minutes, oldest first, `None` for missing ones.
    pub fn render(&self) -> Sparkline {
        Sparkline::new(
            self.done
                .iter()
                .map(|&v| (!v.is_nan()).then_some(f64::from(v)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_per_minute_with_gaps_and_keeps_an_hour() {
        let mut s = Spark::default();
        assert_eq!(s.add(0.0, 1.0), None);
        assert_eq!(s.add(30.0, 3.0), None);
        let text = |s: Option<Sparkline>| s.map(|s| s.encode());
        assert_eq!(text(s.add(61.0, 5.0)).as_deref(), Some("2.000"));
        // Minute 2 has no reading.
        assert_eq!(text(s.add(185.0, 1.0)).as_deref(), Some("2.000,5.000,"));
        for m in 4..200 {
            s.add(f64::from(m) * 60.0, 1.0);
        }
        assert_eq!(s.render().minutes().len(), MINUTES);
        // An hour of history stays at its first allocation: 100,000 meters
        // keep one each.
        assert!(
            s.done.capacity() * std::mem::size_of_val(&s.done[0]) <= 256,
            "{} minutes of {} bytes",
            s.done.capacity(),
            std::mem::size_of_val(&s.done[0])
        );
        // A gap longer than the hour keeps it at its size too.
        s.add(10_000.0 * 60.0, 1.0);
        s.add(10_001.0 * 60.0, 1.0);
        assert!(s.done.capacity() <= 64);
        assert!(
            s.render().minutes()[..MINUTES - 1]
                .iter()
                .all(Option::is_none)
        );
    }
}
