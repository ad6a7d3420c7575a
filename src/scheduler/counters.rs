//! Lock-free counters the meter tasks bump on every poll, and the summary
//! line computed from them once per interval.
//!
//! Rates and percentiles are computed when the summary is taken, never on
//! the hot path: a poll only does a few relaxed atomic adds.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::ErrorKind;
use crate::protocol::pacing::Usage;

/// Upper bounds (ms) of the scheduling-lag histogram buckets.
const LAG_BOUNDS_MS: [u64; 14] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10_000,
    u64::MAX,
];

/// Slots whose poll started within this of the slot count as on time.
pub const ON_TIME: Duration = Duration::from_millis(500);

/// Counters shared by all meter tasks of one scheduler.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful polls.
    pub polls_ok: AtomicU64,
    /// Failed polls by [`ErrorKind`] (index = position in `ErrorKind::ALL`).
    pub failures: [AtomicU64; ErrorKind::ALL.len()],
    /// Slots whose poll started (on time or late).
    pub slots_polled: AtomicU64,
    /// Slots whose poll's request went out within [`ON_TIME`] of the slot.
    pub slots_on_time: AtomicU64,
    /// Slots skipped because the previous poll overran.
    pub missed_slots: AtomicU64,
    /// Slots skipped because the meter was backing off.
    pub backoff_skips: AtomicU64,
    /// Slots skipped because the poll could not go out within
    /// `max_start_lag` of its slot (the caps were full), or shed at the
    /// slot because the caps could not carry it (`shed_at_slot`).
    pub skipped_overload: AtomicU64,
    /// The part of `skipped_overload` shed at the slot by planned shedding
    /// ([`super::shed`]); the rest waited and missed its start deadline.
    pub shed_at_slot: AtomicU64,
    /// Achievable over needed polls per second, as `f64` bits; set once per
    /// interval from [`Capacity`] (0 until the first estimate).
    pub capacity_ratio_bits: AtomicU64,
    /// History lines written by the backfill (`backfilled_readings_total`).
    pub backfilled_readings: AtomicU64,
    /// Summation gaps still to fill on this pinger's meters.
    pub gaps_open: AtomicI64,
    /// Meters currently in backoff (including auth_failed).
    pub meters_in_backoff: AtomicI64,
    /// Meters currently flagged auth_failed.
    pub meters_auth_failed: AtomicI64,
    /// Meters scheduled: the active meters this pinger owns.
    pub meters: AtomicI64,
    /// Live fleet members this pinger sees, itself included (1 alone).
    pub fleet_members: AtomicI64,
    /// Sum of request latencies (µs), for spare-capacity estimates.
    pub busy_micros: AtomicU64,
    lag: [AtomicU64; LAG_BOUNDS_MS.len()],
    latency: [AtomicU64; LATENCY_BOUNDS_S.len()],
}

/// Upper bounds (seconds) of the poll-latency histogram buckets.
pub const LATENCY_BOUNDS_S: [f64; 12] = [
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    f64::INFINITY,
];

impl Counters {
    /// Records one poll's round trip (success or failure).
    pub fn latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BOUNDS_S.len() - 1);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.busy_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative poll-latency buckets `(upper bound s, count)`, the sum (s)
    /// and the count, as a Prometheus histogram wants them.
    pub fn latency_histogram(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut cumulative = 0;
        let buckets = LATENCY_BOUNDS_S
            .iter()
            .zip(&self.latency)
            .map(|(b, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        let sum = self.busy_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, cumulative)
    }

    /// Records a failed poll.
    pub fn failure(&self, kind: ErrorKind) {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how late after its slot a poll's request went out.
    pub fn lag(&self, lag: Duration) {
        let ms = lag.as_millis() as u64;
        let i = LAG_BOUNDS_MS
            .iter()
            .position(|b| ms < *b)
            .unwrap_or(LAG_BOUNDS_MS.len() - 1);
        self.lag[i].fetch_add(1, Ordering::Relaxed);
        self.slots_polled.fetch_add(1, Ordering::Relaxed);
        if lag <= ON_TIME {
            self.slots_on_time.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes the latest capacity estimate.
    pub fn set_capacity(&self, c: &Capacity) {
        self.capacity_ratio_bits
            .store(c.ratio().to_bits(), Ordering::Relaxed);
    }

    /// A point-in-time copy of every counter.
    pub fn snapshot(&self) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            polls_ok: get(&self.polls_ok),
            failures: std::array::from_fn(|i| get(&self.failures[i])),
            slots_polled: get(&self.slots_polled),
            slots_on_time: get(&self.slots_on_time),
            missed_slots: get(&self.missed_slots),
            backoff_skips: get(&self.backoff_skips),
            skipped_overload: get(&self.skipped_overload),
            shed_at_slot: get(&self.shed_at_slot),
            capacity_ratio: f64::from_bits(get(&self.capacity_ratio_bits)),
            backfilled_readings: get(&self.backfilled_readings),
            gaps_open: self.gaps_open.load(Ordering::Relaxed),
            meters_in_backoff: self.meters_in_backoff.load(Ordering::Relaxed),
            meters_auth_failed: self.meters_auth_failed.load(Ordering::Relaxed),
            meters: self.meters.load(Ordering::Relaxed),
            fleet_members: self.fleet_members.load(Ordering::Relaxed),
            busy_micros: get(&self.busy_micros),
            lag: std::array::from_fn(|i| get(&self.lag[i])),
        }
    }
}

/// Counter values at one moment; differences of two give per-interval figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// See [`Counters::polls_ok`].
    pub polls_ok: u64,
    /// See [`Counters::failures`].
    pub failures: [u64; ErrorKind::ALL.len()],
    /// See [`Counters::slots_polled`].
    pub slots_polled: u64,
    /// See [`Counters::slots_on_time`].
    pub slots_on_time: u64,
    /// See [`Counters::missed_slots`].
    pub missed_slots: u64,
    /// See [`Counters::backoff_skips`].
    pub backoff_skips: u64,
    /// See [`Counters::skipped_overload`].
    pub skipped_overload: u64,
    /// See [`Counters::shed_at_slot`].
    pub shed_at_slot: u64,
    /// Gauge: achievable over needed polls per second (see [`Capacity`]).
    pub capacity_ratio: f64,
    /// See [`Counters::backfilled_readings`].
    pub backfilled_readings: u64,
    /// Gauge: see [`Counters::gaps_open`].
    pub gaps_open: i64,
    /// Gauge: meters in backoff.
    pub meters_in_backoff: i64,
    /// Gauge: meters flagged auth_failed.
    pub meters_auth_failed: i64,
    /// Gauge: meters scheduled.
    pub meters: i64,
    /// Gauge: see [`Counters::fleet_members`].
    pub fleet_members: i64,
    /// See [`Counters::busy_micros`].
    pub busy_micros: u64,
    lag: [u64; LAG_BOUNDS_MS.len()],
}

impl Snapshot {
    /// Counter increases from `earlier` to `self` (gauges keep `self`'s value).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            polls_ok: self.polls_ok - earlier.polls_ok.min(self.polls_ok),
            failures: std::array::from_fn(|i| self.failures[i].saturating_sub(earlier.failures[i])),
            slots_polled: self.slots_polled.saturating_sub(earlier.slots_polled),
            slots_on_time: self.slots_on_time.saturating_sub(earlier.slots_on_time),
            missed_slots: self.missed_slots.saturating_sub(earlier.missed_slots),
            backoff_skips: self.backoff_skips.saturating_sub(earlier.backoff_skips),
            skipped_overload: self
                .skipped_overload
                .saturating_sub(earlier.skipped_overload),
            shed_at_slot: self.shed_at_slot.saturating_sub(earlier.shed_at_slot),
            backfilled_readings: self
                .backfilled_readings
                .saturating_sub(earlier.backfilled_readings),
            busy_micros: self.busy_micros.saturating_sub(earlier.busy_micros),
            lag: std::array::from_fn(|i| self.lag[i].saturating_sub(earlier.lag[i])),
            ..self.clone()
        }
    }

    /// Total failed polls.
    pub fn failed(&self) -> u64 {
        self.failures.iter().sum()
    }

    /// Upper bound (ms) of the bucket holding quantile `q` of the lag.
    pub fn lag_quantile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.lag.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.lag.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(LAG_BOUNDS_MS[i]);
            }
        }
        None
    }

    /// The one-line summary printed per interval, in the spirit of the old
    /// pinger's `results` / `spare_time` line.
    pub fn summary_line(&self, window: Duration, max_concurrent: usize) -> String {
        let failures: Vec<String> = ErrorKind::ALL
            .iter()
            .zip(self.failures)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{}={n}", k.as_str()))
            .collect();
        let q = |q| match self.lag_quantile_ms(q) {
            Some(u64::MAX) => ">10000ms".to_string(),
            Some(ms) => format!("<{ms}ms"),
            None => "-".to_string(),
        };
        let capacity = window.as_micros() as f64 * max_concurrent.max(1) as f64;
        let spare = (1.0 - self.busy_micros as f64 / capacity).clamp(0.0, 1.0) * 100.0;
        format!(
            "meters={} ok={} failed={} [{}] in_backoff={} auth_failed={} missed_slots={} skipped_overload={} (shed_at_slot={}) capacity={:.2} lag_p50={} lag_p99={} spare={spare:.1}%",
            self.meters,
            self.polls_ok,
            self.failed(),
            failures.join(" "),
            self.meters_in_backoff,
            self.meters_auth_failed,
            self.missed_slots,
            self.skipped_overload,
            self.shed_at_slot,
            self.capacity_ratio,
            q(0.5),
            q(0.99),
        )
    }
}

/// How many polls per second the fleet needs and the caps allow, from one
/// interval's figures; what the over-capacity warning says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Meters due (scheduled, not backing off) over the poll interval.
    pub needed_per_s: f64,
    /// Requests that went out per second in the window.
    pub achieved_per_s: f64,
    /// What the caps allow at the requests' mean round trip: Little's law
    /// on `max_concurrent_requests`, bounded by `max_requests_per_second`.
    pub achievable_per_s: f64,
    /// Mean time a request held its permit, in seconds (0: none went out).
    pub mean_round_trip_s: f64,
    /// `max_concurrent_requests`.
    pub max_concurrent: usize,
    /// `max_requests_per_second`.
    pub max_per_second: u32,
}

/// Headroom asked for when the warning names a new cap value.
const HEADROOM: f64 = 1.2;

impl Capacity {
    /// The estimate for a window of `window` in which the caps let `used`
    /// through, with `due` meters every `interval`.
    pub fn estimate(
        window: Duration,
        interval: Duration,
        due: i64,
        used: Usage,
        max_concurrent: usize,
        max_per_second: u32,
    ) -> Capacity {
        let needed_per_s = due.max(0) as f64 / interval.as_secs_f64().max(1e-3);
        let achieved_per_s = used.started as f64 / window.as_secs_f64().max(1e-3);
        // Over the requests that finished in the window, not those that
        // started: with 3 s round trips they are different requests.
        let mean_round_trip_s = used.mean_round_trip_s();
        let by_concurrency = if mean_round_trip_s > 0.0 {
            max_concurrent as f64 / mean_round_trip_s
        } else {
            f64::INFINITY
        };
        Capacity {
            needed_per_s,
            achieved_per_s,
            achievable_per_s: by_concurrency.min(f64::from(max_per_second)),
            mean_round_trip_s,
            max_concurrent,
            max_per_second,
        }
    }

    /// Achievable over needed (1 when nothing is needed); below 1 the
    /// pinger must skip slots.
    pub fn ratio(&self) -> f64 {
        if self.needed_per_s <= 0.0 {
            1.0
        } else {
            (self.achievable_per_s / self.needed_per_s * 1000.0).round() / 1000.0
        }
    }

    /// What to raise, with the value that would carry the load plus a
    /// fifth: the cap that binds, or more pingers when the caps are not
    /// what stops it (the machine is).
    pub fn advice(&self) -> String {
        let rps_binds = f64::from(self.max_per_second) * 1.0001
            < self.max_concurrent as f64 / self.mean_round_trip_s.max(1e-9);
        if self.ratio() >= 1.0 {
            format!(
                "the caps would allow {:.0}/s, so this process (CPU, network) is what falls behind: spread the meters over more pingers",
                self.achievable_per_s
            )
        } else if rps_binds {
            format!(
                "raise max_requests_per_second from {} to at least {:.0}, or spread the meters over more pingers",
                self.max_per_second,
                (self.needed_per_s * HEADROOM).ceil()
            )
        } else {
            format!(
                "raise max_concurrent_requests from {} to at least {:.0} (requests take {:.2} s each), or spread the meters over more pingers",
                self.max_concurrent,
                (self.needed_per_s * self.mean_round_trip_s * HEADROOM).ceil(),
                self.mean_round_trip_s
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_names_the_cap_that_binds() {
        // 10,000 meters every 6 s through 4,096 permits of 3 s each.
        let slow = Capacity::estimate(
            Duration::from_secs(6),
            Duration::from_secs(6),
            10_000,
            Usage {
                started: 8_192,
                finished: 8_192,
                busy_micros: 8_192 * 3_000_000,
            },
            4_096,
            20_000,
        );
        assert!((slow.needed_per_s - 1666.7).abs() < 0.1, "{slow:?}");
        assert!((slow.achievable_per_s - 1365.3).abs() < 0.1, "{slow:?}");
        assert_eq!(slow.ratio(), 0.819);
        let advice = slow.advice();
        assert!(
            advice.contains("max_concurrent_requests from 4096 to at least 6000"),
            "{advice}"
        );
        // Fast answers, but only 1,000 starts a second allowed.
        let capped = Capacity::estimate(
            Duration::from_secs(6),
            Duration::from_secs(6),
            10_000,
            Usage {
                started: 6_000,
                finished: 6_000,
                busy_micros: 6_000 * 10_000,
            },
            4_096,
            1_000,
        );
        assert_eq!(capped.ratio(), 0.6);
        assert!(
            capped
                .advice()
                .contains("max_requests_per_second from 1000 to at least 2000"),
            "{}",
            capped.advice()
        );
        // Nothing needed: not over capacity.
        let idle = Capacity::estimate(
            Duration::from_secs(6),
            Duration::from_secs(6),
            0,
            Usage {
                started: 0,
                finished: 0,
                busy_micros: 0,
            },
            4_096,
            20_000,
        );
        assert_eq!(idle.ratio(), 1.0);
    }

    #[test]
    fn quantiles_and_summary() {
        let c = Counters::default();
        for _ in 0..98 {
            c.lag(Duration::from_millis(3));
        }
        c.lag(Duration::from_millis(700));
        c.lag(Duration::from_millis(700));
        c.failure(ErrorKind::Timeout);
        c.polls_ok.fetch_add(99, Ordering::Relaxed);
        let s = c.snapshot().since(&Snapshot::default());
        assert_eq!(s.lag_quantile_ms(0.5), Some(5));
        assert_eq!(s.lag_quantile_ms(0.99), Some(1000));
        assert_eq!(s.slots_on_time, 98);
        let line = s.summary_line(Duration::from_secs(6), 10);
        assert!(line.contains("ok=99 failed=1 [timeout=1]"), "{line}");
    }
}
