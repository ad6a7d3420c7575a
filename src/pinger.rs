//! The pinger service: registry -> scheduler -> poller -> spool, wired up.
//!
//! Owns the service's lifecycle: reloading the user list on its interval
//! (riding out registry outages on the last known list, and keeping it
//! while a users file is caught half-written or suddenly emptied, see
//! [`FileRegistry::reload`](crate::registry::FileRegistry::reload)), the
//! summary line per interval with the capacity estimate, the over-capacity
//! warning (at most once a minute: needed against achieved polls per
//! second, and which setting to raise), and the ordered shutdown (stop scheduling,
//! let in-flight polls finish, flush statistics, flush and close every
//! file). The pieces themselves live in their own modules: the scheduler
//! decides when each meter is polled and hands changed credentials to its
//! task, which ends any pause at the meter's next slot after the reload
//! that brought them. Which meters this pinger polls is the [`Fleet`]'s
//! call: the user list is filtered through its view whenever either
//! changes, and only the owned meters reach the scheduler.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::backfill::{Backfill, BackfillOptions, Store as BackfillStore};
use crate::clock::Clock;
use crate::config::Config;
use crate::fleet::{Fleet, View, membership::now_ms};
use crate::poll::Poller;
use crate::protocol::pacing::Usage;
use crate::protocol::{AddressPolicy, Eagle, EagleOptions};
use crate::registry::file::Reload;
use crate::registry::{Registry, StatsWriter, User};
use crate::scheduler::kinds::{KindOptions, KindReader, Kinds};
use crate::scheduler::{Capacity, Counters, Scheduler, SchedulerOptions, Snapshot};
use crate::spool::{Spool, SpoolOptions};

/// How often batched statistics are written to the registry.
const STATS_FLUSH: Duration = Duration::from_secs(1);

/// Least time between two over-capacity warnings: often enough to be seen,
/// rarely enough not to drown the log during a long overload.
const OVERLOAD_WARN_EVERY: Duration = Duration::from_secs(60);

/// Builds the EAGLE client from the configuration, with its own global caps
/// (`max_concurrent_requests`, `max_requests_per_second`) and address
/// policy (`local_networks`); everything sharing this client shares them.
pub fn eagle_from_config(config: &Config, trace_http: bool) -> anyhow::Result<Eagle> {
    Eagle::new(EagleOptions {
        relay_url: config.relay_url.clone(),
        request_timeout: config.request_timeout,
        insecure_tls: config.relay_insecure_tls,
        trace_http,
        local_networks: AddressPolicy::new(config.local_networks.clone()),
        max_concurrent: config.max_concurrent_requests,
        max_per_second: config.max_requests_per_second,
    })
    .context("cannot set up the HTTP client")
}

/// Starts the spool writer from the configuration.
pub fn spool_from_config(config: &Config) -> anyhow::Result<Spool> {
    Spool::start(SpoolOptions {
        data_dir: config.data_dir.clone(),
        prefix: config.file_prefix.clone(),
        open_files: open_file_budget(
            config.open_files,
            config.max_concurrent_requests as u64 + RESERVED_FDS,
        ),
        flush_every: Duration::from_secs(1),
    })
    .with_context(|| {
        format!(
            "cannot create the spool directory {}",
            config.data_dir.display()
        )
    })
}

/// Descriptors kept free, beyond one socket per request in flight, for
/// Redis, logs and the server.
const RESERVED_FDS: u64 = 1024;

/// How many spool files may stay open: `open_files`, within what the
/// process's descriptor limit allows. The soft limit is raised towards the
/// hard one first, because a pool smaller than the number of meters reopens
/// every file every second, and the 1024 many systems default to is far
/// below a large deployment's meter count.
fn open_file_budget(wanted: usize, reserved: u64) -> usize {
    let wanted_u64 = wanted as u64;
    let limit = rlimit::increase_nofile_limit(wanted_u64 + reserved).unwrap_or(1024);
    let budget = limit
        .saturating_sub(reserved)
        .max(limit / 4)
        .min(wanted_u64) as usize;
    if budget < wanted {
        tracing::warn!(
            open_files = wanted,
            usable = budget,
            nofile_limit = limit,
            "The descriptor limit caps the spool's open files; raise `ulimit -n` (or the container's nofile limit) for fewer reopens."
        );
    }
    budget.max(2)
}

/// A running pinger, for callers that embed it (the CLI, the all-in-one
/// runner, the benchmark).
pub struct Pinger {
    counters: Arc<Counters>,
    done: tokio::task::JoinHandle<()>,
}

impl Pinger {
    /// Starts polling the active users of `registry` this pinger owns (see
    /// [`Fleet::from_config`]); stops when `shutdown` is cancelled, leaving
    /// the fleet first.
    pub fn start(
        config: &Config,
        registry: Registry,
        eagle: Eagle,
        spool: Spool,
        shutdown: CancellationToken,
    ) -> Pinger {
        // Stopped only after the last poll has finished, so its counts land.
        let stats_stop = CancellationToken::new();
        let (stats, stats_task) =
            StatsWriter::spawn(registry.clone(), STATS_FLUSH, stats_stop.clone());
        let caps_eagle = eagle.clone();
        let kinds_io = (eagle.clone(), spool.clone());
        let poller = Poller::new(eagle, spool.clone());
        let sched_stop = CancellationToken::new();
        let scheduler = Scheduler::new(
            SchedulerOptions {
                poll_interval: config.poll_interval,
                max_backoff: config.max_backoff,
                auth_backoff: config.auth_backoff,
                max_start_lag: config.max_start_lag,
            },
            poller,
            Some(stats),
            sched_stop.clone(),
        );
        let counters = scheduler.counters();
        let fleet = Fleet::from_config(config, &registry, shutdown.clone());
        let kinds = Kinds::new(
            KindOptions {
                summation_interval: config.summation_interval,
                price_interval: config.price_interval,
                max_backoff: config.max_backoff,
                max_start_lag: config.max_start_lag,
            },
            KindReader::new(kinds_io.0.clone(), kinds_io.1.clone(), Clock::system()),
        )
        .with_backfill(Backfill::new(
            BackfillOptions {
                after: config.backfill_after,
                frequency: config.backfill_frequency,
                max_start_lag: config.max_start_lag,
            },
            backfill_store(&registry),
            (kinds_io.0.clone(), kinds_io.1.clone(), Clock::system()),
            counters.clone(),
        ));
        let scheduler = scheduler.with_kinds(kinds);
        let reload_every = config.user_reload_interval;
        let poll_interval = config.poll_interval;
        let grace = config.request_timeout + Duration::from_secs(2);
        let summary_counters = counters.clone();
        let done = tokio::spawn(async move {
            let summary = tokio::spawn(summaries(
                summary_counters,
                caps_eagle,
                poll_interval,
                shutdown.clone(),
            ));
            let (scheduler, fleet) =
                reload_loop(registry, scheduler, fleet, reload_every, shutdown).await;
            sched_stop.cancel();
            if tokio::time::timeout(grace, scheduler.drain())
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_s = grace.as_secs(),
                    "In-flight polls did not finish in time; abandoning them."
                );
            }
            stats_stop.cancel();
            let _ = stats_task.await;
            spool.close().await;
            fleet.stopped().await;
            let _ = summary.await;
            tracing::info!("Pinger stopped; every file flushed and closed.");
        });
        Pinger { counters, done }
    }

    /// The scheduler's counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Waits until the pinger has shut down completely.
    pub async fn join(self) {
        let _ = self.done.await;
    }
}

/// Hands the scheduler the users `view` says this pinger owns now, and
/// records the fleet's gauges.
fn apply_owned(
    scheduler: &mut Scheduler,
    fleet: &Fleet,
    users: &[User],
    view: &View,
) -> (usize, usize, usize) {
    let owners = view.owner_at(now_ms());
    let applied = scheduler.apply(users.iter().filter(|u| owners.mine(u.cloud_id)));
    fleet.set_owned(scheduler.len());
    scheduler.counters().fleet_members.store(
        view.members.len() as i64,
        std::sync::atomic::Ordering::Relaxed,
    );
    applied
}

/// Where the backfill keeps its state: beside the users in Redis, so a
/// restart or a new owner carries on; in memory with a users file.
fn backfill_store(registry: &Registry) -> BackfillStore {
    match registry {
        Registry::Redis(r) => BackfillStore::Redis {
            db: r.db().clone(),
            keys: r.keys().clone(),
        },
        Registry::File(_) => {
            tracing::info!(
                "Backfill state is kept in memory (users file): gaps from before a restart are not filled."
            );
            BackfillStore::Memory(Default::default())
        }
    }
}

async fn reload_loop(
    registry: Registry,
    mut scheduler: Scheduler,
    fleet: Fleet,
    every: Duration,
    shutdown: CancellationToken,
) -> (Scheduler, Fleet) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = false;
    let mut view = fleet.view();
    // Every user loaded last, owned or not: a change of the view re-splits
    // them without a reload.
    let mut users: Vec<User> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return (scheduler, fleet),
            _ = tick.tick() => {}
            changed = view.changed() => {
                if changed.is_ok() {
                    let v = view.borrow_and_update().clone();
                    let (started, stopped, _) = apply_owned(&mut scheduler, &fleet, &users, &v);
                    if started + stopped > 0 {
                        tracing::info!(member = %v.me, members = v.members.len(), polling = scheduler.len(), started, stopped, "Fleet: meters handed over.");
                    }
                    continue;
                }
                // The heartbeat task ended (shutting down): no more changes.
                shutdown.cancelled().await;
                return (scheduler, fleet);
            }
        }
        let loaded = match &registry {
            // A users file can be caught half-written; it says when to wait.
            Registry::File(file) => file.reload().await,
            other => other.load_all().await.map(Reload::Users),
        };
        if loaded.is_ok() && outage {
            outage = false;
            tracing::info!("User registry reachable again.");
        }
        match loaded {
            Ok(Reload::Deferred(_)) => {}
            Ok(Reload::Users(loaded)) => {
                users = loaded;
                let v = view.borrow().clone();
                let (started, stopped, changed) = apply_owned(&mut scheduler, &fleet, &users, &v);
                if started + stopped + changed > 0 {
                    tracing::info!(
                        total = users.len(),
                        polling = scheduler.len(),
                        started,
                        stopped,
                        changed,
                        "User list reloaded."
                    );
                }
            }
            Err(e) => {
                if !outage {
                    outage = true;
                    tracing::error!(error = %e, polling = scheduler.len(), "Cannot load users; polling the last known list until the registry is back.");
                }
            }
        }
    }
}

async fn summaries(
    counters: Arc<Counters>,
    eagle: crate::protocol::Eagle,
    every: Duration,
    shutdown: CancellationToken,
) {
    let caps = eagle.caps();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = Snapshot::default();
    let mut last_usage = Usage::default();
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = counters.snapshot();
        let usage = caps.usage();
        let mut window = now.since(&last);
        let capacity = Capacity::estimate(
            every,
            every,
            now.meters - now.meters_in_backoff,
            usage.since(&last_usage),
            caps.max_concurrent(),
            caps.max_per_second(),
        );
        counters.set_capacity(&capacity);
        window.capacity_ratio = capacity.ratio();
        let line = window.summary_line(every, caps.max_concurrent());
        tracing::info!("{line}");
        if window.skipped_overload > 0 && warned.is_none_or(|t| t.elapsed() >= OVERLOAD_WARN_EVERY)
        {
            warned = Some(tokio::time::Instant::now());
            tracing::warn!(
                needed_per_s = capacity.needed_per_s.round() as u64,
                achieved_per_s = capacity.achieved_per_s.round() as u64,
                capacity_ratio = capacity.ratio(),
                skipped = window.skipped_overload,
                "Over capacity: {} polls/s needed, {} achieved; {} slots skipped in the last {} s (spread evenly over the meters). To keep up, {}.",
                capacity.needed_per_s.round(),
                capacity.achieved_per_s.round(),
                window.skipped_overload,
                every.as_secs(),
                capacity.advice()
            );
        }
        last = now;
        last_usage = usage;
    }
}
