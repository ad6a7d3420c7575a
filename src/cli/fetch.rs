//! `rainforest fetch`: read one meter once, print the record line.
//!
//! The operator's first debugging tool. Credentials come from environment
//! variables named on the command line, never from flags, so they do not end
//! up in shell history or `ps` output.

use std::process::ExitCode;

use chrono::Utc;
use tokio::time::Instant;

use super::EXIT_AUTH;
use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::protocol::{ErrorKind, Source};
use crate::record::Record;
use crate::secret::Secret;

/// Arguments of `rainforest fetch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The meter's cloud id: exactly 6 hex digits (e.g. 00ce69).
    #[arg(value_parser = parse_cloud_id)]
    cloud_id: CloudId,
    /// Account e-mail for the cloud relay.
    #[arg(long, required_unless_present = "local")]
    user: Option<String>,
    /// Name of the environment variable holding the relay password.
    #[arg(long, value_name = "VAR", required_unless_present = "local")]
    password_env: Option<String>,
    /// Read a local EAGLE-200 at HOST[:PORT] instead of the relay.
    #[arg(long, value_name = "HOST", conflicts_with_all = ["user", "password_env"], requires = "install_code_env")]
    local: Option<String>,
    /// Name of the environment variable holding the EAGLE-200 install code.
    #[arg(long, value_name = "VAR")]
    install_code_env: Option<String>,
}

fn parse_cloud_id(s: &str) -> Result<CloudId, String> {
    CloudId::parse(s).map_err(|e| e.to_string())
}

fn secret_from_env(var: &str, what: &str) -> anyhow::Result<Secret> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
        _ => anyhow::bail!("environment variable {var} (the {what}) is not set or empty"),
    }
}

/// Runs the fetch; the exit code tells bad credentials (3) from other failures (1).
pub async fn run(args: Args, config: &Config, trace_http: bool) -> anyhow::Result<ExitCode> {
    let source = match (&args.local, &args.user, &args.password_env) {
        (Some(host), _, _) => Source::Local {
            host: host.clone(),
            install_code: secret_from_env(
                args.install_code_env.as_deref().unwrap_or_default(),
                "install code",
            )?,
        },
        (None, Some(user), Some(var)) => Source::Relay {
            user: user.clone(),
            password: secret_from_env(var, "relay password")?,
        },
        _ => anyhow::bail!("give --user and --password-env, or --local and --install-code-env"),
    };
    let eagle = crate::pinger::eagle_from_config(config, trace_http)?;
    let polled_at = Utc::now();
    let started = Instant::now();
    match eagle.read_demand(args.cloud_id, &source).await {
        Ok(reading) => {
            let latency_ms = started.elapsed().as_millis() as u64;
            let kind = source.kind();
            let record = Record::new(args.cloud_id, polled_at, latency_ms, kind, &reading);
            print!("{}", record.to_line());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {}: meter {}: {e}", e.kind().as_str(), args.cloud_id);
            Ok(if e.kind() == ErrorKind::Auth {
                ExitCode::from(EXIT_AUTH)
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
