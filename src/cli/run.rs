//! `rainforest run`: pinger, rotator and server in one process.

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runner::{self, RunOptions};

/// Arguments of `rainforest run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Demo mode: an in-process simulator with N meters (default 30) whose
    /// users are created automatically; no Redis, S3 or real meters needed.
    /// Listens on 127.0.0.1:8000 unless `listen` is set.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "30")]
    demo: Option<u32>,
    /// Serve the API without authentication (logged as a warning).
    #[arg(long)]
    no_auth: bool,
}

/// Runs every service until SIGINT/SIGTERM.
pub async fn run(
    args: Args,
    config: &Config,
    trace_http: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    runner::run(
        config,
        RunOptions {
            demo: args.demo,
            trace_http,
            no_auth: args.no_auth,
        },
        shutdown,
    )
    .await
}
