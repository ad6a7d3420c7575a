//! The typed statistics snapshots: what `/api/stats` shows of each service,
//! what a standalone service publishes in Redis, and what the status page's
//! totals read.
//!
//! One struct per service ([`PingerSnapshot`], [`RotatorSnapshot`]) and one
//! for the hub ([`HubSnapshot`]). Their JSON field names are an interface
//! (operators' scripts and the status page read them), so renaming a field
//! here is a breaking change. Every struct deserialises with defaults for
//! missing fields, so a server reads the snapshots of an older or newer
//! pinger during a rolling upgrade. Plain data: building them from live
//! counters is [`super::Hub`]'s job, adding them up is [`super::fold`]'s.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::protocol::ErrorKind;

/// The live statistics of the services one process sees: its own, plus
/// those other processes publish (see [`super::remote`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct HubSnapshot {
    /// Seconds since this process started.
    pub uptime_s: u64,
    /// This build's version.
    #[schema(example = "0.1.0")]
    pub version: String,
    /// Snapshots read from other processes through Redis; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<usize>,
    /// The pinger(s): this process's, or the sum of those publishing to
    /// Redis; absent when none reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinger: Option<PingerSnapshot>,
    /// The rotator(s), likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotator: Option<RotatorSnapshot>,
}

/// A pinger's counters, with rates computed when the snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PingerSnapshot {
    /// Meters scheduled.
    pub meters: i64,
    /// Polls per second since the previous snapshot.
    pub polls_per_s: f64,
    /// Spool lines written per second since the previous snapshot.
    pub lines_per_s: f64,
    /// Successful polls.
    pub ok_total: u64,
    /// Failed polls, all kinds.
    pub failed_total: u64,
    /// Failed polls by kind.
    pub failures_total: FailureCounts,
    /// Meters backing off (auth_failed included).
    pub in_backoff: i64,
    /// Meters whose credentials were rejected.
    pub auth_failed: i64,
    /// Slots skipped because the previous poll overran.
    pub missed_slots_total: u64,
    /// Slots skipped because their poll could not go out within
    /// `max_start_lag` (the pinger is over capacity).
    pub skipped_overload_total: u64,
    /// Polls per second the caps allow over those the meters need, as of
    /// the last interval; below 1 the pinger is over capacity. 0 before the
    /// first estimate.
    pub capacity_ratio: f64,
    /// Share of slots (polled or missed) whose poll started within 500 ms;
    /// 1 before the first slot.
    pub on_time_ratio: f64,
    /// Upper bound (ms) of the median scheduling lag's bucket.
    pub lag_p50_ms: Option<u64>,
    /// Upper bound (ms) of the 99th percentile's bucket.
    pub lag_p99_ms: Option<u64>,
    /// Summation readings written from meters' history (backfill).
    pub backfilled_readings_total: u64,
    /// Summation gaps still to fill from meters' history.
    pub gaps_open: i64,
    /// Lines written to spool files.
    pub lines_written_total: u64,
    /// Bytes written to spool files.
    pub bytes_written_total: u64,
    /// Failed spool writes (retried).
    pub write_errors_total: u64,
}

/// Failed polls by kind; the field names are [`ErrorKind::as_str`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
#[allow(missing_docs)]
pub struct FailureCounts {
    pub auth: u64,
    pub relay_error: u64,
    pub http_status: u64,
    pub timeout: u64,
    pub connect: u64,
    pub malformed: u64,
    pub redirect: u64,
    pub address_refused: u64,
}

impl FailureCounts {
    /// From counts in the order of [`ErrorKind::ALL`], as the scheduler
    /// keeps them.
    pub fn from_counts(counts: &[u64; ErrorKind::ALL.len()]) -> FailureCounts {
        let mut out = FailureCounts::default();
        for (kind, n) in ErrorKind::ALL.iter().zip(counts) {
            *out.get_mut(*kind) = *n;
        }
        out
    }

    /// The count of one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        // Through a copy, so the kind-to-field table exists once.
        let mut copy = *self;
        *copy.get_mut(kind)
    }

    fn get_mut(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::Auth => &mut self.auth,
            ErrorKind::Relay => &mut self.relay_error,
            ErrorKind::Http => &mut self.http_status,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Malformed => &mut self.malformed,
            ErrorKind::Redirect => &mut self.redirect,
            ErrorKind::Refused => &mut self.address_refused,
        }
    }

    /// Kind by kind sums (several pingers).
    pub fn add(&self, other: &FailureCounts) -> FailureCounts {
        let mut out = *self;
        for kind in ErrorKind::ALL {
            *out.get_mut(kind) = self.get(kind).saturating_add(other.get(kind));
        }
        out
    }
}

/// A rotator's counters and backlog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct RotatorSnapshot {
    /// Completed hour files not yet archived.
    pub files_pending: u64,
    /// Seconds since the oldest pending completed hour ended.
    pub oldest_pending_age_s: u64,
    /// When an upload last succeeded (RFC 3339), as far as this process saw.
    #[schema(example = "2024-06-10T14:05:00+00:00")]
    pub last_upload_at: Option<String>,
    /// Files archived.
    pub uploads_ok: u64,
    /// Upload attempts that failed (the file stays and is retried).
    pub uploads_failed: u64,
    /// Uploads merged into an object that already existed.
    pub merges: u64,
    /// Conditional writes refused because another writer got there first.
    pub conflicts: u64,
    /// Lines uploaded.
    pub lines_uploaded: u64,
    /// Torn or invalid lines left out of uploads.
    pub lines_dropped: u64,
    /// Files moved to quarantine.
    pub quarantined: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_field_names_are_the_kind_names() {
        let mut counts = [0; ErrorKind::ALL.len()];
        for (i, n) in counts.iter_mut().enumerate() {
            *n = i as u64 + 1;
        }
        let f = FailureCounts::from_counts(&counts);
        let json = serde_json::to_value(f).unwrap();
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(json[kind.as_str()], i as u64 + 1, "{json}");
            assert_eq!(f.get(*kind), i as u64 + 1);
        }
        assert_eq!(json.as_object().unwrap().len(), ErrorKind::ALL.len());
    }

    #[test]
    fn snapshots_read_with_missing_and_unknown_fields() {
        let s: HubSnapshot =
            serde_json::from_str(r#"{"uptime_s":3,"pinger":{"meters":2,"new_field":1}}"#).unwrap();
        assert_eq!(s.pinger.as_ref().map(|p| p.meters), Some(2));
        assert_eq!(s.rotator, None);
        let text = serde_json::to_string(&HubSnapshot::default()).unwrap();
        assert_eq!(text, r#"{"uptime_s":0,"version":""}"#);
    }
}
