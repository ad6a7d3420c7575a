//! Filling gaps in a meter's summation stream from the meter's own history.
//!
//! After every summation line the scheduler writes, [`Backfill`] compares
//! its slot with the meter's previous one; a pause longer than
//! `backfill_after` (a pinger restart, a relay outage, the meter offline, a
//! hand-over in the fleet) becomes an open [`Gap`]. Open gaps are asked for
//! with `get_history_data` at `backfill_frequency`, one request per meter
//! per summation slot, through the same client as every poll (so the global
//! caps and the device pace hold, ranked below demand). The answers become
//! `history` lines (summation at the device's own timestamps, raw fields
//! kept) in the hour file of each reading. A partial answer leaves the rest
//! open; the part the device no longer keeps is given up with one log line;
//! a filled gap is removed and never asked for again.
//!
//! The latest slot and the open gaps live in the [`Store`]: Redis when the
//! registry is Redis (so a restart or a new owner carries on), memory with
//! a users file. The gap arithmetic is pure ([`gaps`]). This module does not
//! schedule polls and does not touch demand lines.

pub mod gaps;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::cloud_id::CloudId;
use crate::protocol::{Eagle, ReadError, Source, Start, SummationReading};
use crate::record::summation::SummationRecord;
use crate::registry::User;
use crate::scheduler::Counters;
use crate::spool::Spool;
use crate::stream::Kind;

pub use gaps::Gap;
pub use store::Store;

/// Settings of the backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// A pause in the summation stream longer than this is a gap.
    pub after: Duration,
    /// Spacing asked of `get_history_data`.
    pub frequency: Duration,
    /// Latest start of a history request after it is due.
    pub max_start_lag: Duration,
}

/// Open gaps per meter, so the pinger's `gaps_open` gauge moves by the
/// change when one meter's count changes.
#[derive(Debug, Default)]
struct OpenGaps(Mutex<HashMap<CloudId, usize>>);

impl OpenGaps {
    fn set(&self, counters: &Counters, id: CloudId, n: usize) {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = if n == 0 {
            open.remove(&id)
        } else {
            open.insert(id, n)
        };
        let delta = n as i64 - before.unwrap_or(0) as i64;
        counters.gaps_open.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Finds gaps in every meter's summation stream and fills them.
pub struct Backfill {
    opts: BackfillOptions,
    store: Store,
    eagle: Eagle,
    spool: Spool,
    clock: Clock,
    counters: Arc<Counters>,
    open: OpenGaps,
}

impl Backfill {
    /// A backfill keeping its state in `store`, asking through the
    /// client, writing to the spool and stamping with the clock of `io`,
    /// and counting in the pinger's `counters` (`backfilled_readings`,
    /// `gaps_open`: `/metrics` and the status page).
    pub fn new(
        opts: BackfillOptions,
        store: Store,
        io: (Eagle, Spool, Clock),
        counters: Arc<Counters>,
    ) -> Self {
        let (eagle, spool, clock) = io;
        Backfill {
            opts,
            store,
            eagle,
            spool,
            clock,
            counters,
            open: OpenGaps::default(),
        }
    }
    /// Called after `user`'s summation line for `slot` is in the spool:
    /// notes a new gap, and asks for the oldest open one. Never fails the
    /// poll: a Redis or relay problem leaves the gap open for next time.
    pub async fn after_summation(&self, user: &User, slot: DateTime<Utc>) {
        let id = user.cloud_id;
        let slot_ms = slot.timestamp_millis();
        let after_ms = self.opts.after.as_millis() as i64;
        let previous = match self.store.swap_last(id, slot_ms).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(cloud_id = %id, error = %e, "Backfill state not updated.");
                return;
            }
        };
        if let Some(gap) = gaps::detect(previous, slot_ms, after_ms) {
            tracing::info!(cloud_id = %id, from = %ms_time(gap.start_ms), to = %ms_time(gap.end_ms), "Gap in the summation stream; filling it from the meter's history.");
            if let Err(e) = self.store.replace(id, None, Some(gap)).await {
                tracing::warn!(cloud_id = %id, error = %e, "Gap not recorded; it will not be backfilled.");
            }
        }
        let open = match self.store.gaps(id).await {
            Ok(open) => open,
            Err(e) => {
                tracing::debug!(cloud_id = %id, error = %e, "Open gaps not read.");
                return;
            }
        };
        self.open.set(&self.counters, id, open.len());
        if let Some(&gap) = open.first() {
            self.fill(user, gap, open.len()).await;
        }
    }

    /// Asks for `gap` once and writes what comes back.
    async fn fill(&self, user: &User, gap: Gap, open: usize) {
        let id = user.cloud_id;
        let source = user.source();
        if matches!(source, Source::Local { .. }) {
            tracing::info!(cloud_id = %id, from = %ms_time(gap.start_ms), to = %ms_time(gap.end_ms), "Gap given up: an EAGLE-200 serves no history.");
            self.close(id, gap, None, open).await;
            return;
        }
        let step_ms = (self.opts.frequency.as_millis() as i64).max(1_000);
        // Strictly inside the gap: its ends already have lines.
        let from = ms_time(gap.start_ms + 1_000);
        let to = ms_time(gap.end_ms - 1);
        let frequency_s = (step_ms / 1_000) as u32;
        let polled_at = self.clock.now();
        let started = Instant::now();
        let start = Start::by(started + self.opts.max_start_lag, 0);
        let entries = match self
            .eagle
            .read_history_by(id, &source, from, to, frequency_s, start)
            .await
        {
            Ok(entries) => entries,
            Err(ReadError::Late(_)) => return,
            Err(ReadError::Failed(e)) => {
                tracing::debug!(cloud_id = %id, error = %e, "History request failed; the gap stays open.");
                return;
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let readings: Vec<SummationReading> = entries
            .into_iter()
            .map(SummationReading::from_relay)
            .collect();
        let times: Vec<i64> = readings
            .iter()
            .filter_map(|r| r.meter_time.map(|t| t.timestamp_millis()))
            .collect();
        let answered = gaps::answer(gap, &times, step_ms);
        for t in &answered.fill {
            let Some(reading) = readings
                .iter()
                .find(|r| r.meter_time.map(|m| m.timestamp_millis()) == Some(*t))
            else {
                continue;
            };
            let record = SummationRecord::from_history(id, polled_at, latency_ms, reading);
            if let Err(e) = self
                .spool
                .append_kind(Kind::Summation, id, ms_time(*t), record.to_line())
                .await
            {
                tracing::debug!(cloud_id = %id, error = %e, "History line not written: spool closed; the gap stays open.");
                return;
            }
            self.counters
                .backfilled_readings
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(lost) = answered.lost {
            tracing::warn!(cloud_id = %id, from = %ms_time(lost.start_ms), to = %ms_time(lost.end_ms), "Gap older than the meter's history; given up.");
        }
        tracing::debug!(cloud_id = %id, written = answered.fill.len(), rest_open = answered.rest.is_some(), "History answer written.");
        self.close(id, gap, answered.rest, open).await;
    }

    /// Replaces `gap` by `rest` in the store and the gauge.
    async fn close(&self, id: CloudId, gap: Gap, rest: Option<Gap>, open: usize) {
        match self.store.replace(id, Some(gap), rest).await {
            Ok(()) => {
                let now_open = if rest.is_some() { open } else { open - 1 };
                self.open.set(&self.counters, id, now_open);
            }
            Err(e) => {
                tracing::debug!(cloud_id = %id, error = %e, "Gap not updated; it will be asked for again.");
            }
        }
    }
}

fn ms_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
