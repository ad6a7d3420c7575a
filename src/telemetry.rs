//! Logging set-up: human-readable or JSON lines on stderr, optional daily
//! log files per service (the newest `log_max_files` kept), levels from `-v`
//! and `RUST_LOG`.
//!
//! Owns only the subscriber; modules log with `tracing` macros and never
//! print to stderr themselves. Secrets reach no log line because they are
//! [`crate::secret::Secret`]s, which print as a placeholder.

use std::io::IsTerminal;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Output format on stderr (and in log files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Readable lines for people.
    #[default]
    Human,
    /// One JSON object per event, for log shippers.
    Json,
}

/// Keeps the log-file writer alive; logs are flushed when it drops.
#[must_use = "dropping the guard stops file logging"]
pub struct Guard {
    _file: Option<WorkerGuard>,
}

/// Installs the global subscriber.
///
/// `verbose` raises the default level (0: info, 1: debug, 2+: trace) unless
/// `RUST_LOG` says otherwise. With `log_dir`, events also go to
/// `<log_dir>/<service>/<service>.<YYYY-MM-DD>.log`, a new file each UTC
/// day; of those, the newest `max_files` (today's included) are kept and
/// older ones deleted at start and at each rotation, so a long-running
/// deployment's log volume stays bounded.
pub fn init(
    service: &str,
    format: LogFormat,
    verbose: u8,
    log_dir: Option<&Path>,
    max_files: usize,
) -> anyhow::Result<Guard> {
    let default_level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Dependencies are chatty at debug; keep them at warn unless RUST_LOG asks.
    let default_filter = format!("warn,rainforest={default_level}");
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));

    let (file_writer, guard) = match log_dir {
        Some(dir) => {
            let dir = dir.join(service);
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("cannot create log directory {}: {e}", dir.display())
            })?;
            let appender = RollingFileAppender::builder()
                .rotation(Rotation::DAILY)
                .filename_prefix(service)
                .filename_suffix("log")
                // Only files named <service>.*.log are counted and pruned.
                .max_log_files(max_files)
                .build(&dir)
                .map_err(|e| anyhow::anyhow!("cannot open log file in {}: {e}", dir.display()))?;
            let (w, g) = tracing_appender::non_blocking(appender);
            (Some(w), Some(g))
        }
        None => (None, None),
    };

    // Colours only for a person at a terminal; pipes and files get plain text.
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let result = match (format, file_writer) {
        (LogFormat::Human, None) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        (LogFormat::Json, None) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        (LogFormat::Human, Some(w)) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(w),
            )
            .try_init(),
        (LogFormat::Json, Some(w)) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .with(tracing_subscriber::fmt::layer().json().with_writer(w))
            .try_init(),
    };
    // A second init (tests, the all-in-one runner) keeps the first subscriber.
    let _ = result;
    Ok(Guard { _file: guard })
}
