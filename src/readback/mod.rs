//! Read-back: the readings of a set of meters, one kind and a time range,
//! from the archive (S3 or a directory) and the local spool together.
//!
//! Owns finding and reading those lines, merging the two places, dropping
//! duplicates by (cloud_id, slot) and handing the readings out in time
//! order, an hour at a time, so a year of a meter set streams through in
//! the memory of a couple of hours. It never writes to the archive or the
//! spool and knows nothing of output formats (that is [`crate::export`]) or
//! of slots expected (that is [`crate::coverage`]).
//!
//! Archive objects are read concurrently (at most `concurrency` at once).
//! A missing object is an hour without readings, not an error. An object or
//! spool file that cannot be read (corrupt gzip, a line that is not a
//! record, a per-key refusal) is reported as a [`Problem`] and the rest goes
//! on; only a store-wide refusal an operator must fix (credentials, bucket)
//! stops the read.
//!
//! A reading whose poll went out just after the hour turned lives in the
//! next hour's file, so each hour's readings are handed out only once the
//! following hour's files are read too.

pub mod lines;
mod source;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

pub use lines::Reading;
pub use source::Source;

use crate::archive::ArchiveError;
use crate::cloud_id::CloudId;
use crate::spool::HourBucket;
use crate::stream::Kind;

/// What to read: meters, kind and the half-open range `[from, to)` of slots.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The meters; `None` means every meter found in the archive and the
    /// spool.
    pub meters: Option<Vec<CloudId>>,
    /// The stream.
    pub kind: Kind,
    /// First instant included.
    pub from: DateTime<Utc>,
    /// First instant after the range.
    pub to: DateTime<Utc>,
}

/// Something that could not be read; the read went on without it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Unreadable)]
pub struct Problem {
    /// The object or file (`s3://bucket/key`, a path).
    pub location: String,
    /// What was wrong, and what was kept.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.detail)
    }
}

/// Why a read-back stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The archive refused the whole read (credentials, bucket, config).
    #[error("cannot read the archive: {0}")]
    Archive(#[from] ArchiveError),
    /// The spool directory could not be listed.
    #[error("cannot list the spool directory {}: {source}; check data_dir and its permissions", path.display())]
    Spool {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `from` is not before `to`.
    #[error("empty time range: {from} is not before {to}")]
    EmptyRange {
        /// Start asked for.
        from: DateTime<Utc>,
        /// End asked for.
        to: DateTime<Utc>,
    },
}

/// One hour's worth of files, read.
struct HourData {
    readings: Vec<Reading>,
    problems: Vec<Problem>,
}

/// A batch handed out by [`Reader::next_batch`]: readings in time order,
/// none of which a later batch repeats or precedes.
#[derive(Debug, Default)]
pub struct Batch {
    /// Readings, ordered by slot then meter, one per (meter, slot).
    pub readings: Vec<Reading>,
    /// What could not be read in the hours behind this batch.
    pub problems: Vec<Problem>,
}

/// Streams a [`Selection`] hour by hour; see the module documentation.
pub struct Reader {
    hours: Pin<Box<dyn Stream<Item = Result<HourData, ReadError>> + Send>>,
    hour_starts: std::vec::IntoIter<i64>,
    pending: Vec<Reading>,
    from_ms: i64,
    to_ms: i64,
    meters: Vec<CloudId>,
    hours_total: u64,
    hours_read: u64,
    finished: bool,
}

impl Reader {
    /// Finds the meters (when the selection names none) and prepares the
    /// read; no object is fetched yet.
    pub async fn open(source: Arc<Source>, selection: Selection) -> Result<Reader, ReadError> {
        if selection.from >= selection.to {
            return Err(ReadError::EmptyRange {
                from: selection.from,
                to: selection.to,
            });
        }
        let first = HourBucket::of(selection.from);
        // One hour past the range: a poll late for the last slot lands there.
        let last = HourBucket::of(selection.to - chrono::Duration::milliseconds(1)).0 + 1;
        let hours: Vec<HourBucket> = (first.0..=last).map(HourBucket).collect();
        let meters: Vec<CloudId> = match &selection.meters {
            Some(m) => m
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            None => source.meters(selection.kind, &hours).await?,
        };
        let per_hour = meters.len().max(1);
        let ahead = (source.concurrency() / per_hour).clamp(1, source.concurrency());
        let kind = selection.kind;
        let ms = Arc::new(meters.clone());
        let src = source.clone();
        let stream = futures::stream::iter(hours.clone())
            .map(move |hour| {
                let src = src.clone();
                let ms = ms.clone();
                async move { src.read_hour(kind, hour, &ms).await }
            })
            .buffered(ahead);
        Ok(Reader {
            hours: Box::pin(stream),
            hour_starts: hours
                .iter()
                .map(|h| h.start().timestamp_millis())
                .collect::<Vec<_>>()
                .into_iter(),
            pending: Vec::new(),
            from_ms: selection.from.timestamp_millis(),
            to_ms: selection.to.timestamp_millis(),
            meters,
            hours_total: hours.len() as u64,
            hours_read: 0,
            finished: false,
        })
    }

    /// The meters being read, sorted.
    pub fn meters(&self) -> &[CloudId] {
        &self.meters
    }

    /// Hours of files to read in all (for a progress bar).
    pub fn hours_total(&self) -> u64 {
        self.hours_total
    }

    /// Hours of files read so far.
    pub fn hours_read(&self) -> u64 {
        self.hours_read
    }

    /// The next readings in time order; `None` once everything is out.
    pub async fn next_batch(&mut self) -> Option<Result<Batch, ReadError>> {
        if self.finished {
            return None;
        }
        match self.hours.next().await {
            Some(Ok(hour)) => {
                self.hours_read += 1;
                let start = self.hour_starts.next().unwrap_or(i64::MAX);
                let (from, to) = (self.from_ms, self.to_ms);
                self.pending.extend(
                    hour.readings
                        .into_iter()
                        .filter(|r| r.slot_ms >= from && r.slot_ms < to),
                );
                // Readings of earlier hours are complete now.
                let (ready, later): (Vec<Reading>, Vec<Reading>) =
                    std::mem::take(&mut self.pending)
                        .into_iter()
                        .partition(|r| r.slot_ms < start);
                self.pending = later;
                Some(Ok(Batch {
                    readings: lines::dedupe_and_order(ready),
                    problems: hour.problems,
                }))
            }
            Some(Err(e)) => {
                self.finished = true;
                Some(Err(e))
            }
            None => {
                self.finished = true;
                Some(Ok(Batch {
                    readings: lines::dedupe_and_order(std::mem::take(&mut self.pending)),
                    problems: Vec::new(),
                }))
            }
        }
    }
}
