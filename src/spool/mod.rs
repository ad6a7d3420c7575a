//! The spool: hour-bucketed JSON-lines files on local disk.
//!
//! Owns appending record lines to `<data_dir>/YYYY-MM-DD-HH/…​.jl` and
//! nothing else: it does not read users, schedule polls or upload. All lines
//! go through one writer thread, so lines from concurrent polls can never
//! interleave; files stay open in a bounded pool and buffers are flushed to
//! the OS at least once a second, so a `kill -9` loses at most the last
//! second. A write that fails half-way is cut back to the last whole line and
//! retried, so the files only ever hold whole lines (plus, after a power
//! cut, at most a torn last line, which the rotator drops).
//!
//! Each spool has a [`WriterId`] of its own, part of every file name it
//! writes, so pingers and servers sharing one volume never append to (or
//! cut back) each other's files. A writer seals an hour 10 s after it ends
//! (fsync, close, and say so in its heartbeat file, see [`heartbeat`]);
//! a line for a sealed hour goes to a new late segment instead, so no line
//! lands in a file the rotator may be shipping.

pub mod bucket;
pub mod heartbeat;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

pub use bucket::{
    HourBucket, Segment, SpoolName, WriterId, hour_file, parse_file_name, parse_segment,
};
pub use heartbeat::{WriterState, remove_silent, writers};

use crate::cloud_id::CloudId;
use crate::stream::Kind;

/// The shortest `rotate_grace` allowed. A writer closes an hour's files
/// [`CLOSE_AFTER`] after the hour ends, beats its heartbeat once a second,
/// and a slow disk can hold a flush up for seconds more; the rotator takes
/// a writer silent for `rotate_grace` for gone and ships its files, so the
/// grace must stay well clear of all three.
pub const MIN_ROTATE_GRACE: Duration = Duration::from_secs(30);

/// How long after an hour ends the writer closes, fsyncs and seals its
/// files, leaving room for polls that started just before the hour turned.
pub const CLOSE_AFTER: Duration = Duration::from_secs(10);

/// The configuration problem when `rotate_grace` is below
/// [`MIN_ROTATE_GRACE`].
pub fn grace_too_short(grace: Duration) -> String {
    format!(
        "{} is too short: the spool seals an hour {} after it ends and the rotator \
         takes a writer silent for rotate_grace for gone, so a live writer's files could \
         be shipped while it still appends; set at least {} (default 2m)",
        humantime::format_duration(grace),
        humantime::format_duration(CLOSE_AFTER),
        humantime::format_duration(MIN_ROTATE_GRACE),
    )
}

/// Settings of the spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Root directory of the hour directories.
    pub data_dir: PathBuf,
    /// File name prefix (`iseif-rainforest`).
    pub prefix: String,
    /// Most files kept open at once.
    pub open_files: usize,
    /// How often buffered lines are written out (at most one second).
    pub flush_every: Duration,
}

/// Counters the spool keeps for summaries and metrics.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Lines written to disk.
    pub lines_written: AtomicU64,
    /// Bytes written to disk.
    pub bytes_written: AtomicU64,
    /// Failed write attempts (full disk, permissions); lines are retried.
    pub write_errors: AtomicU64,
    /// Lines given up on because the retry buffer was full.
    pub lines_dropped: AtomicU64,
    /// Files opened (pool misses).
    pub files_opened: AtomicU64,
    /// Files whose sync failed as they were closed (at an hour's seal, on
    /// eviction, at shutdown; a failed `syncfs` counts its whole batch):
    /// their lines were written but may not survive a power cut.
    pub fsync_errors: AtomicU64,
    /// Files made durable as they were closed: at an hour's seal, when
    /// evicted from the pool of open files, and at shutdown. Every close
    /// is one.
    pub files_synced: AtomicU64,
    /// Sync calls behind `files_synced`: one `syncfs` per batch of files
    /// closed together, so the ratio shows how well batching pays.
    pub syncs: AtomicU64,
}

impl SpoolStats {
    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why a line could not be handed to the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The writer thread has stopped (the spool was closed or crashed).
    #[error("the spool writer has stopped; the line for meter {0} was not written")]
    Closed(CloudId),
}

pub(crate) enum Msg {
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// One line waiting for the writer.
pub(crate) struct Queued {
    pub(crate) kind: Kind,
    pub(crate) cloud_id: CloudId,
    pub(crate) hour: HourBucket,
    pub(crate) line: Vec<u8>,
}

/// Lines handed over since the writer's last flush.
///
/// Appending only pushes onto this list under a short lock; the writer
/// thread takes the whole list on its once-a-second tick. Waking the writer
/// per line would cost a thread switch per poll, which at tens of thousands
/// of meters was the pinger's largest CPU cost.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) lines: Mutex<Vec<Queued>>,
    pub(crate) bytes: AtomicUsize,
    pub(crate) closed: AtomicBool,
}

impl Inbox {
    pub(crate) fn take(&self) -> Vec<Queued> {
        let mut guard = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        self.bytes.store(0, Ordering::Relaxed);
        std::mem::take(&mut *guard)
    }

    /// Takes the last lines and refuses any later ones, atomically with
    /// respect to [`Spool::append`], so no line is accepted and then lost.
    pub(crate) fn take_and_close(&self) -> Vec<Queued> {
        let mut guard = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        self.bytes.store(0, Ordering::Relaxed);
        std::mem::take(&mut *guard)
    }
}

/// Above this many buffered bytes an append waits for a flush, so a stalled
/// writer pushes back instead of growing memory without bound.
const HIGH_WATER: usize = 64 * 1024 * 1024;

/// Handle to the spool writer; cheap to clone, shared by every poll.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Msg>,
    inbox: Arc<Inbox>,
    stats: Arc<SpoolStats>,
    writer: WriterId,
    data_dir: Arc<PathBuf>,
    prefix: Arc<str>,
}

impl Spool {
    /// Starts the writer thread and its once-a-second flush ticker, under a
    /// new [`WriterId::unique`] of its own.
    pub fn start(opts: SpoolOptions) -> std::io::Result<Spool> {
        Spool::start_as(opts, WriterId::unique())
    }

    /// [`start`](Self::start) under a chosen writer id, which no other live
    /// writer on the volume may have (tests name their writers).
    pub fn start_as(opts: SpoolOptions, writer: WriterId) -> std::io::Result<Spool> {
        std::fs::create_dir_all(&opts.data_dir)?;
        let data_dir = Arc::new(opts.data_dir.clone());
        let prefix: Arc<str> = opts.prefix.as_str().into();
        // Deep enough to absorb a second of lines from 100,000 meters while a
        // flush is running, small enough to push back if the disk stalls.
        let (tx, rx) = mpsc::channel(65_536);
        let stats = Arc::new(SpoolStats::default());
        let flush_every = opts.flush_every.min(Duration::from_secs(1));
        let inbox = Arc::new(Inbox::default());
        writer::spawn(opts, writer.clone(), rx, inbox.clone(), stats.clone())?;
        let ticker = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(flush_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (done, _) = oneshot::channel();
                if ticker.send(Msg::Flush(done)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Spool {
            tx,
            inbox,
            stats,
            writer,
            data_dir,
            prefix,
        })
    }

    /// Appends one demand line (which must end in `\n`) to the meter's file
    /// for the hour of `polled_at`.
    pub async fn append(
        &self,
        cloud_id: CloudId,
        polled_at: DateTime<Utc>,
        line: String,
    ) -> Result<(), SpoolError> {
        self.append_kind(Kind::Demand, cloud_id, polled_at, line)
            .await
    }

    /// Appends one line of stream `kind` to the meter's file of that kind
    /// for the hour of `at` (the reading's hour, which for history answers
    /// is not the hour of the request).
    pub async fn append_kind(
        &self,
        kind: Kind,
        cloud_id: CloudId,
        at: DateTime<Utc>,
        line: String,
    ) -> Result<(), SpoolError> {
        let line = line.into_bytes();
        let len = line.len();
        {
            let mut lines = self.inbox.lines.lock().unwrap_or_else(|p| p.into_inner());
            // Checked under the lock: see `Inbox::take_and_close`.
            if self.inbox.closed.load(Ordering::Acquire) {
                return Err(SpoolError::Closed(cloud_id));
            }
            lines.push(Queued {
                kind,
                cloud_id,
                hour: HourBucket::of(at),
                line,
            });
        }
        if self.inbox.bytes.fetch_add(len, Ordering::Relaxed) + len > HIGH_WATER {
            self.flush().await;
        }
        Ok(())
    }

    /// Writes every buffered line out now (used by on-demand reads, tests and
    /// back-pressure).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Flushes, fsyncs and closes every file; later appends fail.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The spool's counters.
    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    /// The id in the names of this spool's files.
    pub fn writer(&self) -> &WriterId {
        &self.writer
    }

    /// The file this spool appends meter `cloud_id`'s `kind` lines of
    /// `hour` to, until it seals the hour (tools and tests read it).
    pub fn file_of(&self, kind: Kind, cloud_id: CloudId, hour: HourBucket) -> PathBuf {
        SpoolName {
            kind,
            cloud_id,
            hour,
            writer: Some(self.writer.clone()),
        }
        .path(&self.data_dir, &self.prefix)
    }
}
