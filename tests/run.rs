//! Running the services as the binary: `rainforest run --demo` (the
//! README's first command) end to end, `rainforest run` stopped with polls
//! and uploads in flight, and how a standalone service leaves Redis when it
//! stops.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rainforest::cloud_id::CloudId;
use rainforest::registry::User;
use rainforest::simulator::{self, AnswerKind, SimulateArgs, Simulator};
use rainforest::stats::HubSnapshot;
use support::RedisServer;
use support::meters::{sim_user, users_text};
use support::process::{Proc, http_get, rainforest, wait_for};
use support::spool::{
    assert_files_whole, dir_archive_lines, files_under, hours_ago, line, spool_lines, write_spool,
};

/// Spool lines under `dir`, each a whole record with a demand.
fn count_lines(dir: &std::path::Path) -> usize {
    let lines = spool_lines(dir);
    for (path, v) in &lines {
        assert!(v["demand_kw"].is_number(), "{}: {v}", path.display());
    }
    lines.len()
}

#[test]
fn run_demo_polls_serves_the_status_page_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let log = dir.path().join("run.log");
    let mut child = rainforest()
        .current_dir(dir.path())
        .args([
            "run",
            "--demo",
            "5",
            "--set",
            &format!("listen=127.0.0.1:{port}"),
        ])
        .args(["--set", "poll_interval=500ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
        .spawn()
        .expect("start rainforest run");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Proc::from_child(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut status_line = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout line");
        if line.starts_with("Status page:") {
            status_line = line;
            break;
        }
    }
    // Keep reading, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    let base = format!("http://127.0.0.1:{port}");
    let token = status_line
        .split_once(&format!("{base}/status#token="))
        .map(|(_, t)| t.trim().to_string())
        .unwrap_or_else(|| panic!("no status URL with a token: {status_line:?}"));
    assert!(token.starts_with("rft_"), "{status_line}");

    let logs = dir.path().join("data/logs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_lines(&logs) < 10 {
        assert!(Instant::now() < deadline, "no readings after 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The page the printed URL opens, its liveness probe, and the API the
    // page reads with the printed token.
    let (code, page) = http_get(&format!("{base}/status"), &[]).expect("GET /status answered");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<title>rainforest status</title>"), "{page}");
    let (code, health) = http_get(&format!("{base}/healthz"), &[]).expect("GET /healthz");
    assert_eq!((code, health.as_str()), (200, r#"{"status":"ok"}"#));
    let bearer = format!("Bearer {token}");
    let (code, body) = http_get(&format!("{base}/api/status"), &[("Authorization", &bearer)])
        .expect("GET /api/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(status["matching"], 5, "{body}");
    let (code, _) = http_get(&format!("{base}/api/status"), &[]).expect("GET /api/status");
    assert_eq!(code, 401, "the API answered without the token");
    assert!(dir.path().join("data/demo-users.jl").exists());
    assert!(
        dir.path().join("data/archive").is_dir(),
        "embedded archive directory"
    );

    let exit = child
        .terminate(Duration::from_secs(10))
        .expect("stopped within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    assert_stopped_in_order(&log);
    // Every file is closed on a whole line, and every line is a record.
    assert_files_whole(&logs);
    assert!(count_lines(&logs) >= 10);
}

/// The shutdown lines of every service, in the runner's order: polling
/// stops (spool flushed and closed) before uploads, uploads before the
/// server.
fn assert_stopped_in_order(log: &Path) {
    let text = std::fs::read_to_string(log).expect("read the log");
    let mut from = 0;
    for line in [
        "Stopping: polling first, then uploads, then the server.",
        "Pinger stopped; every file flushed and closed.",
        "Rotator stopped.",
        "Server stopped.",
        "All services stopped.",
    ] {
        let at = text[from..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} missing or out of order in the log:\n{text}"));
        from += at + line.len();
    }
}

/// Meters of the SIGTERM test, and the old spool files waiting to be
/// uploaded (one upload at a time, so uploads are still running when the
/// signal comes).
const IN_FLIGHT_METERS: u32 = 10;
const SEEDED_FILES: u32 = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_polls_and_uploads_in_flight_keeps_every_served_reading() {
    // Answers take 200-400 ms against a 300 ms interval: at any moment most
    // meters have a request out.
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: IN_FLIGHT_METERS,
        latency: "300ms±100ms".parse().expect("latency"),
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, archive, users, log) = (
        dir.path().join("data/logs"),
        dir.path().join("archive"),
        dir.path().join("users.jl"),
        dir.path().join("run.log"),
    );
    let ids: Vec<CloudId> = (0..IN_FLIGHT_METERS)
        .map(simulator::meter_cloud_id)
        .collect();
    let all: Vec<User> = (0..IN_FLIGHT_METERS).map(sim_user).collect();
    let text = users_text(&all);
    std::fs::write(&users, text).expect("users file");
    // Completed hours of other meters, for the rotator to be busy with.
    let hour = hours_ago(3);
    let mut seeded = BTreeSet::new();
    for i in 0..SEEDED_FILES {
        let id = CloudId::from_index(0xb0_0000 + i);
        let lines: Vec<String> = (0..2).map(|s| line(id, hour, s)).collect();
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).expect("fixture");
            seeded.insert(record_key(&v));
        }
        write_spool(&data, id, hour, &lines, "");
    }

    let port = support::free_port();
    let mut cmd = rainforest();
    cmd.current_dir(dir.path())
        .arg("run")
        .args(["--users-file".as_ref(), users.as_os_str()])
        .args(["--relay-url", sim.relay_url().as_str()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--set", &format!("archive=dir:{}", archive.display())])
        .args(["--set", &format!("listen=127.0.0.1:{port}")])
        .args([
            "--set",
            "poll_interval=300ms",
            "--set",
            "request_timeout=2s",
        ])
        .args(["--set", "upload_concurrency=1"])
        .env("RAINFOREST_API_TOKEN", "7e57".repeat(16))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")));
    let mut child = Proc::spawn(&mut cmd, "rainforest run");
    wait_for("every meter polled and uploads under way", async || {
        if let Some(status) = child.try_status() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("rainforest run exited early ({status}):\n{log}");
        }
        ids.iter().all(|id| sim.served_for(*id) >= 1) && !dir_archive_lines(&archive).is_empty()
    })
    .await;
    let uploaded_before = files_under(&archive, ".jl.gz").len();
    let served_before = sim.answers(AnswerKind::Reading);
    let exit = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(15)))
        .await
        .expect("join")
        .expect("stopped within 15 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    assert_stopped_in_order(&log);
    // What the test set out to stop: uploads still to do and polls out.
    assert!(
        uploaded_before < SEEDED_FILES as usize,
        "every upload finished before the signal; nothing was in flight"
    );
    assert!(
        sim.answers(AnswerKind::Reading) > served_before,
        "no poll was answered after the signal; none was in flight"
    );

    // Every reading the simulator served is a line, in the spool or in the
    // archive, exactly once; every seeded line is still somewhere (a file
    // whose upload was abandoned may be in both until the next run merges
    // it, which the rotator's design allows).
    assert_files_whole(&data);
    let kept: Vec<(String, String)> = spool_lines(&data)
        .into_iter()
        .map(|(_, v)| record_key(&v))
        .chain(dir_archive_lines(&archive).iter().map(record_key))
        .collect();
    let kept_set: BTreeSet<&(String, String)> = kept.iter().collect();
    let lost: Vec<_> = seeded.iter().filter(|k| !kept_set.contains(k)).collect();
    assert!(lost.is_empty(), "seeded lines lost: {lost:?}");
    for id in &ids {
        let mut lines: Vec<&String> = kept
            .iter()
            .filter(|(c, _)| c == id.as_str())
            .map(|(_, at)| at)
            .collect();
        assert_eq!(
            lines.len() as u64,
            sim.served_for(*id),
            "meter {id}: lines kept vs readings served"
        );
        lines.sort();
        lines.dedup();
        assert_eq!(
            lines.len() as u64,
            sim.served_for(*id),
            "meter {id}: a line kept twice"
        );
    }
}

/// A record's identity: its meter and when it was polled.
fn record_key(v: &serde_json::Value) -> (String, String) {
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (field("cloud_id"), field("polled_at"))
}

#[test]
fn a_standalone_pinger_withdraws_its_published_statistics_when_it_stops() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = redis.namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = support::free_port();
    let child = rainforest()
        .current_dir(dir.path())
        .args(["pinger", "--redis-url", &redis.url()])
        .arg("--data-dir")
        .arg(dir.path().join("logs"))
        .args(["--set", &format!("redis_namespace={ns}")])
        .args(["--set", &format!("metrics_listen=127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rainforest pinger");
    let mut child = Proc::from_child(child);
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client.get_connection().expect("redis");
    let index = format!("{ns}:services");

    // Published at start: one key in the index, holding a pinger snapshot.
    let deadline = Instant::now() + Duration::from_secs(20);
    let key = loop {
        let keys: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .expect("ZRANGE");
        if let Some(key) = keys.into_iter().next() {
            break key;
        }
        if let Some(status) = child.try_status() {
            panic!("the pinger exited early: {status}");
        }
        assert!(Instant::now() < deadline, "no snapshot published in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(key.starts_with(&format!("{ns}:service:pinger:")), "{key}");
    let body: String = redis::cmd("GET").arg(&key).query(&mut conn).expect("GET");
    let snapshot: HubSnapshot = serde_json::from_str(&body).expect("a typed snapshot");
    assert!(snapshot.pinger.is_some(), "{body}");

    // A Redis slow to answer at that moment: the clean-up must still be
    // waited for, not raced by the process exit.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(400)
        .arg("WRITE")
        .exec(&mut conn)
        .expect("CLIENT PAUSE");
    let exit = child
        .terminate(Duration::from_secs(10))
        .expect("stopped within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    // Gone at once, not after the 30 s expiry.
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .expect("ZRANGE");
    assert!(left.is_empty(), "{index} still lists {left:?}");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query(&mut conn)
        .expect("EXISTS");
    assert!(!exists, "{key} is still there");
    if !redis.can_restart() {
        redis.delete_namespace(&ns);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reads_published_snapshots_and_drops_expired_entries() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = redis.namespace();
    let keys = rainforest::db::Keys::new(&ns).expect("namespace");
    let db = rainforest::db::Redis::connect(&redis.url())
        .await
        .expect("redis");
    let index = keys.services();
    let live = keys.service("pinger", "host-a-1");
    let gone = keys.service("pinger", "host-b-2");
    let published = serde_json::json!({
        "uptime_s": 9, "version": "test",
        "pinger": {"meters": 7, "ok_total": 70, "polls_per_s": 1.5},
    });
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(&live)
        .arg(published.to_string())
        .arg("EX")
        .arg(30)
        .ignore()
        // The publisher's clock may be far behind the reader's: only the
        // snapshot's expiry decides whether it is live.
        .cmd("ZADD")
        .arg(&index)
        .arg(1)
        .arg(&live)
        .ignore()
        // An entry whose snapshot already expired.
        .cmd("ZADD")
        .arg(&index)
        .arg(1)
        .arg(&gone)
        .ignore();
    db.send::<()>("seed", &pipe).await.expect("seed");

    let hub = rainforest::stats::Hub::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    rainforest::stats::remote::spawn_reader(&tasks, hub.clone(), (db.clone(), keys), stop.clone());
    support::process::wait_for("the published pinger in the hub", async || {
        hub.snapshot().instances == Some(1)
    })
    .await;
    let pinger = hub.snapshot().pinger.expect("the remote pinger");
    assert_eq!((pinger.meters, pinger.ok_total), (7, 70));
    let mut range = redis::cmd("ZRANGE");
    range.arg(&index).arg(0).arg(-1);
    let left: Vec<String> = db.send("ZRANGE", &range).await.expect("ZRANGE");
    assert_eq!(left, [live], "the expired entry is dropped from the index");
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    if !redis.can_restart() {
        redis.delete_namespace(&ns);
    }
}
