//! Running the services as the binary: `rainforest run --demo` (the
//! README's first command) end to end, and how a standalone service leaves
//! Redis when it stops.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rainforest::stats::HubSnapshot;
use support::RedisServer;
use support::process::{Proc, rainforest};
use support::spool::spool_lines;

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
        .stderr(Stdio::null())
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
    assert!(
        status_line.contains(&format!("http://127.0.0.1:{port}/status#token=rft_")),
        "{status_line}"
    );

    let logs = dir.path().join("data/logs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_lines(&logs) < 10 {
        assert!(Instant::now() < deadline, "no readings after 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(health.is_ok(), "server not listening");
    assert!(dir.path().join("data/demo-users.jl").exists());
    assert!(
        dir.path().join("data/archive").is_dir(),
        "embedded archive directory"
    );

    let exit = child
        .terminate(Duration::from_secs(10))
        .expect("stopped within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    // Every line written before the stop is whole.
    assert!(count_lines(&logs) >= 10);
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
