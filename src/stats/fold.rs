//! How the snapshots of several instances of a service add up to one, for a
//! split deployment's status page (several pingers, a rotator elsewhere).
//!
//! One rule per field, written out, so a new field cannot be merged by
//! accident: counts and rates add up; ages and lags take the maximum (the
//! worst instance is what an operator acts on); the on-time ratio is
//! weighted by the slots each pinger handled; times take the latest. Pure;
//! [`super::Hub`] decides when to fold (only for a service this process
//! does not run itself).

use super::snapshot::{HubSnapshot, PingerSnapshot, RotatorSnapshot};

/// Fills `local`'s missing `pinger` / `rotator` from other processes'
/// snapshots, and counts them in `instances`. A service running in this
/// process is shown as is: its own counters are fresher than any copy in
/// Redis.
pub fn fold_remote(local: &mut HubSnapshot, remote: &[HubSnapshot]) {
    if remote.is_empty() {
        return;
    }
    local.instances = Some(remote.len());
    if local.pinger.is_none() {
        local.pinger = fold_all(
            remote.iter().filter_map(|r| r.pinger.as_ref()),
            fold_pingers,
        );
    }
    if local.rotator.is_none() {
        local.rotator = fold_all(
            remote.iter().filter_map(|r| r.rotator.as_ref()),
            fold_rotators,
        );
    }
}

fn fold_all<'a, T: Clone + 'a>(
    mut parts: impl Iterator<Item = &'a T>,
    fold: fn(&T, &T) -> T,
) -> Option<T> {
    let first = parts.next()?.clone();
    Some(parts.fold(first, |acc, p| fold(&acc, p)))
}

/// Slots a pinger handled: every slot is either polled (ok or failed),
/// missed, or skipped for overload, so this is the denominator of its
/// on-time ratio.
fn slots(p: &PingerSnapshot) -> u64 {
    p.ok_total
        .saturating_add(p.failed_total)
        .saturating_add(p.missed_slots_total)
        .saturating_add(p.skipped_overload_total)
}

/// Two pingers as one.
pub fn fold_pingers(a: &PingerSnapshot, b: &PingerSnapshot) -> PingerSnapshot {
    let (wa, wb) = (slots(a) as f64, slots(b) as f64);
    let on_time_ratio = if wa + wb > 0.0 {
        (a.on_time_ratio * wa + b.on_time_ratio * wb) / (wa + wb)
    } else {
        a.on_time_ratio.min(b.on_time_ratio)
    };
    PingerSnapshot {
        meters: a.meters + b.meters,
        polls_per_s: round2(a.polls_per_s + b.polls_per_s),
        lines_per_s: round2(a.lines_per_s + b.lines_per_s),
        ok_total: a.ok_total.saturating_add(b.ok_total),
        failed_total: a.failed_total.saturating_add(b.failed_total),
        failures_total: a.failures_total.add(&b.failures_total),
        in_backoff: a.in_backoff + b.in_backoff,
        auth_failed: a.auth_failed + b.auth_failed,
        missed_slots_total: a.missed_slots_total.saturating_add(b.missed_slots_total),
        skipped_overload_total: a
            .skipped_overload_total
            .saturating_add(b.skipped_overload_total),
        // The pinger worst off: meters are not shared between pingers, so
        // one over capacity is not helped by another's headroom.
        capacity_ratio: a.capacity_ratio.min(b.capacity_ratio),
        on_time_ratio,
        lag_p50_ms: a.lag_p50_ms.max(b.lag_p50_ms),
        lag_p99_ms: a.lag_p99_ms.max(b.lag_p99_ms),
        backfilled_readings_total: a
            .backfilled_readings_total
            .saturating_add(b.backfilled_readings_total),
        gaps_open: a.gaps_open + b.gaps_open,
        lines_written_total: a.lines_written_total.saturating_add(b.lines_written_total),
        bytes_written_total: a.bytes_written_total.saturating_add(b.bytes_written_total),
        write_errors_total: a.write_errors_total.saturating_add(b.write_errors_total),
    }
}

/// Two rotators as one.
pub fn fold_rotators(a: &RotatorSnapshot, b: &RotatorSnapshot) -> RotatorSnapshot {
    RotatorSnapshot {
        files_pending: a.files_pending.saturating_add(b.files_pending),
        oldest_pending_age_s: a.oldest_pending_age_s.max(b.oldest_pending_age_s),
        last_upload_at: latest(a.last_upload_at.as_deref(), b.last_upload_at.as_deref()),
        uploads_ok: a.uploads_ok.saturating_add(b.uploads_ok),
        uploads_failed: a.uploads_failed.saturating_add(b.uploads_failed),
        merges: a.merges.saturating_add(b.merges),
        conflicts: a.conflicts.saturating_add(b.conflicts),
        lines_uploaded: a.lines_uploaded.saturating_add(b.lines_uploaded),
        lines_dropped: a.lines_dropped.saturating_add(b.lines_dropped),
        quarantined: a.quarantined.saturating_add(b.quarantined),
    }
}

/// The later of two RFC 3339 times; one that does not parse loses to one
/// that does (it cannot be placed in time).
fn latest(a: Option<&str>, b: Option<&str>) -> Option<String> {
    let parse = |t: Option<&str>| t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let later = match (parse(a), parse(b)) {
        (Some(x), Some(y)) if y > x => b,
        (Some(_), _) => a,
        (None, Some(_)) => b,
        (None, None) => a.or(b),
    };
    later.map(str::to_string)
}

/// Rates are shown to two decimals; sums of rounded rates are rounded again
/// so `0.1 + 0.2` does not show as `0.30000000000000004`.
pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::snapshot::FailureCounts;

    fn pinger(ok: u64, missed: u64, ratio: f64, p99: Option<u64>) -> PingerSnapshot {
        PingerSnapshot {
            meters: 10,
            polls_per_s: 0.1,
            ok_total: ok,
            missed_slots_total: missed,
            on_time_ratio: ratio,
            lag_p99_ms: p99,
            failures_total: FailureCounts {
                timeout: 2,
                ..FailureCounts::default()
            },
            failed_total: 2,
            bytes_written_total: 100,
            ..PingerSnapshot::default()
        }
    }

    #[test]
    fn pingers_sum_counts_and_rates_take_the_worst_lag_and_weigh_the_ratio() {
        // 98 slots at 100 % on time, 2 slots at 0 %: 98 % overall.
        let a = pinger(96, 0, 1.0, Some(5));
        let b = pinger(0, 0, 0.0, Some(1000));
        let f = fold_pingers(&a, &b);
        assert_eq!(f.meters, 20);
        assert_eq!(f.polls_per_s, 0.2);
        assert_eq!(f.ok_total, 96);
        assert_eq!(f.failures_total.timeout, 4);
        assert_eq!(f.failed_total, 4);
        assert_eq!(f.bytes_written_total, 200);
        assert!((f.on_time_ratio - 0.98).abs() < 1e-9, "{}", f.on_time_ratio);
        assert_eq!(f.lag_p99_ms, Some(1000));
        assert_eq!(f.lag_p50_ms, None);
        // Before any slot, the ratios are 1 and stay 1.
        let idle = PingerSnapshot {
            on_time_ratio: 1.0,
            ..PingerSnapshot::default()
        };
        assert_eq!(fold_pingers(&idle, &idle).on_time_ratio, 1.0);
    }

    #[test]
    fn rotators_sum_the_backlog_take_the_oldest_age_and_the_latest_upload() {
        let a = RotatorSnapshot {
            files_pending: 2,
            oldest_pending_age_s: 30,
            last_upload_at: Some("2024-06-10T14:05:00+00:00".into()),
            uploads_ok: 5,
            ..RotatorSnapshot::default()
        };
        let b = RotatorSnapshot {
            files_pending: 1,
            oldest_pending_age_s: 7200,
            // Later, though it sorts first as text.
            last_upload_at: Some("2024-06-10T16:00:00+02:00".into()),
            uploads_ok: 1,
            ..RotatorSnapshot::default()
        };
        let f = fold_rotators(&a, &b);
        assert_eq!((f.files_pending, f.oldest_pending_age_s), (3, 7200));
        assert_eq!(f.uploads_ok, 6);
        assert_eq!(
            f.last_upload_at.as_deref(),
            Some("2024-06-10T14:05:00+00:00")
        );
        let c = RotatorSnapshot {
            last_upload_at: Some("2024-06-10T14:06:00+00:00".into()),
            ..RotatorSnapshot::default()
        };
        assert_eq!(
            fold_rotators(&a, &c).last_upload_at.as_deref(),
            Some("2024-06-10T14:06:00+00:00")
        );
        let never = RotatorSnapshot::default();
        assert_eq!(fold_rotators(&never, &c).last_upload_at, c.last_upload_at);
    }

    #[test]
    fn only_services_not_running_here_are_folded_in() {
        let remote = [
            HubSnapshot {
                pinger: Some(pinger(1, 0, 1.0, None)),
                ..HubSnapshot::default()
            },
            HubSnapshot {
                pinger: Some(pinger(2, 0, 1.0, None)),
                ..HubSnapshot::default()
            },
            HubSnapshot {
                rotator: Some(RotatorSnapshot {
                    files_pending: 4,
                    ..RotatorSnapshot::default()
                }),
                ..HubSnapshot::default()
            },
        ];
        let mut local = HubSnapshot {
            rotator: Some(RotatorSnapshot::default()),
            ..HubSnapshot::default()
        };
        fold_remote(&mut local, &remote);
        assert_eq!(local.instances, Some(3));
        assert_eq!(local.pinger.as_ref().map(|p| p.ok_total), Some(3));
        assert_eq!(local.rotator.as_ref().map(|r| r.files_pending), Some(0));
        let mut alone = HubSnapshot::default();
        fold_remote(&mut alone, &[]);
        assert_eq!(alone, HubSnapshot::default());
    }
}
