//! `rainforest pinger`: poll every active user's meter on its cadence.

use std::io::Write;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pinger::{self, Pinger};
use crate::registry::Registry;
use crate::simulator::{self, SimulateArgs, Simulator};

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
        Some(n) => Some(start_demo(n, &mut config).await?),
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
    Pinger::start(&config, registry, eagle, spool, shutdown)
        .join()
        .await;
    if let Some(sim) = sim {
        sim.stop().await;
    }
    Ok(())
}

/// Starts an in-process simulator with `n` meters, writes their users file
/// and points the configuration at both.
async fn start_demo(n: u32, config: &mut Config) -> anyhow::Result<Simulator> {
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: n,
        latency: "80ms±40ms".parse().context("demo latency")?,
        ..SimulateArgs::default()
    })
    .await?;
    let base = config
        .data_dir
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let path = base.join("demo-users.jl");
    let mut out = String::new();
    for i in 0..n {
        let id = simulator::meter_cloud_id(i);
        out.push_str(&format!(
            "{{\"cloud_id\":\"{id}\",\"user_email\":\"{}\",\"user_pw\":\"{}\"}}\n",
            simulator::meter_email(id),
            simulator::meter_password(id)
        ));
    }
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(out.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    config.redis_url = None;
    config.users_file = Some(path.clone());
    config.relay_url = sim.relay_url();
    tracing::info!(meters = n, relay = %config.relay_url, users_file = %path.display(), data_dir = %config.data_dir.display(), "Demo: simulated meters ready.");
    Ok(sim)
}
