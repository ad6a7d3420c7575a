//! The status table: which meters a request wants, in which order, one
//! page of them, and each as the row the page draws (with its sparkline
//! points up to now).
//!
//! Pure: works on an [`Overview`] already in memory; with 10,000 meters a
//! sort and a page take a few milliseconds.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::overview::{Meter, Overview};
use crate::cloud_id::CloudId;
use crate::registry::{MeterState, UserStats};
use crate::server::users::StateView;
use crate::stats::Sparkline;

/// A column the status table sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Failing first: auth_failed, backoff, ok; then the longest error
    /// streak, the oldest reading, the cloud id.
    State,
    /// The cloud id.
    CloudId,
    /// The latest demand (kW); meters without one last.
    Demand,
    /// Time since the latest reading; meters that never reported count as
    /// the oldest.
    Age,
    /// Failures in a row.
    Streak,
    /// Readings logged.
    Events,
}

impl SortKey {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SortKey::State => "state",
            SortKey::CloudId => "cloud_id",
            SortKey::Demand => "demand",
            SortKey::Age => "age",
            SortKey::Streak => "streak",
            SortKey::Events => "events",
        }
    }

    /// The order a click on the column header starts with: the one that
    /// puts what needs attention (or the largest value) on top.
    pub(super) fn natural(self) -> Direction {
        match self {
            SortKey::State | SortKey::CloudId => Direction::Asc,
            SortKey::Demand | SortKey::Age | SortKey::Streak | SortKey::Events => Direction::Desc,
        }
    }
}

/// Ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smallest first (for `state`: failing first).
    Asc,
    /// Largest first.
    Desc,
}

impl Direction {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Direction::Asc => "asc",
            Direction::Desc => "desc",
        }
    }

    fn apply(self, o: Ordering) -> Ordering {
        match self {
            Direction::Asc => o,
            Direction::Desc => o.reverse(),
        }
    }
}

/// How urgent a state is: lower sorts first.
fn rank(s: MeterState) -> u8 {
    match s {
        MeterState::AuthFailed => 0,
        MeterState::Backoff => 1,
        MeterState::Ok => 2,
    }
}

/// Compares two optional numbers in direction `dir`, with `None` last
/// either way (a meter without a value is never the "top" one).
fn by_option(a: Option<f64>, b: Option<f64>, dir: Direction) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => dir.apply(a.total_cmp(&b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// The table order; ties always fall back to the cloud id so pages are
/// stable between refreshes.
pub(super) fn compare(a: &Meter, b: &Meter, key: SortKey, dir: Direction) -> Ordering {
    let (x, y) = (&a.stats, &b.stats);
    // Older readings first; never is older than any reading.
    let oldest_first = || {
        x.last_timestamp
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&y.last_timestamp.unwrap_or(f64::NEG_INFINITY))
    };
    let primary = match key {
        SortKey::State => dir.apply(
            rank(x.state)
                .cmp(&rank(y.state))
                .then(y.consecutive_failures.cmp(&x.consecutive_failures))
                .then_with(oldest_first),
        ),
        SortKey::CloudId => Ordering::Equal,
        SortKey::Demand => by_option(x.last_demand_kw, y.last_demand_kw, dir),
        // Descending age is ascending timestamp.
        SortKey::Age => dir.apply(oldest_first().reverse()),
        SortKey::Streak => dir.apply(x.consecutive_failures.cmp(&y.consecutive_failures)),
        SortKey::Events => dir.apply(x.total_events_logged.cmp(&y.total_events_logged)),
    };
    let tie = a.cloud_id.cmp(&b.cloud_id);
    primary.then(match key {
        SortKey::CloudId => dir.apply(tie),
        _ => tie,
    })
}

/// Points of a sparkline: the last hour by minute plus the current one.
pub const SPARK_POINTS: usize = 61;

/// The last hour of demand for a sparkline, one point per minute ending
/// with the current minute at `now`: the stored per-minute averages (oldest
/// first, `None` for minutes without a reading), then the latest reading in
/// its own minute, so a meter shows a line from its first reading on
/// instead of after its first complete minute. The stored minutes end where
/// the meter last answered, so a meter silent since then gets empty minutes
/// up to now rather than an old hour drawn as if it were this one.
fn spark_points(stats: &UserStats, now: f64) -> Vec<Option<f64>> {
    let mut points = stats
        .spark
        .clone()
        .map(Sparkline::into_minutes)
        .unwrap_or_default();
    if let Some(kw) = stats.last_demand_kw.filter(|v| v.is_finite()) {
        points.push(Some(kw));
    }
    if let Some(last) = stats.last_timestamp {
        let silent = ((now / 60.0).floor() - (last / 60.0).floor()).max(0.0);
        // Capped: an hour of empty minutes already hides everything.
        let silent = (silent as usize).min(SPARK_POINTS);
        points.extend(std::iter::repeat_n(None, silent));
    }
    if points.len() > SPARK_POINTS {
        points.drain(..points.len() - SPARK_POINTS);
    }
    points
}

/// One meter as the status page shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MeterRow {
    /// Six lower-case hex digits.
    #[schema(value_type = String, example = "00ce69")]
    pub cloud_id: CloudId,
    /// How the pinger treats the meter (failing ones sort first).
    pub state: StateView,
    /// The latest reading's demand in kW (negative: export).
    pub last_demand_kw: Option<f64>,
    /// Unix seconds of the latest reading.
    pub last_reading_at: Option<f64>,
    /// Seconds since the latest reading, when the answer was made.
    pub last_reading_age_s: Option<f64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Readings logged since the user was added.
    pub total_events_logged: u64,
    /// The latest failure's kind (`auth`, `timeout`, ...).
    pub last_error_kind: Option<String>,
    /// Unix seconds of the latest failure.
    pub last_error_at: Option<f64>,
    /// The last hour of demand in kW, one point per minute oldest first,
    /// up to 61 (`null` for a minute without a reading); the minute of the
    /// latest reading holds that reading, and minutes since are `null`.
    pub spark: Vec<Option<f64>>,
    /// The pinger polling it (a member id from `/api/fleet`); `null` with a
    /// users file, without live pingers, and in `/api/stats`.
    pub owner: Option<String>,
}

impl MeterRow {
    pub(super) fn new(m: &Meter, now: f64) -> MeterRow {
        let s = &m.stats;
        MeterRow {
            cloud_id: m.cloud_id,
            state: s.state.into(),
            last_demand_kw: s.last_demand_kw,
            last_reading_at: s.last_timestamp,
            last_reading_age_s: s.last_timestamp.map(|t| (now - t).max(0.0)),
            consecutive_failures: s.consecutive_failures,
            total_events_logged: s.total_events_logged,
            last_error_kind: s.last_error_kind.clone(),
            last_error_at: s.last_error_at,
            spark: spark_points(s, now),
            owner: None,
        }
    }
}

/// Which meters a request wants, in which order.
#[derive(Debug, Clone)]
pub(super) struct View {
    pub(super) key: SortKey,
    pub(super) dir: Direction,
    pub(super) state: Option<MeterState>,
    /// Lower-case hex digits the cloud id must contain.
    pub(super) q: Option<String>,
}

impl View {
    /// Every meter, failing first.
    pub(super) const DEFAULT: View = View {
        key: SortKey::State,
        dir: Direction::Asc,
        state: None,
        q: None,
    };
}

/// A filtered, sorted page over the overview.
pub(super) struct Selection {
    pub(super) rows: Vec<MeterRow>,
    pub(super) matching: usize,
}

/// The meters `view` wants, in its order, `take` of them after `skip`.
pub(super) fn select(
    overview: &Overview,
    view: &View,
    skip: usize,
    take: usize,
    now: f64,
) -> Selection {
    let mut chosen: Vec<&Meter> = overview
        .meters
        .iter()
        .filter(|m| view.state.is_none_or(|s| m.stats.state == s))
        .filter(|m| {
            view.q
                .as_deref()
                .is_none_or(|q| m.cloud_id.as_str().contains(q))
        })
        .collect();
    // The overview is kept in the default order; any other needs a sort.
    if (view.key, view.dir) != (SortKey::State, Direction::Asc) {
        chosen.sort_by(|a, b| compare(a, b, view.key, view.dir));
    }
    Selection {
        matching: chosen.len(),
        rows: chosen
            .into_iter()
            .skip(skip)
            .take(take)
            .map(|m| MeterRow::new(m, now))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(id: &str, state: MeterState, failures: u32, last: Option<f64>) -> Meter {
        Meter {
            cloud_id: CloudId::parse(id).unwrap(),
            stats: UserStats {
                state,
                consecutive_failures: failures,
                last_timestamp: last,
                last_demand_kw: last.map(|t| t / 1000.0),
                total_events_logged: u64::from(failures) * 10,
                ..UserStats::default()
            },
        }
    }

    fn overview(mut meters: Vec<Meter>) -> Overview {
        meters.sort_by(|a, b| compare(a, b, SortKey::State, Direction::Asc));
        Overview::of(meters, 1)
    }

    fn view(key: SortKey, dir: Direction) -> View {
        View {
            key,
            dir,
            ..View::DEFAULT
        }
    }

    fn ids(sel: &Selection) -> Vec<&str> {
        sel.rows.iter().map(|r| r.cloud_id.as_str()).collect()
    }

    fn sample() -> Overview {
        overview(vec![
            meter("000001", MeterState::Ok, 0, Some(1000.0)),
            meter("000002", MeterState::Backoff, 3, Some(900.0)),
            meter("000003", MeterState::AuthFailed, 1, None),
            meter("000004", MeterState::Backoff, 7, Some(950.0)),
            meter("000005", MeterState::Ok, 0, None),
        ])
    }

    #[test]
    fn failing_meters_come_first_longest_streak_then_oldest_reading() {
        let o = sample();
        let sel = select(&o, &View::DEFAULT, 0, 10, 0.0);
        assert_eq!(
            ids(&sel),
            ["000003", "000004", "000002", "000005", "000001"]
        );
        let sel = select(&o, &view(SortKey::State, Direction::Desc), 0, 10, 0.0);
        assert_eq!(ids(&sel)[0], "000001");
    }

    #[test]
    fn other_columns_sort_with_missing_values_last_and_ties_by_id() {
        let o = sample();
        let by = |key, dir| ids(&select(&o, &view(key, dir), 0, 10, 0.0)).join(" ");
        assert_eq!(
            by(SortKey::Demand, Direction::Desc),
            "000001 000004 000002 000003 000005"
        );
        assert_eq!(
            by(SortKey::Demand, Direction::Asc),
            "000002 000004 000001 000003 000005"
        );
        // Never reported counts as the oldest.
        assert_eq!(
            by(SortKey::Age, Direction::Desc),
            "000003 000005 000002 000004 000001"
        );
        assert_eq!(
            by(SortKey::Streak, Direction::Desc),
            "000004 000002 000003 000001 000005"
        );
        assert_eq!(
            by(SortKey::CloudId, Direction::Desc),
            "000005 000004 000003 000002 000001"
        );
    }

    #[test]
    fn pages_filters_and_counts_are_over_the_whole_overview() {
        let o = sample();
        let sel = select(&o, &view(SortKey::CloudId, Direction::Asc), 2, 2, 0.0);
        assert_eq!((ids(&sel), sel.matching), (vec!["000003", "000004"], 5));
        let backoff = View {
            state: Some(MeterState::Backoff),
            ..View::DEFAULT
        };
        let sel = select(&o, &backoff, 0, 10, 0.0);
        assert_eq!(ids(&sel), ["000004", "000002"]);
        let sel = select(
            &o,
            &View {
                q: Some("05".into()),
                ..View::DEFAULT
            },
            0,
            10,
            0.0,
        );
        assert_eq!(ids(&sel), ["000005"]);
        let sel = select(&o, &View::DEFAULT, 10, 10, 0.0);
        assert!(sel.rows.is_empty());
        let c = o.counts(1599.0);
        assert_eq!(
            (c.ok, c.backoff, c.auth_failed, c.without_reading),
            (2, 2, 1, 2)
        );
        // At t=1599 only the reading at 1000 is within 10 minutes.
        assert_eq!(c.stale(10), Some(2));
    }

    #[test]
    fn sparkline_is_the_stored_minutes_then_the_latest_reading() {
        let s = UserStats {
            spark: Some(Sparkline::decode("1.5,,2.25, x")),
            last_demand_kw: Some(3.0),
            last_timestamp: Some(6000.0),
            ..UserStats::default()
        };
        assert_eq!(
            spark_points(&s, 6059.0),
            [Some(1.5), None, Some(2.25), None, Some(3.0)]
        );
        let fresh = UserStats {
            last_demand_kw: Some(0.4),
            last_timestamp: Some(6000.0),
            ..UserStats::default()
        };
        assert_eq!(spark_points(&fresh, 6001.0), [Some(0.4)]);
        assert!(spark_points(&UserStats::default(), 6001.0).is_empty());
    }

    #[test]
    fn sparkline_of_a_silent_meter_runs_empty_up_to_now() {
        let s = UserStats {
            spark: Some(Sparkline::new(vec![Some(1.0); 60])),
            last_demand_kw: Some(2.0),
            last_timestamp: Some(6000.0),
            ..UserStats::default()
        };
        // Two minutes later: the hour shifts left by two.
        let p = spark_points(&s, 6000.0 + 120.0);
        assert_eq!(p.len(), SPARK_POINTS);
        assert_eq!(&p[56..], [Some(1.0), Some(1.0), Some(2.0), None, None]);
        // Silent for over an hour: nothing left to draw.
        let p = spark_points(&s, 6000.0 + 4000.0);
        assert_eq!(p.len(), SPARK_POINTS);
        assert!(p.iter().all(Option::is_none));
    }
}
