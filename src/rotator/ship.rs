//! Shipping one hour file: read and check it, gzip, read-merge-write the
//! object (holding the Redis lock on its key when the store ignores
//! conditional writes), and only then delete the file (or quarantine it if
//! it cannot be read at all).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use super::lines::{archived_lines, check_spool, gunzip, gzip, merge};
use super::lock::{LockError, LockGuard};
use super::scan::{CLAIM_INFIX, SpoolFile, unclaimed_name};
use super::stats::RotatorStats;
use super::{Rotator, RotatorError};
use crate::archive::{ArchiveError, Condition, ObjectKey};
use crate::spool::HourBucket;

/// Conditional writes lost in a row before the file is put back to wait;
/// each loss means another writer made progress, so this is only reached
/// under heavy, sustained contention for one key.
const MAX_CONFLICTS: u32 = 10;
/// Re-reads of a claimed file that grew during its upload before it is
/// left for the next pass; a writer stops appending to a claimed file
/// within one flush, so more than one round is already rare.
const LATE_ROUNDS: usize = 3;

/// What became of one file.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Its lines are in the archive and the file is gone.
    Archived {
        /// The object existed and was merged into (or already held them).
        merged: bool,
    },
    /// The file was empty and was removed (nothing to archive).
    Empty,
    /// The file vanished before it was read (another rotator took it).
    Gone,
    /// Moved to `<data_dir>/quarantine/`.
    Quarantined,
    /// Still in the spool; retried later.
    Failed(RotatorError),
}

/// A checked spool file, ready to upload.
struct Ready {
    /// The canonical lines, each ending in `\n` (for merging).
    text: Arc<Vec<u8>>,
    /// `text` gzipped (for a new object).
    gz: Vec<u8>,
    lines: u64,
    dropped: u64,
    torn: bool,
    /// Lines that were not JSON objects, `(line number, bytes)`.
    rejected: Vec<(usize, Vec<u8>)>,
    bytes_read: u64,
}

enum Prepared {
    Ready(Ready),
    Empty,
    Gone,
    /// Cannot be read, or holds no complete JSON object: quarantine, why.
    Unusable(String),
}

impl Rotator {
    /// The object key of a spool file.
    pub(super) fn key_of(&self, file: &SpoolFile) -> ObjectKey {
        ObjectKey::for_stream(
            &self.opts.key_prefix,
            &self.opts.file_prefix,
            file.kind,
            file.cloud_id,
            file.hour,
        )
    }

    /// Ships one file; never deletes it unless the archive acknowledged an
    /// object holding every one of its lines. Returns what happened and
    /// where the file is now (its claimed name once claimed), which is the
    /// name its backoff is kept under.
    pub(super) async fn ship(&self, file: &SpoolFile) -> (Outcome, PathBuf) {
        let claimed = if file.claimed {
            file.path.clone()
        } else {
            match claim(&file.path) {
                Ok(p) => p,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return (Outcome::Gone, file.path.clone());
                }
                Err(source) => {
                    let e = RotatorError::Claim {
                        path: file.path.clone(),
                        source,
                    };
                    return (Outcome::Failed(e), file.path.clone());
                }
            }
        };
        let file = SpoolFile {
            path: claimed,
            ..file.clone()
        };
        (self.ship_claimed(&file).await, file.path)
    }

    /// Ships a file already renamed to its claimed name, which no writer
    /// opens any more: the read, the upload, then a check that the file
    /// did not grow meanwhile (a writer that opened it before the claim),
    /// and only then the delete.
    async fn ship_claimed(&self, file: &SpoolFile) -> Outcome {
        let ready = match read_spool(&file.path).await {
            Ok(Prepared::Ready(r)) => r,
            Ok(Prepared::Gone) => return Outcome::Gone,
            Ok(Prepared::Empty) => {
                tracing::debug!(path = %file.path.display(), "Removed an empty spool file.");
                let _ = std::fs::remove_file(&file.path);
                remove_hour_dir_if_empty(&file.path);
                return Outcome::Empty;
            }
            Ok(Prepared::Unusable(reason)) => return self.quarantine(file, &reason),
            Err(e) => return Outcome::Failed(e),
        };
        let key = self.key_of(file);
        let mut merged = match self.write_merged_locked(&key, &ready).await {
            Ok(m) => m,
            Err(e) => return Outcome::Failed(e),
        };
        let mut ready = ready;
        let mut settled = false;
        for _ in 0..LATE_ROUNDS {
            let grew = std::fs::metadata(&file.path).is_ok_and(|m| m.len() != ready.bytes_read);
            if !grew {
                settled = true;
                break;
            }
            // Lines landed after the read: ship them before the delete.
            let again = match read_spool(&file.path).await {
                Ok(Prepared::Ready(r)) => r,
                Ok(_) => {
                    settled = true;
                    break;
                }
                Err(e) => return Outcome::Failed(e),
            };
            tracing::info!(
                path = %file.path.display(),
                bytes = again.bytes_read.saturating_sub(ready.bytes_read),
                "Lines were appended while the file was being uploaded; merging them too."
            );
            match self.write_merged_locked(&key, &again).await {
                Ok(m) => merged |= m,
                Err(e) => return Outcome::Failed(e),
            }
            ready = again;
        }
        let s = &self.stats;
        RotatorStats::add(&s.lines_uploaded, ready.lines);
        RotatorStats::add(&s.lines_dropped, ready.dropped);
        RotatorStats::add(&s.bytes_read, ready.bytes_read);
        if ready.torn {
            tracing::warn!(path = %file.path.display(), "Dropped a torn last line (left by a crash).");
        }
        if !ready.rejected.is_empty() {
            self.keep_rejected(file, &ready.rejected);
        }
        if !settled {
            tracing::warn!(
                path = %file.path.display(),
                "The file kept growing while it was shipped; it is kept and shipped again \
                 next pass (merged, not duplicated)."
            );
            return Outcome::Archived { merged };
        }
        // The archive holds every line now; only from here may the file go.
        if let Err(e) = std::fs::remove_file(&file.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(
                path = %file.path.display(),
                key = %key,
                "Archived, but cannot delete the spool file ({e}); it will be found \
                 already archived and deleted on the next pass. Check permissions."
            );
        }
        remove_hour_dir_if_empty(&file.path);
        Outcome::Archived { merged }
    }

    /// [`write_merged`](Self::write_merged), holding the key's Redis lock
    /// from the read to the acknowledged write when [`Rotator::merge_lock`]
    /// asks for one. Without the lock nothing is uploaded.
    async fn write_merged_locked(
        &self,
        key: &ObjectKey,
        ready: &Ready,
    ) -> Result<bool, RotatorError> {
        let Some(lock) = self.merge_lock() else {
            return self.write_merged(key, ready, None).await;
        };
        let guard = lock.acquire(key).await.map_err(|e| match e {
            // Every merge needs Redis now: stop the pass like a store outage
            // instead of failing each file in turn.
            LockError::Unavailable { target, detail } => {
                RotatorError::Archive(ArchiveError::Unavailable {
                    target: format!("{target} (the archive lock)"),
                    detail,
                })
            }
            e => RotatorError::Lock(e),
        })?;
        let result = self.write_merged(key, ready, Some(&guard)).await;
        if let Err(e) = guard.release().await {
            // The lock expires by itself; only the next merge of this key waits.
            tracing::warn!(key = %key, "Could not release the archive lock: {e}");
        }
        result
    }

    /// Read-merge-write with conditional writes; `Ok(merged)` once the
    /// object holds every line of `ready`. With `guard`, each write is sent
    /// only while the lock is certainly held.
    async fn write_merged(
        &self,
        key: &ObjectKey,
        ready: &Ready,
        guard: Option<&LockGuard>,
    ) -> Result<bool, RotatorError> {
        let still_locked = || guard.map_or(Ok(()), LockGuard::ensure_held);
        // Most keys are new: create first and read only when the key turns
        // out to exist, one request instead of two. Only where the probe
        // found If-None-Match enforced, as elsewhere a blind create could
        // replace an object it never read.
        if guard.is_none() && self.conditional_writes_enforced() == Some(true) {
            match self
                .archive
                .put(key, ready.gz.clone(), Condition::Absent)
                .await
            {
                Ok(()) => {
                    RotatorStats::add(&self.stats.bytes_uploaded, ready.gz.len() as u64);
                    return Ok(false);
                }
                Err(ArchiveError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for _ in 0..MAX_CONFLICTS {
            let lost = match self.archive.get(key).await? {
                None => {
                    still_locked()?;
                    let r = self
                        .archive
                        .put(key, ready.gz.clone(), Condition::Absent)
                        .await;
                    match r {
                        Ok(()) => {
                            RotatorStats::add(&self.stats.bytes_uploaded, ready.gz.len() as u64);
                            return Ok(false);
                        }
                        Err(ArchiveError::Conflict { .. }) => true,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(stored) => {
                    let text = ready.text.clone();
                    let body = stored.body;
                    let merged = tokio::task::spawn_blocking(move || merged_object(&body, &text))
                        .await
                        .map_err(|e| RotatorError::Task(e.to_string()))?;
                    let merged = match merged {
                        Ok(m) => m,
                        Err(reason) => {
                            return Err(RotatorError::CorruptObject {
                                location: self.archive.location(key),
                                reason,
                            });
                        }
                    };
                    let Some((gz, added)) = merged else {
                        tracing::info!(
                            key = %key,
                            "The archive already holds every line of this file (an earlier \
                             upload finished before the file could be deleted)."
                        );
                        RotatorStats::add(&self.stats.merges, 1);
                        return Ok(true);
                    };
                    let len = gz.len() as u64;
                    still_locked()?;
                    match self
                        .archive
                        .put(key, gz, Condition::Matches(stored.etag))
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(key = %key, added, "Merged lines into an existing object.");
                            RotatorStats::add(&self.stats.merges, 1);
                            RotatorStats::add(&self.stats.bytes_uploaded, len);
                            return Ok(true);
                        }
                        Err(ArchiveError::Conflict { .. }) => true,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if lost {
                RotatorStats::add(&self.stats.conflicts, 1);
                tracing::debug!(key = %key, "Lost a conditional write to another writer; merging again.");
            }
        }
        Err(RotatorError::Contended {
            key: key.clone(),
            attempts: MAX_CONFLICTS,
        })
    }

    /// Moves an unusable file to `<data_dir>/quarantine/` with a `.why` note.
    fn quarantine(&self, file: &SpoolFile, reason: &str) -> Outcome {
        let now = self.clock.now();
        match move_to_quarantine(&self.opts.data_dir, &file.path, reason, now) {
            Ok(dest) => {
                RotatorStats::add(&self.stats.quarantined, 1);
                tracing::error!(
                    path = %file.path.display(),
                    moved_to = %dest.display(),
                    "Quarantined a spool file that {reason}; it is not uploaded. Inspect it, \
                     fix or delete it by hand."
                );
                Outcome::Quarantined
            }
            Err(e) => Outcome::Failed(RotatorError::Quarantine {
                path: file.path.clone(),
                reason: reason.to_string(),
                source: e,
            }),
        }
    }

    /// Saves lines left out of an upload next to the quarantined files, so
    /// deleting the spool file loses nothing an operator might want back.
    fn keep_rejected(&self, file: &SpoolFile, rejected: &[(usize, Vec<u8>)]) {
        let dir = self.opts.data_dir.join("quarantine");
        let name = file
            .path
            .file_name()
            .map(|n| unclaimed_name(&n.to_string_lossy()).0.to_string())
            .unwrap_or_default();
        let dest = dir.join(format!("{name}.rejected-lines"));
        let mut body = Vec::new();
        for (n, line) in rejected {
            body.extend_from_slice(format!("{n}:").as_bytes());
            body.extend_from_slice(line);
            body.push(b'\n');
        }
        let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&dest, &body));
        let numbers: Vec<usize> = rejected.iter().map(|(n, _)| *n).collect();
        match saved {
            Ok(()) => tracing::warn!(
                path = %file.path.display(),
                lines = ?numbers,
                kept_in = %dest.display(),
                "Left lines that are not JSON objects out of the upload."
            ),
            Err(e) => tracing::error!(
                path = %file.path.display(),
                lines = ?numbers,
                "Left lines that are not JSON objects out of the upload and could not keep \
                 them in {} ({e}); they are lost with the spool file.",
                dest.display()
            ),
        }
    }
}

/// Renames a spool file to a `.shipping-<pid>-<n>` name of its own
/// before it is read. The writer opens files by their spool name, so a
/// line for this hour that arrives from now on creates a new file, shipped
/// next pass, instead of landing in a file about to be deleted. A name of
/// its own per claim means two rotators never rename onto each other.
fn claim(path: &Path) -> std::io::Result<PathBuf> {
    static CLAIMS: AtomicU64 = AtomicU64::new(0);
    let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!("{CLAIM_INFIX}{}-{n}", std::process::id()));
    let claimed = PathBuf::from(name);
    std::fs::rename(path, &claimed)?;
    Ok(claimed)
}

async fn read_spool(path: &Path) -> Result<Prepared, RotatorError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || prepare(&path))
        .await
        .map_err(|e| RotatorError::Task(e.to_string()))
}

fn prepare(path: &Path) -> Prepared {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Prepared::Gone,
        Err(e) => return Prepared::Unusable(format!("cannot be read ({e})")),
    };
    if bytes.is_empty() {
        return Prepared::Empty;
    }
    let checked = check_spool(&bytes);
    if checked.lines.is_empty() {
        return Prepared::Unusable(format!(
            "holds no complete JSON object in {} bytes",
            bytes.len()
        ));
    }
    let mut text = Vec::with_capacity(bytes.len());
    for l in &checked.lines {
        text.extend_from_slice(l.bytes);
        text.push(b'\n');
    }
    let gz = match gzip(checked.lines.iter().map(|l| l.bytes)) {
        Ok(gz) => gz,
        // In-memory compression only fails when memory does; not the file's fault.
        Err(e) => return Prepared::Unusable(format!("could not be compressed ({e})")),
    };
    Prepared::Ready(Ready {
        lines: checked.lines.len() as u64,
        dropped: (checked.rejected.len() + usize::from(checked.torn.is_some())) as u64,
        torn: checked.torn.is_some(),
        rejected: checked
            .rejected
            .iter()
            .map(|(n, l)| (*n, l.to_vec()))
            .collect(),
        bytes_read: bytes.len() as u64,
        text: Arc::new(text),
        gz,
    })
}

/// The gzipped union of an archived object and `local`, with how many lines
/// were new; `Ok(None)` when the object already has them all; `Err` when the
/// object is not gzip (it is then left alone).
#[allow(clippy::type_complexity)]
fn merged_object(stored: &[u8], local: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let archived = gunzip(stored).map_err(|e| format!("not a gzip stream: {e}"))?;
    let a = archived_lines(&archived);
    let l = archived_lines(local);
    let m = merge(&a, &l);
    if m.added == 0 {
        return Ok(None);
    }
    let gz =
        gzip(m.lines.iter().copied()).map_err(|e| format!("cannot compress the merge: {e}"))?;
    Ok(Some((gz, m.added)))
}

/// `now` names a second copy of the same file apart from the first.
fn move_to_quarantine(
    data_dir: &Path,
    path: &Path,
    reason: &str,
    now: DateTime<Utc>,
) -> std::io::Result<PathBuf> {
    let dir = data_dir.join("quarantine");
    std::fs::create_dir_all(&dir)?;
    // Under its spool name, not the claim's, so an operator recognises it.
    let name = path
        .file_name()
        .map(|n| unclaimed_name(&n.to_string_lossy()).0.to_string())
        .unwrap_or_else(|| "unnamed".into());
    let mut dest = dir.join(&name);
    if dest.exists() {
        let ms = now.timestamp_millis();
        dest = dir.join(format!("{name}.{ms}"));
    }
    std::fs::rename(path, &dest)?;
    let mut why = dest.clone().into_os_string();
    why.push(".why");
    let _ = std::fs::write(PathBuf::from(why), format!("{reason}\n"));
    remove_hour_dir_if_empty(path);
    Ok(dest)
}

/// Removes the file's hour directory once its last file is gone. Only a
/// directory named after an hour is touched, and `remove_dir` refuses a
/// non-empty one, so a file written meanwhile is never at risk.
fn remove_hour_dir_if_empty(file: &Path) {
    if let Some(dir) = file.parent()
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(HourBucket::parse)
            .is_some()
    {
        let _ = std::fs::remove_dir(dir);
    }
}
