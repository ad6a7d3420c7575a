//! The one task that drives every meter's summation and price slots.
//!
//! Owns a single timer queue ([`DelayQueue`]) keyed by (meter, kind) with
//! each stream's next slot, and each stream's state between slots
//! (failures, backoff, last slot, whether a read is in flight). A task per
//! meter cost ~900 bytes of heap at 100,000 meters while it slept almost all
//! the time; an entry here costs a fraction of that. When a slot is due the
//! driver spawns one short-lived read on the scheduler's [`TaskTracker`]
//! (so shutdown drains it) and its outcome comes back over a channel, so a
//! slow read of one kind never delays the other kind or other meters, and
//! at most one read per (meter, kind) is in flight: a slot that finds the
//! previous read still running is skipped and counted.
//!
//! What a slot means (phase, wall-clock grid, reading, counting) is
//! [`super::kinds`]'s; this module only decides when. It learns the meter
//! set from [`super::Scheduler::apply`] ([`Streams`]), respects the demand
//! task's pause through the [`MeterHandle`], and never reads the registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::DateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::{DelayQueue, delay_queue};

use super::handle::MeterHandle;
use super::kinds::{Kinds, SCHEDULED, next_slot, phase_for_kind};
use super::shed::{Debt, Shed};
use crate::backoff::Backoff;
use crate::cloud_id::CloudId;
use crate::poll::PollError;
use crate::protocol::Start;

/// What the scheduler tells the driver about its meter set.
enum Command {
    Add(CloudId, Arc<MeterHandle>),
    Remove(CloudId),
    /// The meter's settings changed: its slots not reached yet are replanned.
    Changed(CloudId),
}

/// The scheduler's side of the driver: cheap to call from `apply`, never
/// blocks (the channel is unbounded, one message per change of the set).
#[derive(Clone)]
pub struct Streams {
    commands: mpsc::UnboundedSender<Command>,
}

impl Streams {
    /// Starts the driver of `kinds` on `tracker`; it ends with `shutdown`
    /// or when every [`Streams`] is dropped, and reads already sent finish
    /// on the tracker.
    pub fn spawn(
        kinds: Arc<Kinds>,
        shed: Arc<Shed>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            kinds,
            shed,
            tracker: tracker.clone(),
            meters: HashMap::new(),
            queue: DelayQueue::new(),
        };
        tracker.spawn(driver.run(rx, shutdown));
        Streams { commands }
    }

    /// Schedules meter `id`'s streams under `handle`'s settings and pause.
    pub fn add(&self, id: CloudId, handle: Arc<MeterHandle>) {
        self.send(Command::Add(id, handle));
    }

    /// Stops meter `id`'s streams; reads already sent finish.
    pub fn remove(&self, id: CloudId) {
        self.send(Command::Remove(id));
    }

    /// Replans meter `id`'s slots under its handle's current settings
    /// (a cadence changed, or turned a kind on or off).
    pub fn changed(&self, id: CloudId) {
        self.send(Command::Changed(id));
    }

    fn send(&self, command: Command) {
        // Fails only once the driver ended (shutting down): nothing to do.
        let _ = self.commands.send(command);
    }
}

/// A finished read, back at the driver.
struct Done {
    id: CloudId,
    /// Whose read it was: a meter removed and added again under the same
    /// id has a new handle.
    handle: Arc<MeterHandle>,
    index: usize,
    result: Result<(), PollError>,
}

/// One kind's schedule for one meter; kept small, as there are two per
/// meter (the slot itself and the cadence live in the timer queue's entry
/// and the user's settings).
struct Stream {
    /// The last slot served (read or skipped), in milliseconds since the
    /// epoch, so none is served twice; `i64::MIN`: none yet.
    last_ms: i64,
    backoff_until: Option<Instant>,
    /// The next slot's timer; `None`: the kind is off for this meter.
    timer: Option<delay_queue::Key>,
    failures: u32,
    in_flight: bool,
    /// Its part of the planned shedding ([`super::shed`]).
    debt: Debt,
}

impl Stream {
    const NEW: Stream = Stream {
        last_ms: i64::MIN,
        backoff_until: None,
        timer: None,
        failures: 0,
        in_flight: false,
        debt: Debt::ZERO,
    };
}

struct Meter {
    handle: Arc<MeterHandle>,
    streams: [Stream; 2],
}

/// A timer queue entry: meter, kind (index into [`SCHEDULED`]) and slot in
/// milliseconds since the epoch.
type Due = (CloudId, u8, i64);

struct Driver {
    kinds: Arc<Kinds>,
    /// Planned shedding, which sheds these streams' slots like demand's.
    shed: Arc<Shed>,
    tracker: TaskTracker,
    meters: HashMap<CloudId, Meter>,
    queue: DelayQueue<Due>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command::Add(id, handle)) => self.add(id, handle),
                    Some(Command::Remove(id)) => self.remove(id),
                    Some(Command::Changed(id)) => self.replan(id),
                    None => break,
                },
                Some(done) = done_rx.recv() => self.finished(done),
                Some(expired) = std::future::poll_fn(|cx| self.queue.poll_expired(cx)) => {
                    let (id, index, slot_ms) = expired.into_inner();
                    self.due(id, usize::from(index), slot_ms, &done_tx);
                }
            }
        }
        // Reads in flight finish on the tracker and count themselves; no
        // new slot is served.
    }

    fn add(&mut self, id: CloudId, handle: Arc<MeterHandle>) {
        self.remove(id);
        // Each stream's shedding debt starts apart from the meter's demand
        // and from its other stream's.
        let streams = std::array::from_fn(|index| Stream {
            debt: Debt::for_key(u64::from(id.as_u32()) | ((index as u64 + 1) << 32)),
            ..Stream::NEW
        });
        let meter = Meter { handle, streams };
        self.meters.insert(id, meter);
        self.replan(id);
    }

    fn remove(&mut self, id: CloudId) {
        if let Some(meter) = self.meters.remove(&id) {
            for s in meter.streams {
                if let Some(key) = s.timer {
                    self.queue.try_remove(&key);
                }
            }
        }
    }

    /// Plans every kind of meter `id` anew under its current settings.
    fn replan(&mut self, id: CloudId) {
        for index in 0..SCHEDULED.len() {
            self.plan(id, index);
        }
    }

    /// Plans kind `index` of meter `id`: its next slot after now (and
    /// after the last one served) under the user's cadence, or none.
    fn plan(&mut self, id: CloudId, index: usize) {
        let Some(meter) = self.meters.get_mut(&id) else {
            return;
        };
        let kind = SCHEDULED[index];
        let interval = self.kinds.opts.cadence(&meter.handle.user(), kind);
        let s = &mut meter.streams[index];
        if let Some(key) = s.timer.take() {
            self.queue.try_remove(&key);
        }
        if interval.is_zero() {
            // Off for this meter; a change of the user's cadence replans it.
            return;
        }
        let now = self.kinds.reader.clock().now();
        let phase = phase_for_kind(id, kind, interval);
        // Never the same slot twice, even if the wall clock lags the timer
        // that woke us.
        let after_last = DateTime::from_timestamp_millis(s.last_ms.saturating_add(1));
        let from = after_last.map_or(now, |after| now.max(after));
        let slot = next_slot(from, phase, interval);
        let wait = (slot - now).to_std().unwrap_or_default();
        let due = (id, index as u8, slot.timestamp_millis());
        s.timer = Some(self.queue.insert(due, wait));
    }

    /// Serves kind `index`'s slot of meter `id`: a read, or a skip.
    fn due(&mut self, id: CloudId, index: usize, slot_ms: i64, done: &mpsc::UnboundedSender<Done>) {
        let Some(meter) = self.meters.get_mut(&id) else {
            return;
        };
        if meter.handle.is_stopped() {
            self.remove(id);
            return;
        }
        let kind = SCHEDULED[index];
        let s = &mut meter.streams[index];
        s.timer = None;
        s.last_ms = slot_ms;
        let user = meter.handle.user();
        let interval = self.kinds.opts.cadence(&user, kind);
        let slot = DateTime::from_timestamp_millis(slot_ms);
        let (Some(slot), false) = (slot, interval.is_zero()) else {
            // Turned off since it was planned; the replan that follows the
            // change leaves it off.
            return;
        };
        let due = Instant::now();
        let skipped = &self.kinds.counters.skipped[kind as usize];
        self.shed.other_due();
        if s.in_flight
            || meter.handle.paused_at(due)
            || s.backoff_until.is_some_and(|until| due < until)
            || s.debt.at_slot(self.shed.other())
        {
            skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            s.in_flight = true;
            let start = Start::by(due + self.kinds.opts.max_start_lag.min(interval / 2), 0);
            let (kinds, done) = (self.kinds.clone(), done.clone());
            let handle = meter.handle.clone();
            self.tracker.spawn(async move {
                let result = super::kinds::read(kinds, kind, user, slot, start).await;
                // Fails only once the driver ended: the read counted itself.
                let _ = done.send(Done {
                    id,
                    handle,
                    index,
                    result,
                });
            });
        }
        self.plan(id, index);
    }

    /// Takes a finished read's outcome into its stream: backoff after a
    /// failure, none after a line; a closed spool stops the meter.
    fn finished(&mut self, done: Done) {
        let Some(meter) = self.meters.get_mut(&done.id) else {
            return;
        };
        if !Arc::ptr_eq(&meter.handle, &done.handle) {
            return;
        }
        let (id, kind) = (done.id, SCHEDULED[done.index]);
        let s = &mut meter.streams[done.index];
        s.in_flight = false;
        match done.result {
            Ok(()) => {
                s.failures = 0;
                s.backoff_until = None;
            }
            Err(PollError::Late(_)) => {}
            Err(PollError::Spool(e)) => {
                tracing::debug!(cloud_id = %id, kind = %kind, error = %e, "Reading not written: spool closed.");
                self.remove(id);
            }
            Err(PollError::Protocol(e)) => {
                s.failures = s.failures.saturating_add(1);
                let opts = &self.kinds.opts;
                let interval = opts.cadence(&meter.handle.user(), kind);
                let interval = if interval.is_zero() {
                    opts.max_backoff
                } else {
                    interval
                };
                let delay = Backoff::new(interval, opts.max_backoff).delay(s.failures);
                s.backoff_until = Some(Instant::now() + delay);
                tracing::debug!(cloud_id = %id, kind = %kind, error = %e, failures = s.failures, retry_in_ms = delay.as_millis() as u64, "Read failed; backing off this stream.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::scheduler::kinds::{KindCounters, KindOptions, KindReader};
    use crate::stream::Kind;

    const MINUTE: Duration = Duration::from_secs(60);

    fn kinds(dir: &std::path::Path, summation: Duration, price: Duration) -> (Arc<Kinds>, Clock) {
        let (eagle, spool) = super::super::tests::unreachable_parts(dir);
        let clock = Clock::starting_at(DateTime::from_timestamp_millis(1_700_000_000_000).unwrap());
        let opts = KindOptions {
            summation_interval: summation,
            price_interval: price,
            max_backoff: MINUTE,
            max_start_lag: Duration::from_secs(1),
        };
        let kinds = Kinds::new(opts, KindReader::new(eagle, spool, clock.clone()));
        (Arc::new(kinds), clock)
    }

    fn attempts(counters: &KindCounters, kind: Kind) -> u64 {
        counters.ok(kind) + counters.failed(kind) + counters.skipped(kind)
    }

    /// Each kind follows the user's cadence: a kind turned on later is read
    /// from then on, one turned off stops, and a stopped meter gets no more.
    #[tokio::test(start_paused = true)]
    async fn each_kind_follows_the_users_cadence_as_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Price off unless the user sets their own.
        let (kinds, _clock) = kinds(dir.path(), MINUTE, Duration::ZERO);
        let counters = kinds.counters();
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let streams = Streams::spawn(kinds, Arc::default(), &tracker, shutdown.clone());
        let mut user = crate::simulator::meter_user(7);
        let id = user.cloud_id;
        let handle = MeterHandle::new(user.clone());
        streams.add(id, handle.clone());

        tokio::time::sleep(5 * MINUTE).await;
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
        streams.changed(id);
        tokio::time::sleep(5 * MINUTE).await;
        let price = attempts(&counters, Kind::Price);
        assert!(
            (9..=11).contains(&price),
            "{price} price slots in 5 minutes at 30 s"
        );
        // A read already sent when the change came may still finish.
        let summation_after = attempts(&counters, Kind::Summation);
        assert!(summation_after <= summation + 1);

        handle.stop();
        tokio::time::sleep(5 * MINUTE).await;
        let price_stopped = attempts(&counters, Kind::Price);
        assert!(price_stopped <= price + 1, "a stopped meter is not read");
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(MINUTE, tracker.wait())
            .await
            .expect("the driver and its reads end at shutdown");
    }

    /// Planned shedding sheds the streams' slots by their share, evenly
    /// over the meters: at a quarter, each of 100 meters sheds exactly 2 of
    /// 8 summation slots that would otherwise be read.
    #[tokio::test(start_paused = true)]
    async fn summation_slots_are_shed_by_their_share() {
        use crate::scheduler::shed::Shares;
        let dir = tempfile::tempdir().expect("tempdir");
        let (kinds, _clock) = kinds(dir.path(), MINUTE, Duration::ZERO);
        let counters = kinds.counters();
        let shed = Arc::new(Shed::default());
        shed.set(Shares {
            demand: 0.0,
            other: 0.25,
        });
        let mut driver = Driver {
            kinds,
            shed: shed.clone(),
            tracker: TaskTracker::new(),
            meters: HashMap::new(),
            queue: DelayQueue::new(),
        };
        let ids: Vec<CloudId> = (0..100).map(crate::simulator::meter_cloud_id).collect();
        for (n, id) in ids.iter().enumerate() {
            driver.add(
                *id,
                MeterHandle::new(crate::simulator::meter_user(n as u32)),
            );
        }
        let (done, _reads) = mpsc::unbounded_channel();
        let mut shed_by_meter = vec![0; ids.len()];
        for slot in 0..8i64 {
            for (n, id) in ids.iter().enumerate() {
                let before = counters.skipped(Kind::Summation);
                driver.due(*id, 0, 1_700_000_000_000 + slot * 60_000, &done);
                shed_by_meter[n] += counters.skipped(Kind::Summation) - before;
                // As if the read had ended at once, without a failure.
                let s = &mut driver.meters.get_mut(id).expect("meter").streams[0];
                s.in_flight = false;
            }
        }
        assert!(
            shed_by_meter.iter().all(|n| *n == 2),
            "sheds per meter: {shed_by_meter:?}"
        );
        assert_eq!(shed.other_due.load(Ordering::Relaxed), 800);
        shed.set(Shares::default());
        let before = counters.skipped(Kind::Summation);
        for id in &ids {
            driver.due(*id, 0, 1_700_000_000_000 + 9 * 60_000, &done);
        }
        assert_eq!(
            counters.skipped(Kind::Summation),
            before,
            "nothing shed at 0"
        );
    }

    /// One driver serves 1,000 meters' slots, each kind on its own grid,
    /// without a task per meter. Every meter is paused (as its demand task
    /// would after failures), so each slot is served as a counted skip at
    /// its instant and the count is exact.
    #[tokio::test(start_paused = true)]
    async fn one_driver_serves_every_slot_of_many_meters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (summation, price) = (MINUTE, 5 * MINUTE);
        let (kinds, clock) = kinds(dir.path(), summation, price);
        let counters = kinds.counters();
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let metrics = tokio::runtime::Handle::current().metrics();
        let tasks_before = metrics.num_alive_tasks();
        let streams = Streams::spawn(kinds, Arc::default(), &tracker, shutdown.clone());
        let start = clock.now();
        let pause = Instant::now() + 24 * 60 * MINUTE;
        let mut ids = Vec::new();
        for n in 0..1_000 {
            let user = crate::simulator::meter_user(n);
            ids.push(user.cloud_id);
            let handle = MeterHandle::new(user);
            handle.set_pause(Some(pause));
            streams.add(ids[n as usize], handle);
        }

        let span = 30 * MINUTE + Duration::from_millis(500);
        tokio::time::sleep(span).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let end = clock.now();
        // The slots each meter's kinds have in [start, end], from the grid.
        let expected = |kind: Kind, interval: Duration| -> u64 {
            ids.iter()
                .map(|&id| {
                    let phase = phase_for_kind(id, kind, interval);
                    let mut slot = next_slot(start, phase, interval);
                    let mut n = 0;
                    while slot <= end {
                        n += 1;
                        slot += chrono::Duration::from_std(interval).unwrap();
                    }
                    n
                })
                .sum()
        };
        assert_eq!(
            counters.skipped(Kind::Summation),
            expected(Kind::Summation, summation)
        );
        assert_eq!(counters.skipped(Kind::Price), expected(Kind::Price, price));
        assert_eq!(
            counters.ok(Kind::Summation) + counters.failed(Kind::Summation),
            0
        );
        let alive = metrics.num_alive_tasks() - tasks_before;
        assert!(
            alive <= 2,
            "{alive} tasks for 1,000 meters' streams: one driver"
        );

        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(MINUTE, tracker.wait())
            .await
            .expect("the driver ends at shutdown");
    }

    /// A read still running at its kind's next slot makes that slot a
    /// counted skip (at most one read per meter and kind in flight), and
    /// every slot is served exactly once: read, failed or skipped. The
    /// relay here accepts connections and never answers, so each read
    /// hangs until the request timeout, five slots later.
    #[tokio::test(start_paused = true)]
    async fn a_slot_that_finds_the_last_read_running_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, spool) = super::super::tests::unreachable_parts(dir.path());
        // Never accepted: the kernel's backlog completes the connection and
        // nothing ever answers.
        let relay = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", relay.local_addr().expect("addr"));
        let eagle = super::super::tests::client_to(&url);
        let clock = Clock::starting_at(DateTime::from_timestamp_millis(1_700_000_000_000).unwrap());
        let second = Duration::from_secs(1);
        let opts = KindOptions {
            summation_interval: second,
            price_interval: Duration::ZERO,
            max_backoff: second,
            max_start_lag: second,
        };
        let kinds = Arc::new(Kinds::new(
            opts,
            KindReader::new(eagle, spool, clock.clone()),
        ));
        let counters = kinds.counters();
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let streams = Streams::spawn(kinds, Arc::default(), &tracker, shutdown.clone());
        let user = crate::simulator::meter_user(3);
        let id = user.cloud_id;
        let start = clock.now();
        streams.add(id, MeterHandle::new(user));

        tokio::time::sleep(Duration::from_millis(20_500)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let end = clock.now();
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(60), tracker.wait())
            .await
            .expect("reads in flight finish after shutdown");

        let phase = phase_for_kind(id, Kind::Summation, second);
        let mut slot = next_slot(start, phase, second);
        let mut slots = 0;
        while slot <= end {
            slots += 1;
            slot += chrono::Duration::seconds(1);
        }
        let (failed, skipped) = (
            counters.failed(Kind::Summation),
            counters.skipped(Kind::Summation),
        );
        assert_eq!(counters.ok(Kind::Summation), 0);
        assert!(failed >= 2, "{failed} reads timed out");
        assert!(failed <= 4, "{failed} reads: one at a time, each 5 s");
        assert_eq!(failed + skipped, slots, "every slot served once");
    }
}
