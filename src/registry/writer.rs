//! Batching of statistics writes, so their cost does not grow with the
//! number of meters.
//!
//! Owns the [`StatsWriter`] task: the scheduler calls [`StatsWriter::record`]
//! after every poll (cheap, never waits on I/O); the task merges pending
//! updates per meter and writes them with [`Registry::write_stats`] calls of
//! a few thousand meters each per tick, i.e. a handful of pipelined round
//! trips per second however many meters there are, none of them building
//! every meter's commands at once. While the registry is unreachable the merged updates
//! are kept (at most one per meter) and retried each tick; the outage is
//! logged when it starts and when it ends, not every tick. On shutdown the
//! remainder is flushed once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Registry;
use super::stats::StatsUpdate;
use crate::cloud_id::CloudId;

type Pending = HashMap<CloudId, StatsUpdate>;

/// The handle the scheduler records statistics through; cheap to clone.
#[derive(Debug, Clone)]
pub struct StatsWriter {
    pending: Arc<Mutex<Pending>>,
}

impl StatsWriter {
    /// Starts the writer task, flushing every `flush_every` (one second
    /// suits Redis) until `shutdown` is cancelled, then once more. The
    /// returned handle ends when that last flush is done.
    pub fn spawn(
        registry: Registry,
        flush_every: Duration,
        shutdown: CancellationToken,
    ) -> (StatsWriter, JoinHandle<()>) {
        let writer = StatsWriter {
            pending: Arc::default(),
        };
        let task = Task {
            registry,
            pending: writer.pending.clone(),
            outage_since: None,
            last_refusal: None,
        };
        let span = tracing::info_span!("stats_writer");
        let handle = tokio::spawn(task.run(flush_every, shutdown).instrument(span));
        (writer, handle)
    }

    /// Queues an update, merging it with any pending one for the same meter
    /// (see [`StatsUpdate::merge`]). Never waits on I/O.
    pub fn record(&self, update: StatsUpdate) {
        let mut pending = lock(&self.pending);
        match pending.get_mut(&update.cloud_id) {
            Some(existing) => existing.merge(update),
            None => {
                pending.insert(update.cloud_id, update);
            }
        }
    }

    /// How many meters have updates waiting to be written (for metrics and
    /// tests).
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }
}

struct Task {
    registry: Registry,
    pending: Arc<Mutex<Pending>>,
    /// When writes started failing, while they are failing.
    outage_since: Option<Instant>,
    /// The last refusal logged, so a key Redis keeps refusing is reported
    /// once, not every tick.
    last_refusal: Option<String>,
}

impl Task {
    async fn run(mut self, flush_every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(flush_every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => self.flush().await,
            }
        }
        self.flush().await;
        let left = lock(&self.pending).len();
        if left > 0 {
            tracing::warn!(
                meters = left,
                registry = %self.registry.describe(),
                "Statistics not written at shutdown; those counts are lost."
            );
        }
    }

    /// Writes everything pending, [`CHUNK`] meters per call; when the
    /// registry is unavailable puts what is not written back, merged under
    /// any updates recorded meanwhile, for the next tick.
    async fn flush(&mut self) {
        let batch = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return;
            }
            std::mem::take(&mut *pending)
        };
        let meters = batch.len();
        let mut rest = batch.into_values();
        loop {
            let chunk: Vec<StatsUpdate> = rest.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            match self.registry.write_stats(&chunk).await {
                Ok(()) => {}
                Err(e) if !e.is_unavailable() => {
                    // The rest of the chunk was applied; retrying would count
                    // it twice, so only the refused meters' updates are lost.
                    let message = e.to_string();
                    if self.last_refusal.as_ref() != Some(&message) {
                        tracing::warn!(
                            error = %message,
                            "Statistics write partly refused; dropping those updates."
                        );
                        self.last_refusal = Some(message);
                    }
                }
                Err(e) => {
                    if self.outage_since.is_none() {
                        self.outage_since = Some(Instant::now());
                        tracing::warn!(
                            error = %e,
                            meters,
                            "Cannot write statistics; keeping them and retrying every tick."
                        );
                    }
                    let mut pending = lock(&self.pending);
                    for mut older in chunk.into_iter().chain(rest) {
                        if let Some(newer) = pending.remove(&older.cloud_id) {
                            older.merge(newer);
                        }
                        pending.insert(older.cloud_id, older);
                    }
                    return;
                }
            }
        }
        if let Some(since) = self.outage_since.take() {
            tracing::info!(
                outage = %humantime::format_duration(round_secs(since.elapsed())),
                meters,
                "Statistics writes work again; pending updates written."
            );
        }
    }
}

/// Meters per statistics write: one pipeline for all of them built every
/// command of 100,000 meters at once (~75 MB at the peak); a few thousand
/// keep a round trip's overhead small and its buffers to a few megabytes.
const CHUNK: usize = 2_000;

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // Holds plain counters: still usable after a panic elsewhere.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::FileRegistry;
    use crate::registry::stats::MeterState;

    fn id(n: u32) -> CloudId {
        CloudId::from_index(n)
    }

    #[tokio::test]
    async fn records_merge_per_meter_and_flush_on_shutdown() {
        let file = FileRegistry::new("/nonexistent/users.jsonl");
        let shutdown = CancellationToken::new();
        let (writer, handle) = StatsWriter::spawn(
            Registry::File(file.clone()),
            Duration::from_secs(3600),
            shutdown.clone(),
        );
        // Let the first (immediate) tick pass with nothing pending.
        tokio::task::yield_now().await;
        for n in 0..3 {
            writer.record(StatsUpdate {
                events_logged: 1,
                first_timestamp: Some(100.0 + f64::from(n)),
                last_timestamp: Some(100.0 + f64::from(n)),
                ..StatsUpdate::new(id(1))
            });
        }
        writer.record(StatsUpdate {
            state: Some(MeterState::Backoff),
            consecutive_failures: Some(3),
            ..StatsUpdate::new(id(2))
        });
        assert_eq!(writer.pending(), 2);
        shutdown.cancel();
        handle.await.unwrap();
        assert_eq!(writer.pending(), 0);
        let s = file.stats(id(1)).unwrap();
        assert_eq!(s.total_events_logged, 3);
        assert_eq!(
            (s.first_timestamp, s.last_timestamp),
            (Some(100.0), Some(102.0))
        );
        assert_eq!(file.stats(id(2)).unwrap().state, MeterState::Backoff);
    }
}
