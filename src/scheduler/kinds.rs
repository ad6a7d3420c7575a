//! When each meter's other streams are read: summation and price, each at
//! its own cadence and phase, beside the meter's demand polls.
//!
//! Owns what a slot means: the cadence of each kind per user, each kind's
//! phase ([`phase_for_kind`]), the wall-clock grid ([`next_slot`]), and one
//! read with its line and counters ([`KindReader`], [`KindCounters`]). When
//! the slots come is [`super::streams`]'s: one driver task for every meter
//! (a task per meter cost ~900 bytes each at 100,000 meters). Slots lie on
//! the wall clock (`slot = phase + k × cadence` since the Unix epoch), so a
//! restarted pinger, or another pinger taking the meter over, keeps the
//! same grid and the `slot` field of the lines means the same instant
//! everywhere. Each kind's phase is the meter's id hashed with the kind, so
//! a meter's kinds, and meters among themselves, do not pile up on the same
//! second. These reads share everything that protects the meter and the
//! process with demand polls: the global caps and the device pace live in
//! the [`Eagle`] client, and a meter whose demand polls are paused
//! (backoff, rejected credentials) is paused for every kind through its
//! [`super::MeterHandle`]. A kind that fails on its own backs off on its
//! own with the shared [`crate::backoff::Backoff`]. Kind reads rank below
//! demand at the caps (rank 0): when the process is over capacity, demand
//! goes first.
//!
//! It never reads the registry and writes only through the spool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::slots;
use crate::backfill::Backfill;
use crate::clock::Clock;
use crate::cloud_id::CloudId;
use crate::poll::{Asked, PollError};
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

    /// The wall clock slots are planned on.
    pub(super) fn clock(&self) -> &Clock {
        &self.clock
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
        // Stamped when the request left, as demand is.
        let asked = Asked::now(&self.clock);
        let line = match kind {
            Kind::Summation => {
                let reading = self.eagle.read_summation_by(id, &source, start).await?;
                let (polled_at, ms, _) = asked.stamp(reading.sent);
                SummationRecord::new(id, polled_at, slot, ms, source.kind(), &reading).to_line()
            }
            Kind::Price => {
                let reading = self.eagle.read_price_by(id, &source, start).await?;
                let (polled_at, ms, _) = asked.stamp(reading.sent);
                PriceRecord::new(id, polled_at, slot, ms, source.kind(), &reading).to_line()
            }
            // Demand has its own path (`Poller`); never scheduled here.
            Kind::Demand => return Ok(()),
        };
        self.spool.append_kind(kind, id, slot, line).await?;
        Ok(())
    }
}

/// Reads of the other streams, per kind, for tests and summaries.
#[derive(Debug, Default)]
pub struct KindCounters {
    ok: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    pub(super) skipped: [AtomicU64; 3],
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
    pub(super) opts: KindOptions,
    pub(super) reader: KindReader,
    pub(super) counters: Arc<KindCounters>,
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

/// Reads `kind` for `slot`, counts the outcome (a late start counts as a
/// skipped slot) and, after a summation line, lets the backfill look for
/// gaps. It owns what it needs, so it runs as a task of its own beside
/// every other meter's and kind's reads; counting here rather than in the
/// driver keeps the counts right for reads that finish during shutdown.
pub(super) async fn read(
    kinds: Arc<Kinds>,
    kind: Kind,
    user: Arc<User>,
    slot: DateTime<Utc>,
    start: Start,
) -> Result<(), PollError> {
    let counters = &kinds.counters;
    match kinds.reader.read(kind, &user, slot, start).await {
        Ok(()) => counters.ok[kind as usize].fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            match e {
                PollError::Late(_) => {
                    counters.skipped[kind as usize].fetch_add(1, Ordering::Relaxed)
                }
                PollError::Protocol(_) => {
                    counters.failed[kind as usize].fetch_add(1, Ordering::Relaxed)
                }
                PollError::Spool(_) => 0,
            };
            return Err(e);
        }
    };
    if let (Kind::Summation, Some(backfill)) = (kind, &kinds.backfill) {
        backfill.after_summation(&user, slot).await;
    }
    Ok(())
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
}
