//! The one server harness: the real HTTP server, in this process or as the
//! `rainforest server` binary, over a real registry and the simulator.
//!
//! [`TestServer`] runs `server::run` on a loopback port of its own, over a
//! Redis registry (a private `redis-server`, see [`super::RedisServer`]) or
//! a users file, with a bootstrap admin token ([`ADMIN`]) and the simulator
//! as relay. [`ServerProcess`] runs the binary for tests of the command
//! line. Answers are read whole into an [`Answer`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rainforest::config::Config;
use rainforest::pinger::{eagle_from_config, spool_from_config};
use rainforest::poll::Poller;
use rainforest::registry::{FileRegistry, Registry};
use rainforest::secret::Secret;
use rainforest::server::{self, AppState, AuthMode};
use rainforest::simulator::{SimulateArgs, Simulator};
use rainforest::stats::Hub;
use rainforest::tokens::{Scope, TokenStore};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::RedisServer;
use super::process::{Proc, rainforest, wait_200};

/// The bootstrap admin token of every test server.
pub const ADMIN: &str = "test-bootstrap-admin-token-0123456789";

/// Where a [`TestServer`] keeps its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A private `redis-server` (or `TEST_REDIS_URL`) under a unique
    /// namespace, with the token store beside it.
    Redis,
    /// `users.jl` in the server's temporary directory; no token store.
    UsersFile,
}

/// The HTTP server in this process; stopped when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client for it.
    pub http: reqwest::Client,
    /// Its registry (shared with the server).
    pub registry: Registry,
    /// Its token store (Redis back end only).
    pub tokens: Option<TokenStore>,
    /// Its spool directory.
    pub data: PathBuf,
    /// The simulated relay it reads meters from.
    pub sim: Simulator,
    /// The Redis namespace (Redis back end only; empty otherwise).
    pub ns: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: tempfile::TempDir,
    // Last: dropped (killed) after everything that talks to it.
    redis: Option<RedisServer>,
}

impl TestServer {
    /// A server over Redis with a 4-meter simulator; `None` when no Redis
    /// can be had outside CI (see [`RedisServer::start`]).
    pub async fn redis() -> Option<TestServer> {
        TestServer::start(Backend::Redis, SimulateArgs::default(), |_| {}).await
    }

    /// A server over `backend` whose simulator and configuration the test
    /// adjusts (the simulator always listens on loopback with 4 meters
    /// unless `sim_args` says more).
    pub async fn start(
        backend: Backend,
        sim_args: SimulateArgs,
        adjust: impl FnOnce(&mut Config),
    ) -> Option<TestServer> {
        TestServer::start_with_hub(backend, sim_args, adjust, Hub::new()).await
    }

    /// [`TestServer::start`] with a statistics hub the test fills (for
    /// example with snapshots "published" by other processes).
    pub async fn start_with_hub(
        backend: Backend,
        sim_args: SimulateArgs,
        adjust: impl FnOnce(&mut Config),
        hub: Hub,
    ) -> Option<TestServer> {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = Simulator::start(SimulateArgs {
            listen: ([127, 0, 0, 1], 0).into(),
            meters: 4,
            ..sim_args
        })
        .await
        .expect("simulator");
        let mut config = base_config(&sim, dir.path());
        config.api_token = Some(Secret::new(ADMIN));
        let (redis, ns) = match backend {
            Backend::Redis => {
                let redis = RedisServer::start()?;
                let ns = super::unique_namespace();
                set_redis(&mut config, &redis.url(), &ns);
                (Some(redis), ns)
            }
            Backend::UsersFile => {
                config.users_file = Some(dir.path().join("users.jl"));
                (None, String::new())
            }
        };
        adjust(&mut config);
        let (registry, tokens) = match &redis {
            Some(r) => (
                Registry::Redis(super::sealed_registry(&r.url(), &ns).await),
                Some(
                    TokenStore::connect(&r.url(), &ns)
                        .await
                        .expect("connect token store"),
                ),
            ),
            None => (
                Registry::File(FileRegistry::new(dir.path().join("users.jl"))),
                None,
            ),
        };
        let (addr, shutdown, task) = serve(&config, registry.clone(), hub).await;
        Some(TestServer {
            addr,
            http: reqwest::Client::new(),
            registry,
            tokens,
            data: config.data_dir.clone(),
            sim,
            ns,
            shutdown,
            task: Some(task),
            dir,
            redis,
        })
    }

    /// The server's temporary directory (users file, spool).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Redis behind it; panics for the users-file back end.
    pub fn redis_server(&self) -> &RedisServer {
        self.redis.as_ref().expect("a Redis back end")
    }

    /// The Redis behind it, to stop and start; panics for the users-file
    /// back end.
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a Redis back end")
    }

    /// The token store; panics for the users-file back end.
    pub fn token_store(&self) -> &TokenStore {
        self.tokens
            .as_ref()
            .expect("a Redis back end has a token store")
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`, with a bearer token when given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(self.http.get(self.url(path)), token).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.send(self.http.post(self.url(path)).json(body), token)
            .await
    }

    /// `POST path` with no body (e.g. `POST /api/event/{cloud_id}`).
    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(self.http.post(self.url(path)), token).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(self.http.delete(self.url(path)), token).await
    }

    async fn send(&self, mut req: reqwest::RequestBuilder, token: Option<&str>) -> Answer {
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Answer::read(req.send().await.expect("send request")).await
    }

    /// A 200 JSON answer to `GET path` with the admin token.
    pub async fn json(&self, path: &str) -> Value {
        let a = self.get(path, Some(ADMIN)).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        a.json()
    }

    /// Asserts a problem+json answer with `status` to `GET path`.
    pub async fn problem(&self, path: &str, token: Option<&str>, status: StatusCode) -> Value {
        self.get(path, token).await.problem(status.as_u16())
    }

    /// A new token from the store (Redis back end).
    pub async fn token(&self, name: &str, scope: Scope, ttl: Option<Duration>) -> String {
        self.token_store()
            .create(name, scope, ttl)
            .await
            .expect("create token")
            .token
            .expose()
            .to_string()
    }

    /// Stops the server and checks it stopped within its grace period.
    pub async fn stop(mut self) {
        if let Some(redis) = &self.redis
            && !redis.can_restart()
        {
            // A shared TEST_REDIS_URL outlives the test.
            redis.delete_namespace(&self.ns);
        }
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops within the grace period")
                .expect("server task")
                .expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves the real app for `config` over `registry` (reporting `hub`) on a
/// free loopback port, with authentication required, until the returned
/// token is cancelled.
pub async fn serve(
    config: &Config,
    registry: Registry,
    hub: Hub,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let poller = Poller::new(
        eagle_from_config(config, false).expect("eagle"),
        spool_from_config(config).expect("spool"),
    );
    let state = AppState::from_config(config, registry, poller, AuthMode::Required)
        .await
        .expect("server state")
        .with_hub(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::run(listener, state, shutdown.clone()));
    (addr, shutdown, task)
}

/// The configuration every test server starts from: the simulator as
/// relay, a 2 s request timeout, the spool in `dir/logs`.
pub fn base_config(sim: &Simulator, dir: &Path) -> Config {
    let mut config = Config::defaults().expect("defaults");
    config.relay_url = sim.relay_url();
    config.request_timeout = Duration::from_secs(2);
    config.data_dir = dir.join("logs");
    config
}

/// Points `config` at the Redis at `url` under namespace `ns`.
pub fn set_redis(config: &mut Config, url: &str, ns: &str) {
    config.redis_url = Some(url::Url::parse(url).expect("redis url"));
    config.redis_namespace = ns.to_string();
    config.credentials_key = Some(Secret::new(super::TEST_CREDENTIALS_KEY));
}

/// A response, read whole.
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its `content-type`, or "".
    pub content_type: String,
    /// All its headers.
    pub headers: reqwest::header::HeaderMap,
    /// Its body as text.
    pub body: String,
}

impl Answer {
    /// Reads `r` to the end.
    pub async fn read(r: reqwest::Response) -> Answer {
        let status = r.status();
        let headers = r.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.expect("body");
        Answer {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// The body as JSON; panics showing the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts a problem+json error with `status`; returns the document.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "content type {:?} for {}",
            self.content_type,
            self.body
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{p}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        p
    }
}

/// A `rainforest server` process over Redis, with [`ADMIN`] as its
/// bootstrap token; killed on drop.
pub struct ServerProcess {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    _proc: Proc,
}

impl ServerProcess {
    /// Starts the binary in `dir` (spool in `dir/logs`) and waits until
    /// `/healthz` answers.
    pub fn start(redis_url: &str, ns: &str, dir: &Path, relay: &str) -> ServerProcess {
        let port = super::free_port();
        let proc = Proc::spawn(
            rainforest()
                .current_dir(dir)
                .env("RAINFOREST_API_TOKEN", ADMIN)
                .args(["server", "--redis-url", redis_url, "--relay-url", relay])
                .args(["--set", &format!("redis_namespace={ns}")])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(dir.join("logs"))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
            "rainforest server",
        );
        let base = format!("http://127.0.0.1:{port}");
        let health = format!("{base}/healthz");
        assert!(
            wait_200(&health, Duration::from_secs(10)),
            "rainforest server did not answer {health} within 10 s"
        );
        ServerProcess { base, _proc: proc }
    }
}
