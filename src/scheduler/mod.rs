//! When each meter is polled: phases, slots, start deadlines, backoff.
//!
//! Owns one lightweight task per meter that sleeps until its next slot
//! ([`slots`]: pure slot arithmetic) and hands the actual reading to
//! [`crate::poll::Poller`]. The global concurrency and rate caps are the
//! EAGLE client's ([`crate::protocol::pacing`]): each request waits for its
//! device's pace first and only then for a global permit, and on-demand
//! reads through the same client share the same caps. Overload is a state,
//! not a collapse: the share of slots the caps cannot carry is shed at the
//! slot ([`shed`]), so the polls that run find a permit at once, and each
//! poll must go out within `max_start_lag` of its slot or the slot is
//! skipped and counted (never run late), so the polls that do run keep
//! their meter's phase; which waiting meters yield at the caps is the skip
//! ledger's call ([`fairness`]). It decides what a failure means for the meter's
//! cadence: ordinary failures wait with the shared [`crate::backoff::Backoff`]
//! (one interval, doubling to `max_backoff`, jittered), rejected credentials
//! pause the meter for `auth_backoff`, and a change of the user's
//! credentials or address ends any pause at the next slot. It records each
//! poll's statistics update (built by [`crate::poll`]) with the streak and
//! state only it knows. It never reads the registry or writes files itself:
//! the pinger feeds it user lists. The other streams (summation, price)
//! are scheduled by [`kinds`], hooked in where a meter starts.

pub mod counters;
pub mod fairness;
pub mod handle;
pub mod kinds;
pub mod shed;
pub mod slots;
pub mod spark;
pub mod streams;

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use counters::{Capacity, Counters, Snapshot};
pub use fairness::SkipLedger;
pub use handle::MeterHandle;

use crate::backoff::{self, Backoff};
use crate::clock::now_unix;
use crate::cloud_id::CloudId;
use crate::poll::{self, PollError, Polled, Poller};
use crate::protocol::pacing::Caps;
use crate::protocol::{ErrorKind, Start};
use crate::registry::{MeterState, StatsUpdate, StatsWriter, User};

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Cadence per meter.
    pub poll_interval: Duration,
    /// Longest backoff after ordinary failures.
    pub max_backoff: Duration,
    /// Pause after rejected credentials; a change of the user's
    /// credentials or address ends it at the next slot.
    pub auth_backoff: Duration,
    /// Latest start of a poll after its slot; a poll that cannot go out by
    /// then is skipped (`max_start_lag`).
    pub max_start_lag: Duration,
}

/// What reads one meter for the scheduler: the [`Poller`] in production, a
/// stand-in when tests drive the scheduler under paused time.
pub trait ReadMeter: Send + Sync + 'static {
    /// Reads `user`'s meter once for the scheduled instant `slot` (the
    /// record's `slot`), sent by `start`'s deadline or not at all
    /// ([`PollError::Late`]).
    fn read(
        &self,
        user: &User,
        slot: DateTime<Utc>,
        start: Start,
    ) -> impl Future<Output = Result<Polled, PollError>> + Send;

    /// The caps the reads wait for, which planned shedding ([`shed`])
    /// measures; `None`: nothing is shed before the start deadline.
    fn caps(&self) -> Option<&Caps> {
        None
    }
}

impl ReadMeter for Poller {
    fn read(
        &self,
        user: &User,
        slot: DateTime<Utc>,
        start: Start,
    ) -> impl Future<Output = Result<Polled, PollError>> + Send {
        self.poll_by(user, Some(slot), start)
    }

    fn caps(&self) -> Option<&Caps> {
        Some(self.eagle().caps())
    }
}

struct Shared<R> {
    opts: SchedulerOptions,
    /// After ordinary failures: from one interval, doubling to `max_backoff`.
    backoff: Backoff,
    /// The last wall-clock multiple of the interval before the start
    /// ([`slots::epoch_offset`]), on the monotonic clock...
    origin: Instant,
    /// ...and on the wall clock, to name each slot in its record.
    origin_wall: DateTime<Utc>,
    poller: R,
    stats: Option<StatsWriter>,
    counters: Arc<Counters>,
    skips: SkipLedger,
    /// The share of slots shed at the slot, set by [`shed::control`].
    shed: Arc<shed::Shed>,
}

/// Runs the per-meter tasks; [`Scheduler::apply`] reconciles them with the
/// latest user list.
pub struct Scheduler<R = Poller> {
    shared: Arc<Shared<R>>,
    meters: HashMap<CloudId, Arc<MeterHandle>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Summation and price scheduling, when the pinger turned it on.
    kinds: Option<Arc<kinds::Kinds>>,
    /// Their one driver task, started with the first meter (inside the
    /// runtime, which building a scheduler need not be).
    streams: Option<streams::Streams>,
    /// Whether the shedding controller runs (started with the first meter).
    shedding: bool,
}

impl<R: ReadMeter> Scheduler<R> {
    /// A scheduler with no meters yet. `shutdown` stops every meter task
    /// after its in-flight poll.
    pub fn new(
        opts: SchedulerOptions,
        poller: R,
        stats: Option<StatsWriter>,
        shutdown: CancellationToken,
    ) -> Self {
        let (now, wall) = (Instant::now(), Utc::now());
        let into = slots::epoch_offset(wall, opts.poll_interval);
        let shared = Shared {
            backoff: Backoff::new(opts.poll_interval, opts.max_backoff),
            origin: now.checked_sub(into).unwrap_or(now),
            origin_wall: wall - chrono::Duration::from_std(into).unwrap_or_default(),
            counters: Arc::new(Counters::default()),
            skips: SkipLedger::default(),
            shed: Arc::default(),
            poller,
            stats,
            opts,
        };
        Scheduler {
            shared: Arc::new(shared),
            meters: HashMap::new(),
            tracker: TaskTracker::new(),
            shutdown,
            kinds: None,
            streams: None,
            shedding: false,
        }
    }

    /// The instant slot offsets count from (a wall-clock multiple of the
    /// interval, see [`slots`]), for tests that check phases.
    pub fn origin(&self) -> Instant {
        self.shared.origin
    }

    /// Also schedules each meter's summation and price reads ([`kinds`]).
    pub fn with_kinds(mut self, kinds: kinds::Kinds) -> Self {
        self.kinds = Some(Arc::new(kinds));
        self
    }

    /// The counters every meter task updates.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// The fewest and most slots any scheduled meter has skipped for
    /// overload (the fairness the skip ledger keeps).
    pub fn skip_spread(&self) -> Option<(u64, u64)> {
        self.shared.skips.spread()
    }

    /// Number of meters scheduled.
    pub fn len(&self) -> usize {
        self.meters.len()
    }

    /// Whether no meter is scheduled.
    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }

    /// Starts new active users, stops removed or deactivated ones, and hands
    /// changed credentials to running tasks (used from their next poll).
    /// Takes users by reference or by value, and copies only those it
    /// starts or changes: at 100,000 meters a copy of the whole list was a
    /// good part of the pinger's peak memory.
    pub fn apply<U: Borrow<User>>(
        &mut self,
        users: impl IntoIterator<Item = U>,
    ) -> (usize, usize, usize) {
        let mut wanted = HashSet::new();
        let mut changed = 0;
        let mut started = 0;
        for user in users {
            let user = user.borrow();
            if !user.active {
                continue;
            }
            let id = user.cloud_id;
            wanted.insert(id);
            match self.meters.get(&id) {
                Some(handle) => {
                    let differs = {
                        let cur = handle.user();
                        cur.user_email != user.user_email
                            || cur.user_pw != user.user_pw
                            || cur.local != user.local
                            || cur.cadence != user.cadence
                    };
                    if differs {
                        handle.replace(user.clone());
                        if let Some(streams) = &self.streams {
                            streams.changed(id);
                        }
                        changed += 1;
                    }
                }
                None => {
                    if !self.shedding {
                        self.shedding = true;
                        self.tracker
                            .spawn(shed::control(self.shared.clone(), self.shutdown.clone()));
                    }
                    let handle = MeterHandle::new(user.clone());
                    // The meter's other streams start and stop with its
                    // demand task, so they follow the same owner.
                    if let Some(kinds) = &self.kinds {
                        let streams = self.streams.get_or_insert_with(|| {
                            streams::Streams::spawn(
                                kinds.clone(),
                                self.shared.shed.clone(),
                                &self.tracker,
                                self.shutdown.clone(),
                            )
                        });
                        streams.add(id, handle.clone());
                    }
                    self.tracker.spawn(meter_task(
                        self.shared.clone(),
                        id,
                        handle.clone(),
                        self.shutdown.clone(),
                    ));
                    self.meters.insert(id, handle);
                    started += 1;
                }
            }
        }
        let mut stopped = 0;
        self.meters.retain(|id, handle| {
            if wanted.contains(id) {
                true
            } else {
                handle.stop();
                if let Some(streams) = &self.streams {
                    streams.remove(*id);
                }
                stopped += 1;
                false
            }
        });
        self.shared
            .counters
            .meters
            .store(self.meters.len() as i64, Ordering::Relaxed);
        (started, stopped, changed)
    }

    /// Waits for every meter task to finish its in-flight poll and exit;
    /// call after cancelling the shutdown token.
    pub async fn drain(self) {
        // Without a sender left, the streams' driver ends too.
        drop(self.streams);
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Per-meter state the task keeps between slots.
#[derive(Debug, Default)]
struct MeterRun {
    spark: spark::Spark,
    failures: u32,
    backoff_until: Option<Instant>,
    auth_failed: bool,
    /// Slots skipped for overload: the meter's rank at the caps.
    skips: u64,
    /// Its part of the planned shedding.
    debt: shed::Debt,
}

impl MeterRun {
    /// Ends a pause early (counters kept in step); `false` if none was on.
    fn end_pause(&mut self, counters: &Counters) -> bool {
        if self.backoff_until.take().is_none() {
            return false;
        }
        counters.meters_in_backoff.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

async fn meter_task<R: ReadMeter>(
    shared: Arc<Shared<R>>,
    id: CloudId,
    handle: Arc<MeterHandle>,
    shutdown: CancellationToken,
) {
    let interval = shared.opts.poll_interval;
    let phase = slots::phase_for(id, interval);
    let counters = &shared.counters;
    let mut k = slots::first_slot_at_or_after(shared.origin.elapsed(), phase, interval);
    let mut run = MeterRun {
        skips: shared.skips.join(),
        debt: shed::Debt::new(id),
        ..MeterRun::default()
    };
    let mut seen = handle.version();
    loop {
        let offset = slots::slot_offset(k, phase, interval);
        let slot = shared.origin + offset;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = handle.stopped() => break,
            _ = tokio::time::sleep_until(slot) => {}
        }
        // The pause waited for the meter or for someone to fix its settings;
        // new credentials (or a new address) deserve a try at once, or a
        // password fixed through the API would wait out `auth_backoff`.
        let version = handle.version();
        if version != seen && run.end_pause(counters) {
            tracing::info!(cloud_id = %id, failures = run.failures, "Credentials changed; polling again now.");
        }
        if run.backoff_until.is_some_and(|until| slot < until) {
            counters.backoff_skips.fetch_add(1, Ordering::Relaxed);
            k += 1;
            continue;
        }
        // The caps cannot carry every slot: shed this one now rather than
        // queue it, so the slots that run start on time.
        let shed = shared.shed.demand();
        if run.debt.at_slot(shed) {
            counters.skipped_overload.fetch_add(1, Ordering::Relaxed);
            counters.shed_at_slot.fetch_add(1, Ordering::Relaxed);
            shared.skips.skipped(&mut run.skips);
            k += 1;
            continue;
        }
        let woke = Instant::now();
        seen = version;
        let current = handle.user();
        // Waits for the device's pace and the global caps inside, by the
        // deadline.
        let start = Start::by(slot + shared.opts.max_start_lag, run.skips);
        let slot_wall = shared.origin_wall + chrono::Duration::from_std(offset).unwrap_or_default();
        // Boxed: the request's state machine is kilobytes, and inline it
        // would make every idle meter's task that large (100,000 meters
        // spend most of their life asleep between slots).
        let result = Box::pin(shared.poller.read(&current, slot_wall, start)).await;
        if let Err(PollError::Late(late)) = result {
            // Running it now would shift the meter off its phase and push
            // the next meters later still; skip it and keep the grid.
            counters.skipped_overload.fetch_add(1, Ordering::Relaxed);
            shared.skips.skipped(&mut run.skips);
            run.debt.paid();
            tracing::trace!(cloud_id = %id, waited_ms = late.waited_ms, "Slot skipped: over capacity.");
            k += 1;
            continue;
        }
        // From the slot to when the request left, and from there to the
        // answer. A failed poll does not say when its request left (many
        // never sent one), so its lag counts from when it woke and it adds
        // no round trip.
        match &result {
            Ok(polled) => {
                counters.lag(polled.sent.saturating_duration_since(slot));
                counters.latency(polled.sent.elapsed());
            }
            Err(_) => counters.lag(woke.saturating_duration_since(slot)),
        }
        let shutting_down = matches!(result, Err(PollError::Spool(_)));
        outcome(&shared, id, &mut run, result);
        handle.set_pause(run.backoff_until);
        if shutting_down {
            break;
        }
        let next =
            slots::first_slot_at_or_after(shared.origin.elapsed(), phase, interval).max(k + 1);
        counters
            .missed_slots
            .fetch_add(next - k - 1, Ordering::Relaxed);
        k = next;
    }
    run.end_pause(counters);
    shared.skips.leave(run.skips);
    if run.auth_failed {
        counters.meters_auth_failed.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a poll's result and decides the meter's pause. The statistics
/// update comes from the poll ([`Polled::stats`], [`poll::failure_stats`]);
/// this adds only what the scheduler knows: the streak and the state.
fn outcome<R>(
    shared: &Shared<R>,
    id: CloudId,
    run: &mut MeterRun,
    result: Result<Polled, PollError>,
) {
    let counters = &shared.counters;
    match result {
        Ok(polled) => {
            counters.polls_ok.fetch_add(1, Ordering::Relaxed);
            let spark = run.spark.add(polled.at, polled.record.demand_kw);
            if run.end_pause(counters) {
                tracing::info!(cloud_id = %id, failures = run.failures, "Meter is answering again.");
            }
            if run.auth_failed {
                run.auth_failed = false;
                counters.meters_auth_failed.fetch_sub(1, Ordering::Relaxed);
            }
            run.failures = 0;
            if let Some(stats) = &shared.stats {
                stats.record(StatsUpdate {
                    consecutive_failures: Some(0),
                    state: Some(MeterState::Ok),
                    spark,
                    ..polled.stats
                });
            }
        }
        Err(PollError::Spool(e)) => {
            tracing::debug!(cloud_id = %id, error = %e, "Reading not written: spool closed.");
        }
        // Handled in `meter_task` before any counting.
        Err(PollError::Late(_)) => {}
        Err(PollError::Protocol(e)) => {
            let kind = e.kind();
            counters.failure(kind);
            run.failures = run.failures.saturating_add(1);
            let auth = kind == ErrorKind::Auth;
            let delay = if auth {
                // Credentials the relay rejected wait a fixed, much longer
                // time: retrying soon only hammers the relay, and may lock
                // the account, until someone fixes them (which ends the
                // pause at once, see `meter_task`).
                backoff::jitter(shared.opts.auth_backoff, rand::random::<f64>())
            } else {
                shared.backoff.delay(run.failures)
            };
            if run.backoff_until.replace(Instant::now() + delay).is_none() {
                counters.meters_in_backoff.fetch_add(1, Ordering::Relaxed);
            }
            if auth && !run.auth_failed {
                run.auth_failed = true;
                counters.meters_auth_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(cloud_id = %id, error = %e, retry_in_s = delay.as_secs(), "Bad credentials; pausing this meter. Fix the user's password in the registry.");
            } else {
                tracing::debug!(cloud_id = %id, kind = kind.as_str(), error = %e, failures = run.failures, retry_in_ms = delay.as_millis() as u64, "Poll failed; backing off.");
            }
            if let Some(stats) = &shared.stats {
                stats.record(StatsUpdate {
                    consecutive_failures: Some(run.failures),
                    state: Some(if auth {
                        MeterState::AuthFailed
                    } else {
                        MeterState::Backoff
                    }),
                    ..poll::failure_stats(id, kind, now_unix())
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of_future<F: Future>(_f: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A client that reaches nothing (every read fails fast) and a spool in
    /// `dir`: what a meter's tasks need, for tests that only schedule.
    pub(crate) fn unreachable_parts(
        dir: &std::path::Path,
    ) -> (crate::protocol::Eagle, crate::spool::Spool) {
        let spool = crate::spool::Spool::start(crate::spool::SpoolOptions {
            data_dir: dir.to_path_buf(),
            prefix: "p".into(),
            open_files: 4,
            flush_every: Duration::from_secs(1),
        })
        .expect("spool");
        (client_to("http://127.0.0.1:1/"), spool)
    }

    /// A client whose relay is `url`, with a 5 s request timeout and room
    /// for 10 requests at a time.
    pub(crate) fn client_to(url: &str) -> crate::protocol::Eagle {
        crate::protocol::Eagle::new(crate::protocol::EagleOptions {
            relay_url: url::Url::parse(url).expect("url"),
            request_timeout: Duration::from_secs(5),
            insecure_tls: false,
            trace_http: false,
            local_networks: Default::default(),
            max_concurrent: 10,
            max_per_second: 10_000,
        })
        .expect("client")
    }

    /// Memory per meter is mostly its sleeping tasks: a request's state kept
    /// inline made each one over 2 KB (200 MB at 100,000 meters). The other
    /// streams have no task per meter ([`streams`]).
    #[tokio::test]
    async fn a_sleeping_meters_tasks_stay_small() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (eagle, spool) = unreachable_parts(dir.path());
        let scheduler = Scheduler::new(
            SchedulerOptions {
                poll_interval: Duration::from_secs(6),
                max_backoff: Duration::from_secs(60),
                auth_backoff: Duration::from_secs(60),
                max_start_lag: Duration::from_secs(1),
            },
            Poller::new(eagle, spool),
            None,
            CancellationToken::new(),
        );
        let handle = MeterHandle::new(crate::simulator::meter_user(1));
        let task = meter_task(
            scheduler.shared.clone(),
            CloudId::from_index(1),
            handle,
            CancellationToken::new(),
        );
        let size = size_of_future(&task);
        assert!(size <= 768, "a meter task's future is {size} bytes");
    }
}
