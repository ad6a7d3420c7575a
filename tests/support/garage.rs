//! A real Garage (a production S3-compatible store) for the tests that need
//! a store which ignores conditional writes: Garage 2.x verifies
//! Content-MD5 but silently ignores `If-Match`/`If-None-Match` on
//! PutObject, unlike moto and AWS.
//!
//! [`GarageServer::start`] runs `garage` from `PATH` (`cargo install garage
//! --locked`, which `.ci/run` does) as a private single-node cluster per
//! test: a config file in a temporary directory, free loopback ports, then
//! `layout assign`, `layout apply`, `bucket create`, `key create` and
//! `bucket allow`. Without `garage` it fails the test (see [`super::missing`]), else prints
//! why and returns `None` so the test can return early.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use super::free_port;

/// How long the daemon may take to answer its CLI and to serve S3.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The region Garage is configured with; requests must be signed for it.
pub const REGION: &str = "garage";

/// A single-node Garage with one bucket and one key allowed on it; the
/// daemon is killed and its directory removed when this value drops.
pub struct GarageServer {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    config: PathBuf,
    child: Child,
    /// Holds the metadata, data, config and log; removed on drop.
    dir: tempfile::TempDir,
}

impl GarageServer {
    /// A fresh Garage with bucket [`bucket`](Self::bucket), or `None` (after
    /// printing why) when `garage` is not installed outside CI.
    pub fn start() -> Option<GarageServer> {
        match Command::new("garage").arg("--version").output() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return unavailable(),
            Err(e) => panic!("cannot run garage: {e}"),
        }
        // A free port can be taken before Garage binds it; try a few times.
        let mut last_error = String::new();
        for _ in 0..3 {
            match GarageServer::try_start() {
                Ok(g) => return Some(g),
                Err(why) => last_error = why,
            }
        }
        panic!("garage did not start: {last_error}");
    }

    fn try_start() -> Result<GarageServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let meta = dir.path().join("meta");
        let data = dir.path().join("data");
        let text = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
api_bind_addr = "127.0.0.1:{s3}"
s3_region = "{REGION}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            meta = meta.display(),
            data = data.display(),
        );
        std::fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
        let log_path = dir.path().join("garage.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("create log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new("garage")
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run garage server: {e}"))?;
        let mut garage = GarageServer {
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: format!("t-{:016x}", rand::random::<u64>()),
            access_key: String::new(),
            secret_key: String::new(),
            config,
            child,
            dir,
        };
        garage.set_up(s3)?;
        Ok(garage)
    }

    /// Layout, bucket, key and permission, once the daemon answers.
    fn set_up(&mut self, s3_port: u16) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        // `node id -q` prints `<full id>@<rpc address>`.
        let node = loop {
            self.check_alive()?;
            match self.cli(&["node", "id", "-q"]) {
                Ok(out) => match out.trim().split_once('@') {
                    Some((id, _)) if !id.is_empty() => break id.to_string(),
                    _ => return Err(format!("unexpected `garage node id -q` output: {out:?}")),
                },
                Err(why) if Instant::now() > deadline => {
                    return Err(format!(
                        "no answer from the daemon: {why}; {}",
                        self.log_tail()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        // The new layout takes a moment to be used for bucket operations.
        let bucket = self.bucket.clone();
        loop {
            match self.cli(&["bucket", "create", &bucket]) {
                Ok(_) => break,
                Err(why) if Instant::now() > deadline => return Err(why),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let out = self.cli(&["key", "create", "rainforest-test"])?;
        self.access_key = field(&out, "Key ID:")
            .ok_or_else(|| format!("no `Key ID:` in `garage key create` output: {out}"))?;
        self.secret_key = field(&out, "Secret key:")
            .ok_or_else(|| format!("no `Secret key:` in `garage key create` output: {out}"))?;
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &bucket,
            "--key",
            "rainforest-test",
        ])?;
        while !answers_http(s3_port) {
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "S3 API on port {s3_port} does not answer; {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs `garage -c <config> <args>`; its stdout, or why it failed.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run garage {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {} exited with {}: {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "garage server exited with {status}; {}",
                self.log_tail()
            )),
            _ => Ok(()),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(8).collect();
        format!(
            "log tail: {}",
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }

    /// The S3 endpoint (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The bucket on this server, for building archives (directly or
    /// through a proxy, see [`super::rotator::Endpoint::via`]).
    pub fn at(&self) -> super::rotator::Endpoint {
        super::rotator::Endpoint {
            url: self.endpoint(),
            bucket: self.bucket(),
            region: self.region(),
            access_key: self.access_key(),
            secret_key: self.secret_key(),
        }
    }

    /// The region to sign for.
    pub fn region(&self) -> String {
        REGION.to_string()
    }

    /// The bucket created for this test.
    pub fn bucket(&self) -> String {
        self.bucket.clone()
    }

    /// The access key id allowed on [`bucket`](Self::bucket).
    pub fn access_key(&self) -> String {
        self.access_key.clone()
    }

    /// Its secret.
    pub fn secret_key(&self) -> String {
        self.secret_key.clone()
    }

    /// The daemon's directory (config, metadata, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for checking what the code under test wrote.
    pub fn client(&self) -> Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                self.access_key.clone(),
                self.secret_key.clone(),
                None,
                None,
                "test",
            ))
            .build();
        Client::from_conf(config)
    }

    /// An object's bytes, or `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Some(
                out.body
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("read {key}: {e}"))
                    .into_bytes()
                    .to_vec(),
            ),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
            Err(e) => panic!(
                "get {}/{key}: {}",
                self.bucket,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        }
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `label` on the line that starts with it.
fn field(out: &str, label: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn answers_http(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/")
}

fn unavailable() -> Option<GarageServer> {
    let msg = "no Garage for the tests against a store that ignores conditional writes: \
               install it with `cargo install garage --locked` (puts `garage` on PATH)";
    super::missing(msg);
    None
}
