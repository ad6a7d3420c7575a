//! A per-key lock in Redis around the read-merge-write of one object, for
//! stores that ignore conditional writes.
//!
//! On AWS S3 (and moto) `If-None-Match`/`If-Match` make the merge safe by
//! themselves: a writer that lost a race is refused and merges again. Some
//! S3-compatible stores (Garage 2.5) accept those headers and ignore them,
//! so two rotators that read the same object at the same time would each
//! write their own merge and the later one would drop the other's lines.
//! There, the rotator holds this lock on the key from the read to the
//! acknowledged write, so merges of one key happen one after the other.
//!
//! # Protocol
//!
//! - Acquire: `SET <ns>:archive-lock:<object key> <token> NX PX <ttl>`
//!   (the key is named in [`crate::db::keys`]), where the token is random
//!   per acquisition. A held lock is waited for with short, jittered,
//!   growing sleeps ([`Backoff`]), at most [`DEFAULT_WAIT`]; then
//!   the file is left for a later pass ([`LockError::Busy`]), never
//!   uploaded without the lock.
//! - Renew: while the guard lives, a task extends the expiry every third of
//!   the ttl, only if the key still holds our token (a Lua
//!   compare-and-`PEXPIRE`).
//! - Release: a Lua compare-and-`DEL`, so only the holder deletes the key;
//!   a guard dropped without [`LockGuard::release`] (a cancelled upload)
//!   releases in the background.
//!
//! # Why a lock that expires
//!
//! A rotator can die mid-upload (`kill -9`, power loss, a lost network).
//! A lock without expiry would then block the key, and the hour, until an
//! operator deletes it by hand. With an expiry the key is free again a ttl
//! later and the next merge (of the dead rotator's spool file too, when it
//! restarts) reads whatever did land. The price: if Redis becomes
//! unreachable, or this process stalls, for longer than the ttl while a
//! write is in flight, a second rotator could take the lock before that
//! write lands. The guard makes that window as small as it can: renewal
//! keeps a healthy holder's lock alive however slow the store is, and once
//! renewal has failed for two thirds of the ttl the guard reports the lock
//! lost ([`LockGuard::ensure_held`]), so no new write is sent under it.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::archive::ObjectKey;
use crate::backoff::Backoff;
use crate::config::redact_url;
use crate::db::{CHECK_REDIS, DbError, Keys, Redis};

/// How long a lock lives without renewal. Comfortably longer than one
/// merge and upload (an hour's object is well under a megabyte), and short
/// enough that a key locked by a rotator that died is free again within a
/// minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// How long an acquisition waits for a held lock before the file is left
/// for the next pass. Another holder normally needs well under a second.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Pauses between attempts on a held lock: from 20 ms, doubling up to
/// half a second, jittered so two rotators waiting on the same keys do not
/// retry in lockstep.
const PAUSE: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));

/// Deletes the lock only if it still holds our token.
/// KEYS: the lock. ARGV: the token.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Extends the lock only if it still holds our token.
/// KEYS: the lock. ARGV: the token, the new ttl in milliseconds.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Why a key could not be locked, or stopped being locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// `redis_url` cannot be used (caught at start-up).
    #[error("redis_url {url} cannot be used for the archive lock: {reason}")]
    Config {
        /// The URL, password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Redis did not answer. The rotator stops the pass and retries after
    /// its outage backoff, since every merge needs the lock.
    #[error("{target} is unavailable: {detail} ({CHECK_REDIS})")]
    Unavailable {
        /// `Redis at <url>`.
        target: String,
        /// The operation and the client's error.
        detail: String,
    },
    /// Redis answered but refused a lock command (say, the lock key holds
    /// another type); retrying will not help until someone acts.
    #[error(
        "{target} refused {op}: {message} (check Redis' logs and that nothing else writes the archive-lock keys)"
    )]
    Refused {
        /// `Redis at <url>`.
        target: String,
        /// The operation and key.
        op: String,
        /// Redis' message.
        message: String,
    },
    /// Another rotator held the key for the whole wait.
    #[error(
        "{key} stayed locked by another rotator for {waited:?}; the spool file waits for a later pass"
    )]
    Busy {
        /// The contested object key.
        key: ObjectKey,
        /// How long we waited.
        waited: Duration,
    },
    /// Renewal failed long enough that the lock may have expired: nothing
    /// more may be written under it.
    #[error(
        "the archive lock on {key} may have expired (Redis unreachable for too long); \
         the spool file waits and is merged again"
    )]
    Lost {
        /// The object key.
        key: ObjectKey,
    },
}

impl LockError {
    /// Whether Redis was unreachable (retry the pass later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LockError::Unavailable { .. })
    }
}

/// Locks on object keys, shared by every upload of one rotator (cheap to
/// clone). Connects to Redis on first use, so a rotator whose store
/// enforces conditional writes never needs Redis.
#[derive(Clone)]
pub struct ArchiveLock {
    db: Redis,
    keys: Keys,
    ttl: Duration,
    wait: Duration,
}

impl fmt::Debug for ArchiveLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveLock")
            .field("target", &self.db.target())
            .field("namespace", &self.keys.namespace())
            .field("ttl", &self.ttl)
            .field("wait", &self.wait)
            .finish()
    }
}

impl ArchiveLock {
    /// Locks under `<namespace>:archive-lock:` in the Redis at `url`
    /// (`redis://[:password@]host[:port][/db]`). Makes no connection yet.
    pub fn new(url: &str, namespace: &str) -> Result<ArchiveLock, LockError> {
        let config = |e: DbError| LockError::Config {
            url: redact_url(url),
            reason: e.to_string(),
        };
        let keys = Keys::new(namespace).map_err(config)?;
        let db = Redis::open(url).map_err(config)?;
        Ok(ArchiveLock {
            db,
            keys,
            ttl: DEFAULT_TTL,
            wait: DEFAULT_WAIT,
        })
    }

    /// Replaces [`DEFAULT_TTL`] and [`DEFAULT_WAIT`] (tests use short ones).
    pub fn with_timing(mut self, ttl: Duration, wait: Duration) -> ArchiveLock {
        // Below this, renewal could not keep up with one round trip.
        self.ttl = ttl.max(Duration::from_millis(300));
        self.wait = wait;
        self
    }

    /// `Redis at <url> (namespace <ns>)`, for log lines.
    pub fn describe(&self) -> String {
        format!("{} (namespace {})", self.db.target(), self.keys.namespace())
    }

    /// The Redis key that locks `key`.
    pub fn redis_key(&self, key: &ObjectKey) -> String {
        self.keys.archive_lock(&key.to_string())
    }

    /// Takes the lock on `key`, waiting (bounded) while another holder has
    /// it. The guard renews it until released or dropped.
    pub async fn acquire(&self, key: &ObjectKey) -> Result<LockGuard, LockError> {
        let redis_key = self.redis_key(key);
        // Unique per acquisition, so a holder whose lock expired and was
        // taken over can neither renew nor delete the new holder's lock.
        let token = format!("{}-{:032x}", std::process::id(), rand::random::<u128>());
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            // The lock counts from before the request went out, never later.
            let sent = Instant::now();
            let mut set_nx = redis::cmd("SET");
            set_nx
                .arg(&redis_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(millis(self.ttl));
            let set: Option<String> = self
                .db
                .send(&format!("SET {redis_key} NX"), &set_nx)
                .await
                .map_err(|e| self.error(e))?;
            attempts += 1;
            if set.is_some() {
                if attempts > 1 {
                    let waited = started.elapsed();
                    tracing::debug!(key = %key, ?waited, "Took the archive lock after waiting.");
                }
                return Ok(self.guard(key.clone(), redis_key, token, sent));
            }
            let waited = started.elapsed();
            if waited >= self.wait {
                return Err(LockError::Busy {
                    key: key.clone(),
                    waited,
                });
            }
            tokio::time::sleep(PAUSE.delay(attempts).min(self.wait - waited)).await;
        }
    }

    /// A Redis failure in the lock's terms; an outage reads as it does for
    /// the registry and the token store.
    fn error(&self, e: DbError) -> LockError {
        match e {
            DbError::Unavailable { target, reason } => LockError::Unavailable {
                target,
                detail: reason,
            },
            DbError::Refused {
                target,
                op,
                message,
            } => LockError::Refused {
                target,
                op,
                message,
            },
            DbError::Config { reason } => LockError::Config {
                url: self.db.target().to_string(),
                reason,
            },
        }
    }

    fn guard(&self, key: ObjectKey, redis_key: String, token: String, since: Instant) -> LockGuard {
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew_until_dropped(
            self.clone(),
            key.clone(),
            redis_key.clone(),
            token.clone(),
            since,
            lost.clone(),
        ));
        LockGuard {
            lock: self.clone(),
            key,
            redis_key,
            token,
            lost,
            renewer,
            released: false,
        }
    }

    /// The compare-and-delete; `true` if our token was still there.
    async fn release_token(&self, redis_key: &str, token: &str) -> Result<bool, LockError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(RELEASE_LUA).arg(1).arg(redis_key).arg(token);
        let deleted: i64 = self
            .db
            .send(&format!("release {redis_key}"), &eval)
            .await
            .map_err(|e| self.error(e))?;
        Ok(deleted == 1)
    }

    /// The compare-and-extend; `true` if our token was still there.
    async fn renew_token(&self, redis_key: &str, token: &str) -> Result<bool, LockError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(RENEW_LUA)
            .arg(1)
            .arg(redis_key)
            .arg(token)
            .arg(millis(self.ttl));
        let extended: i64 = self
            .db
            .send(&format!("renew {redis_key}"), &eval)
            .await
            .map_err(|e| self.error(e))?;
        Ok(extended == 1)
    }
}

/// A held lock on one key. Check [`ensure_held`](Self::ensure_held) before
/// each write; [`release`](Self::release) when done.
pub struct LockGuard {
    lock: ArchiveLock,
    key: ObjectKey,
    redis_key: String,
    token: String,
    /// Cancelled by the renewer once the lock may have expired.
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    released: bool,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("lost", &self.lost.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// `Ok` while the lock is certainly ours; [`LockError::Lost`] once
    /// renewal failed for long enough that it may have expired.
    pub fn ensure_held(&self) -> Result<(), LockError> {
        if self.lost.is_cancelled() {
            Err(LockError::Lost {
                key: self.key.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Deletes the lock if it is still ours. A failure is harmless for the
    /// data (the lock expires within the ttl) but delays the next merge of
    /// this key, so it is returned for logging.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.renewer.abort();
        self.released = true;
        self.lock
            .release_token(&self.redis_key, &self.token)
            .await
            .map(|_| ())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released {
            return;
        }
        // Dropped mid-merge (shutdown abandoned the upload): free the key
        // now rather than a ttl later, if a runtime is still there.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let lock = self.lock.clone();
            let redis_key = std::mem::take(&mut self.redis_key);
            let token = std::mem::take(&mut self.token);
            handle.spawn(async move {
                let _ = lock.release_token(&redis_key, &token).await;
            });
        }
    }
}

/// Extends the lock every third of the ttl until aborted. Gives up, and
/// marks the lock lost, when the key no longer holds our token or when two
/// thirds of the ttl passed since the last confirmed acquisition or renewal
/// (a third is kept as a margin for clocks and a write already on its way).
async fn renew_until_dropped(
    lock: ArchiveLock,
    key: ObjectKey,
    redis_key: String,
    token: String,
    mut confirmed: Instant,
    lost: CancellationToken,
) {
    let every = lock.ttl / 3;
    let retry = (lock.ttl / 12).max(Duration::from_millis(50));
    let mut next = confirmed + every;
    loop {
        let deadline = confirmed + lock.ttl - every;
        tokio::time::sleep_until(next.min(deadline)).await;
        if Instant::now() >= deadline {
            tracing::warn!(
                key = %key,
                lock = %lock.describe(),
                "Could not renew the archive lock in time; no more writes under it."
            );
            lost.cancel();
            return;
        }
        let sent = Instant::now();
        // A renewal still unanswered at the deadline counts as failed, so
        // the guard reports the loss on time even if Redis hangs.
        let renewed = tokio::time::timeout_at(deadline, lock.renew_token(&redis_key, &token))
            .await
            .unwrap_or_else(|_| {
                Err(LockError::Unavailable {
                    target: lock.db.target().to_string(),
                    detail: format!("renew {redis_key} unanswered"),
                })
            });
        match renewed {
            Ok(true) => {
                confirmed = sent;
                next = sent + every;
            }
            Ok(false) => {
                tracing::warn!(
                    key = %key,
                    lock = %lock.describe(),
                    "The archive lock expired and was taken over; no more writes under it."
                );
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::debug!(key = %key, "Renewing the archive lock failed: {e}");
                next = Instant::now() + retry;
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_live_under_the_namespace_and_name_the_object() {
        let lock = ArchiveLock::new("redis://127.0.0.1:1/", "rainforest").expect("lock");
        let key = ObjectKey::probe("rainforest-logs");
        assert_eq!(
            lock.redis_key(&key),
            format!("rainforest:archive-lock:{key}")
        );
    }

    #[test]
    fn an_empty_namespace_or_a_bad_url_is_refused_at_start() {
        assert!(matches!(
            ArchiveLock::new("redis://127.0.0.1:1/", ""),
            Err(LockError::Config { .. })
        ));
        assert!(matches!(
            ArchiveLock::new("http://example.com/", "ns"),
            Err(LockError::Config { .. })
        ));
    }

    #[test]
    fn the_description_hides_the_password() {
        let lock = ArchiveLock::new("redis://:hunter2@127.0.0.1:6379/0", "ns").expect("lock");
        assert!(!lock.describe().contains("hunter2"), "{}", lock.describe());
        assert!(!format!("{lock:?}").contains("hunter2"));
    }
}
