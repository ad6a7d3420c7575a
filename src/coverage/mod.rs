//! Coverage: for each meter and day, the share of expected slots that hold
//! a reading, the longest gap and the gaps themselves.
//!
//! Owns the report and its shape (shared by `rainforest coverage`,
//! `GET /api/coverage` and the status page). It is computed from the
//! readings themselves, read back through [`crate::readback`], never from
//! counters, so it agrees with a count of the archived lines. It does not
//! read files itself nor print anything.

mod grid;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

pub use grid::{DayGrid, Gap};

use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::readback::{Problem, ReadError, Reader, Selection, Source};
use crate::stream::Kind;

/// Summation grid when the stream is off in the configuration
/// (`summation_interval = 0`) but may be on for some users at their own
/// cadence: the documented default.
pub const DEFAULT_SUMMATION_INTERVAL: Duration = Duration::from_secs(60);
/// Price grid in the same case (`price_interval = 0`).
pub const DEFAULT_PRICE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// The cadence slots of `kind` are expected at: `poll_interval` for demand,
/// the summation and price intervals for the others.
pub fn cadence(config: &Config, kind: Kind) -> Duration {
    match kind {
        Kind::Demand => config.poll_interval,
        Kind::Summation if config.summation_interval.is_zero() => DEFAULT_SUMMATION_INTERVAL,
        Kind::Summation => config.summation_interval,
        Kind::Price if config.price_interval.is_zero() => DEFAULT_PRICE_INTERVAL,
        Kind::Price => config.price_interval,
    }
}

/// One meter's coverage on one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DayCoverage {
    /// The meter.
    #[schema(value_type = String, example = "00ce69")]
    pub cloud_id: CloudId,
    /// The UTC day, `YYYY-MM-DD`.
    #[schema(example = "2025-01-15")]
    pub day: String,
    /// The stream (`demand`, `summation`, `price`).
    pub kind: String,
    /// Seconds between expected slots.
    pub cadence_s: u64,
    /// Slots expected that day (up to now for today).
    pub expected: u64,
    /// Expected slots holding at least one reading.
    pub present: u64,
    /// `present / expected` (1 when nothing was expected).
    pub share: f64,
    /// The longest gap in seconds (0 without gaps).
    pub longest_gap_s: u64,
    /// Every run of missing slots, in time order.
    pub gaps: Vec<Gap>,
}

/// A coverage report and what could not be read for it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// One entry per meter and day, by day then meter.
    pub days: Vec<DayCoverage>,
    /// Objects and files that could not be read; their readings are
    /// missing from the counts.
    pub problems: Vec<Problem>,
}

/// What to report on: days `from..=to` (UTC), one kind, some or all meters.
#[derive(Debug, Clone)]
pub struct Request {
    /// The meters; `None` for every meter found those days.
    pub meters: Option<Vec<CloudId>>,
    /// The stream.
    pub kind: Kind,
    /// First day.
    pub from: NaiveDate,
    /// Last day, included.
    pub to: NaiveDate,
    /// The slot cadence (see [`cadence`]).
    pub cadence: Duration,
}

/// Reads the days of `request` and computes their coverage; days after
/// `now` are left out and today counts only the slots up to `now`.
pub async fn report(
    source: Arc<Source>,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<Report, ReadError> {
    let start = day_start(request.from);
    let end = day_start(request.to.succ_opt().unwrap_or(request.to)).min(
        // Nothing after now: a partial today, no future days.
        now.max(start + chrono::Duration::milliseconds(1)),
    );
    let mut reader = Reader::open(
        source,
        Selection {
            meters: request.meters.clone(),
            kind: request.kind,
            from: start,
            to: end,
        },
    )
    .await?;
    let cadence_ms = i64::try_from(request.cadence.as_millis())
        .unwrap_or(i64::MAX)
        .max(1000);
    let mut acc = Accumulator {
        meters: reader.meters().to_vec(),
        kind: request.kind,
        cadence_ms,
        now_ms: now.timestamp_millis(),
        day: request.from,
        grids: HashMap::new(),
        out: Report::default(),
    };
    while let Some(batch) = reader.next_batch().await {
        let batch = batch?;
        acc.out.problems.extend(batch.problems);
        for r in batch.readings {
            let day = day_of(r.slot_ms);
            while acc.day < day {
                acc.close_day();
            }
            let ds = day_start(day).timestamp_millis();
            acc.grids
                .entry(r.cloud_id)
                .or_insert_with(|| DayGrid::new(ds, cadence_ms))
                .mark(r.slot_ms);
        }
    }
    while acc.day <= request.to && day_start(acc.day) < end {
        acc.close_day();
    }
    Ok(acc.out)
}

struct Accumulator {
    meters: Vec<CloudId>,
    kind: Kind,
    cadence_ms: i64,
    now_ms: i64,
    day: NaiveDate,
    grids: HashMap<CloudId, DayGrid>,
    out: Report,
}

impl Accumulator {
    /// Turns the current day's grids into entries (every meter, read or
    /// not) and moves to the next day.
    fn close_day(&mut self) {
        let ds = day_start(self.day).timestamp_millis();
        let end = (ds + 86_400_000).min(self.now_ms);
        // A day that has not begun expects nothing and is left out.
        let meters = if ds < self.now_ms {
            &self.meters[..]
        } else {
            &[]
        };
        for id in meters {
            let grid = self
                .grids
                .remove(id)
                .unwrap_or_else(|| DayGrid::new(ds, self.cadence_ms));
            let expected = grid.expected(end);
            let (present, gaps) = grid.finish(end);
            self.out.days.push(DayCoverage {
                cloud_id: *id,
                day: self.day.to_string(),
                kind: self.kind.as_str().to_string(),
                cadence_s: (self.cadence_ms / 1000) as u64,
                expected,
                present,
                share: if expected == 0 {
                    1.0
                } else {
                    present as f64 / expected as f64
                },
                longest_gap_s: gaps.iter().map(|g| g.seconds).max().unwrap_or(0),
                gaps,
            });
        }
        self.grids.clear();
        self.day = self.day.succ_opt().unwrap_or(self.day);
    }
}

/// Midnight UTC starting `day`.
pub fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

fn day_of(ms: i64) -> NaiveDate {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readback::Source;

    #[tokio::test]
    async fn days_after_now_are_left_out_and_a_meter_without_readings_has_one_gap() {
        let spool = tempfile::tempdir().unwrap();
        let source = Arc::new(Source::new(
            None,
            "p",
            "f",
            Some(spool.path().to_path_buf()),
        ));
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let request = Request {
            meters: Some(vec![CloudId::parse("00ce69").unwrap()]),
            kind: Kind::Demand,
            from: day("2025-03-09"),
            to: day("2025-03-12"),
            cadence: Duration::from_secs(60),
        };
        let now = day_start(day("2025-03-10")) + chrono::Duration::hours(6);
        let report = report(source, &request, now).await.unwrap();
        let days: Vec<(&str, u64, usize)> = report
            .days
            .iter()
            .map(|d| (d.day.as_str(), d.expected, d.gaps.len()))
            .collect();
        assert_eq!(days, [("2025-03-09", 1440, 1), ("2025-03-10", 360, 1)]);
    }
}
