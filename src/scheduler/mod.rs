//! When each meter is polled: phases, slots, global caps, backoff.
//!
//! Owns one lightweight task per meter that sleeps until its next slot,
//! takes a permit from the global concurrency and rate caps, and hands the
//! actual reading to [`crate::poll::Poller`]. It decides what a failure
//! means for the meter's cadence (exponential backoff with jitter, a long
//! pause on bad credentials) and reports statistics, but it never reads the
//! registry or writes files itself: the pinger feeds it user lists.

pub mod counters;
pub mod slots;
pub mod spark;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use counters::{Counters, Snapshot};

use crate::cloud_id::CloudId;
use crate::poll::{PollError, Poller};
use crate::protocol::ErrorKind;
use crate::registry::{MeterState, StatsUpdate, StatsWriter, User};

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Cadence per meter.
    pub poll_interval: Duration,
    /// Global cap on requests in flight.
    pub max_concurrent: usize,
    /// Global cap on requests started per second.
    pub max_per_second: u32,
    /// Longest backoff after ordinary failures.
    pub max_backoff: Duration,
    /// Pause after rejected credentials.
    pub auth_backoff: Duration,
}

struct Shared {
    opts: SchedulerOptions,
    origin: Instant,
    poller: Poller,
    stats: Option<StatsWriter>,
    permits: Semaphore,
    rate: DefaultDirectRateLimiter,
    counters: Arc<Counters>,
}

struct MeterHandle {
    user: watch::Sender<User>,
    stop: CancellationToken,
}

/// Runs the per-meter tasks; [`Scheduler::apply`] reconciles them with the
/// latest user list.
pub struct Scheduler {
    shared: Arc<Shared>,
    meters: HashMap<CloudId, MeterHandle>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Scheduler {
    /// A scheduler with no meters yet. `shutdown` stops every meter task
    /// after its in-flight poll.
    pub fn new(
        opts: SchedulerOptions,
        poller: Poller,
        stats: Option<StatsWriter>,
        shutdown: CancellationToken,
    ) -> Self {
        let rps = NonZeroU32::new(opts.max_per_second).unwrap_or(NonZeroU32::MIN);
        // A burst of a tenth of a second keeps the start of each slot smooth.
        let burst = NonZeroU32::new((opts.max_per_second / 10).max(1)).unwrap_or(NonZeroU32::MIN);
        let shared = Shared {
            origin: Instant::now(),
            permits: Semaphore::new(opts.max_concurrent.max(1)),
            rate: RateLimiter::direct(Quota::per_second(rps).allow_burst(burst)),
            counters: Arc::new(Counters::default()),
            poller,
            stats,
            opts,
        };
        Scheduler {
            shared: Arc::new(shared),
            meters: HashMap::new(),
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// The counters every meter task updates.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
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
    pub fn apply(&mut self, users: Vec<User>) -> (usize, usize, usize) {
        let mut wanted: HashMap<CloudId, User> = users
            .into_iter()
            .filter(|u| u.active)
            .map(|u| (u.cloud_id, u))
            .collect();
        let mut stopped = 0;
        self.meters.retain(|id, handle| {
            if wanted.contains_key(id) {
                true
            } else {
                handle.stop.cancel();
                stopped += 1;
                false
            }
        });
        let mut changed = 0;
        let mut started = 0;
        for (id, user) in wanted.drain() {
            match self.meters.get(&id) {
                Some(handle) => {
                    let differs = {
                        let cur = handle.user.borrow();
                        cur.user_email != user.user_email
                            || cur.user_pw != user.user_pw
                            || cur.local != user.local
                    };
                    if differs {
                        handle.user.send_replace(user);
                        changed += 1;
                    }
                }
                None => {
                    let (tx, rx) = watch::channel(user);
                    let stop = self.shutdown.child_token();
                    self.tracker
                        .spawn(meter_task(self.shared.clone(), id, rx, stop.clone()));
                    self.meters.insert(id, MeterHandle { user: tx, stop });
                    started += 1;
                }
            }
        }
        self.shared
            .counters
            .meters
            .store(self.meters.len() as i64, Ordering::Relaxed);
        (started, stopped, changed)
    }

    /// Waits for every meter task to finish its in-flight poll and exit;
    /// call after cancelling the shutdown token.
    pub async fn drain(self) {
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
}

async fn meter_task(
    shared: Arc<Shared>,
    id: CloudId,
    user: watch::Receiver<User>,
    stop: CancellationToken,
) {
    let interval = shared.opts.poll_interval;
    let phase = slots::phase_for(id, interval);
    let counters = &shared.counters;
    let mut k = slots::first_slot_at_or_after(shared.origin.elapsed(), phase, interval);
    let mut run = MeterRun::default();
    loop {
        let slot = shared.origin + slots::slot_offset(k, phase, interval);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(slot) => {}
        }
        if run.backoff_until.is_some_and(|until| slot < until) {
            counters.backoff_skips.fetch_add(1, Ordering::Relaxed);
            k += 1;
            continue;
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = shared.permits.acquire() => match p { Ok(p) => p, Err(_) => break },
        };
        shared.rate.until_ready().await;
        let started = Instant::now();
        counters.lag(started.saturating_duration_since(slot));
        let current = user.borrow().clone();
        let result = shared.poller.poll(&current).await;
        drop(permit);
        counters.latency(started.elapsed());
        let shutting_down = matches!(result, Err(PollError::Spool(_)));
        outcome(&shared, id, &mut run, result);
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
    if run.backoff_until.is_some() {
        counters.meters_in_backoff.fetch_sub(1, Ordering::Relaxed);
    }
    if run.auth_failed {
        counters.meters_auth_failed.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

fn outcome(
    shared: &Shared,
    id: CloudId,
    run: &mut MeterRun,
    result: Result<crate::record::Record, PollError>,
) {
    let counters = &shared.counters;
    let now = unix_now();
    match result {
        Ok(record) => {
            counters.polls_ok.fetch_add(1, Ordering::Relaxed);
            let spark = run.spark.add(now, record.demand_kw);
            if run.backoff_until.take().is_some() {
                counters.meters_in_backoff.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(cloud_id = %id, failures = run.failures, "Meter is answering again.");
            }
            if run.auth_failed {
                run.auth_failed = false;
                counters.meters_auth_failed.fetch_sub(1, Ordering::Relaxed);
            }
            run.failures = 0;
            if let Some(stats) = &shared.stats {
                stats.record(StatsUpdate {
                    cloud_id: id,
                    events_logged: 1,
                    first_timestamp: Some(now),
                    last_timestamp: Some(now),
                    last_error: None,
                    consecutive_failures: 0,
                    state: MeterState::Ok,
                    last_demand_kw: Some(record.demand_kw),
                    spark,
                });
            }
        }
        Err(PollError::Spool(e)) => {
            tracing::debug!(cloud_id = %id, error = %e, "Reading not written: spool closed.");
        }
        Err(PollError::Protocol(e)) => {
            let kind = e.kind();
            counters.failure(kind);
            run.failures = run.failures.saturating_add(1);
            let auth = kind == ErrorKind::Auth;
            let base = if auth {
                shared.opts.auth_backoff
            } else {
                slots::backoff_delay(
                    run.failures,
                    shared.opts.poll_interval,
                    shared.opts.max_backoff,
                )
            };
            let delay = slots::jitter(base, rand::random::<f64>());
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
                    cloud_id: id,
                    events_logged: 0,
                    first_timestamp: None,
                    last_timestamp: None,
                    last_error: Some((kind.as_str().to_string(), now)),
                    consecutive_failures: run.failures,
                    state: if auth {
                        MeterState::AuthFailed
                    } else {
                        MeterState::Backoff
                    },
                    last_demand_kw: None,
                    spark: None,
                });
            }
        }
    }
}
