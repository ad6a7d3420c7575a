//! The embedded user registry: a JSON-lines users file, statistics in memory.
//!
//! For small set-ups, demos and tests that run without Redis. Owns the file's
//! line handling (blank lines and `#` comments ignored, one user per line in
//! the old system's format, see [`super::user`]) and its atomic rewrite on
//! `put`/`remove`. Statistics live only in this process and are lost on
//! restart; they never touch the file.
//!
//! The file is re-read on every [`FileRegistry::load_all`], so edits made by
//! hand are picked up at the next reload. A rewrite keeps every other line
//! as it was, including comments and lines that do not parse.
//!
//! The pinger reloads through [`FileRegistry::reload`] instead, which never
//! acts on a file caught half-written (editors and `cmd > users.jl` rewrite
//! in place, so a reload can read it empty or cut mid-line, and acting on
//! that would stop every meter). It defers, keeping the current list, while
//! the file changes during the read, was rewritten in place less than
//! [`SETTLE`] ago, or ends in a line without its newline; and it treats a
//! drop to fewer than half the users as suspicious: kept back with a
//! warning, applied only if the next reload reads the same content. A file
//! replaced by rename (a new inode) is complete the moment it appears, so
//! it is read at once; that is how the README says to replace it.

mod reload;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use self::reload::{Deferral, Reload, SETTLE};
use self::reload::{ReloadState, Verdict, lock, read_with_metadata};

use serde_json::Value;

use super::stats::{StatsUpdate, UserStats};
use super::user::User;
use super::{Census, IdPage, ProblemLog, PutOutcome, RegistryError};
use crate::cloud_id::CloudId;

const CHECK_FILE: &str = "check that the users file exists and is readable and writable by this user, or change `users_file`";

/// A line of the users file that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped (never contains a secret).
    pub reason: String,
}

/// The user registry in a JSON-lines file.
///
/// Cheap to clone: clones share the statistics and the write lock.
#[derive(Clone)]
pub struct FileRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegistry")
            .field("path", &self.inner.path)
            .finish()
    }
}

struct Inner {
    path: PathBuf,
    stats: Mutex<HashMap<CloudId, UserStats>>,
    /// Serialises read-modify-write cycles of the file within this process.
    write_lock: tokio::sync::Mutex<()>,
    problems: ProblemLog,
    /// What the pinger's reloads have seen, see [`FileRegistry::reload`].
    reload: Mutex<ReloadState>,
}

impl FileRegistry {
    /// A registry backed by `path`; nothing is read until first use, and a
    /// missing file is reported then.
    pub fn new(path: impl Into<PathBuf>) -> FileRegistry {
        FileRegistry {
            inner: Arc::new(Inner {
                path: path.into(),
                stats: Mutex::default(),
                write_lock: tokio::sync::Mutex::new(()),
                problems: ProblemLog::default(),
                reload: Mutex::default(),
            }),
        }
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `users file <path>`, for messages.
    pub fn target(&self) -> String {
        format!("users file {}", self.inner.path.display())
    }

    /// Re-reads the file and returns its valid users sorted by cloud id.
    /// Invalid lines are logged (path, line, reason; once while they stay
    /// invalid) and skipped.
    pub async fn load_all(&self) -> Result<Vec<User>, RegistryError> {
        let text = self.read().await?;
        Ok(self.users_logging_problems(&text))
    }

    /// The pinger's reload: like [`load_all`](Self::load_all), but never
    /// acting on a file caught half-written or suddenly emptied (see the
    /// module documentation). Call it from one task: it compares each read
    /// with the previous one.
    pub async fn reload(&self) -> Result<Reload, RegistryError> {
        let path = self.inner.path.clone();
        let read = tokio::task::spawn_blocking(move || read_with_metadata(&path))
            .await
            .map_err(|e| RegistryError::Unavailable {
                target: self.target(),
                reason: format!("the read did not finish: {e}"),
                check: CHECK_FILE,
            })?
            .map_err(|e| self.unavailable("cannot read it", &e))?;
        let (users, _) = parse_users(&read.text);
        let seen = read.seen(users.len());
        let verdict = lock(&self.inner.reload).judge(&seen);
        match verdict {
            Verdict::Apply { confirmed_drop } => {
                if let Some(from) = confirmed_drop {
                    tracing::warn!(
                        path = %self.inner.path.display(),
                        from,
                        to = seen.users,
                        "The users file still holds far fewer users; applying it."
                    );
                }
                Ok(Reload::Users(self.users_logging_problems(&read.text)))
            }
            Verdict::Defer(why) => {
                if let Deferral::SuddenDrop { from, to } = why {
                    tracing::warn!(
                        path = %self.inner.path.display(),
                        from,
                        to,
                        "The users file suddenly holds far fewer users; keeping the current list. \
                         It is applied if the next reload reads the same file; to replace the file, \
                         write a temporary file in the same directory and rename it over the users file."
                    );
                } else {
                    tracing::debug!(path = %self.inner.path.display(), why = ?why, "Users file not settled; keeping the current list.");
                }
                Ok(Reload::Deferred(why))
            }
        }
    }

    /// Parses `text`, logging invalid lines (once while they stay invalid).
    fn users_logging_problems(&self, text: &str) -> Vec<User> {
        let (users, problems) = parse_users(text);
        let keys: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.line, p.reason))
            .collect();
        for i in self.inner.problems.fresh(&keys) {
            let p = &problems[i];
            tracing::warn!(
                path = %self.inner.path.display(),
                line = p.line,
                reason = %p.reason,
                "Skipping an invalid line in the users file."
            );
        }
        users
    }

    /// One listing page of ids after `after`; the file is small by design,
    /// so it is read whole.
    pub async fn page_ids(
        &self,
        after: Option<CloudId>,
        limit: usize,
    ) -> Result<IdPage, RegistryError> {
        let ids = self
            .load_all()
            .await?
            .into_iter()
            .map(|u| u.cloud_id)
            .filter(|id| after.is_none_or(|a| *id > a))
            .take(limit.saturating_add(1))
            .collect();
        Ok(IdPage::from_candidates(ids, limit))
    }

    /// The ids of the active users in the file, sorted.
    pub async fn census(&self) -> Result<Census, RegistryError> {
        let users = self.load_all().await?;
        Ok(Census {
            users: users.len(),
            active: users
                .into_iter()
                .filter(|u| u.active)
                .map(|u| u.cloud_id)
                .collect(),
        })
    }

    /// One user from a fresh read of the file.
    pub async fn get(&self, id: CloudId) -> Result<Option<User>, RegistryError> {
        let text = self.read().await?;
        Ok(parse_users(&text).0.into_iter().find(|u| u.cloud_id == id))
    }

    /// Replaces the user's line (or appends one) and rewrites the file
    /// atomically; creates the file if it does not exist yet. Writes nothing
    /// when the stored user is identical.
    pub async fn put(&self, user: &User) -> Result<PutOutcome, RegistryError> {
        let _guard = self.inner.write_lock.lock().await;
        let text = match tokio::fs::read_to_string(&self.inner.path).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.unavailable("cannot read it", &e)),
        };
        let existing = parse_users(&text)
            .0
            .into_iter()
            .find(|u| u.cloud_id == user.cloud_id);
        if existing.as_ref() == Some(user) {
            return Ok(PutOutcome::Unchanged);
        }
        self.write(replace_line(
            &text,
            user.cloud_id,
            Some(&user.to_file_line()),
        ))
        .await?;
        Ok(if existing.is_some() {
            PutOutcome::Updated
        } else {
            PutOutcome::Created
        })
    }

    /// Drops every line for this cloud id, rewrites the file atomically and
    /// forgets the statistics; `false` (and no write) if there was none.
    pub async fn remove(&self, id: CloudId) -> Result<bool, RegistryError> {
        let _guard = self.inner.write_lock.lock().await;
        let text = self.read().await?;
        let had_line = text.lines().any(|l| line_cloud_id(l) == Some(id));
        self.lock_stats().remove(&id);
        if !had_line {
            return Ok(false);
        }
        self.write(replace_line(&text, id, None)).await?;
        Ok(true)
    }

    /// A meter's in-memory statistics.
    pub fn stats(&self, id: CloudId) -> Option<UserStats> {
        self.lock_stats().get(&id).cloned()
    }

    /// Applies updates to the in-memory statistics.
    pub fn write_stats(&self, updates: &[StatsUpdate]) {
        let mut stats = self.lock_stats();
        for u in updates {
            stats.entry(u.cloud_id).or_default().apply(u);
        }
    }

    /// Checks the file can be read.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.read().await.map(|_| ())
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, HashMap<CloudId, UserStats>> {
        // A panic elsewhere while holding the lock leaves the counters usable.
        self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read(&self) -> Result<String, RegistryError> {
        tokio::fs::read_to_string(&self.inner.path)
            .await
            .map_err(|e| self.unavailable("cannot read it", &e))
    }

    async fn write(&self, contents: String) -> Result<(), RegistryError> {
        let path = self.inner.path.clone();
        match tokio::task::spawn_blocking(move || write_atomically(&path, &contents)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.unavailable("cannot rewrite it", &e)),
            Err(e) => Err(RegistryError::Unavailable {
                target: self.target(),
                reason: format!("the rewrite did not finish: {e}"),
                check: CHECK_FILE,
            }),
        }
    }

    fn unavailable(&self, what: &str, e: &io::Error) -> RegistryError {
        let reason = if e.kind() == io::ErrorKind::NotFound {
            format!("{what}: the file does not exist")
        } else {
            format!("{what}: {e}")
        };
        RegistryError::Unavailable {
            target: self.target(),
            reason,
            check: CHECK_FILE,
        }
    }
}

/// Parses a users file: valid users sorted by cloud id, and the lines that
/// were skipped. When a cloud id appears twice the later line wins, as in
/// the old system, and the earlier one is reported.
pub fn parse_users(text: &str) -> (Vec<User>, Vec<LineProblem>) {
    let mut by_id: HashMap<CloudId, (usize, User)> = HashMap::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match User::from_json_line(line) {
            Ok(user) => {
                if let Some((earlier, _)) = by_id.insert(user.cloud_id, (i + 1, user)) {
                    problems.push(LineProblem {
                        line: earlier,
                        reason: format!("cloud id appears again on line {}, which wins", i + 1),
                    });
                }
            }
            Err(e) => problems.push(LineProblem {
                line: i + 1,
                reason: e.to_string(),
            }),
        }
    }
    problems.sort_by_key(|p| p.line);
    let mut users: Vec<User> = by_id.into_values().map(|(_, u)| u).collect();
    users.sort_by_key(|u| u.cloud_id);
    (users, problems)
}

/// The cloud id a line is about, even when the rest of the line is invalid,
/// so a rewrite replaces or drops broken lines for that id too.
fn line_cloud_id(line: &str) -> Option<CloudId> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    CloudId::parse(value.get("cloud_id")?.as_str()?).ok()
}

/// The file's new text: every line for `id` replaced by `new_line` (once, at
/// the first such line, or appended) or dropped when `new_line` is `None`;
/// all other lines kept verbatim. Always ends with a newline.
fn replace_line(text: &str, id: CloudId, new_line: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut placed = false;
    for line in text.lines() {
        if line_cloud_id(line) == Some(id) {
            if let (Some(new), false) = (new_line, placed) {
                out.push_str(new);
                out.push('\n');
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let (Some(new), false) = (new_line, placed) {
        out.push_str(new);
        out.push('\n');
    }
    out
}

/// Writes `contents` to a temporary file beside `path`, syncs it and renames
/// it over `path`, so readers see the old or the new file, never half of one.
/// Keeps the old file's permissions; a new file is readable by its owner
/// only, since it holds passwords. A symlinked path is written through.
fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        match std::fs::metadata(&path) {
            Ok(meta) => file.set_permissions(meta.permissions())?,
            Err(_) => owner_only(&file)?,
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        // Make the rename itself durable; not every platform allows this.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn owner_only(file: &std::fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn owner_only(_file: &std::fs::File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# users
{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "pw1", "total_events_logged": 5}

{"cloud_id": "zzzzzz", "user_email": "b@b.org", "user_pw": "pw2"}
{"cloud_id": "00aa01", "user_email": "c@b.org", "user_pw": "pw3", "active": false}
not json
{"cloud_id": "00CE69", "user_email": "d@b.org", "user_pw": "pw4"}
"#;

    #[test]
    fn parse_skips_comments_and_reports_bad_lines_by_number() {
        let (users, problems) = parse_users(FILE);
        let ids: Vec<&str> = users.iter().map(|u| u.cloud_id.as_str()).collect();
        assert_eq!(ids, ["00aa01", "00ce69"]);
        assert_eq!(users[1].user_email, "d@b.org", "later duplicate wins");
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        assert!(problems[1].reason.contains("cloud_id"), "{problems:?}");
    }

    #[test]
    fn replace_keeps_other_lines_verbatim() {
        let id = CloudId::parse("00ce69").unwrap();
        let out = replace_line(FILE, id, Some("NEW"));
        assert_eq!(out.matches("NEW").count(), 1);
        assert!(out.contains("# users\n") && out.contains("not json\n") && out.contains("zzzzzz"));
        assert!(!out.contains("pw1") && !out.contains("pw4"));
        let removed = replace_line(FILE, id, None);
        assert!(!removed.contains("00ce69") && !removed.contains("00CE69"));
        let other = CloudId::parse("00bb02").unwrap();
        assert!(replace_line(FILE, other, Some("NEW")).ends_with("pw4\"}\nNEW\n"));
    }
}
