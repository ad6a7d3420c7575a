//! The one wall clock: what time it is, for everything that stamps or
//! compares calendar time (hour buckets, token expiry, statistics).
//!
//! Code that decides by the calendar (is this hour complete? has this token
//! expired?) takes a [`Clock`] instead of calling `Utc::now()`, so tests can
//! set the time, step it, and run hours in milliseconds. A test clock
//! advances with tokio's clock, so under `tokio::time::pause()` the
//! calendar moves exactly as far as the paused timers do. Intervals and
//! timeouts keep using `tokio::time::Instant`; this module is only about
//! the calendar.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Where "now" comes from; cheap to clone (clones of a test clock share
/// its setting).
#[derive(Clone, Default)]
pub struct Clock(Source);

#[derive(Clone, Default)]
enum Source {
    /// The operating system's clock.
    #[default]
    System,
    /// A set time that advances with tokio's clock: `(set to, set when)`.
    Test(Arc<Mutex<(DateTime<Utc>, Instant)>>),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::System"),
            Source::Test(_) => write!(f, "Clock::Test({})", self.now()),
        }
    }
}

impl Clock {
    /// The operating system's clock; what production uses.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `at` now and then moves with tokio's clock
    /// (paused or not); [`Clock::set`] and [`Clock::advance`] step it.
    pub fn starting_at(at: DateTime<Utc>) -> Clock {
        Clock(Source::Test(Arc::new(Mutex::new((at, Instant::now())))))
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Source::System => Utc::now(),
            Source::Test(state) => {
                let (at, since) = *lock(state);
                let elapsed = chrono::Duration::from_std(since.elapsed()).unwrap_or_default();
                at + elapsed
            }
        }
    }

    /// The current time as unix seconds with a fractional part, as the
    /// registry and the token store keep times.
    pub fn unix(&self) -> f64 {
        self.now().timestamp_micros() as f64 / 1e6
    }

    /// Steps a test clock to `at` (backwards too, as a real clock can be
    /// stepped by NTP); does nothing to the system clock.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Source::Test(state) = &self.0 {
            *lock(state) = (at, Instant::now());
        }
    }

    /// Steps a test clock forward by `d` without any timer firing.
    pub fn advance(&self, d: Duration) {
        let later = self.now() + chrono::Duration::from_std(d).unwrap_or_default();
        self.set(later);
    }
}

/// The system clock as unix seconds; for code that only stamps times and
/// has no [`Clock`] to hand (logs, statistics).
pub fn now_unix() -> f64 {
    Clock::system().unix()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[tokio::test(start_paused = true)]
    async fn a_test_clock_moves_with_paused_tokio_time_and_can_be_stepped() {
        let clock = Clock::starting_at(t("2025-01-15T12:59:59Z"));
        let shared = clock.clone();
        assert_eq!(clock.now(), t("2025-01-15T12:59:59Z"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(shared.now(), t("2025-01-15T13:00:01Z"));
        clock.advance(Duration::from_secs(3600));
        assert_eq!(shared.now(), t("2025-01-15T14:00:01Z"));
        clock.set(t("2025-01-15T11:00:00Z"));
        assert_eq!(shared.now(), t("2025-01-15T11:00:00Z"));
        assert_eq!(shared.unix(), 1_736_938_800.0);
    }

    #[test]
    fn the_system_clock_is_now() {
        let before = Utc::now();
        let now = Clock::system().now();
        assert!(now >= before && now - before < chrono::Duration::seconds(5));
        assert!((now_unix() - before.timestamp() as f64).abs() < 5.0);
    }
}
