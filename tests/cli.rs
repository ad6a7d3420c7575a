//! The `rainforest` binary as an operator uses it: `fetch`, `config`,
//! `--trace-http`, exit codes and error messages.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use axum::Router;
use axum::routing::post;
use rainforest::simulator::{self, SimulateArgs, Simulator};

fn rainforest(dir: &Path) -> Command {
    let mut cmd = support::process::rainforest();
    cmd.current_dir(dir);
    cmd
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

async fn run(cmd: &mut Command) -> Output {
    let mut cmd = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")));
    cmd.output().await.expect("run rainforest")
}

async fn sim() -> Simulator {
    Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 3,
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator")
}

/// A relay that answers every request with one fixed body.
async fn fixed_relay(body: &'static [u8]) -> String {
    let app = Router::new().route("/cgi-bin/post_manager", post(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/cgi-bin/post_manager")
}

#[tokio::test]
async fn fetch_against_the_simulator_prints_a_valid_record() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = simulator::meter_cloud_id(1);
    let out = run(rainforest(dir.path())
        .args(["fetch", id.as_str(), "--user", &simulator::meter_email(id)])
        .args([
            "--password-env",
            "EAGLE_PW",
            "--relay-url",
            sim.relay_url().as_str(),
        ])
        .env("EAGLE_PW", simulator::meter_password(id)))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["cloud_id"], id.as_str());
    assert!(v["demand_kw"].is_number() && v["Demand"].is_number());
    assert!(
        v["polled_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{v}"
    );
}

#[tokio::test]
async fn fetch_local_eagle_200_reads_demand() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = simulator::meter_cloud_id(0);
    let out = run(rainforest(dir.path())
        .args([
            "fetch",
            id.as_str(),
            "--local",
            &sim.addr().to_string(),
            "--install-code-env",
            "IC",
        ])
        .env("IC", simulator::meter_install_code(id))
        // The simulator is on loopback, which only an explicit opt-in opens.
        .env("RAINFOREST_LOCAL_NETWORKS", "127.0.0.0/8"))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["source"], "local");
}

#[tokio::test]
async fn fetch_with_bad_password_exits_3_and_names_the_kind() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = simulator::meter_cloud_id(0);
    let out = run(rainforest(dir.path())
        .args(["fetch", id.as_str(), "--user", &simulator::meter_email(id)])
        .args([
            "--password-env",
            "EAGLE_PW",
            "--relay-url",
            sim.relay_url().as_str(),
        ])
        .env("EAGLE_PW", "wrong-password"))
    .await;
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.contains("auth") && err.contains(id.as_str()), "{err}");
    assert!(!err.contains("wrong-password"));
}

#[tokio::test]
async fn fetch_prints_the_sample_values_from_a_relay_answering_samples() {
    let cases: [(&'static [u8], f64, &str); 3] = [
        (
            include_bytes!("support/fixtures/eagle/relay-demand.xml"),
            2.654,
            "2025-01-15T10:36:00Z",
        ),
        (
            include_bytes!("support/fixtures/eagle/relay-demand-export.xml"),
            -1.0,
            "",
        ),
        (
            include_bytes!("support/fixtures/eagle/relay-demand-zero-scale.xml"),
            1234.0,
            "",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (body, kw, meter_time) in cases {
        let url = fixed_relay(body).await;
        let out = run(rainforest(dir.path())
            .args([
                "fetch",
                "00CE69",
                "--user",
                "a@b.org",
                "--password-env",
                "PW",
                "--relay-url",
                &url,
            ])
            .env("PW", "x"))
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["cloud_id"], "00ce69");
        assert!(
            (v["demand_kw"].as_f64().expect("kw") - kw).abs() < 1e-9,
            "{v}"
        );
        if !meter_time.is_empty() {
            assert_eq!(v["meter_time"], meter_time);
        }
    }
    let url = fixed_relay(include_bytes!("support/fixtures/eagle/relay-error.xml")).await;
    let out = run(rainforest(dir.path())
        .args([
            "fetch",
            "00ce69",
            "--user",
            "a@b.org",
            "--password-env",
            "PW",
            "--relay-url",
            &url,
        ])
        .env("PW", "x"))
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("do not match this cloud id"));
}

#[tokio::test]
async fn fetch_rejects_a_bad_cloud_id_before_any_request() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in ["../etc", "00ce6", "00ce699", "zzzzzz"] {
        let out = run(rainforest(dir.path())
            .args([
                "fetch",
                bad,
                "--user",
                "a@b.org",
                "--password-env",
                "PW",
                "--relay-url",
                sim.relay_url().as_str(),
            ])
            .env("PW", "x"))
        .await;
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out.stderr).contains("6 hex digits"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(sim.requests(), 0);
}

#[tokio::test]
async fn trace_http_logs_a_curl_command_without_the_password() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = simulator::meter_cloud_id(2);
    let password = simulator::meter_password(id);
    let out = run(rainforest(dir.path())
        .args([
            "--trace-http",
            "fetch",
            id.as_str(),
            "--user",
            &simulator::meter_email(id),
        ])
        .args([
            "--password-env",
            "EAGLE_PW",
            "--relay-url",
            sim.relay_url().as_str(),
        ])
        .env("EAGLE_PW", &password))
    .await;
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("curl -sS -X POST") && err.contains("$EAGLE_PASSWORD"),
        "{err}"
    );
    assert!(err.contains("status=200"), "{err}");
    assert!(!err.contains(&password), "password leaked: {err}");
}

#[tokio::test]
async fn config_prints_every_key_with_secrets_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(rainforest(dir.path())
        .arg("config")
        .env("RAINFOREST_API_TOKEN", "super-secret-token")
        .env("RAINFOREST_REDIS_URL", "redis://:redispw@127.0.0.1:6379/0")
        .env("RAINFOREST_POLL_INTERVAL", "2s"))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(
        !o.contains("super-secret-token") && !o.contains("redispw"),
        "{o}"
    );
    assert!(
        o.contains("poll_interval = \"2s\"  # environment variable RAINFOREST_POLL_INTERVAL"),
        "{o}"
    );
    for key in [
        "relay_url",
        "data_dir",
        "request_timeout",
        "user_reload_interval",
        "s3_prefix",
        "listen",
    ] {
        assert!(o.contains(&format!("{key} = ")), "{key} missing: {o}");
    }
}

#[tokio::test]
async fn bad_config_values_exit_2_naming_key_and_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "request_timeout = \"soon\"\nno_such_key = 1\n").expect("write");
    let out = run(rainforest(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("config")
        .env("RAINFOREST_RELAY_URL", "ftp://x"))
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("`request_timeout` (from file"), "{err}");
    assert!(err.contains("unknown key `no_such_key`"), "{err}");
    assert!(
        err.contains("`relay_url` (from environment variable RAINFOREST_RELAY_URL)"),
        "{err}"
    );
}

/// The `fetch` log files in `dir/logs/fetch` after a run that finds 20 old
/// daily files (and a file of another name) there, with `extra` flags.
async fn fetch_log_files_after_a_run_over_20_old_ones(dir: &Path, extra: &[&str]) -> Vec<String> {
    let logs = dir.join("logs/fetch");
    std::fs::create_dir_all(&logs).unwrap();
    // Created oldest first: the appender orders files by creation time,
    // which file systems keep at the kernel's coarse clock (a few ms), so the
    // two newest are set apart by a pause.
    for day in 1..=20 {
        if day >= 19 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(logs.join(format!("fetch.2025-01-{day:02}.log")), "old\n").unwrap();
    }
    std::fs::write(logs.join("notes.txt"), "not a log file\n").unwrap();
    let sim = sim().await;
    let id = simulator::meter_cloud_id(0);
    let out = run(rainforest(dir)
        .args(["fetch", id.as_str(), "--user", &simulator::meter_email(id)])
        .args(["--password-env", "EAGLE_PW"])
        .args(["--relay-url", sim.relay_url().as_str()])
        .args(["--set", "log_dir=logs"])
        .args(extra)
        .env("EAGLE_PW", "wrong"))
    .await;
    assert_eq!(out.status.code(), Some(3));
    let mut files: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn log_max_files_keeps_the_newest_daily_files_and_deletes_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files =
        fetch_log_files_after_a_run_over_20_old_ones(dir.path(), &["--set", "log_max_files=3"])
            .await;
    let today = format!("fetch.{}.log", chrono::Utc::now().format("%Y-%m-%d"));
    assert_eq!(
        files,
        [
            "fetch.2025-01-19.log",
            "fetch.2025-01-20.log",
            today.as_str(),
            "notes.txt"
        ],
        "the newest 3 daily files (today's included) and the foreign file stay"
    );

    // The default keeps two weeks.
    let dir = tempfile::tempdir().expect("tempdir");
    let files = fetch_log_files_after_a_run_over_20_old_ones(dir.path(), &[]).await;
    let logs = files.iter().filter(|f| f.ends_with(".log")).count();
    assert_eq!(logs, 14, "{files:?}");
    assert!(files.contains(&today), "{files:?}");
}

#[tokio::test]
async fn log_dir_gets_a_daily_file_per_service() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = simulator::meter_cloud_id(0);
    let out = run(rainforest(dir.path())
        .args(["fetch", id.as_str(), "--user", &simulator::meter_email(id)])
        .args([
            "--password-env",
            "EAGLE_PW",
            "--relay-url",
            sim.relay_url().as_str(),
        ])
        .args(["--set", "log_dir=logs"])
        .env("EAGLE_PW", "wrong"))
    .await;
    assert_eq!(out.status.code(), Some(3));
    let files: Vec<_> = std::fs::read_dir(dir.path().join("logs/fetch"))
        .expect("logs/fetch exists")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("fetch.") && f.ends_with(".log")),
        "{files:?}"
    );
}
