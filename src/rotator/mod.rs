//! The rotator: ships completed spool hours to the archive exactly once.
//!
//! Owns finding the files that may ship (sealed by their writer, or hour
//! ended + `rotate_grace`, read from the rotator's [`Clock`] so tests can
//! set the hour, see [`Rotator::with_clock`]), checking their lines (a torn last line is
//! dropped, a file with no usable line is quarantined), gzip, the
//! read-merge-write of the object, retries and backoff (the shared
//! [`Backoff`]), and deleting a spool file once the archive acknowledged
//! every one of its lines. It shares only the spool directory with the pinger and
//! must not write into a live hour, read the registry or touch an object's
//! lines other than by the merge (union, ordered by `polled_at`, exact
//! duplicates and later polls of a slot removed), so a retry, a restart or a second rotator can only
//! converge on the same object.
//!
//! Failure handling, from fast to slow:
//! - each request: the SDK's bounded retries, exponential backoff and
//!   jitter (see `archive::s3`);
//! - a store-wide failure (down, bad credentials, missing bucket) stops the
//!   pass, so a backlog is not hammered against a dead store; the store is
//!   retried after a capped backoff (minutes), or after [`RotatorOptions::operator_pause`]
//!   when an operator must act, and expired credentials are reloaded at once;
//! - a failure of one file waits with its own capped backoff.
//!
//! Nothing is ever given up on while the file exists, and every pass takes
//! the oldest hour first.
//!
//! Which files may go (see `scan`): a live writer's sealed hours, its late
//! segments, and a gone writer's (or an old-layout) files after
//! `rotate_grace`. A writer never appends to a sealed file; a line for a
//! sealed hour goes to a late segment, merged into the same object on the
//! next pass, so no line lands in a file being shipped. Before reading a
//! file the rotator renames it to `<name>.shipping-<pid>-<n>` (its claim),
//! so two rotators on one volume never ship it twice. For a gone writer's
//! file, which nobody sealed, the rotator compares the file's size after the
//! upload with what it read and merges lines that appeared meanwhile before
//! deleting it. Claims left by a crash are found by the scan and shipped
//! like any file.
//!
//! The merge keeps one line per `(cloud_id, slot)`, the first polled (see
//! `lines`), so hand-over duplicates from two pingers, shipped by rotators
//! on different hosts, converge on one object.
//!
//! Every write is conditional (see `archive`). When the start-up probe finds
//! a store that ignores conditional writes (Garage), and `redis_url` is
//! set, each key's read-merge-write is also serialised with a Redis lock
//! ([`ArchiveLock`], see `lock`), so a second rotator cannot clobber lines;
//! without Redis such a store only gets a loud warning at start-up.

mod lines;
mod lock;
mod scan;
mod ship;
mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use lines::{Line, archived_lines, check_spool, gunzip, gzip, merge};
pub use lock::{ArchiveLock, LockError, LockGuard};
pub use scan::{SpoolFile, completed_files, gone_writers_without_files, is_completed, may_ship};
pub use stats::{RotatorStats, StatsSnapshot};

use crate::archive::{Archive, ArchiveError, ObjectKey};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::Config;
use ship::Outcome;

/// A pass with more files than this logs its progress every this many.
const PROGRESS_EVERY: usize = 200;
/// The oldest pending hour is reported once it is older than this...
const STALL_AGE: Duration = Duration::from_secs(3600);
/// ...at most this often.
const STALL_LOG_EVERY: Duration = Duration::from_secs(15 * 60);

/// Why a file could not be shipped (it stays in the spool), or why a pass
/// could not run.
#[derive(Debug, thiserror::Error)]
pub enum RotatorError {
    /// The archive failed; see [`ArchiveError`] for what to check.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The object already at the key cannot be read as gzip, so merging
    /// into it could destroy data. It is left as it is; the file waits.
    #[error(
        "{location} exists but is {reason}; it is left untouched and the spool file waits. \
         Move the object aside (or repair it) and the rotator will go on"
    )]
    CorruptObject {
        /// Where the object is.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Redis lock that serialises merges on a store ignoring
    /// conditional writes could not be taken, or was lost.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Other writers kept winning the conditional write to the key.
    #[error("{key}: {attempts} conditional writes in a row lost to other writers; retrying later")]
    Contended {
        /// The key.
        key: ObjectKey,
        /// How many writes were refused.
        attempts: u32,
    },
    /// A spool file could not be renamed to its claimed name, so it was
    /// not read (nothing is lost; it waits).
    #[error(
        "cannot claim {} for shipping ({source}); check permissions of the data directory",
        path.display()
    )]
    Claim {
        /// The spool file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file that should be quarantined could not be moved.
    #[error(
        "{} {reason} but cannot be moved to quarantine ({source}); check permissions of the data directory",
        path.display()
    )]
    Quarantine {
        /// The spool file.
        path: PathBuf,
        /// Why it was to be quarantined.
        reason: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spool directory cannot be listed.
    #[error("cannot scan the spool directory {}: {source}; check data_dir and its permissions", path.display())]
    Scan {
        /// `data_dir`.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker task panicked or was cancelled (a bug).
    #[error("internal task failed: {0}")]
    Task(String),
}

/// The rotator's settings.
#[derive(Debug, Clone)]
pub struct RotatorOptions {
    /// The spool directory (`data_dir`).
    pub data_dir: PathBuf,
    /// Spool and archive file name prefix (`file_prefix`).
    pub file_prefix: String,
    /// Key prefix inside the archive (`s3_prefix`).
    pub key_prefix: String,
    /// Wait after an hour ends (`rotate_grace`).
    pub grace: Duration,
    /// Interval between passes (`rotate_every`).
    pub every: Duration,
    /// Files in flight at once (`upload_concurrency`).
    pub concurrency: usize,
    /// Wait of a file whose upload failed for a reason of its own.
    pub file_backoff: Backoff,
    /// Wait after the store was unavailable (down, throttling, 5xx).
    pub outage_backoff: Backoff,
    /// Wait after the store refused us (credentials, permissions, bucket);
    /// the error is logged again each time, so keep it slow.
    pub operator_pause: Duration,
    /// How long in-flight uploads may finish after shutdown is requested;
    /// then they are abandoned (their files stay and are merged next time).
    pub shutdown_grace: Duration,
}

impl RotatorOptions {
    /// The options the configuration gives, with the built-in backoffs.
    pub fn from_config(config: &Config) -> RotatorOptions {
        RotatorOptions {
            data_dir: config.data_dir.clone(),
            file_prefix: config.file_prefix.clone(),
            key_prefix: config.s3_prefix.clone(),
            grace: config.rotate_grace,
            every: config.rotate_every,
            concurrency: config.upload_concurrency,
            file_backoff: Backoff {
                first: Duration::from_secs(30),
                max: Duration::from_secs(10 * 60),
            },
            outage_backoff: Backoff {
                first: Duration::from_secs(10),
                max: Duration::from_secs(5 * 60),
            },
            operator_pause: Duration::from_secs(5 * 60),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Completed files found.
    pub completed: usize,
    /// Files now in the archive and gone from the spool.
    pub archived: usize,
    /// Of those, merged into an existing object.
    pub merged: usize,
    /// Files moved to quarantine.
    pub quarantined: usize,
    /// Files whose attempt failed (they stay).
    pub failed: usize,
    /// Files not attempted: waiting out a backoff, or left when the store
    /// failed or shutdown came.
    pub not_attempted: usize,
    /// Files removed because they were empty or already gone.
    pub removed: usize,
    /// The first store-wide failure, which stopped the pass.
    pub store_error: Option<ArchiveError>,
    /// The spool could not be listed.
    pub scan_error: Option<RotatorError>,
    /// Shutdown came and in-flight uploads were abandoned after the grace.
    pub abandoned: bool,
    /// Files that failed for a reason of their own (they back off).
    file_failures: Vec<PathBuf>,
    /// Files that left the spool.
    finished: Vec<PathBuf>,
    /// When the oldest completed hour still in the spool ended.
    oldest_pending: Option<chrono::DateTime<chrono::Utc>>,
}

impl PassReport {
    /// Whether every completed file reached the archive (the `--once` exit
    /// status).
    pub fn all_archived(&self) -> bool {
        self.failed == 0
            && self.quarantined == 0
            && self.not_attempted == 0
            && self.store_error.is_none()
            && self.scan_error.is_none()
            && !self.abandoned
    }

    /// Completed files still in the spool.
    pub fn pending(&self) -> usize {
        self.failed + self.not_attempted
    }
}

/// One planned upload, for `--dry-run`.
#[derive(Debug, Clone)]
pub struct PlannedUpload {
    /// The spool file.
    pub file: SpoolFile,
    /// Its key.
    pub key: ObjectKey,
    /// Where it would go (`s3://bucket/key` or a path).
    pub location: String,
}

/// The rotator service. Runs on its own ([`Rotator::run`]) or as a task of
/// another process; [`Rotator::stats`] hands out its counters.
pub struct Rotator {
    opts: RotatorOptions,
    archive: Archive,
    /// What time it is, for which hours are complete and how old the
    /// backlog is; a test clock lets tests cross hour boundaries at will.
    clock: Clock,
    stats: Arc<RotatorStats>,
    /// Serialises merges when the store ignores conditional writes.
    lock: Option<ArchiveLock>,
    /// What the start-up probe found: [`PROBE_UNKNOWN`], [`PROBE_ENFORCED`]
    /// or [`PROBE_IGNORED`].
    conditional_writes: AtomicU8,
}

const PROBE_UNKNOWN: u8 = 0;
const PROBE_ENFORCED: u8 = 1;
const PROBE_IGNORED: u8 = 2;

impl Rotator {
    /// A rotator for `archive` on the system clock; nothing happens until a
    /// pass runs.
    pub fn new(opts: RotatorOptions, archive: Archive) -> Rotator {
        Rotator {
            opts,
            archive,
            clock: Clock::system(),
            stats: Arc::new(RotatorStats::default()),
            lock: None,
            conditional_writes: AtomicU8::new(PROBE_UNKNOWN),
        }
    }

    /// Reads the time from `clock` instead of the system clock: which hours
    /// are complete (hour end + `rotate_grace`) and how old the oldest
    /// pending hour is. For tests; intervals and backoffs keep using tokio's
    /// timers, which a paused test runtime steps along with a test clock.
    pub fn with_clock(mut self, clock: Clock) -> Rotator {
        self.clock = clock;
        self
    }

    /// Serialises each key's read-merge-write with `lock` whenever the
    /// store is not known to enforce conditional writes (see
    /// [`preflight`](Self::preflight)).
    pub fn with_lock(mut self, lock: ArchiveLock) -> Rotator {
        self.lock = Some(lock);
        self
    }

    /// A rotator for the archive and options the configuration gives, with
    /// the Redis merge lock when `redis_url` is set (under
    /// `redis_namespace`; Redis is contacted only if the store turns out to
    /// need the lock).
    pub async fn from_config(config: &Config) -> Result<Rotator, ArchiveError> {
        let archive = Archive::from_config(config).await?;
        let mut rotator = Rotator::new(RotatorOptions::from_config(config), archive);
        if let Some(url) = &config.redis_url {
            let lock = ArchiveLock::new(url.as_str(), &config.redis_namespace)
                .map_err(|e| ArchiveError::Misconfigured(e.to_string()))?;
            rotator = rotator.with_lock(lock);
        }
        Ok(rotator)
    }

    /// What [`preflight`](Self::preflight) found: `Some(true)` when the
    /// store enforces conditional writes, `Some(false)` when it ignores
    /// them, `None` before a successful probe.
    pub fn conditional_writes_enforced(&self) -> Option<bool> {
        match self.conditional_writes.load(Ordering::Relaxed) {
            PROBE_ENFORCED => Some(true),
            PROBE_IGNORED => Some(false),
            _ => None,
        }
    }

    /// The lock the merges of this rotator must hold, if any. Until the
    /// probe has answered, a configured lock is used: taking a lock that
    /// turns out unnecessary costs a round trip, skipping one that was
    /// needed can cost lines.
    pub(super) fn merge_lock(&self) -> Option<&ArchiveLock> {
        match self.conditional_writes_enforced() {
            Some(true) => None,
            Some(false) | None => self.lock.as_ref(),
        }
    }

    /// The counters and gauges, for metrics.
    pub fn stats(&self) -> Arc<RotatorStats> {
        self.stats.clone()
    }

    /// The archive written to.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// The settings.
    pub fn options(&self) -> &RotatorOptions {
        &self.opts
    }

    /// Logs the start-up line (archive, where the credentials came from,
    /// settings) and checks the store: bucket and credentials, then whether
    /// it enforces conditional writes. If not, merges take the Redis lock
    /// from then on, or, without `redis_url`, a warning says that a second
    /// rotator could clobber lines.
    pub async fn preflight(&self) -> Result<(), ArchiveError> {
        let credentials = self.archive.credentials_source().await;
        tracing::info!(
            archive = %self.archive.describe(),
            credentials = %credentials,
            data_dir = %self.opts.data_dir.display(),
            grace = ?self.opts.grace,
            every = ?self.opts.every,
            concurrency = self.opts.concurrency,
            "Rotator starting."
        );
        let probe = ObjectKey::probe(&self.opts.key_prefix);
        let enforced = self.archive.preflight(&probe).await?;
        self.conditional_writes.store(
            if enforced {
                PROBE_ENFORCED
            } else {
                PROBE_IGNORED
            },
            Ordering::Relaxed,
        );
        match (enforced, &self.lock) {
            (true, _) => {}
            (false, Some(lock)) => tracing::info!(
                archive = %self.archive.describe(),
                lock = %lock.describe(),
                "The store ignores If-None-Match/If-Match on writes (Garage does), so each \
                 object's read-merge-write holds a Redis lock."
            ),
            (false, None) => tracing::warn!(
                archive = %self.archive.describe(),
                "The store ignores If-None-Match/If-Match on writes (Garage does), so two \
                 rotators writing the same keys could overwrite each other's lines. Configure \
                 redis_url (RAINFOREST_REDIS_URL) so merges hold a Redis lock, or run a single \
                 rotator per bucket and prefix."
            ),
        }
        Ok(())
    }

    /// What a pass would upload where, touching nothing (not even the
    /// store): the `--dry-run` listing. Also returns how many files are not
    /// completed yet.
    pub fn plan(&self) -> Result<(Vec<PlannedUpload>, usize), RotatorError> {
        let (files, not_yet) = self.scan()?;
        let planned = files
            .into_iter()
            .map(|file| {
                let key = self.key_of(&file);
                let location = self.archive.location(&key);
                PlannedUpload {
                    file,
                    key,
                    location,
                }
            })
            .collect();
        Ok((planned, not_yet))
    }

    fn scan(&self) -> Result<(Vec<SpoolFile>, usize), RotatorError> {
        completed_files(
            &self.opts.data_dir,
            &self.opts.file_prefix,
            self.clock.now(),
            self.opts.grace,
        )
        .map_err(|source| RotatorError::Scan {
            path: self.opts.data_dir.clone(),
            source,
        })
    }

    /// One pass over every completed file, ignoring backoffs: the backlog
    /// drain of `rainforest rotator --once`. When the credentials had
    /// expired, they are reloaded and the pass is tried once more.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> PassReport {
        let mut report = self.pass(|_| true, shutdown).await;
        if let Some(e) = &report.store_error {
            self.log_store_error(e, None);
            if matches!(e, ArchiveError::ExpiredCredentials { .. }) {
                self.archive.refresh_credentials().await;
                report = self.pass(|_| true, shutdown).await;
                if let Some(e) = &report.store_error {
                    self.log_store_error(e, None);
                }
            }
        }
        report
    }

    /// Runs until `shutdown` is cancelled: a pass every `rotate_every`,
    /// oldest hour first, with the backoffs of the module documentation.
    /// In-flight uploads get [`RotatorOptions::shutdown_grace`] to finish.
    pub async fn run(&self, shutdown: CancellationToken) {
        if let Err(e) = self.preflight().await {
            // The first pass meets the same error and schedules the retry.
            self.log_store_error(&e, None);
        }
        // Per file: consecutive failures and when to try again.
        let mut waits: HashMap<PathBuf, (u32, Instant)> = HashMap::new();
        let mut store_failures = 0u32;
        let mut store_paused_until: Option<Instant> = None;
        let mut last_stall_log: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let store_ok = store_paused_until.is_none_or(|t| t <= now);
            let report = self
                .pass(
                    |f| store_ok && waits.get(&f.path).is_none_or(|(_, at)| *at <= now),
                    &shutdown,
                )
                .await;
            if let Some(e) = &report.scan_error {
                tracing::error!("{e}");
            }
            for p in &report.finished {
                waits.remove(p);
            }
            // Files taken by someone else (another rotator, an operator).
            waits.retain(|p, _| p.exists());
            for p in &report.file_failures {
                let entry = waits.entry(p.clone()).or_insert((0, now));
                entry.0 += 1;
                entry.1 = Instant::now() + self.opts.file_backoff.delay(entry.0);
            }
            match &report.store_error {
                None if report.archived > 0 => {
                    store_failures = 0;
                    store_paused_until = None;
                }
                None => {}
                Some(e) => {
                    let pause = match e {
                        ArchiveError::ExpiredCredentials { .. } => {
                            self.archive.refresh_credentials().await;
                            Duration::ZERO
                        }
                        e if e.needs_operator() => self.opts.operator_pause,
                        _ => {
                            store_failures += 1;
                            self.opts.outage_backoff.delay(store_failures)
                        }
                    };
                    self.log_store_error(e, Some(pause));
                    store_paused_until = Some(Instant::now() + pause);
                }
            }
            if let Some(oldest) = report.oldest_pending {
                let age = (self.clock.now() - oldest).to_std().unwrap_or_default();
                if age > STALL_AGE && last_stall_log.is_none_or(|t| t.elapsed() > STALL_LOG_EVERY) {
                    last_stall_log = Some(Instant::now());
                    tracing::warn!(
                        oldest_hour_ended = %oldest,
                        age = %humantime::format_duration(Duration::from_secs(age.as_secs())),
                        pending = report.pending(),
                        "The oldest completed hour is still not archived; see the errors above."
                    );
                }
            }
            if report.abandoned || shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.opts.every) => {}
            }
        }
        tracing::info!("Rotator stopped.");
    }

    /// Removes the heartbeat files of writers that are gone and whose files
    /// have all shipped (a crashed pinger's, a replaced container's), after
    /// the pass, so files shipped in it count as gone. A failure only
    /// leaves a small file for the next pass.
    async fn forget_gone_writers(&self) {
        let data_dir = self.opts.data_dir.clone();
        let prefix = self.opts.file_prefix.clone();
        let grace = self.opts.grace;
        let now = self.clock.now();
        let silent_since = chrono::Duration::from_std(grace)
            .ok()
            .and_then(|g| now.checked_sub_signed(g))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let done = tokio::task::spawn_blocking(move || {
            let gone = gone_writers_without_files(&data_dir, &prefix, now, grace)?;
            for w in gone {
                if crate::spool::remove_silent(&data_dir, &w, silent_since)? {
                    tracing::info!(writer = %w, "Removed the heartbeat of a gone spool writer; all its files have shipped.");
                }
            }
            std::io::Result::Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                data_dir = %self.opts.data_dir.display(),
                error = %e,
                "Cannot remove the heartbeats of gone spool writers; trying again next pass. Check the permissions of the writers/ directory."
            ),
            Err(e) => {
                tracing::warn!(error = %e, "The task removing gone writers' heartbeats failed; trying again next pass.")
            }
        }
    }

    fn log_store_error(&self, e: &ArchiveError, retry_in: Option<Duration>) {
        let retry = retry_in
            .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string());
        if e.needs_operator() {
            tracing::error!(retry_in = retry.as_deref().unwrap_or("-"), "{e}");
        } else {
            tracing::warn!(retry_in = retry.as_deref().unwrap_or("-"), "{e}");
        }
    }

    /// One pass over the completed files `eligible` accepts, oldest first,
    /// at most `concurrency` at once. Stops starting uploads on a
    /// store-wide failure or on shutdown.
    async fn pass(
        &self,
        eligible: impl Fn(&SpoolFile) -> bool,
        shutdown: &CancellationToken,
    ) -> PassReport {
        let mut report = PassReport::default();
        let scanned = {
            let this_dir = self.opts.data_dir.clone();
            let prefix = self.opts.file_prefix.clone();
            let grace = self.opts.grace;
            let now = self.clock.now();
            tokio::task::spawn_blocking(move || completed_files(&this_dir, &prefix, now, grace))
                .await
        };
        let files = match scanned {
            Ok(Ok((files, _))) => files,
            Ok(Err(source)) => {
                report.scan_error = Some(RotatorError::Scan {
                    path: self.opts.data_dir.clone(),
                    source,
                });
                return report;
            }
            Err(e) => {
                report.scan_error = Some(RotatorError::Task(e.to_string()));
                return report;
            }
        };
        report.completed = files.len();
        let (todo, waiting): (Vec<SpoolFile>, Vec<SpoolFile>) =
            files.into_iter().partition(|f| eligible(f));
        let mut pending_hours: Vec<chrono::DateTime<chrono::Utc>> =
            waiting.iter().map(|f| f.hour.end()).collect();
        report.not_attempted = waiting.len();
        let total = todo.len();
        let started = Instant::now();
        let stop = shutdown.child_token();
        let mut seen = 0usize;
        let mut untried: Vec<SpoolFile> = Vec::new();
        let abandoned = {
            let work = async {
                let mut queue = todo.into_iter();
                let mut results = futures::stream::iter(queue.by_ref())
                    .take_while(|_| std::future::ready(!stop.is_cancelled()))
                    .map(|mut f| async move {
                        let (o, now_at) = self.ship(&f).await;
                        f.path = now_at;
                        (f, o)
                    })
                    .buffer_unordered(self.opts.concurrency.max(1));
                while let Some((file, outcome)) = results.next().await {
                    seen += 1;
                    self.record(&mut report, &mut pending_hours, &stop, file, outcome);
                    if total > PROGRESS_EVERY && seen.is_multiple_of(PROGRESS_EVERY) {
                        tracing::info!(
                            done = seen,
                            of = total,
                            archived = report.archived,
                            failed = report.failed,
                            elapsed = %humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                            "Backlog progress."
                        );
                    }
                }
                drop(results);
                untried.extend(queue);
            };
            tokio::pin!(work);
            tokio::select! {
                () = &mut work => false,
                () = async {
                    shutdown.cancelled().await;
                    tokio::time::sleep(self.opts.shutdown_grace).await;
                } => true,
            }
        };
        report.abandoned = abandoned;
        // Files neither finished nor failed: never started, or abandoned.
        let accounted = report.archived + report.quarantined + report.failed + report.removed;
        report.not_attempted += total - accounted.min(total);
        pending_hours.extend(untried.iter().map(|f| f.hour.end()));
        if abandoned {
            tracing::warn!(
                grace = ?self.opts.shutdown_grace,
                "Shutdown: abandoned uploads still in flight; their spool files are kept and \
                 will be merged, not duplicated, on the next run."
            );
        }
        if !abandoned {
            self.forget_gone_writers().await;
        }
        report.oldest_pending = pending_hours.iter().min().copied();
        let pending = report.pending() as u64;
        RotatorStats::set(&self.stats.files_pending, pending);
        let age = report
            .oldest_pending
            .map(|t| (self.clock.now() - t).num_seconds().max(0) as u64)
            .unwrap_or(0);
        RotatorStats::set(&self.stats.oldest_pending_age_secs, age);
        if report.archived + report.quarantined + report.failed > 0 {
            tracing::info!(
                archived = report.archived,
                merged = report.merged,
                quarantined = report.quarantined,
                failed = report.failed,
                pending,
                elapsed = ?started.elapsed(),
                "Rotation pass done."
            );
        }
        report
    }

    fn record(
        &self,
        report: &mut PassReport,
        pending_hours: &mut Vec<chrono::DateTime<chrono::Utc>>,
        stop: &CancellationToken,
        file: SpoolFile,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Archived { merged } => {
                RotatorStats::add(&self.stats.uploads_ok, 1);
                report.archived += 1;
                report.merged += usize::from(merged);
                report.finished.push(file.path);
            }
            Outcome::Empty | Outcome::Gone => {
                report.removed += 1;
                report.finished.push(file.path);
            }
            Outcome::Quarantined => {
                report.quarantined += 1;
                report.finished.push(file.path);
            }
            Outcome::Failed(e) => {
                RotatorStats::add(&self.stats.uploads_failed, 1);
                report.failed += 1;
                pending_hours.push(file.hour.end());
                match e {
                    RotatorError::Archive(e) if e.is_store_wide() => {
                        // Stop starting uploads; the store is retried as a whole.
                        stop.cancel();
                        if report.store_error.is_none() {
                            report.store_error = Some(e);
                        }
                    }
                    e => {
                        if matches!(e, RotatorError::CorruptObject { .. }) {
                            tracing::error!(path = %file.path.display(), "{e}");
                        } else {
                            tracing::warn!(path = %file.path.display(), "{e}");
                        }
                        report.file_failures.push(file.path);
                    }
                }
            }
        }
    }
}
