//! The `rainforest pinger` binary as the tests run it: short intervals
//! through `--set`, a Redis or users-file registry, the simulator as relay.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rainforest::cloud_id::CloudId;

use super::process::{Proc, rainforest};
use super::spool::spool_lines;

/// A running `rainforest pinger`, killed when the test ends.
pub struct Pinger(Proc);

impl Pinger {
    /// The pinger over the users in Redis under `namespace`.
    pub fn start(
        redis_url: &str,
        namespace: &str,
        relay: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Pinger {
        let registry = [
            "--redis-url",
            redis_url,
            "--set",
            &format!("redis_namespace={namespace}"),
        ];
        Pinger::spawn(&registry, relay, data_dir, extra, None)
    }

    /// The pinger over a users file, its log written to `log`.
    pub fn over_file(
        users: &Path,
        relay: &str,
        data_dir: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Pinger {
        let file = users.display().to_string();
        Pinger::spawn(&["--users-file", &file], relay, data_dir, extra, Some(log))
    }

    /// Short intervals; `auth_backoff` stays at its default (15 min), so a
    /// recovery seen here is the credential change ending the pause.
    pub fn spawn(
        registry: &[&str],
        relay: &str,
        data_dir: &Path,
        extra: &[&str],
        log: Option<&Path>,
    ) -> Pinger {
        let mut cmd = rainforest();
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create log file")),
            None => Stdio::inherit(),
        };
        cmd.current_dir(data_dir.parent().unwrap_or(data_dir))
            .arg("pinger")
            .args(registry)
            .args(["--relay-url", relay])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--set",
                "poll_interval=300ms",
                "--set",
                "user_reload_interval=300ms",
            ])
            .args(["--set", "request_timeout=250ms", "--set", "max_backoff=1s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr);
        Pinger(Proc::spawn(&mut cmd, "rainforest pinger"))
    }

    /// SIGTERM, then the exit status (which must come within 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.0
            .terminate(Duration::from_secs(10))
            .expect("pinger exits within 10 s of SIGTERM")
    }

    /// `kill -9`: no flush, no clean-up.
    pub fn kill9(mut self) {
        self.0.kill9();
    }
}

/// Spool lines of meter `id` under `dir`.
pub fn lines_for(dir: &Path, id: CloudId) -> usize {
    spool_lines(dir)
        .iter()
        .filter(|(_, v)| v["cloud_id"] == id.as_str())
        .count()
}

/// The spool directory, users file and log file of a pinger run under `dir`.
pub fn run_paths(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join("logs"),
        dir.join("users.jl"),
        dir.join("pinger.log"),
    )
}

/// The text of a standalone service's `/metrics` on `port` (loopback).
pub async fn metrics_text(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}
