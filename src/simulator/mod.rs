//! A fake EAGLE world in one HTTP server: the vendor's cloud relay and local
//! EAGLE-200 gateways, for tests, demos and benchmarks.
//!
//! Owns: `rainforest simulate` ([`SimulateArgs`], [`run`]), the in-process
//! [`Simulator`] handle tests and benchmarks start, and the deterministic
//! meters behind both (ids, credentials, demand curves). It is a *peer* the
//! real client talks to over HTTP, never a shortcut around it, and no
//! production path may depend on it: its credentials are public by design.
//!
//! Layout: `faults` holds latency specs and per-request randomness,
//! `meters` the per-meter data and curves, `render` the XML bodies, `server`
//! the HTTP handling.
//!
//! Meter `i` has cloud id `a00000 + i` ([`meter_cloud_id`]); its relay user
//! is [`meter_email`], its password [`meter_password`] (changeable at run
//! time with [`Simulator::set_password`]), and its EAGLE-200 install code
//! [`meter_install_code`].

mod faults;
mod meters;
mod render;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cloud_id::CloudId;

pub use faults::{LatencySpec, LatencySpecError};
pub use meters::{meter_cloud_id, meter_email, meter_install_code, meter_password, meter_user};
pub use server::AnswerKind;

/// How long [`Simulator::stop`] lets in-flight requests finish before it
/// aborts the server.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `rainforest simulate`; also how tests and benchmarks
/// configure an in-process [`Simulator`] (start from `Default`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9445")]
    pub listen: SocketAddr,
    /// Number of simulated meters; cloud ids a00000, a00001, …
    #[arg(long, default_value_t = 10)]
    pub meters: u32,
    /// Delay before each answer: 150ms, 150ms±50ms or 150ms+-50ms.
    #[arg(long, default_value = "0ms")]
    pub latency: LatencySpec,
    /// Share of requests answered with a relay error ("EAGLE is offline",
    /// sometimes HTTP 500; EAGLE-200 requests get HTTP 500), 0.0-1.0.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of requests answered with garbage (truncated XML, an HTML error
    /// page or an empty body), 0.0-1.0; independent of --error-rate.
    #[arg(long, default_value_t = 0.0)]
    pub garbage_rate: f64,
    /// Seed of the demand curves and injected faults (same seed, same run).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep every request's arrival time and outcome per meter, served at
    /// `GET /sim/arrivals`, so a benchmark grades the pinger from outside.
    /// Memory grows with every request: for benchmarks, not for demos.
    #[arg(long)]
    pub record_arrivals: bool,
    /// Most `CurrentSummation` entries one `get_history_data` answer
    /// carries; a longer range gets a partial answer, and the client asks
    /// again from the last entry it got.
    #[arg(long, default_value_t = 16)]
    pub history_max: u32,
    /// Answer `get_history_data` entries newest first rather than in time
    /// order, as a client must expect from some firmware.
    #[arg(long)]
    pub history_unordered: bool,
    /// How far back each meter's stored history reaches (e.g. 2days, 30m);
    /// older times are not answered, as a real EAGLE's history is finite.
    #[arg(long, default_value = "2days", value_parser = humantime::parse_duration)]
    pub history_keep: Duration,
}

/// What `GET /sim/arrivals` answers: per meter, when each request arrived
/// (ms since the simulator started) and whether it was answered with a
/// reading. Empty unless `--record-arrivals` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arrivals {
    /// One entry per simulated meter that was asked at least once.
    pub meters: Vec<MeterArrivals>,
}

/// One meter's requests, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeterArrivals {
    /// The meter's cloud id.
    pub cloud_id: String,
    /// Arrival times, ms since the simulator started.
    pub at_ms: Vec<u64>,
    /// Per arrival: answered with a reading (a line the pinger should write).
    pub served: Vec<bool>,
    /// Per arrival: a demand read (the poll graded for timing), not a
    /// summation, price or history read, which share the meter.
    #[serde(default)]
    pub demand: Vec<bool>,
}

impl Default for SimulateArgs {
    /// The command line's defaults, so callers can override only what they test.
    fn default() -> Self {
        SimulateArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 9445)),
            meters: 10,
            latency: LatencySpec::ZERO,
            error_rate: 0.0,
            garbage_rate: 0.0,
            seed: 1,
            record_arrivals: false,
            history_max: 16,
            history_unordered: false,
            history_keep: Duration::from_secs(2 * 86_400),
        }
    }
}

impl SimulateArgs {
    /// Rejects settings the simulator cannot honour, with the flag's name.
    fn validate(&self) -> anyhow::Result<()> {
        if self.meters == 0 || self.meters > meters::MAX_METERS {
            anyhow::bail!(
                "--meters must be between 1 and {} (cloud ids a00000..ffffff), got {}",
                meters::MAX_METERS,
                self.meters
            );
        }
        if self.history_max == 0 {
            anyhow::bail!("--history-max must be at least 1");
        }
        for (flag, rate) in [
            ("--error-rate", self.error_rate),
            ("--garbage-rate", self.garbage_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("{flag} must be between 0.0 and 1.0, got {rate}");
            }
        }
        Ok(())
    }
}

/// Runs `rainforest simulate`: serves until `shutdown` is cancelled, then
/// lets in-flight requests finish.
pub async fn run(args: SimulateArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sim = Simulator::start(args.clone()).await?;
    let addr = sim.addr();
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "The simulator listens beyond loopback; its credentials are public.");
    }
    tracing::info!(
        relay_url = %sim.relay_url(),
        local_host = %addr,
        meters = args.meters,
        first_cloud_id = %meter_cloud_id(0),
        last_cloud_id = %meter_cloud_id(args.meters.saturating_sub(1)),
        latency = %args.latency,
        error_rate = args.error_rate,
        garbage_rate = args.garbage_rate,
        seed = args.seed,
        "Simulator listening. Relay: Cloud-ID <id>, User meter-<id>@sim.example, \
         Password pw-<id>. EAGLE-200: HTTP Basic <id>:ic-<id>; clients reach it only \
         with its network opted in, e.g. --set local_networks=127.0.0.0/8."
    );
    shutdown.cancelled().await;
    let served = sim.requests();
    sim.stop().await;
    tracing::info!(requests = served, "Simulator stopped.");
    Ok(())
}

/// A running simulator inside the current process, so integration tests and
/// benchmarks drive the real client against it over real HTTP.
///
/// Dropping it cancels the server too; [`Simulator::stop`] also waits for it.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .field("meters", &self.shared.meters.len())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `args.listen` (tests pass `127.0.0.1:0`) and serves in a spawned
    /// task; returns once the socket accepts connections.
    pub async fn start(args: SimulateArgs) -> anyhow::Result<Simulator> {
        args.validate()?;
        let shared = Arc::new(server::Shared::new(&args));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("listening socket has no address")?;
        let listener = listener.tap_io(|tcp| {
            // Small request/answer exchanges: do not wait to coalesce writes.
            let _ = tcp.set_nodelay(true);
        });
        let shutdown = CancellationToken::new();
        let app = server::router(shared.clone());
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(error = %e, "Simulator server failed.");
            }
        });
        Ok(Simulator {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address (the real port when `listen` asked for port 0); also
    /// the EAGLE-200 "host" for [`crate::protocol::Source::Local`], which a
    /// client reaches only when its `local_networks` opens the address
    /// (loopback: [`crate::protocol::AddressPolicy::loopback`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay URL to configure the client with: `http://addr/cgi-bin/post_manager`.
    pub fn relay_url(&self) -> url::Url {
        let text = format!("http://{}{}", self.addr, server::PATH);
        // A socket address always forms a valid http URL.
        url::Url::parse(&text).unwrap_or_else(|e| unreachable!("bad simulator URL {text}: {e}"))
    }

    /// Requests served so far (both protocols, every outcome), for throughput
    /// figures and for asserting that a client did or did not call.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests addressed to meter `id` so far (any credentials); 0 for ids
    /// that are not simulated meters. Lets tests check per-meter pacing.
    pub fn requests_for(&self, id: CloudId) -> u64 {
        self.shared
            .meter(id)
            .map_or(0, |m| m.requests.load(Ordering::Relaxed))
    }

    /// Intact demand readings sent to meter `id` so far: what a client
    /// that loses nothing has on disk. Counted when the answer is ready, so
    /// a request abandoned during its latency is not included; one whose
    /// answer is lost on the wire after that is.
    pub fn served_for(&self, id: CloudId) -> u64 {
        self.shared
            .meter(id)
            .map_or(0, |m| m.served.load(Ordering::Relaxed))
    }

    /// `get_history_data` requests meter `id` answered so far (valid
    /// credentials, no injected fault), so tests can see that a gap was
    /// asked for once and a filled one never again.
    pub fn history_requests_for(&self, id: CloudId) -> u64 {
        self.shared
            .meter(id)
            .map_or(0, |m| m.history_requests.load(Ordering::Relaxed))
    }

    /// Answers of `kind` sent so far (every meter), so tests can hold a
    /// client's failure counts against the faults it was actually served.
    pub fn answers(&self, kind: AnswerKind) -> u64 {
        self.shared.answers[kind as usize].load(Ordering::Relaxed)
    }

    /// Every recorded arrival (see [`SimulateArgs::record_arrivals`]).
    pub fn arrivals(&self) -> Arrivals {
        self.shared.arrivals()
    }

    /// Changes meter `id`'s valid relay password from now on, so tests can
    /// model a user fixing wrong credentials. Ignored for unknown ids.
    pub fn set_password(&self, id: CloudId, pw: &str) {
        if let Some(m) = self.shared.meter(id) {
            m.set_password(pw);
        }
    }

    /// Stops accepting connections, lets in-flight requests finish (up to a
    /// few seconds), and returns once the server is down.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(STOP_GRACE, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
