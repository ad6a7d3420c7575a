//! Writer liveness and sealing on a spool volume that several processes,
//! on one host or in several containers, may share.
//!
//! Each writer keeps one file, `<data_dir>/writers/<writer>.heartbeat`. Its
//! modification time is the heartbeat: the writer sets it at every flush
//! (at least once a second). Its content is the last hour the writer has
//! *sealed* (`YYYY-MM-DD-HH`, empty before the first seal): every file of
//! that hour and earlier is fsynced and closed, and the writer will never
//! append to them again (a later line for such an hour goes to a late
//! segment, see [`super::bucket::Segment`]). A clean stop removes the file.
//!
//! The rotator reads these files to decide what it may ship: a writer's
//! sealed hours at once, and everything of a writer whose heartbeat is
//! missing or older than `rotate_grace` (it died, or stopped). Only the
//! file system is shared, so this works across containers with no other
//! channel; it assumes the hosts' clocks agree to well within the grace
//! (NTP), because the heartbeat's time is set by the writer's clock and
//! read against the rotator's.
//!
//! The rotator removes the heartbeat file of a writer that is gone (silent
//! for longer than `rotate_grace`) once none of its files is left, so a
//! crashed writer's file does not stay forever ([`remove_silent`]).
//!
//! This module owns the heartbeat files only; it neither writes lines nor
//! ships them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use super::bucket::{HourBucket, WriterId};

/// The directory under `data_dir` holding the heartbeat files. Not an hour
/// directory, so the rotator's scan of hours passes it by.
pub const WRITERS_DIR: &str = "writers";
const SUFFIX: &str = ".heartbeat";

/// A writer's own heartbeat file, held open for its lifetime.
pub(crate) struct Heartbeat {
    path: PathBuf,
    file: File,
}

impl Heartbeat {
    /// Creates the writer's heartbeat file (nothing sealed yet). Called
    /// before the writer creates its first spool file, so a rotator never
    /// sees a named writer's file without its heartbeat unless the writer
    /// is gone.
    pub(crate) fn create(data_dir: &Path, writer: &WriterId) -> io::Result<Heartbeat> {
        let dir = data_dir.join(WRITERS_DIR);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{writer}{SUFFIX}"));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        Ok(Heartbeat { path, file })
    }

    /// Says "still alive" (sets the file's modification time to now).
    pub(crate) fn beat(&self) -> io::Result<()> {
        self.file.set_modified(SystemTime::now())
    }

    /// Declares every file of `hour` and earlier sealed. The content has a
    /// fixed length and is written with one `pwrite`, so a reader sees the
    /// old hour or the new one; a damaged content reads as "nothing
    /// sealed", which only delays shipping.
    pub(crate) fn seal(&self, hour: HourBucket) -> io::Result<()> {
        self.file.write_all_at(format!("{hour}\n").as_bytes(), 0)?;
        self.file.sync_data()
    }

    /// A clean stop: every file is closed, so the writer is simply gone.
    pub(crate) fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "Cannot remove the spool writer's heartbeat file; the rotator will treat the writer as gone after rotate_grace.");
        }
    }
}

/// What a writer's heartbeat file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterState {
    /// The last hour it sealed.
    pub sealed: Option<HourBucket>,
    /// When it last said it was alive.
    pub last_beat: DateTime<Utc>,
}

/// Removes `writer`'s heartbeat file if it has been silent since before
/// `silent_since`; `Ok(false)` when it beat since (it lives after all) or
/// the file is already gone (another rotator removed it). The time is read
/// again here, just before the removal, rather than trusted from an earlier
/// listing, so a writer that came back is not declared gone.
pub fn remove_silent(
    data_dir: &Path,
    writer: &WriterId,
    silent_since: DateTime<Utc>,
) -> io::Result<bool> {
    let path = data_dir.join(WRITERS_DIR).join(format!("{writer}{SUFFIX}"));
    let modified = match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(t) => DateTime::<Utc>::from(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if modified >= silent_since {
        return Ok(false);
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every writer with a heartbeat file under `data_dir`. Files that are not
/// heartbeats are ignored; an unreadable one is left out, which makes its
/// writer look gone only after its files are `rotate_grace` old anyway.
pub fn writers(data_dir: &Path) -> io::Result<HashMap<WriterId, WriterState>> {
    let mut out = HashMap::new();
    let rd = match std::fs::read_dir(data_dir.join(WRITERS_DIR)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(WriterId::parse)
        else {
            continue;
        };
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        let sealed = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| HourBucket::parse(t.trim()));
        out.insert(
            id,
            WriterState {
                sealed,
                last_beat: DateTime::<Utc>::from(modified),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_tells_its_seal_and_time_and_goes_at_a_clean_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = WriterId::parse("host-1-00000001").expect("id");
        let hb = Heartbeat::create(dir.path(), &w).expect("create");
        let before = Utc::now() - chrono::Duration::seconds(5);
        let state = &writers(dir.path()).expect("read")[&w];
        assert_eq!(state.sealed, None);
        assert!(state.last_beat >= before);
        hb.seal(HourBucket(480_000)).expect("seal");
        hb.seal(HourBucket(480_001)).expect("seal");
        hb.beat().expect("beat");
        assert_eq!(
            writers(dir.path()).expect("read")[&w].sealed,
            Some(HourBucket(480_001))
        );
        std::fs::write(dir.path().join(WRITERS_DIR).join("junk.txt"), "x").expect("junk");
        hb.remove();
        assert!(writers(dir.path()).expect("read").is_empty());
    }

    #[test]
    fn only_a_heartbeat_silent_since_before_the_cutoff_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = WriterId::parse("host-1-00000002").expect("id");
        let hb = Heartbeat::create(dir.path(), &w).expect("create");
        let now = Utc::now();
        let cutoff = now - chrono::Duration::seconds(60);
        assert!(!remove_silent(dir.path(), &w, cutoff).expect("fresh"));
        hb.file
            .set_modified(SystemTime::now() - std::time::Duration::from_secs(120))
            .expect("age it");
        assert!(remove_silent(dir.path(), &w, cutoff).expect("silent"));
        assert!(writers(dir.path()).expect("read").is_empty());
        assert!(!remove_silent(dir.path(), &w, cutoff).expect("gone already"));
    }
}
