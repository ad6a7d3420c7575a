//! The status page, `/api/status`, `/api/stats` and `/metrics`.
//!
//! Three layers: the routes served in-process over a users file (who may
//! call them, and the shape of their answers); the batched statistics read
//! they rely on, against a real Redis; and the page itself in a real
//! browser: `rainforest run --demo` started as a child process, headless
//! Chromium (Debian's `chromium` package) loading the status URL it prints,
//! the rendered DOM checked for meter rows and sparklines, and a screenshot
//! kept as a test artifact under `target/test-artifacts/`.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rainforest::cloud_id::CloudId;
use rainforest::registry::{MeterState, RedisRegistry, Registry, RegistryError, StatsUpdate, User};
use rainforest::secret::Secret;
use rainforest::simulator::SimulateArgs;
use rainforest::stats::{Hub, HubSnapshot, Sparkline};
use reqwest::StatusCode;
use serde_json::Value;
use support::RedisServer;
use support::process::{Proc, rainforest};
use support::server::{ADMIN, Answer, Backend, TestServer};

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Meters the demo runs for the browser test.
const DEMO_METERS: usize = 12;

fn id(s: &str) -> CloudId {
    CloudId::parse(s).unwrap()
}

fn user(cloud_id: &str, active: bool) -> User {
    User {
        cloud_id: id(cloud_id),
        user_email: format!("u{cloud_id}@example.org"),
        user_pw: Secret::new("pw"),
        active,
        local: None,
        cadence: Default::default(),
    }
}

fn now() -> f64 {
    rainforest::clock::now_unix()
}

/// The server in this process over a users file, with statistics written
/// so that every state shows up. Users: `a00001` auth_failed (never read),
/// `b00002` in backoff with a reading 11 minutes old, `c00003` ok with a
/// sparkline, `d00004` ok without statistics, `e00005` inactive.
async fn served() -> TestServer {
    served_with_hub(Hub::new()).await
}

/// The same, reporting the services of `hub`.
async fn served_with_hub(hub: Hub) -> TestServer {
    let s = TestServer::start_with_hub(Backend::UsersFile, SimulateArgs::default(), |_| {}, hub)
        .await
        .expect("a users-file server needs no external service");
    let registry = &s.registry;
    for (cid, active) in [
        ("a00001", true),
        ("b00002", true),
        ("c00003", true),
        ("d00004", true),
        ("e00005", false),
    ] {
        registry.put(&user(cid, active)).await.unwrap();
    }
    let t = now();
    registry
        .write_stats(&[
            StatsUpdate {
                consecutive_failures: Some(2),
                state: Some(MeterState::AuthFailed),
                last_error: Some(("auth".into(), t - 30.0)),
                ..StatsUpdate::new(id("a00001"))
            },
            StatsUpdate {
                events_logged: 40,
                last_timestamp: Some(t - 660.0),
                last_demand_kw: Some(0.5),
                consecutive_failures: Some(9),
                state: Some(MeterState::Backoff),
                last_error: Some(("timeout".into(), t - 5.0)),
                ..StatsUpdate::new(id("b00002"))
            },
            StatsUpdate {
                events_logged: 600,
                first_timestamp: Some(t - 3600.0),
                last_timestamp: Some(t - 4.0),
                last_demand_kw: Some(2.5),
                spark: Some(Sparkline::decode("1.25,,2")),
                ..StatsUpdate::new(id("c00003"))
            },
        ])
        .await
        .unwrap();
    s
}

fn cloud_ids(page: &Value) -> Vec<&str> {
    page["meters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cloud_id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_status_needs_a_token_and_lists_failing_meters_first() {
    let s = served().await;
    s.problem("/api/status", None, StatusCode::UNAUTHORIZED)
        .await;
    s.problem("/api/status", Some("wrong-token"), StatusCode::UNAUTHORIZED)
        .await;

    let page = s.json("/api/status").await;
    let totals = &page["totals"];
    for (field, want) in [
        ("meters", 4),
        ("ok", 2),
        ("backoff", 1),
        ("auth_failed", 1),
        ("inactive", 1),
        ("without_reading", 2),
        ("stale_10m", 1),
    ] {
        assert_eq!(totals[field], want, "totals.{field}: {totals}");
    }
    // A hub without a pinger or rotator: those figures are unknown here.
    assert!(totals["polls_per_s"].is_null(), "{totals}");
    assert!(totals["upload_backlog"].is_null(), "{totals}");
    assert!(totals["uptime_s"].is_number(), "{totals}");
    assert_eq!(
        (&page["page"], &page["pages"], &page["matching"]),
        (&Value::from(1), &Value::from(1), &Value::from(4))
    );
    assert_eq!(
        (&page["sort"], &page["order"]),
        (&"state".into(), &"asc".into())
    );
    // Failing first; among the ok ones, the one that never reported first.
    assert_eq!(cloud_ids(&page), ["a00001", "b00002", "d00004", "c00003"]);

    let rows = page["meters"].as_array().unwrap();
    let a = &rows[0];
    assert_eq!(a["state"], "auth_failed");
    assert_eq!(a["last_error_kind"], "auth");
    assert!(a["last_reading_at"].is_null() && a["last_reading_age_s"].is_null());
    assert_eq!(a["spark"], Value::Array(vec![]));
    let b = &rows[1];
    assert_eq!(
        (&b["state"], &b["consecutive_failures"]),
        (&"backoff".into(), &9.into())
    );
    let age = b["last_reading_age_s"].as_f64().unwrap();
    assert!((659.0..700.0).contains(&age), "{age}");
    let c = &rows[3];
    assert_eq!(c["last_demand_kw"], 2.5);
    assert_eq!(c["total_events_logged"], 600);
    // The stored minutes, then the latest reading (4 s old: in this
    // minute, or the last one if a minute just began).
    let spark = c["spark"].as_array().unwrap();
    assert_eq!(
        spark[..4],
        serde_json::json!([1.25, null, 2.0, 2.5])
            .as_array()
            .unwrap()[..]
    );
    assert!(
        spark.len() <= 5 && spark[4..].iter().all(Value::is_null),
        "{spark:?}"
    );
    // Silent for 11 minutes: its reading, then 11 empty minutes up to now.
    let spark = b["spark"].as_array().unwrap();
    assert_eq!(spark[0], 0.5, "{spark:?}");
    assert!((12..=13).contains(&spark.len()), "{spark:?}");
    assert!(
        !page.to_string().contains("example.org") && !page.to_string().contains("\"pw\""),
        "no e-mail or password in the status: {page}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_status_pages_sorts_and_filters_on_the_server() {
    let s = served().await;
    let p2 = s.json("/api/status?page=2&per_page=3").await;
    assert_eq!((&p2["pages"], &p2["matching"]), (&2.into(), &4.into()));
    assert_eq!(cloud_ids(&p2), ["c00003"]);
    let past = s.json("/api/status?page=9&per_page=3").await;
    assert!(cloud_ids(&past).is_empty());

    let demand = s.json("/api/status?sort=demand").await;
    assert_eq!(demand["order"], "desc", "demand starts largest first");
    assert_eq!(cloud_ids(&demand), ["c00003", "b00002", "a00001", "d00004"]);
    let ids = s.json("/api/status?sort=cloud_id&order=desc").await;
    assert_eq!(cloud_ids(&ids), ["d00004", "c00003", "b00002", "a00001"]);
    let streak = s.json("/api/status?sort=streak").await;
    assert_eq!(cloud_ids(&streak)[0], "b00002");

    let backoff = s.json("/api/status?state=backoff").await;
    assert_eq!(cloud_ids(&backoff), ["b00002"]);
    assert_eq!(backoff["totals"]["meters"], 4, "totals ignore the filter");
    let found = s.json("/api/status?q=C0").await;
    assert_eq!(cloud_ids(&found), ["c00003"]);

    for bad in [
        "/api/status?page=0",
        "/api/status?per_page=0",
        "/api/status?per_page=1001",
        "/api/status?sort=colour",
        "/api/status?order=up",
        "/api/status?state=broken",
        "/api/status?q=zz",
        "/api/status?pages=2",
    ] {
        s.problem(bad, Some(ADMIN), StatusCode::BAD_REQUEST).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_stats_is_a_snapshot_by_namespace_with_per_meter_records() {
    let s = served().await;
    s.problem("/api/stats", None, StatusCode::UNAUTHORIZED)
        .await;

    let stats = s.json("/api/stats").await;
    assert!(stats["uptime_s"].is_number(), "{stats}");
    assert!(stats["version"].is_string(), "{stats}");
    // No pinger or rotator in this process and none publishing: absent.
    for absent in ["pinger", "rotator", "instances"] {
        assert!(stats.get(absent).is_none(), "{absent}: {stats}");
    }
    let mut names: Vec<&str> = stats["registry"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "auth_failed",
            "backoff",
            "inactive",
            "invalid_stats",
            "meters",
            "ok",
            "snapshot_age_s",
            "stale_10m",
            "stale_5m",
            "stale_60m",
            "without_reading"
        ]
    );
    let registry = &stats["registry"];
    assert_eq!(registry["meters"], 4, "{registry}");
    assert_eq!(registry["auth_failed"], 1, "{registry}");
    assert_eq!(registry["stale_10m"], 1, "{registry}");
    assert_eq!(registry["stale_60m"], 0, "{registry}");
    let meters = stats["meters"].as_array().unwrap();
    assert_eq!(meters.len(), 4);
    assert_eq!(meters[0]["cloud_id"], "a00001", "failing first");

    let one = s.json("/api/stats?limit=1").await;
    assert_eq!(one["meters"].as_array().unwrap().len(), 1);
    s.problem(
        "/api/stats?limit=10001",
        Some(ADMIN),
        StatusCode::BAD_REQUEST,
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_stats_and_totals_add_up_the_services_other_processes_publish() {
    let published = |meters, polls_per_s, ok_total, backlog: Option<u64>| {
        serde_json::from_value::<HubSnapshot>(serde_json::json!({
            "uptime_s": 60,
            "pinger": {"meters": meters, "polls_per_s": polls_per_s, "ok_total": ok_total,
                       "failures_total": {"timeout": 1}, "lag_p99_ms": ok_total},
            "rotator": backlog.map(|b| serde_json::json!({"files_pending": b, "oldest_pending_age_s": b * 10})),
        }))
        .unwrap()
    };
    let hub = Hub::new();
    hub.set_remote(vec![
        published(3, 1.25, 100, None),
        published(2, 0.5, 40, Some(4)),
    ]);
    let s = served_with_hub(hub).await;
    let stats = s.json("/api/stats").await;
    assert_eq!(stats["instances"], 2, "{stats}");
    let pinger = &stats["pinger"];
    assert_eq!(
        (
            &pinger["meters"],
            &pinger["polls_per_s"],
            &pinger["ok_total"]
        ),
        (&5.into(), &1.75.into(), &140.into()),
        "{pinger}"
    );
    assert_eq!(pinger["failures_total"]["timeout"], 2, "{pinger}");
    assert_eq!(pinger["lag_p99_ms"], 100, "the worst: {pinger}");
    assert_eq!(stats["rotator"]["files_pending"], 4, "{stats}");
    assert_eq!(stats["rotator"]["oldest_pending_age_s"], 40, "{stats}");

    let totals = &s.json("/api/status").await["totals"];
    assert_eq!(totals["polls_per_s"], 1.75, "{totals}");
    assert_eq!(totals["upload_backlog"], 4, "{totals}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_and_answer_prometheus_text_without_ids() {
    let s = served().await;
    s.problem("/metrics", None, StatusCode::UNAUTHORIZED).await;
    s.problem("/metrics", Some("wrong-token"), StatusCode::UNAUTHORIZED)
        .await;
    let Answer {
        status,
        content_type,
        body,
        ..
    } = s.get("/metrics", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    for line in [
        "rainforest_registry_up 1",
        "rainforest_registry_meters{state=\"ok\"} 2",
        "rainforest_registry_meters{state=\"backoff\"} 1",
        "rainforest_registry_meters{state=\"auth_failed\"} 1",
        "rainforest_registry_meters_inactive 1",
        "rainforest_meters_stale{minutes=\"10\"} 1",
        "rainforest_meters_without_reading 2",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
    }
    assert!(
        body.contains("# TYPE rainforest_meters_stale gauge"),
        "{body}"
    );
    // One encoder wrote it all: one HELP per family, no end marker.
    assert!(body.contains("rainforest_build_info{version="), "{body}");
    assert!(!body.contains("# EOF"), "{body}");
    let mut families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let all = families.len();
    families.sort_unstable();
    families.dedup();
    assert_eq!(families.len(), all, "a family described twice:\n{body}");
    for id in ["a00001", "b00002", "c00003", "example.org"] {
        assert!(!body.contains(id), "{id} in /metrics:\n{body}");
    }
    // Every sample line is `name{labels} value`.
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_served_without_a_token_and_holds_no_data() {
    let s = served().await;
    let r = s
        .http
        .get(format!("http://{}/status", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("<table id=\"meters\""), "{html}");
    assert!(html.contains("/api/status"), "the script loads its data");
    assert!(!html.contains("a00001"), "no meter data in the shell");
    // Self-contained: nothing loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "{external} in the page");
    }
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    s.stop().await;
}

// --- the batched statistics read, against Redis ---------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_many_reads_in_batches_in_order_and_isolates_a_bad_record() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = redis.namespace();
    let reg = RedisRegistry::connect(&redis.url(), &ns).await.unwrap();
    let registry = Registry::Redis(reg.clone());
    // More ids than one pipeline batch (1000), written straight to Redis.
    let ids: Vec<CloudId> = (0..2500u32).map(|i| id(&format!("{i:06x}"))).collect();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for (i, cid) in ids.iter().enumerate() {
        if i % 3 == 2 {
            continue; // no statistics yet
        }
        pipe.cmd("HSET")
            .arg(reg.keys().stats(*cid))
            .arg("total_events_logged")
            .arg(i)
            .arg("state")
            .arg(if i % 2 == 0 { "ok" } else { "backoff" })
            .ignore();
    }
    pipe.cmd("HSET")
        .arg(reg.keys().stats(ids[1000]))
        .arg("state")
        .arg("sleepy")
        .ignore();
    pipe.exec_async(&mut conn).await.unwrap();

    let got = registry.stats_many(&ids).await.unwrap();
    assert_eq!(got.len(), ids.len());
    for (i, (cid, entry)) in ids.iter().zip(&got).enumerate() {
        match (i % 3, i) {
            (_, 1000) => assert!(
                matches!(entry, Err(RegistryError::Invalid { field, .. }) if field == "state"),
                "{entry:?}"
            ),
            (2, _) => assert!(matches!(entry, Ok(None)), "{i}: {entry:?}"),
            _ => {
                let stats = entry.as_ref().unwrap().as_ref().unwrap();
                assert_eq!(stats.total_events_logged, i as u64, "{cid}");
                assert_eq!(registry.stats(*cid).await.unwrap().as_ref(), Some(stats));
            }
        }
    }
    assert!(registry.stats_many(&[]).await.unwrap().is_empty());
    if !redis.can_restart() {
        redis.delete_namespace(&ns);
    }
}

// --- the page in a real browser --------------------------------------------

/// Where test artifacts go: `target/test-artifacts/` (next to the
/// directory Cargo gives integration tests for scratch files).
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Runs headless Chromium on `url` with `extra` arguments, a fresh profile
/// and a time limit; returns what it printed on stdout.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out_path = profile.path().join("stdout");
    let err_path = profile.path().join("stderr");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(extra)
        .arg(url)
        .env("HOME", profile.path())
        .stdin(Stdio::null())
        // Files, not pipes: a DOM larger than a pipe buffer must not block it.
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 90 s: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium failed ({status}): {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    std::fs::read_to_string(&out_path).unwrap()
}

/// Whether the browser test can run: Chromium where Debian puts it, or a
/// failure under CI (a silently skipped browser test is a broken one).
fn chromium_available() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    let msg = format!(
        "no {CHROMIUM} for the status page browser test: install Debian's chromium package \
         (apt-get install -y chromium)"
    );
    support::missing(&msg);
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_meter_rows_and_sparklines_in_chromium() {
    if !chromium_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let stderr_path = dir.path().join("run.stderr");
    let mut child = rainforest()
        .current_dir(dir.path())
        .args(["run", "--demo", &DEMO_METERS.to_string()])
        .args(["--set", &format!("listen=127.0.0.1:{port}")])
        .args(["--set", "poll_interval=1s"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut run = Proc::from_child(child);
    let run_log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // The status URL, from the line `rainforest run` prints at start.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if tx.send(line.clone()).is_err() {
                break;
            }
            line.clear();
        }
        // Keep draining so the child never blocks on a full pipe.
        let _ = reader.read_to_end(&mut Vec::new());
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.trim().strip_prefix("Status page:") {
                    break rest.split_whitespace().next().unwrap_or("").to_string();
                }
            }
            Err(_) => panic!(
                "no `Status page:` line on stdout within 60 s; stderr:\n{}",
                run_log()
            ),
        }
    };
    let token = url
        .split_once("#token=")
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| panic!("the demo's status URL carries no token: {url}"));
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/status")),
        "{url}"
    );

    // Wait until every meter has a reading, so every row has a sparkline.
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{port}/api/status");
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let answer = http.get(&api).bearer_auth(&token).send().await;
        if let Ok(r) = answer
            && r.status() == StatusCode::OK
            && let Ok(page) = r.json::<Value>().await
        {
            let read = page["meters"].as_array().map_or(0, |m| {
                m.iter().filter(|m| m["last_demand_kw"].is_number()).count()
            });
            if page["totals"]["meters"] == DEMO_METERS && read == DEMO_METERS {
                break page;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the demo's meters did not all report within 60 s; stderr:\n{}",
            run_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let artifacts = artifacts_dir();
    let (url_dom, token_dom) = (url.clone(), token.clone());
    let dom = tokio::task::spawn_blocking(move || chromium(&url_dom, &["--dump-dom"]))
        .await
        .unwrap();
    std::fs::write(artifacts.join("status.html"), &dom).unwrap();
    let rows = dom.matches("<tr class=\"meter").count();
    assert_eq!(rows, DEMO_METERS, "meter rows in the rendered page:\n{dom}");
    for m in page["meters"].as_array().unwrap() {
        let cid = m["cloud_id"].as_str().unwrap();
        assert!(
            dom.contains(&format!("data-cloud-id=\"{cid}\"")),
            "{cid} missing"
        );
    }
    let sparks = dom.matches("<svg class=\"spark\"").count();
    let lines = dom.matches("<polyline").count();
    assert!(
        sparks >= DEMO_METERS && lines >= DEMO_METERS,
        "{sparks} sparklines with {lines} lines:\n{dom}"
    );
    let login_tag = dom
        .split("<section id=\"login\"")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap_or_else(|| panic!("no login section:\n{dom}"));
    assert!(
        login_tag.contains("hidden"),
        "the login form is shown:\n{dom}"
    );
    assert!(!dom.contains(&token_dom), "the token leaked into the DOM");

    let shot = artifacts.join("status.png");
    let _ = std::fs::remove_file(&shot);
    let shot_arg = format!("--screenshot={}", shot.display());
    let url_shot = url.clone();
    tokio::task::spawn_blocking(move || {
        chromium(&url_shot, &[&shot_arg, "--window-size=1280,900"]);
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    assert!(
        png.len() > 10_000,
        "suspiciously small screenshot ({} bytes)",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());

    let status = run.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "`rainforest run` did not exit 0 within 20 s of SIGTERM ({status:?}); stderr:\n{}",
        run_log()
    );
}
