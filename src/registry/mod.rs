//! The user registry: who to poll, with which credentials, and the per-meter
//! statistics the scheduler reports back.
//!
//! Owns the two back ends behind one [`Registry`] type: Redis
//! ([`RedisRegistry`], the production store, schema in [`redis`]) and a
//! JSON-lines users file ([`FileRegistry`], the embedded store for small
//! set-ups and tests), plus the [`StatsWriter`] that batches statistics so
//! their cost does not grow with the number of meters.
//!
//! The rule this module exists for: statistics are written apart from
//! credentials and never rewrite them, so a password changed while the
//! pinger runs is never put back by the next poll (the old system rewrote
//! the whole record every poll and lost such updates).
//!
//! It knows nothing about schedules, HTTP or spool files: callers get
//! [`User`]s and hand back [`StatsUpdate`]s.
//!
//! Layout: [`user`] is the validated record and the users-file line format,
//! [`cadence`] a user's own summation and price cadences,
//! [`stats`] the statistics types and their merge rules, [`redis`] and
//! [`file`](mod@file) the back ends, [`writer`] the batching task.

pub mod cadence;
pub mod file;
pub mod redis;
pub mod stats;
pub mod user;
pub mod writer;

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::db::{CHECK_REDIS, DbError};
use crate::vault::{HOW_TO_MAKE_A_KEY, Vault};

pub use self::cadence::Cadence;
pub use self::file::FileRegistry;
pub use self::redis::{DEFAULT_NAMESPACE, RedisRegistry};
pub use self::stats::{MeterState, StatsUpdate, UserStats};
pub use self::user::{LocalSource, User, ValidationError};
pub use self::writer::StatsWriter;

/// What [`Registry::put`] did, so an import can report what it changed and
/// running it twice is visibly a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PutOutcome {
    /// No user with this cloud id existed.
    Created,
    /// The user existed and at least one stored field changed.
    Updated,
    /// The user existed with exactly these settings; nothing was written.
    Unchanged,
}

impl PutOutcome {
    /// Lower-case name for logs and command output.
    pub fn as_str(self) -> &'static str {
        match self {
            PutOutcome::Created => "created",
            PutOutcome::Updated => "updated",
            PutOutcome::Unchanged => "unchanged",
        }
    }
}

impl fmt::Display for PutOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registry operation that failed, in the terms a caller acts on: retry
/// later ([`Unavailable`](RegistryError::Unavailable)), fix the data
/// ([`Invalid`](RegistryError::Invalid), [`Rejected`](RegistryError::Rejected)),
/// or fix the set-up ([`Refused`](RegistryError::Refused),
/// [`Config`](RegistryError::Config)).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The store could not be reached or read: Redis down, a timeout, the
    /// users file missing or unreadable. Usually transient; retry later.
    #[error("{target} is unavailable: {reason} ({check})")]
    Unavailable {
        /// `Redis at <url, password redacted>` or `users file <path>`.
        target: String,
        /// What failed.
        reason: String,
        /// What the operator should check.
        check: &'static str,
    },
    /// Stored data that does not make a valid user or statistics record.
    #[error("invalid data in {key}, field `{field}`: {reason} (fix or delete that entry)")]
    Invalid {
        /// The Redis key, or `path:line` for the users file.
        key: String,
        /// The offending field.
        field: String,
        /// What is wrong with it (never the secret's value).
        reason: String,
    },
    /// [`Registry::put`] was handed a user that does not validate.
    #[error("user {cloud_id} was not stored: {source}")]
    Rejected {
        /// The user's id.
        cloud_id: CloudId,
        /// The rule it breaks.
        #[source]
        source: ValidationError,
    },
    /// The store answered but refused the command (wrong key type, out of
    /// memory, no permission); retrying will not help until someone acts.
    #[error(
        "{target} refused {op}: {message} (check Redis' logs and that nothing else writes the registry's keys)"
    )]
    Refused {
        /// As in [`Unavailable`](RegistryError::Unavailable).
        target: String,
        /// The operation and key, e.g. `put rainforest:user:00ce69`.
        op: String,
        /// The store's message.
        message: String,
    },
    /// The registry cannot be set up from the given settings.
    #[error("cannot set up the user registry: {reason}")]
    Config {
        /// What is wrong and which setting to change.
        reason: String,
    },
}

impl RegistryError {
    /// Whether retrying later may succeed (the store was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

impl From<DbError> for RegistryError {
    /// A Redis failure in the registry's terms; an outage reads as it does
    /// for the token store and the archive lock.
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable { target, reason } => RegistryError::Unavailable {
                target,
                reason,
                check: CHECK_REDIS,
            },
            DbError::Refused {
                target,
                op,
                message,
            } => RegistryError::Refused {
                target,
                op,
                message,
            },
            DbError::Config { reason } => RegistryError::Config { reason },
        }
    }
}

/// Who is in the registry, without credentials: from [`Registry::census`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// The ids of active users, ascending.
    pub active: Vec<CloudId>,
    /// How many users exist, active or not.
    pub users: usize,
}

/// One page of cloud ids for a listing, from [`Registry::page_ids`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdPage {
    /// Up to the page's limit of ids, ascending.
    pub ids: Vec<CloudId>,
    /// Whether ids follow the last one; the next page starts after it.
    pub more: bool,
}

impl IdPage {
    /// The page made of the smallest `limit` of `candidates` (which may be
    /// unsorted and hold duplicates); `more` when there were others.
    pub(crate) fn from_candidates(mut candidates: Vec<CloudId>, limit: usize) -> IdPage {
        candidates.sort();
        candidates.dedup();
        let more = candidates.len() > limit;
        candidates.truncate(limit);
        IdPage {
            ids: candidates,
            more,
        }
    }
}

/// The user registry, whichever back end holds it.
///
/// Cheap to clone: clones share one Redis connection or one file's state.
#[derive(Debug, Clone)]
pub enum Registry {
    /// Users and statistics in Redis.
    Redis(RedisRegistry),
    /// Users in a JSON-lines file, statistics in memory.
    File(FileRegistry),
}

impl Registry {
    /// Opens the back end the configuration selects: Redis when
    /// `redis_url` is set (namespace [`DEFAULT_NAMESPACE`]), else the users
    /// file. Fails with [`RegistryError::Unavailable`] if Redis cannot be
    /// reached now.
    ///
    /// Redis gets the credentials key ([`Vault::from_config`]) so every
    /// password and install code is sealed before it is sent; without a key
    /// this is a [`RegistryError::Config`] saying how to make one, unless
    /// `allow_plaintext_credentials` is set. The users file keeps them in
    /// clear (it is a local file the operator already protects).
    pub async fn from_config(config: &Config) -> Result<Registry, RegistryError> {
        match (&config.redis_url, &config.users_file) {
            (Some(url), _) => {
                let vault = Vault::from_config(config).map_err(|e| RegistryError::Config {
                    reason: e.to_string(),
                })?;
                if vault.is_none() && !config.allow_plaintext_credentials {
                    return Err(RegistryError::Config {
                        reason: format!(
                            "no credentials key: the Redis registry seals meter passwords with one; {HOW_TO_MAKE_A_KEY}. To keep them in clear instead (not for production), set allow_plaintext_credentials = true"
                        ),
                    });
                }
                let registry =
                    RedisRegistry::connect(url.as_str(), &config.redis_namespace).await?;
                Ok(Registry::Redis(match vault {
                    Some(v) => registry.with_vault(v),
                    None => {
                        tracing::warn!(
                            registry = %registry.target(),
                            "Storing meter passwords in clear (allow_plaintext_credentials)."
                        );
                        registry
                    }
                }))
            }
            (None, Some(path)) => Ok(Registry::File(FileRegistry::new(path.clone()))),
            (None, None) => Err(RegistryError::Config {
                reason: "neither `redis_url` nor `users_file` is set; set one of them".into(),
            }),
        }
    }

    /// Every user, active or not, sorted by cloud id; the caller filters.
    /// Invalid entries are logged (once while they stay invalid) and skipped,
    /// so one bad record never stops the others from being polled.
    pub async fn load_all(&self) -> Result<Vec<User>, RegistryError> {
        match self {
            Registry::Redis(r) => r.load_all().await,
            Registry::File(f) => f.load_all().await,
        }
    }

    /// The ids of one listing page: up to `limit` ids sorting after
    /// `after`, ascending, and whether more follow. Cheap in Redis (the
    /// index only, no user is read); the caller fetches the users it shows.
    pub async fn page_ids(
        &self,
        after: Option<CloudId>,
        limit: usize,
    ) -> Result<IdPage, RegistryError> {
        match self {
            Registry::Redis(r) => r.page_ids(after, limit).await,
            Registry::File(f) => f.page_ids(after, limit).await,
        }
    }

    /// The ids of active users, sorted, without loading credentials: for
    /// counts and overviews (`/metrics`) that must not read passwords.
    pub async fn active_ids(&self) -> Result<Vec<CloudId>, RegistryError> {
        Ok(self.census().await?.active)
    }

    /// Active ids and the number of users, active or not, in one pass and
    /// without loading credentials (the status page's totals).
    pub async fn census(&self) -> Result<Census, RegistryError> {
        match self {
            Registry::Redis(r) => r.census().await,
            Registry::File(f) => f.census().await,
        }
    }

    /// One user, or `None` if there is none with this id.
    pub async fn get(&self, id: CloudId) -> Result<Option<User>, RegistryError> {
        match self {
            Registry::Redis(r) => r.get(id).await,
            Registry::File(f) => f.get(id).await,
        }
    }

    /// Creates or replaces a user atomically; writes nothing and returns
    /// [`PutOutcome::Unchanged`] when every stored field is already equal,
    /// so imports can be re-run. Statistics are left alone.
    pub async fn put(&self, user: &User) -> Result<PutOutcome, RegistryError> {
        user.validate().map_err(|source| RegistryError::Rejected {
            cloud_id: user.cloud_id,
            source,
        })?;
        match self {
            Registry::Redis(r) => r.put(user).await,
            Registry::File(f) => f.put(user).await,
        }
    }

    /// Deletes a user and its statistics; `false` if there was no such user.
    pub async fn remove(&self, id: CloudId) -> Result<bool, RegistryError> {
        match self {
            Registry::Redis(r) => r.remove(id).await,
            Registry::File(f) => f.remove(id).await,
        }
    }

    /// A meter's statistics, or `None` if nothing was recorded yet.
    pub async fn stats(&self, id: CloudId) -> Result<Option<UserStats>, RegistryError> {
        match self {
            Registry::Redis(r) => r.stats(id).await,
            Registry::File(f) => Ok(f.stats(id)),
        }
    }

    /// The statistics of many meters, in the order of `ids`, for overviews
    /// (the status page, `/metrics`) that would otherwise cost one round
    /// trip per meter. The outer error means the store is unreachable; an
    /// entry's error is that one meter's stored statistics being invalid.
    pub async fn stats_many(
        &self,
        ids: &[CloudId],
    ) -> Result<Vec<Result<Option<UserStats>, RegistryError>>, RegistryError> {
        match self {
            Registry::Redis(r) => r.stats_many(ids).await,
            Registry::File(f) => Ok(ids.iter().map(|id| Ok(f.stats(*id))).collect()),
        }
    }

    /// Applies a batch of statistics updates in one round trip, touching
    /// only statistics. Updates for users that no longer exist are dropped
    /// (Redis) so a removed user's statistics do not come back.
    pub async fn write_stats(&self, updates: &[StatsUpdate]) -> Result<(), RegistryError> {
        match self {
            Registry::Redis(r) => r.write_stats(updates).await,
            Registry::File(f) => {
                f.write_stats(updates);
                Ok(())
            }
        }
    }

    /// Checks the store answers (Redis PING, or the users file is readable);
    /// for health checks and start-up.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        match self {
            Registry::Redis(r) => r.ping().await,
            Registry::File(f) => f.ping().await,
        }
    }

    /// The store for log lines and messages, secrets redacted.
    pub fn describe(&self) -> String {
        match self {
            Registry::Redis(r) => r.target(),
            Registry::File(f) => f.target(),
        }
    }
}

impl From<RedisRegistry> for Registry {
    fn from(r: RedisRegistry) -> Self {
        Registry::Redis(r)
    }
}

impl From<FileRegistry> for Registry {
    fn from(f: FileRegistry) -> Self {
        Registry::File(f)
    }
}

/// Remembers which invalid entries were already reported, so a registry
/// reloaded every minute warns about a bad entry once (and again only if it
/// is fixed and breaks anew), not every reload.
#[derive(Debug, Default)]
pub(crate) struct ProblemLog {
    seen: Mutex<HashSet<String>>,
}

impl ProblemLog {
    /// Records the problems of the latest load (each identified by a
    /// location-plus-reason string) and returns, in order, the indexes of
    /// those not reported by the previous load.
    pub(crate) fn fresh(&self, current: &[String]) -> Vec<usize> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = current
            .iter()
            .enumerate()
            .filter(|(_, p)| !seen.contains(*p))
            .map(|(i, _)| i)
            .collect();
        *seen = current.iter().cloned().collect();
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_log_reports_each_problem_once_while_it_lasts() {
        let log = ProblemLog::default();
        let a = "line 2: bad".to_string();
        let b = "line 5: bad".to_string();
        assert_eq!(log.fresh(std::slice::from_ref(&a)), vec![0]);
        assert_eq!(log.fresh(&[a.clone(), b.clone()]), vec![1]);
        assert!(log.fresh(std::slice::from_ref(&b)).is_empty());
        assert_eq!(log.fresh(&[a, b]), vec![0]);
    }

    #[test]
    fn errors_say_what_to_check() {
        let e = RegistryError::Unavailable {
            target: "Redis at redis://:[redacted]@h:6379/".into(),
            reason: "connection refused".into(),
            check: "is redis-server running?",
        };
        assert_eq!(
            e.to_string(),
            "Redis at redis://:[redacted]@h:6379/ is unavailable: connection refused (is redis-server running?)"
        );
        assert!(e.is_unavailable());
    }
}
