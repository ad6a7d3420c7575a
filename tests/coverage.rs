//! Coverage of a hand-made archive with known gaps: `rainforest coverage`
//! and `GET /api/coverage` on a real server give exactly those gaps, and
//! the count of slots read agrees with an independent count of the
//! archived and spooled lines.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rainforest::cloud_id::CloudId;
use rainforest::config::ArchiveSetting;
use rainforest::spool::HourBucket;
use reqwest::StatusCode;
use serde_json::Value;
use support::readings::{assert_success, demand_at, rainforest_over, write_object};
use support::server::{Backend, TestServer};

const DAY: &str = "2025-03-10";

fn id(s: &str) -> CloudId {
    CloudId::parse(s).unwrap()
}

fn midnight() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, 0, 0, 0).unwrap()
}

/// One reading a minute (poll_interval = 60s) for two meters on DAY.
/// 0b0001 (phase 17.5 s) misses 01:00-01:30, the whole 13:00 hour (no
/// object at all) and the last 10 minutes. 0b0002 (phase 0) misses 05:07
/// only; its 22:00 hour is only in the spool, written without `slot`
/// (older lines) and polled 2 s late, and one of its slots is archived
/// twice.
fn archive(root: &Path, data: &Path) {
    let a = id("0b0001");
    let b = id("0b0002");
    for h in 0..24 {
        let hour = HourBucket::of(midnight() + Duration::hours(h));
        let mut la = Vec::new();
        let mut lb = Vec::new();
        for m in 0..60 {
            let t = hour.start() + Duration::minutes(m);
            let minute_of_day = h * 60 + m;
            let a_missing = (60..90).contains(&minute_of_day) || h == 13 || minute_of_day >= 1430;
            if !a_missing {
                la.push(demand_at(a, t + Duration::milliseconds(17_500), 100, 1.0));
            }
            if minute_of_day != 5 * 60 + 7 {
                if h == 22 {
                    let polled = t + Duration::seconds(2);
                    lb.push(format!(
                        r#"{{"cloud_id":"0b0002","polled_at":"{}","demand_kw":2.0}}"#,
                        rainforest::record::format_time(polled)
                    ));
                } else {
                    lb.push(demand_at(b, t, 100, 2.0));
                }
            }
        }
        if h == 3 {
            lb.push(demand_at(b, hour.start(), 900, 2.5));
        }
        if !la.is_empty() {
            write_object(root, a, hour, &la);
        }
        if h == 22 {
            support::spool::write_spool(data, b, hour, &lb, "");
        } else {
            write_object(root, b, hour, &lb);
        }
    }
}

/// Distinct minutes holding a reading per meter, counted from the lines
/// themselves (archive and spool), apart from the code under test.
fn independent_count(root: &Path, data: &Path) -> BTreeMap<String, usize> {
    let mut lines = support::spool::dir_archive_lines(root);
    lines.extend(
        support::spool::spool_lines(data)
            .into_iter()
            .map(|(_, v)| v),
    );
    let mut slots: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for v in lines {
        let t = v
            .get("slot")
            .or(v.get("polled_at"))
            .and_then(Value::as_str)
            .unwrap();
        let t = DateTime::parse_from_rfc3339(t).unwrap().timestamp();
        slots
            .entry(v["cloud_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(t / 60);
    }
    slots.into_iter().map(|(k, v)| (k, v.len())).collect()
}

fn gaps(day: &Value) -> Vec<(String, String, u64)> {
    day["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["from"].as_str().unwrap().to_string(),
                g["to"].as_str().unwrap().to_string(),
                g["missing_slots"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn check_known_gaps(days: &[Value], counted: &BTreeMap<String, usize>) {
    let by_id: BTreeMap<&str, &Value> = days
        .iter()
        .map(|d| (d["cloud_id"].as_str().unwrap(), d))
        .collect();
    assert_eq!(by_id.len(), 2, "{days:?}");
    let a = by_id["0b0001"];
    assert_eq!(
        gaps(a),
        [
            (
                "2025-03-10T01:00:17.500Z".into(),
                "2025-03-10T01:30:17.500Z".into(),
                30
            ),
            (
                "2025-03-10T13:00:17.500Z".into(),
                "2025-03-10T14:00:17.500Z".into(),
                60
            ),
            (
                "2025-03-10T23:50:17.500Z".into(),
                "2025-03-11T00:00:17.500Z".into(),
                10
            ),
        ]
    );
    assert_eq!(a["expected"], 1440);
    assert_eq!(a["present"], 1340);
    assert_eq!(a["longest_gap_s"], 3600);
    let b = by_id["0b0002"];
    assert_eq!(
        gaps(b),
        [(
            "2025-03-10T05:07:00.000Z".into(),
            "2025-03-10T05:08:00.000Z".into(),
            1
        )]
    );
    assert_eq!(b["present"], 1439);
    for (id, d) in by_id {
        assert_eq!(d["present"].as_u64().unwrap() as usize, counted[id], "{id}");
    }
}

/// `rainforest coverage` of [`DAY`] over the hand-made archive at `root`
/// and spool `data`, at the archive's one reading a minute, with `extra`
/// flags after the day.
fn coverage_of_day(root: &Path, data: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--set",
        "poll_interval=60s",
        "coverage",
        "--from",
        DAY,
        "--to",
        DAY,
    ];
    args.extend_from_slice(extra);
    rainforest_over(root, data, &args).output().unwrap()
}

/// A server reading the directory archive at `root`, polling once a
/// minute as the hand-made archives here do.
async fn server_over(root: &Path) -> TestServer {
    let archive_root = root.to_path_buf();
    TestServer::start(Backend::UsersFile, Default::default(), move |c| {
        c.archive = ArchiveSetting::Dir(archive_root);
        c.poll_interval = std::time::Duration::from_secs(60);
    })
    .await
    .expect("server")
}

#[test]
fn coverage_of_a_hand_made_archive_gives_exactly_its_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let (root, data) = (dir.path().join("archive"), dir.path().join("spool"));
    std::fs::create_dir_all(&data).unwrap();
    archive(&root, &data);
    let counted = independent_count(&root, &data);
    let run = coverage_of_day(&root, &data, &["--format", "json"]);
    assert_success(&run);
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    check_known_gaps(report["days"].as_array().unwrap(), &counted);

    let table = coverage_of_day(&root, &data, &["--meter", "0b0001"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("0b0001   2025-03-10 demand     93.06%"),
        "{text}"
    );
    assert!(text.contains("01:00:17..01:30:17"), "{text}");
    assert!(!text.contains("0b0002"), "{text}");
}

#[tokio::test]
async fn api_coverage_serves_the_same_report_worst_first_and_rejects_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    archive(&root, &spool);
    let counted = independent_count(&root, &spool);
    let server = server_over(&root).await;
    // The server's spool is its own; copy the spooled hour there.
    copy_tree(&spool, &server.data);

    let answer = server
        .get(
            &format!("/api/coverage?day={DAY}"),
            Some(support::server::ADMIN),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let body = answer.json();
    let days = body["report"]["days"].as_array().unwrap();
    assert_eq!(days[0]["cloud_id"], "0b0001", "worst first");
    check_known_gaps(days, &counted);

    for bad in [
        "day=2025-13-01",
        "day=yesterday",
        "kind=energy",
        "meter=0b0001,xyz",
        "meter=",
        "kind=",
        "day=",
        "colour=blue",
    ] {
        let a = server
            .get(
                &format!("/api/coverage?{bad}"),
                Some(support::server::ADMIN),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.body);
    }
    server.stop().await;

    let bare = TestServer::start(Backend::UsersFile, Default::default(), |_| {})
        .await
        .expect("server");
    let a = bare
        .get(
            &format!("/api/coverage?day={DAY}"),
            Some(support::server::ADMIN),
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(a.body.contains("no archive is configured"), "{}", a.body);
    bare.stop().await;
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[tokio::test]
async fn yesterdays_coverage_is_computed_in_the_background_and_the_status_page_has_its_panel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let yesterday = Utc::now().date_naive().pred_opt().unwrap();
    let start = yesterday.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let m = id("0b0003");
    let lines: Vec<String> = (0..60)
        .map(|i| demand_at(m, start + Duration::minutes(i), 50, 1.0))
        .collect();
    write_object(&root, m, HourBucket::of(start), &lines);
    let server = server_over(&root).await;
    let mut body = Value::Null;
    support::process::wait_for("yesterday's coverage in the cache", async || {
        let a = server
            .get("/api/coverage", Some(support::server::ADMIN))
            .await;
        if a.status == StatusCode::OK {
            body = a.json();
            return true;
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
        assert!(a.body.contains("being computed"), "{}", a.body);
        false
    })
    .await;
    assert_eq!(body["day"], yesterday.to_string());
    let days = body["report"]["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{body}");
    assert_eq!(days[0]["present"], 60);
    assert_eq!(days[0]["expected"], 1440);

    let page = server.get("/status", None).await;
    assert!(page.body.contains("id=\"coverage-rows\""));
    assert!(page.body.contains("fetch('/api/coverage'"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert_eq!(csp.matches("'sha256-").count(), 3, "{csp}");
    server.stop().await;
}
