//! The local Docker engine for container tests (`tests/containers.rs`):
//! whether one answers, whether an image is built, and a way to reach an
//! engine older than the API testcontainers speaks.
//!
//! testcontainers (through bollard) calls every endpoint at one fixed API
//! version (1.53 for bollard 0.21) and never negotiates; Debian 12's
//! docker.io 20.10 answers at most 1.41 and refuses anything newer with
//! "client version 1.53 is too new". [`run_with_engine`] therefore puts a
//! small proxy on a private Unix socket that lowers the version in each
//! request line to the engine's, and runs the test body in a child process
//! of the same test binary with `DOCKER_HOST` pointing at it (the test
//! cannot change its own environment: `unsafe_code` is forbidden). The
//! requests' bodies are not touched; the fields an old engine does not know
//! are ones these tests do not use.
//!
//! Without an engine the test is skipped with a message ([`super::skipped`]),
//! except under `CI`, where it fails: CI starts dockerd before the suite.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Set in the child that runs the test body; its `DOCKER_HOST` is the proxy.
const IN_CHILD: &str = "RAINFOREST_TEST_DOCKER_CHILD";

/// Where the engine listens when `DOCKER_HOST` does not say otherwise.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// What the caller of [`run_with_engine`] does next.
pub enum Engine {
    /// Run the test body here: testcontainers reaches a suitable engine.
    RunHere,
    /// Nothing: the body ran in a child (and passed), or the test was
    /// skipped because no engine answers outside CI.
    Done,
}

/// Decides where `test` (its full name, as libtest filters it) runs its
/// body; see the module documentation. Panics when the child fails, or
/// when no engine or no `images` are available under `CI`.
pub fn run_with_engine(test: &str, images: &[&str]) -> Engine {
    if std::env::var_os(IN_CHILD).is_some() {
        return Engine::RunHere;
    }
    let socket = match engine_socket() {
        Some(socket) => socket,
        // A TCP or TLS engine: testcontainers talks to it directly.
        None => return Engine::RunHere,
    };
    let version = match get(&socket, "/version") {
        Some((200, body)) => api_minor(&body),
        _ => None,
    };
    let Some(engine_minor) = version else {
        unavailable(&format!(
            "no Docker engine answers on {}: apt-get install docker.io and start dockerd \
             (as root: dockerd >/tmp/dockerd.log 2>&1 &)",
            socket.display()
        ));
        return Engine::Done;
    };
    for image in images {
        if !matches!(
            get(&socket, &format!("/images/{image}/json")),
            Some((200, _))
        ) {
            unavailable(&format!(
                "image {image} is not built on this engine: run scripts/compose-smoke \
                 (it builds rainforest:latest and the base images) first"
            ));
            return Engine::Done;
        }
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let proxy = dir.path().join("docker.sock");
    start_proxy(&proxy, socket, engine_minor);
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("the test binary's path: {e}"));
    let status = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("DOCKER_HOST", format!("unix://{}", proxy.display()))
        .env(IN_CHILD, "1")
        .status()
        .unwrap_or_else(|e| panic!("re-running {test} against the engine proxy: {e}"));
    assert!(
        status.success(),
        "{test} failed against the Docker engine ({status})"
    );
    Engine::Done
}

/// No engine or image: a failure under `CI`, a recorded skip elsewhere.
fn unavailable(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0") {
        panic!("{why} (CI is set, so this test must run)");
    }
    super::skipped(why);
}

/// The engine's Unix socket, from `DOCKER_HOST` or the default; `None` when
/// `DOCKER_HOST` names something else (tcp://, https://).
fn engine_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
        _ => Some(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// One unversioned GET on the engine's socket: status and body, or `None`
/// when nothing answers.
fn get(socket: &Path, path: &str) -> Option<(u16, String)> {
    let mut conn = UnixStream::connect(socket).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The minor part of `ApiVersion` ("1.41" -> 41) in a `/version` answer.
fn api_minor(body: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("ApiVersion")?
        .as_str()?
        .strip_prefix("1.")?
        .parse()
        .ok()
}

/// Listens on `at` and forwards each connection to `engine`, lowering the
/// API version of each request line to `engine_minor`. The threads live
/// as long as the test process.
fn start_proxy(at: &Path, engine: PathBuf, engine_minor: u32) {
    let listener = UnixListener::bind(at)
        .unwrap_or_else(|e| panic!("engine proxy socket {}: {e}", at.display()));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = UnixStream::connect(&engine) else {
                continue;
            };
            let (Ok(client_r), Ok(upstream_w)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || forward_requests(client_r, upstream_w, engine_minor));
            std::thread::spawn(move || {
                let (mut from, mut to) = (upstream, client);
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// Copies the client's bytes to the engine with [`lower_versions`] applied;
/// a possible start of a version at the end of a read is held back until
/// the next read decides it.
fn forward_requests(mut from: UnixStream, mut to: UnixStream, engine_minor: u32) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        lower_versions(&mut pending, engine_minor);
        let keep = partial_version_suffix(&pending);
        let ready = pending.len() - keep;
        if to.write_all(&pending[..ready]).is_err() {
            return;
        }
        pending.drain(..ready);
    }
    let _ = to.write_all(&pending);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The version prefix of a request path: `GET /v1.53/containers/json`.
const MARK: &[u8] = b" /v1.";

/// Rewrites every ` /v1.NN/` with NN above `engine_minor` to the engine's
/// version, in place (both have two digits, so lengths do not change).
pub fn lower_versions(bytes: &mut [u8], engine_minor: u32) {
    let with = format!("{engine_minor:02}");
    let mut i = 0;
    while i + MARK.len() + 3 <= bytes.len() {
        if &bytes[i..i + MARK.len()] == MARK {
            let d = i + MARK.len();
            let digits = &bytes[d..d + 2];
            if digits.iter().all(u8::is_ascii_digit)
                && bytes[d + 2] == b'/'
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .is_some_and(|minor| minor > engine_minor)
                && with.len() == 2
            {
                bytes[d..d + 2].copy_from_slice(with.as_bytes());
            }
            i = d;
        } else {
            i += 1;
        }
    }
}

/// How many bytes at the end of `bytes` could begin a ` /v1.NN/` that the
/// next read completes.
pub fn partial_version_suffix(bytes: &[u8]) -> usize {
    let whole = MARK.len() + 3;
    (1..whole.min(bytes.len() + 1))
        .rev()
        .find(|&k| {
            let tail = &bytes[bytes.len() - k..];
            tail.iter().enumerate().all(|(j, &b)| match j {
                j if j < MARK.len() => b == MARK[j],
                j if j < MARK.len() + 2 => b.is_ascii_digit(),
                _ => false,
            })
        })
        .unwrap_or(0)
}
