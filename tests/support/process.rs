//! The `rainforest` binary as a child process: a clean command, a child
//! that dies with the test, and a wait for an HTTP endpoint.
//!
//! Every test that runs the real binary starts it here, so none inherits
//! `RAINFOREST_*` variables from the developer's shell and none leaves a
//! process behind when an assertion fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary, with no `RAINFOREST_*` variables from the test's environment
/// but the tests' credentials key ([`super::TEST_CREDENTIALS_KEY`], so a
/// Redis registry starts and seals as in production), and no standard
/// input.
pub fn rainforest() -> Command {
    let mut cmd = clean(Command::new(env!("CARGO_BIN_EXE_rainforest")));
    cmd.env("RAINFOREST_CREDENTIALS_KEY", super::TEST_CREDENTIALS_KEY);
    cmd
}

/// `cmd` (the binary, or a script that runs it) without `RAINFOREST_*` or
/// `RUST_LOG` from the test's environment and without standard input.
pub fn clean(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("RAINFOREST_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The binary set up for an S3-compatible test server: no `AWS_*`
/// variables from the caller, the server's keys, no shared config or
/// credentials file (they point at `scratch/no-such-aws-file`), and no
/// instance metadata lookups, so a test never reaches a real AWS account.
pub fn rainforest_with_s3_keys(access_key: &str, secret_key: &str, scratch: &Path) -> Command {
    let mut cmd = rainforest();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let nowhere = scratch.join("no-such-aws-file");
    cmd.env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &nowhere)
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere);
    cmd
}

/// A child process killed when the test ends, however it ends.
pub struct Proc(Option<Child>);

impl Proc {
    /// Starts `cmd`; `what` names it in the panic if it cannot start.
    pub fn spawn(cmd: &mut Command, what: &str) -> Proc {
        Proc(Some(
            cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}")),
        ))
    }

    /// Wraps a child started elsewhere.
    pub fn from_child(child: Child) -> Proc {
        Proc(Some(child))
    }

    /// The running child (for its pipes); panics after it was reaped.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child was already reaped")
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal such as `-TERM`, `-HUP` or `-KILL`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.id());
    }

    /// Whether it has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then the exit status if it comes within `grace` (else it is
    /// killed and `None` returned).
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.0.as_ref()?;
        self.signal("-TERM");
        let mut child = self.0.take()?;
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether `GET url` (plain `http://host:port/path`) answers 200 now; std
/// only, so synchronous tests can use it.
pub fn answers_200(url: &str) -> bool {
    http_get(url, &[]).is_some_and(|(status, _)| status == 200)
}

/// `GET url` (plain `http://host:port/path`, no keep-alive) with extra
/// `headers`, std only: the status code and the body, or `None` when
/// nothing answered.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Waits until `GET url` answers 200; `false` after `timeout`.
pub fn wait_200(url: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if answers_200(url) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Waits up to 15 s for an async condition; panics naming `what` when it
/// never holds.
pub async fn wait_for(what: &str, cond: impl AsyncFnMut() -> bool) {
    wait_within(what, Duration::from_secs(15), cond).await;
}

/// Waits until `cond` holds (checked every 50 ms), failing the test after
/// `limit`.
pub async fn wait_within(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stand-in for `docker compose` in `dir`, for scripts that reach the
/// compose `server` container: `ps -q server` names a container, and
/// `exec -T server rainforest ARGS` runs this build's binary with `token` as
/// the container's API token and `http://127.0.0.1:8000` (the container's
/// own server) mapped to `server_base`. Each call is appended to
/// `dir/compose-calls`. Returns the script's path.
pub fn fake_compose(dir: &Path, server_base: &str, token: &str) -> PathBuf {
    let path = dir.join("fake-compose");
    let script = format!(
        r#"#!/usr/bin/env bash
set -euo pipefail
echo "$*" >> {calls:?}
case "$1" in
  ps) echo 0123456789ab ;;
  exec)
    [ "$2 $3 $4" = "-T server rainforest" ] || {{ echo "fake compose: unexpected exec $*" >&2; exit 2; }}
    shift 4
    args=()
    for a in "$@"; do args+=("${{a/http:\/\/127.0.0.1:8000/{server_base}}}"); done
    RAINFOREST_API_TOKEN={token:?} RAINFOREST_CREDENTIALS_KEY={key:?} exec {bin:?} "${{args[@]}}" ;;
  *) echo "fake compose: unexpected $*" >&2; exit 2 ;;
esac
"#,
        calls = dir.join("compose-calls"),
        bin = env!("CARGO_BIN_EXE_rainforest"),
        key = super::TEST_CREDENTIALS_KEY,
    );
    std::fs::write(&path, script).expect("write the fake compose script");
    let mut perms = std::fs::metadata(&path)
        .expect("fake compose")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).expect("make the fake compose executable");
    path
}
