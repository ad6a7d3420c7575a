//! The rotator's counters and gauges, shared with whoever exports metrics.
//!
//! Plain atomics, written by the rotator and read by anyone holding the
//! `Arc`; [`RotatorStats::snapshot`] gives a consistent-enough copy for a
//! log line or a metrics scrape. What leaves the process (JSON, Prometheus)
//! is shaped by [`crate::stats`], not here.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (monotonic) and gauges (set each pass) of one rotator.
#[derive(Debug, Default)]
pub struct RotatorStats {
    /// Gauge: completed hour files still in the spool after the last pass.
    pub files_pending: AtomicU64,
    /// Gauge: seconds since the oldest pending completed hour ended (0 when
    /// nothing is pending). A stalled uploader shows here first.
    pub oldest_pending_age_secs: AtomicU64,
    /// Files whose lines are now in the archive (written or already there).
    pub uploads_ok: AtomicU64,
    /// Attempts that failed; the file stays and is retried.
    pub uploads_failed: AtomicU64,
    /// Uploads merged into an object that already existed.
    pub merges: AtomicU64,
    /// Conditional writes refused because another writer got there first.
    pub conflicts: AtomicU64,
    /// Lines written to the archive (spool lines, not merged-in ones).
    pub lines_uploaded: AtomicU64,
    /// Torn or non-JSON lines left out of an upload.
    pub lines_dropped: AtomicU64,
    /// Files moved to `<data_dir>/quarantine/`.
    pub quarantined: AtomicU64,
    /// Spool bytes read from uploaded files.
    pub bytes_read: AtomicU64,
    /// Gzipped bytes written to the archive.
    pub bytes_uploaded: AtomicU64,
}

/// A copy of [`RotatorStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub files_pending: u64,
    pub oldest_pending_age_secs: u64,
    pub uploads_ok: u64,
    pub uploads_failed: u64,
    pub merges: u64,
    pub conflicts: u64,
    pub lines_uploaded: u64,
    pub lines_dropped: u64,
    pub quarantined: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
}

impl RotatorStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            files_pending: g(&self.files_pending),
            oldest_pending_age_secs: g(&self.oldest_pending_age_secs),
            uploads_ok: g(&self.uploads_ok),
            uploads_failed: g(&self.uploads_failed),
            merges: g(&self.merges),
            conflicts: g(&self.conflicts),
            lines_uploaded: g(&self.lines_uploaded),
            lines_dropped: g(&self.lines_dropped),
            quarantined: g(&self.quarantined),
            bytes_read: g(&self.bytes_read),
            bytes_uploaded: g(&self.bytes_uploaded),
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}
