//! When each meter's other streams are read: summation and price, each at
//! its own cadence and phase, beside the meter's demand polls.
//!
//! Owns one small task per meter and kind. Slots lie on the wall clock
//! (`slot = phase + k × cadence` since the Unix epoch), so a restarted
//! pinger, or another pinger taking the meter over, keeps the same grid
//! and the `slot` field of the lines means the same instant everywhere.
//! Each kind's phase is the meter's id hashed with the kind
//! ([`phase_for_kind`]), so a meter's kinds, and meters among themselves,
//! do not pile up on the same second. These reads share everything that
//! protects the meter and the process with demand polls: the global caps
//! and the device pace live in the [`Eagle`] client, and a meter whose demand
//! polls are paused (backoff, rejected credentials) is paused for every kind
//! through its [`Gate`]. A kind that fails on its own backs off on its own
//! with the shared [`Backoff`]. Kind reads rank below demand at the caps
//! (rank 0): when the process is over capacity, demand goes first.
//!
//! It follows the meter set the scheduler keeps (tasks start and stop with
//! the meter's demand task, so they follow the same owner), and the user's
//! own cadences ([`crate::registry::Cadence`]); it never reads the registry
//! and writes only through the spool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::slots;
use crate::backfill::Backfill;
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::cloud_id::CloudId;
use crate::poll::PollError;
use crate::protocol::{Eagle, Start};
use crate::record::price::PriceRecord;
use crate::record::summation::SummationRecord;
use crate::registry::User;
use crate::spool::Spool;
use crate::stream::Kind;

/// Settings of the summation and price streams.
#[derive(Debug, Clone)]
pub struct KindOptions {
    /// Default summation cadence; zero: off unless a user sets their own.
    pub summation_interval: Duration,
    /// Default price cadence; zero: off unless a user sets their own.
    pub price_interval: Duration,
    /// Longest backoff of a kind that keeps failing.
    pub max_backoff: Duration,
    /// Latest start of a read after its slot, as for demand polls.
    pub max_start_lag: Duration,
}

impl KindOptions {
    /// `user`'s cadence of `kind`: their own, else the configured one.
    /// Zero means the stream is off for this meter.
    pub fn cadence(&self, user: &User, kind: Kind) -> Duration {
        match kind {
            Kind::Summation => user.cadence.summation(self.summation_interval),
            Kind::Price => user.cadence.price(self.price_interval),
            Kind::Demand => Duration::ZERO,
        }
    }
}

/// The kinds this module schedules.
pub const SCHEDULED: [Kind; 2] = [Kind::Summation, Kind::Price];

/// Reads one kind of one meter and writes its line: the kinds' counterpart
/// of [`crate::poll::Poller`], over the same client and spool.
#[derive(Clone)]
pub struct KindReader {
    eagle: Eagle,
    spool: Spool,
    clock: Clock,
}

impl KindReader {
    /// A reader over the shared client and spool, stamping with `clock`.
    pub fn new(eagle: Eagle, spool: Spool, clock: Clock) -> Self {
        KindReader {
            eagle,
            spool,
            clock,
        }
    }

    /// Reads `kind` of `user`'s meter for `slot` and appends the line to
    /// that kind's file for the slot's hour.
    pub async fn read(
        &self,
        kind: Kind,
        user: &User,
        slot: DateTime<Utc>,
        start: Start,
    ) -> Result<(), PollError> {
        let source = user.source();
        let id = user.cloud_id;
        let polled_at = self.clock.now();
        let started = Instant::now();
        let line = match kind {
            Kind::Summation => {
                let reading = self.eagle.read_summation_by(id, &source, start).await?;
                let ms = started.elapsed().as_millis() as u64;
                SummationRecord::new(id, polled_at, slot, ms, source.kind(), &reading).to_line()
            }
            Kind::Price => {
                let reading = self.eagle.read_price_by(id, &source, start).await?;
                let ms = started.elapsed().as_millis() as u64;
                PriceRecord::new(id, polled_at, slot, ms, source.kind(), &reading).to_line()
            }
            // Demand has its own path (`Poller`); never scheduled here.
            Kind::Demand => return Ok(()),
        };
        self.spool.append_kind(kind, id, slot, line).await?;
        Ok(())
    }
}

/// A meter's pause, shared by its demand task (which sets it) and its kind
/// tasks (which respect it), so a failing meter is not hammered by the
/// streams its demand polls already back off from.
#[derive(Debug, Default)]
pub struct Gate(Mutex<Option<Instant>>);

impl Gate {
    /// Publishes the demand task's pause (`None`: not paused).
    pub fn set(&self, until: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Whether the meter is paused at `at`.
    pub fn paused_at(&self, at: Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| at < until)
    }
}

/// Reads of the other streams, per kind, for tests and summaries.
#[derive(Debug, Default)]
pub struct KindCounters {
    ok: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    skipped: [AtomicU64; 3],
}

impl KindCounters {
    /// Lines written for `kind`.
    pub fn ok(&self, kind: Kind) -> u64 {
        self.ok[kind as usize].load(Ordering::Relaxed)
    }

    /// Failed reads of `kind`.
    pub fn failed(&self, kind: Kind) -> u64 {
        self.failed[kind as usize].load(Ordering::Relaxed)
    }

    /// Slots of `kind` not read: meter paused, or over capacity.
    pub fn skipped(&self, kind: Kind) -> u64 {
        self.skipped[kind as usize].load(Ordering::Relaxed)
    }
}

/// The summation and price scheduling of every meter.
pub struct Kinds {
    opts: KindOptions,
    reader: KindReader,
    counters: Arc<KindCounters>,
    backfill: Option<Backfill>,
}

impl Kinds {
    /// Scheduling of the other streams over `reader`.
    pub fn new(opts: KindOptions, reader: KindReader) -> Self {
        Kinds {
            opts,
            reader,
            counters: Arc::default(),
            backfill: None,
        }
    }

    /// Also fills gaps in each meter's summation stream from its history,
    /// after each summation line.
    pub fn with_backfill(mut self, backfill: Backfill) -> Self {
        self.backfill = Some(backfill);
        self
    }

    /// The per-kind counters.
    pub fn counters(&self) -> Arc<KindCounters> {
        self.counters.clone()
    }

    /// Starts meter `id`'s kind tasks; they stop with `stop`. Returns the
    /// gate the meter's demand task publishes its pause through.
    pub fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        id: CloudId,
        user: watch::Receiver<User>,
        stop: CancellationToken,
    ) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        for kind in SCHEDULED {
            tracker.spawn(kind_task(
                self.clone(),
                id,
                kind,
                user.clone(),
                gate.clone(),
                stop.clone(),
            ));
        }
        gate
    }
}

/// The phase of `kind`'s slots for meter `id`: the id hashed with the kind,
/// so one meter's streams fall on different seconds.
pub fn phase_for_kind(id: CloudId, kind: Kind, interval: Duration) -> Duration {
    let salt = (kind as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    slots::phase_of_key(u64::from(id.as_u32()) ^ salt, interval)
}

/// The first slot at or after `now` on the wall-clock grid
/// `phase + k × interval` (k counted from the Unix epoch).
pub fn next_slot(now: DateTime<Utc>, phase: Duration, interval: Duration) -> DateTime<Utc> {
    let interval_ms = interval.as_millis().max(1) as i64;
    let phase_ms = phase.as_millis() as i64 % interval_ms;
    let now_ms = now.timestamp_millis();
    let k = (now_ms - phase_ms).div_euclid(interval_ms);
    let mut slot = k * interval_ms + phase_ms;
    if slot < now_ms {
        slot += interval_ms;
    }
    DateTime::from_timestamp_millis(slot).unwrap_or(now)
}

async fn kind_task(
    kinds: Arc<Kinds>,
    id: CloudId,
    kind: Kind,
    mut user: watch::Receiver<User>,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let counters = &kinds.counters;
    let mut failures = 0u32;
    let mut backoff_until: Option<Instant> = None;
    let mut last_slot: Option<DateTime<Utc>> = None;
    loop {
        let interval = kinds.opts.cadence(&user.borrow_and_update(), kind);
        if interval.is_zero() {
            // Off for this meter; a change of the user's cadence wakes it.
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = user.changed() => if changed.is_err() { break } else { continue },
            }
        }
        let phase = phase_for_kind(id, kind, interval);
        let now = kinds.reader.clock.now();
        // Never the same slot twice, even if the wall clock lags the timer
        // that woke us.
        let previous = last_slot;
        let from = previous.map_or(now, |last| {
            now.max(last + chrono::Duration::milliseconds(1))
        });
        let slot = next_slot(from, phase, interval);
        last_slot = Some(slot);
        let wait = (slot - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = user.changed() => {
                if changed.is_err() { break }
                // Not reached: recomputed under the new settings.
                last_slot = previous;
                continue;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let due = Instant::now();
        if gate.paused_at(due) || backoff_until.is_some_and(|until| due < until) {
            counters.skipped[kind as usize].fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let current = user.borrow().clone();
        let start = Start::by(due + kinds.opts.max_start_lag.min(interval / 2), 0);
        // Boxed, as in the demand task: two of these sleep per meter, and
        // the request's state inline would make each one kilobytes.
        match Box::pin(kinds.reader.read(kind, &current, slot, start)).await {
            Ok(()) => {
                counters.ok[kind as usize].fetch_add(1, Ordering::Relaxed);
                failures = 0;
                backoff_until = None;
                if let (Kind::Summation, Some(backfill)) = (kind, &kinds.backfill) {
                    Box::pin(backfill.after_summation(&current, slot)).await;
                }
            }
            Err(PollError::Late(_)) => {
                counters.skipped[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
            Err(PollError::Spool(e)) => {
                tracing::debug!(cloud_id = %id, kind = %kind, error = %e, "Reading not written: spool closed.");
                break;
            }
            Err(PollError::Protocol(e)) => {
                counters.failed[kind as usize].fetch_add(1, Ordering::Relaxed);
                failures = failures.saturating_add(1);
                let delay = Backoff::new(interval, kinds.opts.max_backoff).delay(failures);
                backoff_until = Some(Instant::now() + delay);
                tracing::debug!(cloud_id = %id, kind = %kind, error = %e, failures, retry_in_ms = delay.as_millis() as u64, "Read failed; backing off this stream.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn slots_lie_on_the_wall_clock_grid() {
        let minute = Duration::from_secs(60);
        let phase = Duration::from_millis(1_500);
        assert_eq!(next_slot(at(120_000), phase, minute), at(121_500));
        assert_eq!(next_slot(at(121_500), phase, minute), at(121_500));
        assert_eq!(next_slot(at(121_501), phase, minute), at(181_500));
        assert_eq!(next_slot(at(0), Duration::ZERO, minute), at(0));
    }

    #[test]
    fn a_meters_kinds_fall_on_different_seconds_and_meters_spread() {
        let minute = Duration::from_secs(60);
        let id = CloudId::parse("00ce69").unwrap();
        let s = phase_for_kind(id, Kind::Summation, minute).as_secs();
        let p = phase_for_kind(id, Kind::Price, minute).as_secs();
        assert_ne!(s, p);
        let mut buckets = [0u32; 60];
        for i in 0..6_000u32 {
            let id = CloudId::parse(&format!("{:06x}", 0xa00000 + i)).unwrap();
            buckets[phase_for_kind(id, Kind::Summation, minute).as_secs() as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 60 && *max < 140, "{min}..{max}");
    }

    #[test]
    fn a_gate_pauses_until_its_instant() {
        let gate = Gate::default();
        let now = Instant::now();
        assert!(!gate.paused_at(now));
        gate.set(Some(now + Duration::from_secs(5)));
        assert!(gate.paused_at(now));
        assert!(!gate.paused_at(now + Duration::from_secs(5)));
        gate.set(None);
        assert!(!gate.paused_at(now));
    }
}
