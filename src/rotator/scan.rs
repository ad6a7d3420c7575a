//! Finding completed hour files in the spool.
//!
//! Which files may ship depends on who wrote them (the writer id in the
//! name, and the writer's heartbeat file, see `spool::heartbeat`):
//! - a live writer's file once the writer has sealed its hour (fsynced,
//!   closed, never appended to again), which is about 10 s after the hour
//!   ends; its late segments at once, as they are written whole;
//! - a gone writer's files (no heartbeat, or none for longer than
//!   `rotate_grace`), and files of the old layout without a writer id,
//!   once their UTC hour has ended and `rotate_grace` has passed.
//!
//! A live writer's unsealed file is never shipped, however old. The scan
//! reads directory listings and the small heartbeat files; it never opens a
//! spool file, so it is safe next to running writers.
//!
//! A file the rotator has claimed for shipping carries a
//! `.shipping-<tag>` suffix (see `ship`); the scan lists those too, so a
//! claim left by a crash or by another rotator is shipped, never forgotten.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use std::collections::{HashMap, HashSet};

use crate::cloud_id::CloudId;
use crate::spool::{HourBucket, Segment, SpoolName, WriterId, WriterState, parse_segment};
use crate::stream::Kind;

/// One spool file of one meter for one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolFile {
    /// Its path.
    pub path: PathBuf,
    /// The stream, which names its object.
    pub kind: Kind,
    /// The meter.
    pub cloud_id: CloudId,
    /// The hour, from the file name.
    pub hour: HourBucket,
    /// Size when scanned.
    pub size: u64,
    /// Already renamed to a `.shipping-<tag>` name by a rotator (this one
    /// in an earlier pass, a crashed one, or another one now).
    pub claimed: bool,
}

/// What a claimed file's name has after the spool file's name.
pub(super) const CLAIM_INFIX: &str = ".shipping-";

/// The spool file name inside a claimed name, if it is one.
pub(super) fn unclaimed_name(name: &str) -> (&str, bool) {
    match name.rsplit_once(CLAIM_INFIX) {
        Some((base, tag)) if !tag.is_empty() && !tag.contains('/') => (base, true),
        _ => (name, false),
    }
}

/// Whether `hour` may be uploaded at `now`.
pub fn is_completed(hour: HourBucket, now: DateTime<Utc>, grace: Duration) -> bool {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    hour.end()
        .checked_add_signed(grace)
        .is_some_and(|ready| ready <= now)
}

/// Whether a file may ship now (see the module documentation). `claimed`
/// files always may: a rotator claimed them under these rules already.
pub fn may_ship(
    name: &SpoolName,
    segment: Segment,
    writers: &HashMap<WriterId, WriterState>,
    now: DateTime<Utc>,
    grace: Duration,
) -> bool {
    let live = name
        .writer
        .as_ref()
        .and_then(|w| writers.get(w))
        .filter(|s| is_live(s, now, grace));
    match (live, segment) {
        (Some(_), Segment::Late(_)) => true,
        (Some(state), Segment::Main) => state.sealed.is_some_and(|h| name.hour <= h),
        (None, _) => is_completed(name.hour, now, grace),
    }
}

/// Whether a writer beat within the last `grace` (else it is gone).
fn is_live(state: &WriterState, now: DateTime<Utc>, grace: Duration) -> bool {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    state
        .last_beat
        .checked_add_signed(grace)
        .is_none_or(|t| t > now)
}

/// Writers that are gone (silent for longer than `grace`) and have no file
/// left in any hour directory, claimed or not: their heartbeat files tell
/// nothing any more and would pile up under `writers/` with every crash.
/// Lists the hour directories only while some writer is gone, which is
/// rare, so a normal pass costs nothing more.
pub fn gone_writers_without_files(
    data_dir: &Path,
    file_prefix: &str,
    now: DateTime<Utc>,
    grace: Duration,
) -> std::io::Result<Vec<WriterId>> {
    let mut gone: HashSet<WriterId> = crate::spool::writers(data_dir)?
        .into_iter()
        .filter(|(_, s)| !is_live(s, now, grace))
        .map(|(w, _)| w)
        .collect();
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .and_then(HourBucket::parse)
            .is_none()
        {
            continue;
        }
        let rd = match std::fs::read_dir(entry.path()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // A file (or an unreadable directory) with an hour's name.
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => return Err(e),
        };
        for f in rd {
            let fname = f?.file_name();
            let Some((base, _)) = fname.to_str().map(unclaimed_name) else {
                continue;
            };
            if let Some((
                SpoolName {
                    writer: Some(w), ..
                },
                _,
            )) = parse_segment(file_prefix, base)
            {
                gone.remove(&w);
            }
        }
        if gone.is_empty() {
            break;
        }
    }
    let mut gone: Vec<WriterId> = gone.into_iter().collect();
    gone.sort();
    Ok(gone)
}

/// Every completed spool file under `data_dir`, oldest hour first (then by
/// meter), and how many files were left alone because they may not ship
/// yet ([`may_ship`]). Directories that are not hour directories
/// (`quarantine/`, `writers/`) and names that are not spool files are
/// ignored.
pub fn completed_files(
    data_dir: &Path,
    file_prefix: &str,
    now: DateTime<Utc>,
    grace: Duration,
) -> std::io::Result<(Vec<SpoolFile>, usize)> {
    let mut files = Vec::new();
    let mut not_yet = 0;
    let writers = crate::spool::writers(data_dir)?;
    let top = match std::fs::read_dir(data_dir) {
        Ok(rd) => rd,
        // No spool yet (the pinger has not written anything): nothing to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((files, 0)),
        Err(e) => return Err(e),
    };
    for entry in top {
        let entry = entry?;
        let name = entry.file_name();
        let Some(dir_hour) = name.to_str().and_then(HourBucket::parse) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if dir_hour.end() > now {
            // Count, don't list: the live hour's files are open for writing.
            not_yet += std::fs::read_dir(entry.path()).map_or(0, |rd| rd.count());
            continue;
        }
        let rd = match std::fs::read_dir(entry.path()) {
            Ok(rd) => rd,
            // Removed by another rotator between the two listings.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for f in rd {
            let f = f?;
            let fname = f.file_name();
            let Some((base, claimed)) = fname.to_str().map(unclaimed_name) else {
                continue;
            };
            let Some((name, segment)) = parse_segment(file_prefix, base) else {
                continue;
            };
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if !claimed && !may_ship(&name, segment, &writers, now, grace) {
                not_yet += 1;
                continue;
            }
            let (cloud_id, hour) = (name.cloud_id, name.hour);
            files.push(SpoolFile {
                path: f.path(),
                kind: name.kind,
                cloud_id,
                hour,
                size: meta.len(),
                claimed,
            });
        }
    }
    files.sort_by(|a, b| (a.hour, a.cloud_id, &a.path).cmp(&(b.hour, b.cloud_id, &b.path)));
    Ok((files, not_yet))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::hour_file;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn an_hour_is_completed_only_after_its_grace() {
        let h = HourBucket::of(t("2025-01-15T10:30:00Z"));
        let grace = Duration::from_secs(120);
        assert!(!is_completed(h, t("2025-01-15T10:59:59Z"), grace));
        assert!(!is_completed(h, t("2025-01-15T11:01:59Z"), grace));
        assert!(is_completed(h, t("2025-01-15T11:02:00Z"), grace));
    }

    #[test]
    fn scan_lists_completed_files_oldest_first_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let now = t("2025-01-15T12:30:00Z");
        let a = CloudId::parse("00000a").unwrap();
        let b = CloudId::parse("00000b").unwrap();
        let h = |s| HourBucket::of(t(s));
        let mk = |id, hour| {
            let p = hour_file(dir.path(), "pre", id, hour);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "{}\n").unwrap();
            p
        };
        let newest = mk(a, h("2025-01-15T11:00:00Z"));
        let oldest_b = mk(b, h("2025-01-15T09:00:00Z"));
        let oldest_a = mk(a, h("2025-01-15T09:00:00Z"));
        mk(a, h("2025-01-15T12:00:00Z"));
        std::fs::create_dir_all(dir.path().join("quarantine")).unwrap();
        std::fs::write(dir.path().join("2025-01-15-09/other.txt"), "x").unwrap();
        // A claim left by a crashed rotator is listed, marked as claimed.
        let mut claimed = newest.clone().into_os_string();
        claimed.push(".shipping-77-1");
        let claimed = PathBuf::from(claimed);
        std::fs::write(&claimed, "{}\n").unwrap();
        let (files, not_yet) =
            completed_files(dir.path(), "pre", now, Duration::from_secs(120)).unwrap();
        let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(paths, vec![oldest_a, oldest_b, newest, claimed]);
        assert_eq!(files.iter().filter(|f| f.claimed).count(), 1);
        assert_eq!(files[3].cloud_id, a);
        assert_eq!(not_yet, 1);
    }

    fn named(kind: Kind, writer: &str, hour: HourBucket) -> SpoolName {
        SpoolName {
            kind,
            cloud_id: CloudId::parse("00000a").unwrap(),
            hour,
            writer: WriterId::parse(writer),
        }
    }

    #[test]
    fn a_live_writer_ships_what_it_sealed_and_a_gone_one_after_the_grace() {
        let grace = Duration::from_secs(120);
        let h = HourBucket::of(t("2025-01-15T10:30:00Z"));
        let live = WriterId::parse("live-1-00000001").unwrap();
        let dead = WriterId::parse("dead-1-00000002").unwrap();
        let now = t("2025-01-15T13:00:00Z");
        let writers = HashMap::from([
            // Alive (beat a second ago) and sealed through 10:00 only.
            (
                live.clone(),
                WriterState {
                    sealed: Some(h),
                    last_beat: now - chrono::Duration::seconds(1),
                },
            ),
            // Silent for longer than the grace: gone, whatever it sealed.
            (
                dead.clone(),
                WriterState {
                    sealed: None,
                    last_beat: now - chrono::Duration::seconds(121),
                },
            ),
        ]);
        let next = HourBucket(h.0 + 1);
        let ship = |n: &SpoolName, seg, at| may_ship(n, seg, &writers, at, grace);
        let live_h = named(Kind::Summation, live.as_str(), h);
        let live_next = named(Kind::Demand, live.as_str(), next);
        assert!(ship(&live_h, Segment::Main, now));
        // Two hours old but not sealed by its live writer: not shipped.
        assert!(!ship(&live_next, Segment::Main, now));
        // Its late segments are complete as soon as they exist.
        assert!(ship(&live_next, Segment::Late(1), now));
        // A sealed hour ships before the grace is over.
        assert!(ship(
            &live_h,
            Segment::Main,
            h.end() + chrono::Duration::seconds(11)
        ));
        let dead_next = named(Kind::Price, dead.as_str(), next);
        assert!(ship(&dead_next, Segment::Main, now));
        assert!(!ship(
            &dead_next,
            Segment::Main,
            next.end() + chrono::Duration::seconds(60)
        ));
        // A writer without a heartbeat stopped cleanly (or long ago).
        let gone = named(Kind::Demand, "gone-1-00000003", next);
        assert!(ship(&gone, Segment::Main, now));
        let old = SpoolName::demand(CloudId::parse("00000a").unwrap(), next);
        assert!(ship(&old, Segment::Main, now));
        assert!(!ship(&old, Segment::Main, next.end()));
    }
}
