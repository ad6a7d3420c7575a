//! Bulk loading of users: `rainforest users import` and `scripts/add_users`,
//! and the backup they read back, `rainforest users export` ([`export`]).
//!
//! Owns reading the old system's users (JSON lines, or its Redis layout),
//! sending each user to a [`Target`] (a running server's API, or the
//! registry directly), and reporting: one message per bad line with its
//! number and reason, progress, and a [`Summary`]. Loading is idempotent:
//! the registry reports [`PutOutcome::Unchanged`] for a user stored exactly
//! so already, so a second run of the same file changes nothing.
//!
//! A bad line never stops the others. What does stop an import is what
//! would fail every remaining line the same way: a token the server
//! rejects, or a server or Redis that stays unreachable through retries.
//!
//! It does not validate users itself ([`User::from_json_line`] and the
//! server do) and never prints a password.

mod client;
pub mod export;
mod legacy;
mod lines;
mod report;

use std::fmt;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::registry::{PutOutcome, Registry, RegistryError, User};

pub use self::client::ServerClient;
pub use self::legacy::import_legacy;
pub use self::lines::{count_lines, import_lines};
pub use self::report::Reporter;

/// Users sent at once; enough to hide round trips, few enough not to crowd
/// a server that is also answering the pinger's operators.
pub(crate) const CONCURRENCY: usize = 8;
/// Attempts per user while the server or Redis is unreachable.
const ATTEMPTS: u32 = 4;
/// Pauses between attempts: about 1 s, 2 s, 4 s, jittered so the users in
/// flight at once do not all come back at the same instant.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Users that did not exist.
    pub created: u64,
    /// Users that existed with different settings.
    pub updated: u64,
    /// Users already stored exactly so.
    pub unchanged: u64,
    /// Lines (or legacy keys) that were not loaded.
    pub failed: u64,
    /// Legacy imports: users whose old statistics were carried over.
    pub statistics_carried: u64,
}

impl Summary {
    fn count(&mut self, outcome: PutOutcome) {
        match outcome {
            PutOutcome::Created => self.created += 1,
            PutOutcome::Updated => self.updated += 1,
            PutOutcome::Unchanged => self.unchanged += 1,
        }
    }

    /// Lines or keys handled so far.
    pub fn done(&self) -> u64 {
        self.created + self.updated + self.unchanged + self.failed
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "created {}, updated {}, unchanged {}, failed {}",
            self.created, self.updated, self.unchanged, self.failed
        )?;
        if self.statistics_carried > 0 {
            write!(
                f,
                " (statistics carried over for {})",
                self.statistics_carried
            )?;
        }
        Ok(())
    }
}

/// Why a whole import stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The server refused the token (401) or its scope (403).
    #[error(
        "the server at {server} refused the token ({status}): {detail}. Set RAINFOREST_API_TOKEN to a token with scope write (rainforest tokens create --name importer --scope write)"
    )]
    Refused {
        /// The server's base URL.
        server: String,
        /// 401 or 403.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The server could not be reached or stayed unavailable.
    #[error(
        "the server at {server} is unreachable or unavailable: {reason} (is `rainforest server` running there, and Redis behind it?)"
    )]
    ServerUnavailable {
        /// The server's base URL.
        server: String,
        /// The last failure.
        reason: String,
    },
    /// The registry stayed unavailable.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The legacy Redis could not be read.
    #[error("cannot read the old system's Redis at {url}: {reason}")]
    Legacy {
        /// Its URL, password redacted.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The import could not be set up (bad URL, HTTP client).
    #[error("{0}")]
    Setup(String),
}

/// The result of an import: what was done, and why it stopped early if it did.
#[derive(Debug)]
pub struct Report {
    /// What was done (up to the stop, if any).
    pub summary: Summary,
    /// Set when the import stopped before the end.
    pub aborted: Option<ImportError>,
}

impl Report {
    /// Whether every line loaded and nothing stopped the import.
    pub fn is_success(&self) -> bool {
        self.summary.failed == 0 && self.aborted.is_none()
    }
}

/// Where imported users go.
#[derive(Debug)]
pub enum Target {
    /// A running server's API.
    Server(ServerClient),
    /// The registry itself (Redis or the users file).
    Direct(Registry),
}

/// How one user failed.
pub(crate) enum Failure {
    /// This user is bad; go on with the others.
    Line(String),
    /// Transient; try this user again after a pause, and stop the import
    /// with this error if it stays so.
    Retry(ImportError),
    /// Every remaining user would fail the same way; stop.
    Fatal(ImportError),
}

impl Target {
    /// Stores `user`, retrying while the server or Redis is unavailable.
    async fn put(&self, user: &User) -> Result<PutOutcome, Failure> {
        let mut attempt = 1;
        loop {
            let result = match self {
                Target::Server(client) => client.put_once(user).await,
                Target::Direct(registry) => match registry.put(user).await {
                    Ok(o) => Ok(o),
                    Err(e) if e.is_unavailable() => Err(Failure::Retry(ImportError::Registry(e))),
                    Err(e) => Err(Failure::Line(e.to_string())),
                },
            };
            match result {
                Err(Failure::Retry(e)) if attempt >= ATTEMPTS => return Err(Failure::Fatal(e)),
                Err(Failure::Retry(e)) => {
                    tracing::debug!(cloud_id = %user.cloud_id, attempt, reason = %e, "Retrying a user.");
                    tokio::time::sleep(RETRY.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_like_the_issue_asks() {
        let mut s = Summary::default();
        s.count(PutOutcome::Created);
        s.count(PutOutcome::Unchanged);
        s.failed = 2;
        assert_eq!(s.to_string(), "created 1, updated 0, unchanged 1, failed 2");
        assert_eq!(s.done(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_registry_is_retried_with_jittered_backoff_then_stops_the_import() {
        let dir = tempfile::tempdir().expect("temporary directory");
        // A directory where the users file should be: every read fails.
        let target = Target::Direct(Registry::File(crate::registry::FileRegistry::new(
            dir.path(),
        )));
        let user = User::from_json_line(
            r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x"}"#,
        )
        .expect("user");
        let started = tokio::time::Instant::now();
        let result = target.put(&user).await;
        let waited = started.elapsed();
        assert!(
            matches!(result, Err(Failure::Fatal(ImportError::Registry(ref e))) if e.is_unavailable()),
            "gives up with the registry's own error"
        );
        // Three pauses of nominally 1 s, 2 s and 4 s, each within ±20%.
        assert!(
            waited >= Duration::from_millis(5600) && waited <= Duration::from_millis(8400),
            "{waited:?}"
        );
        // Exactly the nominal 7 s only without jitter (or with odds of one
        // in billions).
        assert_ne!(waited, Duration::from_secs(7), "the pauses are jittered");
    }
}
