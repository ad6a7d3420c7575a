//! `rainforest pinger`: poll every active user's meter on its cadence.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, redact_url};
use crate::db::{Keys, Redis};
use crate::pinger::{self, Pinger};
use crate::registry::Registry;
use crate::runner;
use crate::stats::{self, Hub};

/// Arguments of `rainforest pinger` (settings come from the configuration;
/// see `--users-file`, `--redis-url` and `--set`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Demo mode: poll N meters of an in-process simulator, with their users
    /// written to <data_dir>/../demo-users.jl (no Redis, no real meters).
    #[arg(long, value_name = "N")]
    demo: Option<u32>,
    /// Poll only the static share I of N (0-based, e.g. 0/3 .. 2/3) instead
    /// of splitting the meters by membership in Redis (key shard, env
    /// RAINFOREST_SHARD).
    #[arg(long, value_name = "I/N")]
    shard: Option<crate::fleet::Shard>,
}

/// Runs the pinger until SIGINT/SIGTERM, then shuts down in order.
pub async fn run(
    args: Args,
    config: &Config,
    trace_http: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config = config.clone();
    if args.shard.is_some() {
        config.shard = args.shard;
    }
    let sim = match args.demo {
        Some(n) => Some(runner::start_demo(n, &mut config).await?),
        None => None,
    };
    let registry = Registry::from_config(&config)
        .await
        .context("cannot open the user registry")?;
    let eagle = pinger::eagle_from_config(&config, trace_http)?;
    let spool = pinger::spool_from_config(&config)?;
    tracing::info!(
        registry = %registry.describe(),
        data_dir = %config.data_dir.display(),
        relay = %redact_url(config.relay_url.as_str()),
        poll_interval = ?config.poll_interval,
        "Pinger starting."
    );
    let shared = stats::remote::shared_redis(&config, Some(&registry));
    let stop = shutdown.child_token();
    let pinger = Pinger::start(&config, registry, eagle, spool.clone(), stop.clone());
    let hub = Hub::new();
    hub.attach_pinger(pinger.counters(), spool);
    let exposure = match Exposure::start(&hub, &config, "pinger", shared).await {
        Ok(e) => e,
        Err(e) => {
            // Stopped in order, so the spool is closed before the error.
            stop.cancel();
            pinger.join().await;
            return Err(e);
        }
    };
    pinger.join().await;
    exposure.stop().await;
    if let Some(sim) = sim {
        sim.stop().await;
    }
    Ok(())
}

/// What a standalone service shows of itself: `/metrics` on
/// `metrics_listen`, and its snapshot in Redis for the server's status
/// page. Its tasks belong to one tracker and keep running while the
/// service drains after SIGTERM (so the last counts stay visible); the
/// caller stops and awaits them with [`Exposure::stop`] once the service
/// has stopped.
pub(super) struct Exposure {
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// How long [`Exposure::stop`] waits for the metrics server and the
/// publisher's clean-up.
const EXPOSURE_GRACE: Duration = Duration::from_secs(5);

impl Exposure {
    /// Starts serving `hub` for `service` until [`Exposure::stop`],
    /// publishing through `shared` (see [`stats::remote::shared_redis`]).
    pub(super) async fn start(
        hub: &Hub,
        config: &Config,
        service: &'static str,
        shared: Option<(Redis, Keys)>,
    ) -> anyhow::Result<Exposure> {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        if let Some(addr) = config.metrics_listen {
            stats::prometheus::serve_metrics(addr, hub.clone(), &tasks, stop.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {addr} (metrics_listen)"))?;
        }
        if let Some(shared) = shared {
            stats::remote::spawn_publisher(&tasks, hub.clone(), shared, service, stop.clone());
        }
        Ok(Exposure { tasks, stop })
    }

    /// Stops the metrics server and withdraws the published snapshot, waiting
    /// up to [`EXPOSURE_GRACE`].
    pub(super) async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(EXPOSURE_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = EXPOSURE_GRACE.as_secs(),
                "The metrics server or statistics publisher did not stop in time."
            );
        }
    }
}
