//! Per-meter polling statistics: what the scheduler reports and what the
//! registry keeps.
//!
//! Owns [`StatsUpdate`] (a delta the scheduler produces), [`UserStats`] (the
//! stored totals) and the two pure rules that combine them: how updates
//! merge while waiting to be written, and how an update lands on stored
//! totals. The Redis and in-memory back ends both follow these rules, and
//! neither ever touches credentials. No I/O here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cloud_id::CloudId;

/// How the scheduler currently treats a meter; shown by the status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterState {
    /// Polled on schedule; the last poll succeeded or failed transiently.
    #[default]
    Ok,
    /// Failing repeatedly; polled less often until it answers again.
    Backoff,
    /// The relay or device rejected the credentials; polled rarely until
    /// they change.
    AuthFailed,
}

impl MeterState {
    /// The stored and logged name: `ok`, `backoff` or `auth_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterState::Ok => "ok",
            MeterState::Backoff => "backoff",
            MeterState::AuthFailed => "auth_failed",
        }
    }
}

impl fmt::Display for MeterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not one of `ok`, `backoff`, `auth_failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of ok, backoff, auth_failed")]
pub struct UnknownMeterState;

impl FromStr for MeterState {
    type Err = UnknownMeterState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(MeterState::Ok),
            "backoff" => Ok(MeterState::Backoff),
            "auth_failed" => Ok(MeterState::AuthFailed),
            _ => Err(UnknownMeterState),
        }
    }
}

/// What happened to one meter since the last write: a delta for the event
/// counter, absolute values for everything else.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsUpdate {
    /// The meter.
    pub cloud_id: CloudId,
    /// Readings written since the previous update (added to the total).
    pub events_logged: u64,
    /// When the meter's first reading ever was taken, if this update saw one;
    /// only stored when none is stored yet. Unix seconds, like the old system.
    pub first_timestamp: Option<f64>,
    /// When the latest reading was taken (unix seconds).
    pub last_timestamp: Option<f64>,
    /// The latest failure: its kind (e.g. `timeout`, see
    /// [`crate::protocol::ErrorKind::as_str`]) and when it happened (unix
    /// seconds).
    pub last_error: Option<(String, f64)>,
    /// Failures in a row; 0 after a success. `None`: not in this update
    /// (an on-demand read knows nothing of the scheduler's streak).
    pub consecutive_failures: Option<u32>,
    /// How the scheduler now treats the meter; `None`: not in this update,
    /// so an on-demand read never clears a backoff or `auth_failed`.
    pub state: Option<MeterState>,
    /// The latest reading's demand (kW), for the status page.
    pub last_demand_kw: Option<f64>,
    /// The last hour of demand, one value per minute oldest first. Sent
    /// once a minute, not per poll, to keep the batch small.
    pub spark: Option<crate::stats::Sparkline>,
}

impl StatsUpdate {
    /// An update that changes nothing; a starting point for callers filling
    /// in what they know.
    pub fn new(cloud_id: CloudId) -> Self {
        StatsUpdate {
            cloud_id,
            events_logged: 0,
            first_timestamp: None,
            last_timestamp: None,
            last_error: None,
            consecutive_failures: None,
            state: None,
            last_demand_kw: None,
            spark: None,
        }
    }

    /// Folds a later update for the same meter into this one, so many polls
    /// cost one write: counts add up, the first first-timestamp is kept, and
    /// for everything else the later value wins (a `None` keeps the earlier).
    pub fn merge(&mut self, later: StatsUpdate) {
        self.events_logged = self.events_logged.saturating_add(later.events_logged);
        if self.first_timestamp.is_none() {
            self.first_timestamp = later.first_timestamp;
        }
        if later.last_timestamp.is_some() {
            self.last_timestamp = later.last_timestamp;
        }
        if later.last_error.is_some() {
            self.last_error = later.last_error;
        }
        if later.consecutive_failures.is_some() {
            self.consecutive_failures = later.consecutive_failures;
        }
        if later.state.is_some() {
            self.state = later.state;
        }
        if later.last_demand_kw.is_some() {
            self.last_demand_kw = later.last_demand_kw;
        }
        if later.spark.is_some() {
            self.spark = later.spark;
        }
    }
}

/// A meter's stored statistics, kept apart from its credentials.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct UserStats {
    /// Readings written since the user was added.
    pub total_events_logged: u64,
    /// When the first reading was taken (unix seconds).
    pub first_timestamp: Option<f64>,
    /// When the latest reading was taken (unix seconds).
    pub last_timestamp: Option<f64>,
    /// The latest failure's kind.
    pub last_error_kind: Option<String>,
    /// When the latest failure happened (unix seconds).
    pub last_error_at: Option<f64>,
    /// Failures in a row at the last write.
    pub consecutive_failures: u32,
    /// How the scheduler treated the meter at the last write.
    pub state: MeterState,
    /// The latest reading's demand (kW).
    pub last_demand_kw: Option<f64>,
    /// The last hour of demand per minute (see [`StatsUpdate::spark`]).
    pub spark: Option<crate::stats::Sparkline>,
}

impl UserStats {
    /// Applies an update the way the Redis back end does (HINCRBY, HSETNX,
    /// HSET), so the embedded registry behaves the same.
    pub fn apply(&mut self, update: &StatsUpdate) {
        self.total_events_logged = self
            .total_events_logged
            .saturating_add(update.events_logged);
        if self.first_timestamp.is_none() {
            self.first_timestamp = update.first_timestamp;
        }
        if update.last_timestamp.is_some() {
            self.last_timestamp = update.last_timestamp;
        }
        if let Some((kind, at)) = &update.last_error {
            self.last_error_kind = Some(kind.clone());
            self.last_error_at = Some(*at);
        }
        if let Some(n) = update.consecutive_failures {
            self.consecutive_failures = n;
        }
        if let Some(state) = update.state {
            self.state = state;
        }
        if update.last_demand_kw.is_some() {
            self.last_demand_kw = update.last_demand_kw;
        }
        if update.spark.is_some() {
            self.spark = update.spark.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> CloudId {
        CloudId::parse("00ce69").unwrap()
    }

    #[test]
    fn state_names_match_serde_and_parse_back() {
        for s in [MeterState::Ok, MeterState::Backoff, MeterState::AuthFailed] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
            assert_eq!(s.as_str().parse::<MeterState>(), Ok(s));
        }
        assert!("OK".parse::<MeterState>().is_err());
    }

    #[test]
    fn merge_sums_counts_keeps_first_first_and_latest_rest() {
        let mut a = StatsUpdate {
            events_logged: 2,
            first_timestamp: Some(10.0),
            last_timestamp: Some(12.0),
            last_error: Some(("timeout".into(), 11.0)),
            consecutive_failures: Some(0),
            ..StatsUpdate::new(id())
        };
        a.merge(StatsUpdate {
            events_logged: 3,
            first_timestamp: Some(20.0),
            last_timestamp: None,
            last_error: None,
            consecutive_failures: Some(4),
            state: Some(MeterState::Backoff),
            ..StatsUpdate::new(id())
        });
        assert_eq!(a.events_logged, 5);
        assert_eq!(a.first_timestamp, Some(10.0));
        assert_eq!(a.last_timestamp, Some(12.0));
        assert_eq!(a.last_error, Some(("timeout".into(), 11.0)));
        assert_eq!(
            (a.consecutive_failures, a.state),
            (Some(4), Some(MeterState::Backoff))
        );
        // An update without a state (an on-demand read) keeps the one pending.
        a.merge(StatsUpdate {
            events_logged: 1,
            ..StatsUpdate::new(id())
        });
        assert_eq!(
            (a.consecutive_failures, a.state),
            (Some(4), Some(MeterState::Backoff))
        );
    }

    #[test]
    fn apply_accumulates_and_never_moves_first_timestamp() {
        let mut s = UserStats::default();
        let u = StatsUpdate {
            events_logged: 2,
            first_timestamp: Some(10.0),
            last_timestamp: Some(12.0),
            ..StatsUpdate::new(id())
        };
        s.apply(&u);
        s.apply(&StatsUpdate {
            first_timestamp: Some(99.0),
            last_error: Some(("auth".into(), 13.0)),
            state: Some(MeterState::AuthFailed),
            consecutive_failures: Some(1),
            ..u.clone()
        });
        assert_eq!(s.total_events_logged, 4);
        assert_eq!(s.first_timestamp, Some(10.0));
        assert_eq!(s.last_error_kind.as_deref(), Some("auth"));
        assert_eq!(s.last_error_at, Some(13.0));
        assert_eq!(s.state, MeterState::AuthFailed);
        // A reading without a state leaves the pause and the streak alone.
        s.apply(&StatsUpdate {
            events_logged: 1,
            last_demand_kw: Some(1.5),
            ..StatsUpdate::new(id())
        });
        assert_eq!(
            (s.state, s.consecutive_failures),
            (MeterState::AuthFailed, 1)
        );
        assert_eq!(s.last_demand_kw, Some(1.5));
    }
}
