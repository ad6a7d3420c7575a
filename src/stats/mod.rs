//! Statistics: the live counters of the services running in this process,
//! turned into typed snapshots, and those into JSON (`/api/stats`, the
//! status page, Redis) or Prometheus text (`/metrics`).
//!
//! The path is one way: counters (atomics the hot paths bump: the
//! scheduler's [`Counters`], the spool's, the rotator's) -> [`Hub`] (holds
//! them, computes rates when a snapshot is taken) -> [`HubSnapshot`]
//! (serde structs, one per service) -> JSON, or -> [`prometheus`] (a
//! prometheus-client collector). Other processes' snapshots arrive through
//! [`remote`] and are added up by [`fold`]. The counters are only read;
//! the one thing written anywhere is this process's own snapshot, which
//! [`remote`] publishes in (and withdraws from) Redis. No meter id, e-mail
//! or secret is held or published.
//!
//! # Layout
//! - [`snapshot`]: the snapshot types, whose JSON names are an interface.
//! - [`fold`]: how several instances' snapshots add up, a rule per field.
//! - [`prometheus`]: the collector and the standalone `metrics_listen` server.
//! - [`remote`]: publishing and reading snapshots through Redis.
//! - [`sparkline`]: a meter's last hour of demand and its stored form.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

pub mod fold;
pub mod prometheus;
pub mod remote;
pub mod snapshot;
pub mod sparkline;

pub use self::snapshot::{FailureCounts, HubSnapshot, PingerSnapshot, RotatorSnapshot};
pub use self::sparkline::Sparkline;

use crate::clock::now_unix;
use crate::rotator::RotatorStats;
use crate::scheduler::Counters;
use crate::spool::{Spool, SpoolStats};

/// Live counters of the services in this process; cheap to clone.
#[derive(Clone, Default)]
pub struct Hub(Arc<Inner>);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

struct Inner {
    started: Instant,
    parts: Mutex<Parts>,
    rates: Mutex<Option<Sample>>,
    /// Snapshots other processes published.
    remote: Mutex<Vec<HubSnapshot>>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            started: Instant::now(),
            parts: Mutex::new(Parts::default()),
            rates: Mutex::new(None),
            remote: Mutex::new(Vec::new()),
        }
    }
}

/// The counters attached so far.
#[derive(Default, Clone)]
struct Parts {
    pinger: Option<Arc<Counters>>,
    spool: Option<Spool>,
    rotator: Option<Arc<RotatorStats>>,
}

/// Totals at one moment, kept to compute rates at the next snapshot.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    polls: u64,
    lines: u64,
    uploads: u64,
    last_upload_unix: Option<i64>,
}

/// Rates since the previous sample.
struct Rates {
    polls_per_s: f64,
    lines_per_s: f64,
    last_upload_unix: Option<i64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// An empty hub; services attach their counters as they start.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Registers the pinger's scheduler counters and its spool.
    pub fn attach_pinger(&self, counters: Arc<Counters>, spool: Spool) {
        let mut p = lock(&self.0.parts);
        p.pinger = Some(counters);
        p.spool = Some(spool);
    }

    /// Registers the rotator's counters.
    pub fn attach_rotator(&self, stats: Arc<RotatorStats>) {
        lock(&self.0.parts).rotator = Some(stats);
    }

    /// Replaces the snapshots read from other processes (see [`remote`]).
    pub fn set_remote(&self, remote: Vec<HubSnapshot>) {
        *lock(&self.0.remote) = remote;
    }

    fn parts(&self) -> Parts {
        lock(&self.0.parts).clone()
    }

    /// Rates since the previous snapshot (at least a second apart, so two
    /// scrapes in a row do not divide by nothing).
    fn rates(&self, polls: u64, lines: u64, uploads: u64) -> Rates {
        let now = Instant::now();
        let mut guard = lock(&self.0.rates);
        let prev = guard.unwrap_or(Sample {
            at: self.0.started,
            polls: 0,
            lines: 0,
            uploads: 0,
            last_upload_unix: None,
        });
        let secs = now.duration_since(prev.at).as_secs_f64();
        let last_upload_unix = if uploads > prev.uploads {
            Some(now_unix() as i64)
        } else {
            prev.last_upload_unix
        };
        let per_s = |now: u64, before: u64| {
            if secs > 0.0 {
                fold::round2(now.saturating_sub(before) as f64 / secs)
            } else {
                0.0
            }
        };
        let rates = Rates {
            polls_per_s: per_s(polls, prev.polls),
            lines_per_s: per_s(lines, prev.lines),
            last_upload_unix,
        };
        if secs >= 1.0 || guard.is_none() {
            *guard = Some(Sample {
                at: now,
                polls,
                lines,
                uploads,
                last_upload_unix,
            });
        }
        rates
    }

    /// The snapshot behind `/api/stats`: this process's services, and for
    /// a service it does not run, those other processes publish.
    pub fn snapshot(&self) -> HubSnapshot {
        let parts = self.parts();
        let pinger = parts.pinger.as_ref().map(|c| c.snapshot());
        let spool = parts.spool.as_ref().map(|s| s.stats());
        let rotator = parts.rotator.as_ref().map(|r| r.snapshot());
        let rates = self.rates(
            pinger.as_ref().map_or(0, |s| s.polls_ok + s.failed()),
            spool.map_or(0, |s| SpoolStats::get(&s.lines_written)),
            rotator.map_or(0, |r| r.uploads_ok),
        );
        let spool_count = |f: fn(&SpoolStats) -> u64| spool.map_or(0, f);
        let mut out = HubSnapshot {
            uptime_s: self.0.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            instances: None,
            pinger: pinger.map(|s| {
                // Every slot: polled, missed after an overrun, or skipped
                // for overload (skips are not on time).
                let slots = s.slots_polled + s.missed_slots + s.skipped_overload;
                PingerSnapshot {
                    meters: s.meters,
                    polls_per_s: rates.polls_per_s,
                    lines_per_s: rates.lines_per_s,
                    ok_total: s.polls_ok,
                    failed_total: s.failed(),
                    failures_total: FailureCounts::from_counts(&s.failures),
                    in_backoff: s.meters_in_backoff,
                    auth_failed: s.meters_auth_failed,
                    missed_slots_total: s.missed_slots,
                    skipped_overload_total: s.skipped_overload,
                    capacity_ratio: s.capacity_ratio,
                    on_time_ratio: if slots == 0 {
                        1.0
                    } else {
                        s.slots_on_time as f64 / slots as f64
                    },
                    lag_p50_ms: s.lag_quantile_ms(0.5),
                    lag_p99_ms: s.lag_quantile_ms(0.99),
                    backfilled_readings_total: s.backfilled_readings,
                    gaps_open: s.gaps_open,
                    lines_written_total: spool_count(|x| SpoolStats::get(&x.lines_written)),
                    bytes_written_total: spool_count(|x| SpoolStats::get(&x.bytes_written)),
                    write_errors_total: spool_count(|x| SpoolStats::get(&x.write_errors)),
                }
            }),
            rotator: rotator.map(|r| RotatorSnapshot {
                files_pending: r.files_pending,
                oldest_pending_age_s: r.oldest_pending_age_secs,
                last_upload_at: rates
                    .last_upload_unix
                    .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map(|t| t.to_rfc3339()),
                uploads_ok: r.uploads_ok,
                uploads_failed: r.uploads_failed,
                merges: r.merges,
                conflicts: r.conflicts,
                lines_uploaded: r.lines_uploaded,
                lines_dropped: r.lines_dropped,
                quarantined: r.quarantined,
            }),
        };
        fold::fold_remote(&mut out, &lock(&self.0.remote));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;

    #[test]
    fn snapshot_has_the_attached_services_only_and_remote_ones_fill_in() {
        let hub = Hub::new();
        let counters = Arc::new(Counters::default());
        counters.failure(ErrorKind::Timeout);
        lock(&hub.0.parts).pinger = Some(counters);
        let snap = hub.snapshot();
        let pinger = snap.pinger.as_ref().unwrap();
        assert_eq!(pinger.failed_total, 1);
        assert_eq!(pinger.failures_total.timeout, 1);
        assert_eq!(pinger.on_time_ratio, 1.0);
        assert!(snap.rotator.is_none() && snap.instances.is_none());

        hub.set_remote(vec![HubSnapshot {
            pinger: Some(PingerSnapshot {
                ok_total: 7,
                ..PingerSnapshot::default()
            }),
            rotator: Some(RotatorSnapshot {
                files_pending: 3,
                ..RotatorSnapshot::default()
            }),
            ..HubSnapshot::default()
        }]);
        let snap = hub.snapshot();
        assert_eq!(snap.instances, Some(1));
        assert_eq!(snap.pinger.map(|p| p.ok_total), Some(0), "local wins");
        assert_eq!(snap.rotator.map(|r| r.files_pending), Some(3));
    }
}
