//! Finding completed hour files in the spool.
//!
//! A file is completed when its UTC hour has ended and `rotate_grace` has
//! passed, leaving time for polls that started before the hour turned. The
//! scan only reads directory listings; it never opens a file, so it is safe
//! next to a running pinger.
//!
//! A file the rotator has claimed for shipping carries a
//! `.shipping-<tag>` suffix (see `ship`); the scan lists those too, so a
//! claim left by a crash or by another rotator is shipped, never forgotten.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cloud_id::CloudId;
use crate::spool::{HourBucket, parse_file_name};
use crate::stream::Kind;

/// One spool file of one meter for one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolFile {
    /// Its path.
    pub path: PathBuf,
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

/// Every completed spool file under `data_dir`, oldest hour first (then by
/// meter), and how many files were left alone because their hour is not
/// completed yet. Directories that are not hour directories (`quarantine/`)
/// and names that are not spool files are ignored.
pub fn completed_files(
    data_dir: &Path,
    file_prefix: &str,
    now: DateTime<Utc>,
    grace: Duration,
) -> std::io::Result<(Vec<SpoolFile>, usize)> {
    let mut files = Vec::new();
    let mut not_yet = 0;
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
        if !is_completed(dir_hour, now, grace) {
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
            let Some(name) = parse_file_name(file_prefix, base) else {
                continue;
            };
            // Only demand is shipped until the rotator names objects by kind.
            if name.kind != Kind::Demand {
                continue;
            }
            let (cloud_id, hour) = (name.cloud_id, name.hour);
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if !is_completed(hour, now, grace) {
                not_yet += 1;
                continue;
            }
            files.push(SpoolFile {
                path: f.path(),
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
}
