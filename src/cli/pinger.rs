//! `rainforest pinger`: poll every active user's meter on its cadence.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
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
}

/// Runs the pinger until SIGINT/SIGTERM, then shuts down in order.
pub async fn run(
    args: Args,
    config: &Config,
    trace_http: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config = config.clone();
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
        relay = %config.relay_url,
        poll_interval = ?config.poll_interval,
        "Pinger starting."
    );
    let pinger = Pinger::start(&config, registry, eagle, spool.clone(), shutdown.clone());
    let hub = Hub::new();
    hub.attach_pinger(pinger.counters(), spool);
    publish(&hub, &config, "pinger", &shutdown).await?;
    pinger.join().await;
    if let Some(sim) = sim {
        sim.stop().await;
    }
    Ok(())
}

/// Exposes a standalone service's hub: `/metrics` on `metrics_listen`, and
/// its snapshot in Redis for the server's status page.
pub(super) async fn publish(
    hub: &Hub,
    config: &Config,
    service: &'static str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        stats::serve_metrics(addr, hub.clone(), shutdown.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr} (metrics_listen)"))?;
    }
    if let Some(url) = &config.redis_url {
        stats::remote::spawn_publisher(
            hub.clone(),
            url.to_string(),
            config.redis_namespace.clone(),
            service,
            shutdown.clone(),
        );
    }
    Ok(())
}
