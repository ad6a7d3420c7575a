//! `rainforest server`: the HTTP API on `listen`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::EXIT_CONFIG;
use crate::config::Config;
use crate::pinger;
use crate::poll::Poller;
use crate::registry::Registry;
use crate::server::{self, AppState, AuthMode, ServerError};
use crate::stats::{self, Hub};

/// Arguments of `rainforest server`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (key listen), e.g. 127.0.0.1:8000.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve without authentication. For a local experiment only: it is
    /// logged as a warning at start and on every request.
    #[arg(long)]
    no_auth: bool,
}

/// Runs the server until SIGINT/SIGTERM; exits 2 when it cannot start
/// because of the configuration (e.g. no token configured).
pub async fn run(
    args: Args,
    config: &Config,
    trace_http: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let registry = Registry::from_config(config)
        .await
        .context("cannot open the user registry")?;
    let eagle = pinger::eagle_from_config(config, trace_http)?;
    let spool = pinger::spool_from_config(config)?;
    let poller = Poller::new(eagle, spool.clone());
    let mode = if args.no_auth {
        AuthMode::Disabled
    } else {
        AuthMode::Required
    };
    let state = match AppState::from_config(config, registry, poller, mode).await {
        Ok(s) => s,
        Err(e @ (ServerError::NoToken | ServerError::WeakBootstrapToken { .. })) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(ServerError::Tokens(e)) if !e.is_unavailable() => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => return Err(e).context("cannot start the server"),
    };
    let addr = args.listen.unwrap_or(config.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (in use? set `listen` or --listen)"))?;
    // A split deployment's pinger and rotator publish their snapshots in
    // Redis; the status page and /api/stats show them through this hub.
    let hub = Hub::new();
    let tasks = TaskTracker::new();
    let reader_stop = shutdown.child_token();
    if let Some(shared) = stats::remote::shared_redis(config, Some(state.registry())) {
        stats::remote::spawn_reader(&tasks, hub.clone(), shared, reader_stop.clone());
    }
    let state = state.with_hub(hub);
    let result = server::run(listener, state, shutdown).await;
    reader_stop.cancel();
    tasks.close();
    if tokio::time::timeout(server::DRAIN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("The statistics reader did not stop in time.");
    }
    // Lines from on-demand reads are flushed whatever happened.
    spool.close().await;
    result.context("the server failed")?;
    Ok(ExitCode::SUCCESS)
}
