//! Read-back from an S3 archive (a private moto_server): coverage without
//! `--meter` finds every meter through the bucket listing, export reads
//! the objects concurrently, and a corrupt object is reported while the
//! rest is still exported.

mod support;

use chrono::{Duration, TimeZone, Utc};
use rainforest::archive::{Condition, ObjectKey};
use rainforest::cloud_id::CloudId;
use rainforest::spool::HourBucket;
use serde_json::Value;
use support::readings::{demand_at, gzip_lines};
use support::s3::S3Server;
use support::spool::{KEY_PREFIX, PREFIX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_lists_the_buckets_meters_and_export_reports_a_corrupt_object() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let bucket = s3.create_bucket().await;
    let archive = s3.at(&bucket).archive().await;
    let day = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
    let ids: Vec<CloudId> = (1..=3).map(|i| CloudId::from_index(0x0c0000 + i)).collect();
    let mut lines_of_first = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        for h in 0..4 {
            let hour = HourBucket::of(day + Duration::hours(h));
            let lines: Vec<String> = (0..60)
                .map(|m| demand_at(*id, hour.start() + Duration::minutes(m), 80, 1.0))
                .collect();
            let key = ObjectKey::for_hour(KEY_PREFIX, PREFIX, *id, hour);
            let body = if n == 1 && h == 2 {
                b"not gzip at all".to_vec()
            } else {
                gzip_lines(&lines)
            };
            if n == 0 {
                lines_of_first.extend(lines);
            }
            archive.put(&key, body, Condition::Absent).await.unwrap();
        }
    }
    let scratch = tempfile::tempdir().unwrap();
    let command = |args: &[&str]| {
        let mut cmd = support::process::rainforest_with_s3_keys(
            &s3.access_key(),
            &s3.secret_key(),
            scratch.path(),
        );
        cmd.arg("--data-dir")
            .arg(scratch.path().join("spool"))
            .args(["--set", &format!("s3_bucket={bucket}")])
            .args(["--set", &format!("s3_endpoint={}", s3.endpoint())])
            .args(["--set", "poll_interval=60s"])
            .args(args);
        cmd.output().expect("run rainforest")
    };

    let cov = command(&[
        "coverage",
        "--from",
        "2025-06-01",
        "--to",
        "2025-06-01",
        "--format",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&cov.stderr);
    assert_eq!(cov.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unreadable:") && stderr.contains("0c0002"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&cov.stdout).unwrap();
    let present: Vec<(String, u64)> = report["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["cloud_id"].as_str().unwrap().to_string(),
                d["present"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        present,
        [
            ("0c0001".into(), 240),
            ("0c0002".into(), 180),
            ("0c0003".into(), 240)
        ]
    );

    let out = scratch.path().join("first.jsonl");
    let exp = command(&[
        "export",
        "--meter",
        "0c0001",
        "--from",
        "2025-06-01",
        "--to",
        "2025-06-01",
        "--format",
        "jsonl",
        "--concurrency",
        "4",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        exp.status.success(),
        "{}",
        String::from_utf8_lossy(&exp.stderr)
    );
    let got: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, lines_of_first);
}
