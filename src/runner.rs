//! The all-in-one runner: pinger, rotator and server as tasks of one
//! process, sharing one registry, one spool and one statistics hub.
//!
//! Owns the embedded defaults (a users file, a local-directory archive, an
//! optional in-process simulator for `--demo`) and the ordered shutdown:
//! stop polling and close the spool, then let the rotator finish or abandon
//! its uploads safely, then stop the server. The services themselves live
//! in their own modules and know nothing of each other.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{ArchiveSetting, Config, Origin, redact_url};
use crate::pinger::{self, Pinger};
use crate::poll::Poller;
use crate::registry::Registry;
use crate::rotator::Rotator;
use crate::server::{self, AppState, AuthMode};
use crate::simulator::{self, SimulateArgs, Simulator};
use crate::stats::Hub;

/// The directory embedded defaults live in: the parent of `data_dir`
/// (`./data` for the default `./data/logs`).
pub fn base_dir(config: &Config) -> PathBuf {
    match config.data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where a demo listens when the operator did not set `listen`: loopback,
/// since a demo prints an admin token and serves users' data.
pub const DEMO_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8000);

/// Starts an in-process simulator with `n` meters, writes their users to
/// `<base>/demo-users.jl` and points the configuration at both. The demo
/// listens on loopback ([`DEMO_LISTEN`]) unless `listen` was set; its users
/// file keeps the simulated passwords in clear.
pub async fn start_demo(n: u32, config: &mut Config) -> anyhow::Result<Simulator> {
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: n,
        latency: "80ms±40ms".parse().context("demo latency")?,
        ..SimulateArgs::default()
    })
    .await?;
    let base = base_dir(config);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let path = base.join("demo-users.jl");
    let out: String = (0..n)
        .map(|i| simulator::meter_user(i).to_file_line() + "\n")
        .collect();
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(out.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    config.redis_url = None;
    config.users_file = Some(path.clone());
    if config.origin("listen") == Origin::Default {
        config.listen = DEMO_LISTEN.into();
    }
    config.relay_url = sim.relay_url();
    tracing::info!(meters = n, relay = %redact_url(config.relay_url.as_str()), users_file = %path.display(), "Demo: simulated meters ready.");
    Ok(sim)
}

/// Fills in what a newcomer did not configure: a users file when there is
/// no Redis, a local-directory archive when there is no bucket.
fn embedded_defaults(config: &mut Config) -> anyhow::Result<()> {
    let base = base_dir(config);
    if config.redis_url.is_none() && config.users_file.is_none() {
        let path = base.join("users.jl");
        if !path.exists() {
            std::fs::create_dir_all(&base)
                .with_context(|| format!("cannot create {}", base.display()))?;
            std::fs::write(&path, "# One user per line: {\"cloud_id\": \"00ce69\", \"user_email\": \"…\", \"user_pw\": \"…\"}\n")
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        tracing::info!(users_file = %path.display(), "No redis_url: using the embedded users file.");
        config.users_file = Some(path);
    }
    if matches!(config.archive, ArchiveSetting::Auto) && config.s3_bucket.is_none() {
        let dir = base.join("archive");
        tracing::info!(archive = %dir.display(), "No s3_bucket: archiving to a local directory.");
        config.archive = ArchiveSetting::Dir(dir);
    }
    Ok(())
}

/// Options of the runner beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Start an in-process simulator with this many meters.
    pub demo: Option<u32>,
    /// Log every EAGLE request as a curl command.
    pub trace_http: bool,
    /// Serve the API without authentication.
    pub no_auth: bool,
}

/// Runs everything until `shutdown`, then stops the parts in order.
pub async fn run(
    config: &Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config = config.clone();
    let sim = match opts.demo {
        Some(n) => Some(start_demo(n, &mut config).await?),
        None => None,
    };
    embedded_defaults(&mut config)?;
    let mut generated_token = None;
    if opts.demo.is_some() && config.api_token.is_none() && !opts.no_auth {
        let token = crate::tokens::generate();
        generated_token = Some(token.expose().to_string());
        config.api_token = Some(token);
    }

    let registry = Registry::from_config(&config)
        .await
        .context("cannot open the user registry")?;
    let eagle = pinger::eagle_from_config(&config, opts.trace_http)?;
    let spool = pinger::spool_from_config(&config)?;
    let hub = Hub::new();
    let rotator = Rotator::from_config(&config)
        .await
        .context("cannot open the archive")?;
    hub.attach_rotator(rotator.stats());

    let mode = if opts.no_auth {
        AuthMode::Disabled
    } else {
        AuthMode::Required
    };
    let poller = Poller::new(eagle.clone(), spool.clone());
    let state = AppState::from_config(&config, registry.clone(), poller, mode)
        .await
        .context("cannot start the server")?
        .with_hub(hub.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (in use? set `listen`, e.g. --set listen=127.0.0.1:8001)",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;

    let pinger_stop = CancellationToken::new();
    let rotator_stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let pinger = Pinger::start(&config, registry, eagle, spool.clone(), pinger_stop.clone());
    hub.attach_pinger(pinger.counters(), spool);
    let mut rotator_task = {
        let stop = rotator_stop.clone();
        tokio::spawn(async move { rotator.run(stop).await })
    };
    let server_task = tokio::spawn(server::run(listener, state, server_stop.clone()));

    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let url = format!("http://{host}:{}/status", addr.port());
    // Written with errors ignored: a closed stdout (a supervisor that stopped
    // reading) must not bring the services down.
    let users = config
        .users_file
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "Redis".into());
    let status = match &generated_token {
        Some(t) => format!("Status page: {url}#token={t}"),
        None => format!("Status page: {url}  (sign in with a read token)"),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Data:        spool {} → archive {}\nUsers:       {users}\n{status}\nStop with Ctrl-C.",
        config.data_dir.display(),
        describe_archive(&config)
    );
    let _ = out.flush();
    drop(out);

    shutdown.cancelled().await;
    tracing::info!("Stopping: polling first, then uploads, then the server.");
    pinger_stop.cancel();
    pinger.join().await;
    rotator_stop.cancel();
    // An upload still running after this is abandoned: its spool file is
    // only deleted after an acknowledgement, so the next run merges it.
    let grace = config.request_timeout + Duration::from_secs(3);
    if tokio::time::timeout(grace, &mut rotator_task)
        .await
        .is_err()
    {
        // Aborted rather than left running behind the server's shutdown.
        rotator_task.abort();
        tracing::warn!(
            "The rotator did not stop in time; its files stay in the spool for the next run."
        );
    }
    server_stop.cancel();
    match server_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "The server stopped with an error."),
        Err(e) => tracing::warn!(error = %e, "The server task failed."),
    }
    if let Some(sim) = sim {
        sim.stop().await;
    }
    tracing::info!("All services stopped.");
    Ok(())
}

fn describe_archive(config: &Config) -> String {
    match (&config.archive, &config.s3_bucket) {
        (ArchiveSetting::Dir(d), _) => d.display().to_string(),
        (_, Some(b)) => format!("s3://{b}/{}", config.s3_prefix),
        _ => "none".into(),
    }
}
