//! Shared harness for the integration tests: a real Redis to test against,
//! a real S3-compatible server ([`s3`]), unique key namespaces, free
//! loopback ports, captured log output.
//!
//! Use from a test file with `mod support;`. Each test binary uses only part
//! of it, hence the `dead_code` allowance.
//!
//! Redis comes from, in order:
//! 1. `TEST_REDIS_URL` (e.g. a CI service container): shared by all tests,
//!    so each test must use its own [`unique_namespace`]; it cannot be
//!    stopped, see [`RedisServer::can_restart`];
//! 2. `redis-server` on `PATH`: a private server per test on a free port,
//!    with its data in a temporary directory, stoppable and restartable;
//! 3. neither: the test fails, saying how to install it ([`missing`]).
//!
//! A missing service fails the run, in CI and on a laptop alike: a suite
//! that shows green having done nothing is worse than none. A developer
//! who deliberately runs without a service sets
//! `RAINFOREST_TEST_ALLOW_SKIP=1`; each skipped test then says why on its
//! output and is listed in a summary that `scripts/test` prints at the end
//! (see [`skipped`]).

#![allow(dead_code)]

pub mod docker;
pub mod fleet;
pub mod garage;
pub mod hostile;
pub mod meters;
pub mod pinger;
pub mod process;
pub mod readings;
pub mod rotator;
pub mod s3;
pub mod s3_proxy;
pub mod server;
pub mod spool;
pub mod tls;

use std::io::{self, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a spawned `redis-server` may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A Redis for one test: an external one from `TEST_REDIS_URL`, or a private
/// `redis-server` process that is killed when this value drops.
pub struct RedisServer {
    url: String,
    managed: Option<Managed>,
}

/// A `redis-server` this harness spawned.
struct Managed {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    secured: Option<Secured>,
}

/// How a [`RedisServer::start_secured`] server is locked: TLS only, and
/// one ACL user (the `default` user is switched off).
struct Secured {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    user: String,
    password: String,
}

impl RedisServer {
    /// A Redis to test against, or `None` (after printing why) when none is
    /// available outside CI. See the module documentation for the order.
    pub fn start() -> Option<RedisServer> {
        if let Ok(url) = std::env::var("TEST_REDIS_URL")
            && !url.trim().is_empty()
        {
            return Some(RedisServer { url, managed: None });
        }
        // A free port can be taken by someone else before redis-server binds
        // it; try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut managed = Managed {
                port: free_port(),
                dir: tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}")),
                child: None,
                secured: None,
            };
            match managed.spawn() {
                Ok(()) => {
                    return Some(RedisServer {
                        url: format!("redis://127.0.0.1:{}/", managed.port),
                        managed: Some(managed),
                    });
                }
                Err(SpawnError::NotInstalled) => return unavailable(),
                Err(SpawnError::Failed(why)) => last_error = why,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// A private `redis-server` that speaks only TLS, with the server
    /// certificate of `ca`, and admits only the ACL user `user` with
    /// `password`; its [`url`](Self::url) is
    /// `rediss://user:password@127.0.0.1:<port>/0?ca_file=<ca.pem>`.
    /// Never the shared `TEST_REDIS_URL`: that one cannot be reconfigured.
    /// `None` as for [`start`](Self::start) when `redis-server` is missing.
    pub fn start_secured(ca: &tls::TestCa, user: &str, password: &str) -> Option<RedisServer> {
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut managed = Managed {
                port: free_port(),
                dir: tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}")),
                child: None,
                secured: Some(Secured {
                    cert: ca.server_cert(),
                    key: ca.server_key(),
                    ca: ca.ca_pem(),
                    user: user.into(),
                    password: password.into(),
                }),
            };
            match managed.spawn() {
                Ok(()) => {
                    return Some(RedisServer {
                        url: format!(
                            "rediss://{user}:{password}@127.0.0.1:{}/0?ca_file={}",
                            managed.port,
                            ca.ca_pem().display()
                        ),
                        managed: Some(managed),
                    });
                }
                Err(SpawnError::NotInstalled) => return unavailable(),
                Err(SpawnError::Failed(why)) => last_error = why,
            }
        }
        panic!("secured redis-server did not start: {last_error}");
    }

    /// The URL to connect to (`redis://127.0.0.1:<port>/` when spawned here).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A fresh key namespace for one registry (see [`unique_namespace`]).
    pub fn namespace(&self) -> String {
        unique_namespace()
    }

    /// Whether [`stop`](Self::stop) and [`start_again`](Self::start_again)
    /// work, i.e. the server was spawned here rather than given by
    /// `TEST_REDIS_URL`. Outage tests return early when this is false.
    pub fn can_restart(&self) -> bool {
        self.managed.is_some()
    }

    /// Shuts the server down cleanly (`SHUTDOWN SAVE`), keeping its data for
    /// [`start_again`](Self::start_again); the port stops answering.
    ///
    /// Panics for an external server: check [`can_restart`](Self::can_restart).
    pub fn stop(&mut self) {
        let url = self.url.clone();
        let managed = self.managed_mut("stop");
        let Some(mut child) = managed.child.take() else {
            return;
        };
        if let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2))
        {
            // The server closes the connection instead of answering.
            let _ = redis::cmd("SHUTDOWN").arg("SAVE").exec(&mut conn);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }

    /// Kills the server without saving, like a crash: its data is lost.
    ///
    /// Panics for an external server: check [`can_restart`](Self::can_restart).
    pub fn crash(&mut self) {
        let managed = self.managed_mut("crash");
        if let Some(mut child) = managed.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(managed.dir.path().join("dump.rdb"));
    }

    /// Starts the server again on the same port with the data saved by
    /// [`stop`](Self::stop), and waits until it answers PING.
    ///
    /// Panics for an external server: check [`can_restart`](Self::can_restart).
    pub fn start_again(&mut self) {
        let managed = self.managed_mut("start_again");
        if managed.child.is_some() {
            return;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The old socket may linger for a moment after the process exits.
            match managed.spawn() {
                Ok(()) => return,
                Err(SpawnError::Failed(why)) if Instant::now() > deadline => {
                    panic!(
                        "redis-server did not restart on port {}: {why}",
                        managed.port
                    )
                }
                Err(SpawnError::Failed(_)) => std::thread::sleep(Duration::from_millis(100)),
                Err(SpawnError::NotInstalled) => panic!("redis-server vanished from PATH"),
            }
        }
    }

    /// How many times this Redis has run `command` (lower case, from
    /// `INFO commandstats`), so a test can see a client trying (a lock
    /// waiter's `SET NX` attempts). It counts every client, so it proves
    /// something only on a server of the test's own ([`Self::can_restart`]).
    pub fn command_calls(&self, command: &str) -> u64 {
        let client = redis::Client::open(self.url.as_str())
            .unwrap_or_else(|e| panic!("redis url {}: {e}", self.url));
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url));
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("INFO commandstats: {e}"));
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Deletes every key under `namespace` (for an external Redis, which
    /// outlives the test; a spawned one is thrown away anyway).
    pub fn delete_namespace(&self, namespace: &str) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{namespace}:*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(&keys).exec(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    fn managed_mut(&mut self, what: &str) -> &mut Managed {
        match self.managed.as_mut() {
            Some(m) => m,
            None => panic!(
                "cannot {what} the external Redis from TEST_REDIS_URL; check RedisServer::can_restart() first"
            ),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.managed.as_mut().and_then(|m| m.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

enum SpawnError {
    NotInstalled,
    Failed(String),
}

impl Managed {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Spawns `redis-server` on `self.port` and waits for PING.
    fn spawn(&mut self) -> Result<(), SpawnError> {
        let mut command = Command::new("redis-server");
        match &self.secured {
            None => command.arg("--port").arg(self.port.to_string()),
            Some(s) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&s.cert)
                .arg("--tls-key-file")
                .arg(&s.key)
                .arg("--tls-ca-cert-file")
                .arg(&s.ca)
                .args(["--tls-auth-clients", "no"])
                .args(["--user", "default", "off"])
                .args(["--user", &s.user, "on"])
                .arg(format!(">{}", s.password))
                .args(["~*", "&*", "+@all"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SpawnError::NotInstalled),
            Err(e) => return Err(SpawnError::Failed(format!("cannot run redis-server: {e}"))),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(SpawnError::Failed(format!(
                    "redis-server exited with {status} on port {}: {tail}",
                    self.port
                )));
            }
            if self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Failed(format!(
                    "no PING answer on port {} within {START_TIMEOUT:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Managed {
    fn ping(&self) -> bool {
        let port = self.port;
        let client = match &self.secured {
            None => redis::Client::open(format!("redis://127.0.0.1:{port}/")),
            Some(s) => {
                let Ok(root) = std::fs::read(&s.ca) else {
                    return false;
                };
                redis::Client::build_with_tls(
                    format!("rediss://{}:{}@127.0.0.1:{port}/", s.user, s.password),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
            }
        };
        client.is_ok_and(|c| ping_client(&c))
    }
}

fn ping_client(client: &redis::Client) -> bool {
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

fn unavailable() -> Option<RedisServer> {
    missing(
        "no Redis for integration tests: install redis-server (e.g. `apt-get install redis-server`) \
         or set TEST_REDIS_URL=redis://host:port/",
    );
    None
}

/// The variable that lets tests skip, instead of fail, when a service they
/// need is missing.
pub const ALLOW_SKIP: &str = "RAINFOREST_TEST_ALLOW_SKIP";

/// A service the test needs is missing: fails the test with `msg` (how to
/// install it), unless [`ALLOW_SKIP`] is set, in which case the skip is
/// recorded ([`skipped`]) and the caller returns early.
pub fn missing(msg: &str) {
    if std::env::var_os(ALLOW_SKIP).is_none_or(|v| v.is_empty() || v == "0") {
        panic!("{msg}\n(to skip such tests deliberately, set {ALLOW_SKIP}=1)");
    }
    skipped(msg);
}

/// Records that the current test does not run (part of) its check, and
/// why: printed now, and appended to `target/test-skips.txt`, which
/// `scripts/test` lists after the run. Every early return goes through
/// here, so none is silent.
pub fn skipped(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    eprintln!("skipping: {why}");
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let log = tmp.parent().unwrap_or(tmp).join("test-skips.txt");
    let line = format!("{} {test}: {why}\n", env!("CARGO_CRATE_NAME"));
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = appended {
        eprintln!("cannot record the skip in {}: {e}", log.display());
    }
}

/// The credentials key of every test: the binary gets it through
/// [`process::rainforest`], in-process servers and registries through
/// [`test_vault`], so what one seals the other opens. Tests of running
/// without a key remove it explicitly.
pub const TEST_CREDENTIALS_KEY: &str =
    "7465737420637265640000000000000000000000000000000000000000000001";

/// The vault holding [`TEST_CREDENTIALS_KEY`].
pub fn test_vault() -> rainforest::vault::Vault {
    let key = rainforest::vault::CredentialKey::from_hex(
        &rainforest::secret::Secret::new(TEST_CREDENTIALS_KEY),
        "TEST_CREDENTIALS_KEY",
    )
    .expect("test key is 64 hex characters");
    rainforest::vault::Vault::new(key, vec![])
}

/// The Redis registry at `url` under `ns`, sealing with [`test_vault`] as
/// the binary started by the tests does.
pub async fn sealed_registry(url: &str, ns: &str) -> rainforest::registry::RedisRegistry {
    rainforest::registry::RedisRegistry::connect(url, ns)
        .await
        .expect("connect registry")
        .with_vault(test_vault())
}

/// A key namespace no other test (or test run) uses: `t-` and 16 random hex
/// digits.
pub fn unique_namespace() -> String {
    format!("t-{:016x}", rand::random::<u64>())
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the
/// port, release it).
pub fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot find a free loopback port: {e}"),
    }
}

/// Log output captured from `tracing` while the guard returned by
/// [`capture_logs`] lives (on the current thread, so use it from
/// `#[tokio::test]`'s default single-threaded runtime).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything logged so far, as text.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures `tracing` output (all levels, no colours) on this thread until
/// the returned guard drops.
pub fn capture_logs() -> (LogCapture, tracing::subscriber::DefaultGuard) {
    let capture = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (capture, guard)
}
