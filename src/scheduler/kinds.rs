//! When each meter's other streams are read: summation and price, each at
//! its own cadence and phase, beside the meter's demand polls.
//!
//! Owns one small task per meter for both kinds: it sleeps until whichever
//! kind's next slot comes first, and a read of one kind runs beside the
//! wait for the other, so each kind keeps its own grid. Slots lie on the
//! wall clock (`slot = phase + k × cadence` since the Unix epoch), so a
//! restarted pinger, or another pinger taking the meter over, keeps the
//! same grid and the `slot` field of the lines means the same instant
//! everywhere. Each kind's phase is the meter's id hashed with the kind
//! ([`phase_for_kind`]), so a meter's kinds, and meters among themselves,
//! do not pile up on the same second. These reads share everything that
//! protects the meter and the process with demand polls: the global caps
//! and the device pace live in the [`Eagle`] client, and a meter whose
//! demand polls are paused (backoff, rejected credentials) is paused for
//! every kind through its [`MeterHandle`]. A kind that fails on its own
//! backs off on its own with the shared [`Backoff`]. Kind reads rank below
//! demand at the caps (rank 0): when the process is over capacity, demand
//! goes first.
//!
//! It follows the meter set the scheduler keeps (the task starts and stops
//! with the meter's demand task, so it follows the same owner), and the user's
//! own cadences ([`crate::registry::Cadence`]); it never reads the registry
//! and writes only through the spool.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handle::MeterHandle;
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

    /// Starts meter `id`'s task for its other streams (one for both kinds:
    /// a task per kind cost ~900 bytes each at 100,000 meters). It follows
    /// `handle`'s settings and pause, and stops with the meter or with
    /// `shutdown`.
    pub fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        id: CloudId,
        handle: Arc<MeterHandle>,
        shutdown: CancellationToken,
    ) {
        tracker.spawn(streams_task(self.clone(), id, handle, shutdown));
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

/// A read in flight, boxed: the request's state inline would make every
/// sleeping meter's task kilobytes (100,000 meters sleep most of the time).
type Read = Pin<Box<dyn Future<Output = Result<(), PollError>> + Send>>;

/// One kind's schedule within its meter's task: what a task of its own kept.
struct Stream {
    kind: Kind,
    failures: u32,
    backoff_until: Option<Instant>,
    /// The last slot served (read or skipped), so none is served twice.
    last_slot: Option<DateTime<Utc>>,
    /// Whether `next` was planned under the user's current settings.
    planned: bool,
    /// The next slot and the cadence it lies on; `None`: the kind is off.
    next: Option<(DateTime<Utc>, Duration)>,
    in_flight: Option<Read>,
}

impl Stream {
    fn new(kind: Kind) -> Self {
        Stream {
            kind,
            failures: 0,
            backoff_until: None,
            last_slot: None,
            planned: false,
            next: None,
            in_flight: None,
        }
    }

    /// Plans the next slot at or after `now` under `user`'s cadence.
    fn plan(&mut self, opts: &KindOptions, id: CloudId, user: &User, now: DateTime<Utc>) {
        self.planned = true;
        let interval = opts.cadence(user, self.kind);
        if interval.is_zero() {
            // Off for this meter; a change of the user's cadence replans it.
            self.next = None;
            return;
        }
        let phase = phase_for_kind(id, self.kind, interval);
        // Never the same slot twice, even if the wall clock lags the timer
        // that woke us.
        let from = self.last_slot.map_or(now, |last| {
            now.max(last + chrono::Duration::milliseconds(1))
        });
        self.next = Some((next_slot(from, phase, interval), interval));
    }

    /// The slot this stream waits for, if it waits for one.
    fn waiting_for(&self) -> Option<DateTime<Utc>> {
        match (&self.in_flight, self.next) {
            (None, Some((slot, _))) => Some(slot),
            _ => None,
        }
    }

    /// Counts a finished read and sets the stream's backoff; `false` when
    /// the spool is closed (shutting down).
    fn finished(&mut self, kinds: &Kinds, id: CloudId, result: Result<(), PollError>) -> bool {
        let (kind, counters) = (self.kind, &kinds.counters);
        match result {
            Ok(()) => {
                self.failures = 0;
                self.backoff_until = None;
            }
            Err(PollError::Late(_)) => {
                counters.skipped[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
            Err(PollError::Spool(e)) => {
                tracing::debug!(cloud_id = %id, kind = %kind, error = %e, "Reading not written: spool closed.");
                return false;
            }
            Err(PollError::Protocol(e)) => {
                counters.failed[kind as usize].fetch_add(1, Ordering::Relaxed);
                self.failures = self.failures.saturating_add(1);
                let interval = self.next.map_or(kinds.opts.max_backoff, |(_, i)| i);
                let delay = Backoff::new(interval, kinds.opts.max_backoff).delay(self.failures);
                self.backoff_until = Some(Instant::now() + delay);
                tracing::debug!(cloud_id = %id, kind = %kind, error = %e, failures = self.failures, retry_in_ms = delay.as_millis() as u64, "Read failed; backing off this stream.");
            }
        }
        true
    }
}

/// Reads `kind` for `slot` and, after a summation line, lets the backfill
/// look for gaps; owns what it needs, so it can run beside the other kind's
/// wait.
async fn read(
    kinds: Arc<Kinds>,
    kind: Kind,
    user: Arc<User>,
    slot: DateTime<Utc>,
    start: Start,
) -> Result<(), PollError> {
    kinds.reader.read(kind, &user, slot, start).await?;
    kinds.counters.ok[kind as usize].fetch_add(1, Ordering::Relaxed);
    if let (Kind::Summation, Some(backfill)) = (kind, &kinds.backfill) {
        backfill.after_summation(&user, slot).await;
    }
    Ok(())
}

/// Completes when `read` does; never while there is none.
fn finish(read: &mut Option<Read>) -> impl Future<Output = Result<(), PollError>> + '_ {
    std::future::poll_fn(move |cx| match read {
        Some(f) => f.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// Sleeps `wait`, or forever when there is nothing to wait for.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// One meter's summation and price streams in one task: it sleeps until
/// whichever kind's slot comes first, and a kind's read runs beside the
/// other kind's wait, so each keeps its own grid as with a task of its own.
pub(super) async fn streams_task(
    kinds: Arc<Kinds>,
    id: CloudId,
    handle: Arc<MeterHandle>,
    shutdown: CancellationToken,
) {
    let mut streams = SCHEDULED.map(Stream::new);
    let mut seen = handle.version();
    loop {
        let now = kinds.reader.clock.now();
        if streams.iter().any(|s| !s.planned && s.in_flight.is_none()) {
            let current = handle.user();
            for s in streams
                .iter_mut()
                .filter(|s| !s.planned && s.in_flight.is_none())
            {
                s.plan(&kinds.opts, id, &current, now);
            }
        }
        let first = (0..streams.len())
            .filter_map(|i| streams[i].waiting_for().map(|slot| (slot, i)))
            .min();
        let wait = first.map(|(slot, _)| (slot - now).to_std().unwrap_or_default());
        let [a, b] = &mut streams;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = handle.changed(seen) => {
                if !changed { break }
                seen = handle.version();
                // Slots not reached yet are replanned under the new settings.
                for s in [a, b] { s.planned = false; }
                continue;
            }
            result = finish(&mut a.in_flight) => {
                a.in_flight = None;
                a.planned = false;
                if !a.finished(&kinds, id, result) { break }
                continue;
            }
            result = finish(&mut b.in_flight) => {
                b.in_flight = None;
                b.planned = false;
                if !b.finished(&kinds, id, result) { break }
                continue;
            }
            _ = sleep_for(wait) => {}
        }
        let Some((slot, i)) = first else { continue };
        let s = &mut streams[i];
        let Some((_, interval)) = s.next else {
            continue;
        };
        s.last_slot = Some(slot);
        s.planned = false;
        let due = Instant::now();
        if handle.paused_at(due) || s.backoff_until.is_some_and(|until| due < until) {
            kinds.counters.skipped[s.kind as usize].fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let start = Start::by(due + kinds.opts.max_start_lag.min(interval / 2), 0);
        let current = handle.user();
        s.in_flight = Some(Box::pin(read(kinds.clone(), s.kind, current, slot, start)));
    }
    // Stopping lets reads already sent finish and write their lines, as a
    // demand poll in flight does.
    for s in &mut streams {
        if let Some(read) = s.in_flight.take() {
            let result = read.await;
            s.finished(&kinds, id, result);
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

    fn attempts(counters: &KindCounters, kind: Kind) -> u64 {
        counters.ok(kind) + counters.failed(kind) + counters.skipped(kind)
    }

    /// Both kinds share one task, and each follows the user's cadence: a
    /// kind turned on later is read from then on, one turned off stops.
    #[tokio::test(start_paused = true)]
    async fn one_task_follows_each_kinds_cadence_as_the_user_changes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (eagle, spool) = super::super::tests::unreachable_parts(dir.path());
        let minute = Duration::from_secs(60);
        let clock = Clock::starting_at(at(1_700_000_000_000));
        let kinds = Arc::new(Kinds::new(
            KindOptions {
                summation_interval: minute,
                // Off unless the user sets their own.
                price_interval: Duration::ZERO,
                max_backoff: minute,
                max_start_lag: Duration::from_secs(1),
            },
            KindReader::new(eagle, spool, clock),
        ));
        let counters = kinds.counters();
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let mut user = crate::simulator::meter_user(7);
        let handle = MeterHandle::new(user.clone());
        kinds.start(&tracker, user.cloud_id, handle.clone(), shutdown.clone());
        assert_eq!(tracker.len(), 1, "one task for both kinds");

        tokio::time::sleep(5 * minute).await;
        let summation = attempts(&counters, Kind::Summation);
        assert!(
            (4..=6).contains(&summation),
            "{summation} summation slots in 5 minutes"
        );
        assert_eq!(attempts(&counters, Kind::Price), 0, "price is off");

        user.cadence = crate::registry::Cadence {
            summation_s: Some(0),
            price_s: Some(30),
        };
        handle.replace(user);
        tokio::time::sleep(5 * minute).await;
        let price = attempts(&counters, Kind::Price);
        assert!(
            (9..=11).contains(&price),
            "{price} price slots in 5 minutes at 30 s"
        );
        // A read already sent when the change came may still finish.
        assert!(attempts(&counters, Kind::Summation) <= summation + 1);

        handle.stop();
        tracker.close();
        tokio::time::timeout(minute, tracker.wait())
            .await
            .expect("the task ends when its meter stops");
    }
}
