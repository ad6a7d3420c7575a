//! A real S3-compatible server for the integration tests, and helpers to
//! read what landed in it.
//!
//! The server comes from, in order:
//! 1. `TEST_S3_ENDPOINT` (e.g. a CI service, any S3-compatible store with
//!    `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` of its own, default
//!    `test`/`test`): shared by all tests, so each uses its own bucket; it
//!    cannot be stopped, see [`S3Server::can_restart`];
//! 2. `moto_server` on `PATH` (`pip install 'moto[server]'`, which
//!    `.ci/run` does): a private in-memory server per test on a free
//!    loopback port. moto enforces `If-None-Match`/`If-Match` on PutObject,
//!    which the race tests rely on; it does not verify Content-MD5;
//! 3. neither: [`S3Server::start`] fails the test (see [`super::missing`]), else prints why
//!    and returns `None` so the test can return early.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use super::free_port;

/// How long a spawned `moto_server` may take to answer HTTP.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// An S3 endpoint for one test.
pub struct S3Server {
    endpoint: String,
    access_key: String,
    secret_key: String,
    moto: Option<Moto>,
}

struct Moto {
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// An S3 server to test against, or `None` (after printing why) when
    /// none is available outside CI. See the module documentation.
    pub fn start() -> Option<S3Server> {
        if let Ok(endpoint) = std::env::var("TEST_S3_ENDPOINT")
            && !endpoint.trim().is_empty()
        {
            return Some(S3Server {
                endpoint,
                access_key: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()),
                secret_key: std::env::var("AWS_SECRET_ACCESS_KEY")
                    .unwrap_or_else(|_| "test".into()),
                moto: None,
            });
        }
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut moto = Moto {
                port: free_port(),
                child: None,
            };
            match moto.spawn() {
                Ok(()) => {
                    return Some(S3Server {
                        endpoint: format!("http://127.0.0.1:{}", moto.port),
                        access_key: "test".into(),
                        secret_key: "test".into(),
                        moto: Some(moto),
                    });
                }
                Err(SpawnError::NotInstalled) => return unavailable(),
                Err(SpawnError::Failed(why)) => last_error = why,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    /// The endpoint URL (`http://127.0.0.1:<port>` when spawned here).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The access key id to sign with.
    pub fn access_key(&self) -> String {
        self.access_key.clone()
    }

    /// The secret key to sign with.
    pub fn secret_key(&self) -> String {
        self.secret_key.clone()
    }

    /// Whether [`stop`](Self::stop) and [`start_again`](Self::start_again)
    /// work (the server was spawned here). Outage tests return early if not.
    pub fn can_restart(&self) -> bool {
        self.moto.is_some()
    }

    /// Kills the server; the port stops answering. moto keeps its data in
    /// memory, so buckets and objects are gone after [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        let moto = self.moto_mut("stop");
        if let Some(mut child) = moto.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty) and waits for it.
    pub fn start_again(&mut self) {
        let moto = self.moto_mut("start_again");
        if moto.child.is_some() {
            return;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match moto.spawn() {
                Ok(()) => return,
                Err(SpawnError::Failed(why)) if Instant::now() > deadline => {
                    panic!("moto_server did not restart on port {}: {why}", moto.port)
                }
                Err(SpawnError::Failed(_)) => std::thread::sleep(Duration::from_millis(100)),
                Err(SpawnError::NotInstalled) => panic!("moto_server vanished from PATH"),
            }
        }
    }

    fn moto_mut(&mut self, what: &str) -> &mut Moto {
        match self.moto.as_mut() {
            Some(m) => m,
            None => panic!(
                "cannot {what} the external S3 from TEST_S3_ENDPOINT; check S3Server::can_restart() first"
            ),
        }
    }

    /// `bucket` on this server, for building archives (directly or through
    /// a proxy, see [`super::rotator::Endpoint::via`]).
    pub fn at(&self, bucket: &str) -> super::rotator::Endpoint {
        super::rotator::Endpoint {
            url: self.endpoint(),
            bucket: bucket.to_string(),
            region: "us-east-1".into(),
            access_key: self.access_key(),
            secret_key: self.secret_key(),
        }
    }

    /// A client for checking what the code under test wrote.
    pub fn client(&self) -> Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
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

    /// Creates a bucket no other test uses and returns its name.
    pub async fn create_bucket(&self) -> String {
        let name = format!("t-{:016x}", rand::random::<u64>());
        self.create_named_bucket(&name).await;
        name
    }

    /// Creates `name` (again, after a restart of moto).
    pub async fn create_named_bucket(&self, name: &str) {
        if let Err(e) = self.client().create_bucket().bucket(name).send().await {
            panic!(
                "cannot create bucket {name} at {}: {}",
                self.endpoint,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
    }

    /// Every key in `bucket`, sorted.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| {
                panic!(
                    "list {bucket}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        keys.sort();
        keys
    }

    /// An object's bytes, or `None` when it does not exist.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self
            .client()
            .get_object()
            .bucket(bucket)
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
                "get {bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        }
    }

    /// Stores an object unconditionally (to set up "already archived").
    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        if let Err(e) = self
            .client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
        {
            panic!(
                "put {bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = self.moto.as_mut().and_then(|m| m.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

enum SpawnError {
    NotInstalled,
    Failed(String),
}

impl Moto {
    fn spawn(&mut self) -> Result<(), SpawnError> {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SpawnError::NotInstalled),
            Err(e) => return Err(SpawnError::Failed(format!("cannot run moto_server: {e}"))),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SpawnError::Failed(format!(
                    "moto_server exited with {status} on port {}",
                    self.port
                )));
            }
            if answers_http(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Failed(format!(
                    "no HTTP answer on port {} within {START_TIMEOUT:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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

fn unavailable() -> Option<S3Server> {
    let msg = "no S3 server for integration tests: install moto (`pip install 'moto[server]'`, \
               which provides moto_server) or set TEST_S3_ENDPOINT=http://host:port";
    super::missing(msg);
    None
}
