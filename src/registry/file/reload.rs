//! Whether a read of the users file is safe to act on: the rules of
//! [`FileRegistry::reload`](super::FileRegistry::reload).
//!
//! Owns the look at the file around a read (size, modification time,
//! inode, before and after) and the pure decision over successive reads
//! ([`ReloadState::judge`]); parsing and logging stay in the parent module.
//! It never writes the file.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::registry::User;

/// How long after an in-place rewrite the users file is left alone by the
/// pinger's reload: a writer that truncates and then writes (a shell
/// redirect, most editors' default) is done well within this.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What a [`FileRegistry::reload`](super::FileRegistry::reload) found.
#[derive(Debug)]
pub enum Reload {
    /// The users to poll now.
    Users(Vec<User>),
    /// The file is not safe to act on yet; keep polling the current list
    /// and look again at the next reload.
    Deferred(Deferral),
}

/// Why a reload kept the current list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The file's size, modification time or inode changed during the read.
    ChangedWhileRead,
    /// The file was rewritten in place less than [`SETTLE`] ago.
    BeingRewritten,
    /// The last line has no newline yet (applied if it is still so at the
    /// next reload: some editors never add one).
    TornLastLine,
    /// The file would drop the user count from `from` to `to`, fewer than
    /// half; applied if the next reload reads the same content.
    SuddenDrop {
        /// Users in the current list.
        from: usize,
        /// Users in the file now.
        to: usize,
    },
}

/// Where a file is stored: `(device, inode)`, so a replacement by rename
/// is told apart from a rewrite in place.
type FileId = (u64, u64);

/// The parts of a file's metadata that change when it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    file: Option<FileId>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let file = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let file = None;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            file,
        }
    }
}

pub(super) struct Read {
    pub(super) text: String,
    before: Stamp,
    after: Stamp,
}

impl Read {
    /// What the reload rules need of this read, whose text holds `users`
    /// valid users.
    pub(super) fn seen(&self, users: usize) -> Seen {
        let mut hash = std::hash::DefaultHasher::new();
        self.text.hash(&mut hash);
        Seen {
            hash: hash.finish(),
            users,
            whole_lines: self.text.is_empty() || self.text.ends_with('\n'),
            changed_while_read: self.before != self.after,
            file: self.after.file,
            modified_ago: self
                .after
                .modified
                .and_then(|m| SystemTime::now().duration_since(m).ok()),
        }
    }
}

/// Reads the file between two looks at its metadata, so a write during the
/// read shows.
pub(super) fn read_with_metadata(path: &Path) -> io::Result<Read> {
    let before = Stamp::of(&std::fs::metadata(path)?);
    let text = std::fs::read_to_string(path)?;
    let after = Stamp::of(&std::fs::metadata(path)?);
    Ok(Read {
        text,
        before,
        after,
    })
}

/// One reload's read, as [`ReloadState::judge`] needs it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    /// Hash of the text, to recognise the same content at the next reload.
    hash: u64,
    /// Valid users in it.
    pub(super) users: usize,
    /// Empty or ending with a newline.
    whole_lines: bool,
    changed_while_read: bool,
    /// `None` where the platform has no inode numbers.
    file: Option<FileId>,
    /// `None` when the modification time is unknown or in the future.
    modified_ago: Option<Duration>,
}

/// What the reloads have seen so far.
#[derive(Debug, Default)]
pub(super) struct ReloadState {
    /// Users in the list last handed out; `None` before the first.
    applied: Option<usize>,
    /// The file read last time.
    file: Option<FileId>,
    /// The settled content read last time, and whether it was held back as
    /// a sudden drop.
    last: Option<(u64, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Act on the read; `confirmed_drop` is the list size a sudden drop,
    /// now read twice, replaces.
    Apply {
        confirmed_drop: Option<usize>,
    },
    Defer(Deferral),
}

impl ReloadState {
    /// Whether to act on `seen`; see the module documentation for the rules.
    pub(super) fn judge(&mut self, seen: &Seen) -> Verdict {
        let same_file = self.file.is_none() || seen.file.is_none() || self.file == seen.file;
        self.file = seen.file;
        if seen.changed_while_read {
            self.last = None;
            return Verdict::Defer(Deferral::ChangedWhileRead);
        }
        let Some(applied) = self.applied else {
            // Nothing is polled yet, so nothing can be stopped: start with
            // what is there; later reloads add whatever was missing.
            return self.apply(seen, None);
        };
        // A future modification time (a stepped clock) counts as settled.
        let recent = seen.modified_ago.is_some_and(|ago| ago < SETTLE);
        if same_file && recent {
            self.last = None;
            return Verdict::Defer(Deferral::BeingRewritten);
        }
        let previous = self.last.replace((seen.hash, false));
        if let Some((hash, was_drop)) = previous
            && hash == seen.hash
        {
            return self.apply(seen, was_drop.then_some(applied));
        }
        if !seen.whole_lines {
            return Verdict::Defer(Deferral::TornLastLine);
        }
        if seen.users.saturating_mul(2) < applied {
            self.last = Some((seen.hash, true));
            return Verdict::Defer(Deferral::SuddenDrop {
                from: applied,
                to: seen.users,
            });
        }
        self.apply(seen, None)
    }

    fn apply(&mut self, seen: &Seen, confirmed_drop: Option<usize>) -> Verdict {
        self.applied = Some(seen.users);
        self.last = Some((seen.hash, false));
        Verdict::Apply { confirmed_drop }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: still usable after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(hash: u64, users: usize) -> Seen {
        Seen {
            hash,
            users,
            whole_lines: true,
            changed_while_read: false,
            file: Some((1, 1)),
            modified_ago: Some(Duration::from_secs(60)),
        }
    }

    const APPLY: Verdict = Verdict::Apply {
        confirmed_drop: None,
    };

    fn started_with(users: usize) -> ReloadState {
        let mut state = ReloadState::default();
        assert_eq!(state.judge(&seen(1, users)), APPLY);
        state
    }

    #[test]
    fn a_file_caught_mid_rewrite_in_place_is_left_until_it_settles() {
        let mut state = started_with(3);
        let fresh = |hash, users| Seen {
            modified_ago: Some(Duration::from_millis(200)),
            ..seen(hash, users)
        };
        // `> users.jl`: truncated, then written; both within the second.
        let defer = Verdict::Defer(Deferral::BeingRewritten);
        assert_eq!(state.judge(&fresh(2, 0)), defer);
        assert_eq!(state.judge(&fresh(2, 0)), defer, "seen twice, still fresh");
        assert_eq!(state.judge(&fresh(3, 3)), defer);
        assert_eq!(state.judge(&seen(3, 3)), APPLY);
        // A write during the read is never acted on.
        let torn = Seen {
            changed_while_read: true,
            ..seen(4, 3)
        };
        assert_eq!(
            state.judge(&torn),
            Verdict::Defer(Deferral::ChangedWhileRead)
        );
    }

    #[test]
    fn a_file_replaced_by_rename_is_read_at_once() {
        let mut state = started_with(3);
        let renamed = Seen {
            file: Some((1, 2)),
            modified_ago: Some(Duration::ZERO),
            ..seen(2, 3)
        };
        assert_eq!(state.judge(&renamed), APPLY);
    }

    #[test]
    fn a_last_line_without_newline_waits_one_reload() {
        let mut state = started_with(3);
        let half = Seen {
            whole_lines: false,
            ..seen(2, 3)
        };
        assert_eq!(state.judge(&half), Verdict::Defer(Deferral::TornLastLine));
        // Still so at the next reload: an editor that adds no final newline.
        assert_eq!(state.judge(&half), APPLY);
    }

    #[test]
    fn a_sudden_drop_is_applied_only_when_read_again() {
        let mut state = started_with(4);
        let drop = Verdict::Defer(Deferral::SuddenDrop { from: 4, to: 0 });
        assert_eq!(state.judge(&seen(2, 0)), drop);
        // The file came back: the drop was never applied.
        assert_eq!(state.judge(&seen(1, 4)), APPLY);
        assert_eq!(state.judge(&seen(2, 0)), drop);
        assert_eq!(
            state.judge(&seen(2, 0)),
            Verdict::Apply {
                confirmed_drop: Some(4)
            }
        );
        // Half or more is an ordinary change.
        let mut state = started_with(4);
        assert_eq!(state.judge(&seen(5, 2)), APPLY);
        assert_eq!(
            state.judge(&seen(6, 0)),
            Verdict::Defer(Deferral::SuddenDrop { from: 2, to: 0 })
        );
    }

    #[test]
    fn the_first_read_is_applied_whatever_it_holds() {
        let mut state = ReloadState::default();
        let fresh_half = Seen {
            whole_lines: false,
            modified_ago: Some(Duration::ZERO),
            ..seen(1, 0)
        };
        assert_eq!(state.judge(&fresh_half), APPLY);
    }
}
