//! The `rainforest` command line: global flags, subcommands, exit codes.
//!
//! Each subcommand module owns its `Args` and a `run` function. This module
//! parses flags, builds the [`Config`] once, sets up logging and signals, and
//! turns errors into messages and exit codes. Nothing deeper prints to the
//! terminal except a subcommand's own output (a record, a config dump).

mod coverage;
mod export;
mod fetch;
mod pinger;
mod rotator;
mod run;
mod server;
mod tokens;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Layers};
use crate::telemetry::{self, LogFormat};

/// Exit code for a bad configuration or bad arguments.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when an EAGLE rejected the credentials.
pub const EXIT_AUTH: u8 = 3;

/// Collects EAGLE smart-meter readings into an hour-bucketed archive.
#[derive(Debug, Parser)]
#[command(name = "rainforest", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, clap::Args)]
struct GlobalArgs {
    /// TOML configuration file (default: config/rainforest.toml when present).
    #[arg(long, global = true, env = "RAINFOREST_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log every EAGLE request as a curl command (secrets replaced by $VARS).
    #[arg(long, global = true)]
    trace_http: bool,
    /// Override any configuration key, e.g. --set poll_interval=2s (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Spool directory (key data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Relay URL (key relay_url).
    #[arg(long, global = true, value_name = "URL")]
    relay_url: Option<String>,
    /// Redis URL of the user registry (key redis_url).
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// JSON-lines users file, the embedded registry (key users_file).
    #[arg(long, global = true, value_name = "PATH")]
    users_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read one meter's demand once and print the record line.
    Fetch(fetch::Args),
    /// Run a fake relay and EAGLE-200 for tests, demos and benchmarks.
    Simulate(crate::simulator::SimulateArgs),
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Poll every active user's meter every poll_interval into the spool.
    Pinger(pinger::Args),
    /// Serve the HTTP API (users, on-demand reads, health) on `listen`.
    Server(server::Args),
    /// Import, list, add and remove users.
    Users(users::Args),
    /// Create, list and revoke API tokens.
    Tokens(tokens::Args),
    /// Upload completed spool hours to the archive (S3 or a directory), exactly once.
    Rotator(rotator::Args),
    /// Pinger, rotator and server in one process; `--demo` needs nothing else.
    Run(run::Args),
    /// Per meter and day: share of expected slots read, longest gap, gaps.
    Coverage(coverage::Args),
    /// Readings of some meters over a time range as CSV, JSON lines or Parquet.
    Export(export::Args),
}

impl Command {
    fn service(&self) -> &'static str {
        match self {
            Command::Fetch(_) => "fetch",
            Command::Simulate(_) => "simulate",
            Command::Config => "config",
            Command::Pinger(_) => "pinger",
            Command::Rotator(_) => "rotator",
            Command::Server(_) => "server",
            Command::Users(_) => "users",
            Command::Tokens(_) => "tokens",
            Command::Run(_) => "run",
            Command::Coverage(_) => "coverage",
            Command::Export(_) => "export",
        }
    }
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli.global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _guard = match telemetry::init(
        cli.command.service(),
        cli.global.log_format,
        cli.global.verbose,
        config.log_dir.as_deref(),
        config.log_max_files,
    ) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli, config))
}

fn load_config(g: &GlobalArgs) -> Result<Config, ConfigError> {
    Config::load(
        g.config.as_deref(),
        std::env::vars(),
        |mut layers: Layers| {
            if let Some(d) = &g.data_dir {
                layers = layers.flag("data_dir", d.display().to_string(), "--data-dir");
            }
            if let Some(u) = &g.relay_url {
                layers = layers.flag("relay_url", u.clone(), "--relay-url");
            }
            if let Some(u) = &g.redis_url {
                layers = layers.flag("redis_url", u.clone(), "--redis-url");
            }
            if let Some(p) = &g.users_file {
                layers = layers.flag("users_file", p.display().to_string(), "--users-file");
            }
            layers.sets(&g.sets)
        },
    )
}

async fn dispatch(cli: Cli, config: Config) -> ExitCode {
    let shutdown = shutdown_on_signal();
    let result = match cli.command {
        Command::Fetch(args) => fetch::run(args, &config, cli.global.trace_http).await,
        Command::Simulate(args) => crate::simulator::run(args, shutdown)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::run(args, &config, cli.global.trace_http, shutdown)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Pinger(args) => pinger::run(args, &config, cli.global.trace_http, shutdown)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Server(args) => server::run(args, &config, cli.global.trace_http, shutdown).await,
        Command::Users(args) => users::run(args, &config).await,
        Command::Tokens(args) => tokens::run(args, &config).await,
        Command::Rotator(args) => rotator::run(args, &config, shutdown).await,
        Command::Coverage(args) => coverage::run(args, &config).await,
        Command::Export(args) => export::run(args, &config, shutdown).await,
        Command::Config => {
            print!("{}", config.render());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if is_config_error(&e) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether a failure is the set-up's fault (say, a Redis registry with no
/// credentials key), which exits [`EXIT_CONFIG`] like a bad setting.
fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<crate::registry::RegistryError>(),
            Some(crate::registry::RegistryError::Config { .. })
        )
    })
}

/// A token cancelled on the first SIGINT or SIGTERM; every long-running task
/// watches it and winds down.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown signal received; stopping.");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
