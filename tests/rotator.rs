//! The rotator end to end against a real S3-compatible server (moto, started
//! by the harness on a free loopback port; see `support::s3`), in process
//! and through the real `rainforest rotator` binary. Spool files are
//! written directly for hours in the past and `rotate_grace` is 1 ms, so
//! every test runs in seconds.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rainforest::archive::{Archive, ArchiveError, Condition, DirArchive, ObjectKey};
use rainforest::clock::Clock;
use rainforest::cloud_id::CloudId;
use rainforest::rotator::{Rotator, RotatorOptions};
use rainforest::spool::{HourBucket, hour_file};
use support::process::Proc;
use support::rotator::{
    one_at_a_time, options, race_two_passes, still_in_spool, two_hosts_same_keys, unshipped_files,
};
use support::s3::S3Server;
use support::s3_proxy::{Fault, On, S3Proxy};
use support::spool::{KEY_PREFIX, PREFIX, canonical, gunzip, hours_ago, key, line, write_spool};
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> CloudId {
    CloudId::parse(s).expect("cloud id")
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).expect("gzip");
    e.finish().expect("gzip")
}

/// The object's lines; panics on a line that is not a complete JSON object.
async fn object_lines(s3: &S3Server, bucket: &str, key: &str) -> Vec<String> {
    let gz = s3
        .get(bucket, key)
        .await
        .unwrap_or_else(|| panic!("{key} is not in {bucket}"));
    let text = gunzip(&gz);
    assert!(text.ends_with('\n'), "{key} does not end with a newline");
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{key}: bad line {l:?}: {e}"));
            assert!(v.is_object(), "{key}: {l} is not an object");
            l.to_string()
        })
        .collect()
}

async fn s3_archive(s3: &S3Server, bucket: &str) -> Archive {
    s3.at(bucket).archive().await
}

async fn rotator(s3: &S3Server, bucket: &str, data_dir: &Path) -> Rotator {
    Rotator::new(options(data_dir), s3_archive(s3, bucket).await)
}

/// What most tests here start from: moto with a fresh bucket, and a spool
/// directory (`logs`, not created yet) in a temporary directory that lives
/// as long as it is held; `None` where the harness skips for want of an S3
/// server.
async fn moto_and_spool() -> Option<(S3Server, String, tempfile::TempDir, PathBuf)> {
    let s3 = S3Server::start()?;
    let bucket = s3.create_bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("logs");
    Some((s3, bucket, dir, data))
}

/// `rainforest rotator` with a clean environment: no RAINFOREST_* or AWS_*
/// variables from the caller, the server's keys, no instance metadata.
fn rotator_command(s3: &S3Server, bucket: &str, data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd =
        support::process::rainforest_with_s3_keys(&s3.access_key(), &s3.secret_key(), data_dir);
    cmd.current_dir(data_dir.parent().unwrap_or(data_dir))
        .arg("rotator")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--set", &format!("s3_bucket={bucket}")])
        .args(["--set", &format!("s3_endpoint={}", s3.endpoint())])
        .args(["--set", "rotate_grace=30s", "--set", "rotate_every=200ms"])
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn completed_hours_are_uploaded_with_the_documented_key_and_plain_gzip() {
    let Some((s3, bucket, dir, data)) = moto_and_spool().await else {
        return;
    };
    let (a, b) = (id("00ce69"), id("0a0b0c"));
    let h = hours_ago(2);
    let lines_a: Vec<String> = (0..50).map(|s| line(a, h, s)).collect();
    let lines_b: Vec<String> = (0..10).map(|s| line(b, h, s * 7)).collect();
    let file_a = write_spool(&data, a, h, &lines_a, "");
    let file_b = write_spool(&data, b, h, &lines_b, "");
    // The current hour is still being written: it must be left alone.
    let live = write_spool(&data, a, hours_ago(0), &[line(a, hours_ago(0), 1)], "");

    let r = rotator(&s3, &bucket, &data).await;
    let report = r.run_once(&CancellationToken::new()).await;
    assert!(report.all_archived(), "{report:?}");
    assert_eq!(report.archived, 2);

    assert_eq!(s3.keys(&bucket).await, vec![key(a, h), key(b, h)]);
    let k = key(a, h);
    let hs = h.to_string();
    assert_eq!(
        k,
        format!(
            "rainforest-logs/00ce69/{}/{}/{}/iseif-rainforest-00ce69-{hs}.jl.gz",
            &hs[0..4],
            &hs[5..7],
            &hs[8..10]
        )
    );
    assert_eq!(object_lines(&s3, &bucket, &k).await, canonical(&lines_a));
    assert_eq!(
        object_lines(&s3, &bucket, &key(b, h)).await,
        canonical(&lines_b)
    );

    // Plain `gzip -d` reads the object too.
    let gz_path = dir.path().join("a.jl.gz");
    std::fs::write(&gz_path, s3.get(&bucket, &k).await.expect("object")).expect("write");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&gz_path)
        .output()
        .expect("run gzip");
    assert!(
        out.status.success(),
        "gzip -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(plain, canonical(&lines_a));

    assert!(
        !still_in_spool(&file_a) && !still_in_spool(&file_b),
        "uploaded files must be deleted"
    );
    assert!(live.exists(), "the live hour must not be touched");
    let stats = r.stats().snapshot();
    assert_eq!(stats.uploads_ok, 2);
    assert_eq!(stats.lines_uploaded, 60);
    assert_eq!(stats.files_pending, 0);
}

#[tokio::test]
async fn local_file_is_kept_until_the_store_acknowledges() {
    let Some(s3) = S3Server::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("logs");
    let m = id("00ce69");
    let h = hours_ago(3);
    let file = write_spool(&data, m, h, &[line(m, h, 1)], "");
    // A bucket that does not exist: every write fails.
    let r = rotator(&s3, "t-no-such-bucket", &data).await;
    let report = r.run_once(&CancellationToken::new()).await;
    assert!(!report.all_archived());
    assert!(
        matches!(report.store_error, Some(ArchiveError::NoSuchBucket { ref bucket, .. }) if bucket == "t-no-such-bucket"),
        "{report:?}"
    );
    assert!(
        still_in_spool(&file),
        "a file must not be deleted without an acknowledged upload"
    );
    assert!(!data.join("quarantine").exists());
    assert_eq!(r.stats().snapshot().files_pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_survives_an_outage_and_drains_with_every_line() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    if !s3.can_restart() {
        support::skipped("the external S3 from TEST_S3_ENDPOINT cannot be stopped");
        return;
    }
    let bucket = s3.create_bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("logs");
    let mut expected = Vec::new();
    for n in 0..12 {
        let m = CloudId::from_index(n % 3);
        let h = hours_ago(2 + i64::from(n / 3));
        let lines: Vec<String> = (0..30).map(|s| line(m, h, s)).collect();
        write_spool(&data, m, h, &lines, "");
        expected.push((key(m, h), lines));
    }
    s3.stop();

    let r = rotator(&s3, &bucket, &data).await;
    let stats = r.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { r.run(stop).await }
    });
    // Several passes against a dead store (each request first exhausts the
    // SDK's fast retries): everything stays on disk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // (uploads_failed counts as attempts fail; the gauges are set at the end
    // of each pass.)
    while stats.snapshot().uploads_failed < 2 || stats.snapshot().files_pending == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt against the dead store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        unshipped_files(&data).len(),
        12,
        "backlog must stay on disk while S3 is down"
    );
    let during = stats.snapshot();
    assert_eq!(during.uploads_ok, 0);
    assert_eq!(during.files_pending, 12);
    assert!(during.oldest_pending_age_secs >= 3600, "{during:?}");

    s3.start_again();
    s3.create_named_bucket(&bucket).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !unshipped_files(&data).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog not drained: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.expect("rotator task");
    for (k, lines) in &expected {
        assert_eq!(
            &object_lines(&s3, &bucket, k).await,
            &canonical(lines),
            "{k}"
        );
    }
    let after = stats.snapshot();
    assert_eq!(after.uploads_ok, 12);
    assert_eq!(after.files_pending, 0);
    assert_eq!(after.oldest_pending_age_secs, 0);
}

#[tokio::test]
async fn late_lines_are_merged_into_the_existing_object() {
    let Some((s3, bucket, _dir, data)) = moto_and_spool().await else {
        return;
    };
    let m = id("00ce69");
    let h = hours_ago(5);
    // Already archived: seconds 0..20. Late lines: 15..40 (15..20 overlap).
    let archived: Vec<String> = (0..20).map(|s| line(m, h, s)).collect();
    let late: Vec<String> = (15..40).rev().map(|s| line(m, h, s)).collect();
    let archived_text: String = archived.iter().map(|l| format!("{l}\n")).collect();
    s3.put(&bucket, &key(m, h), gzip(&archived_text)).await;
    write_spool(&data, m, h, &late, "");

    let r = rotator(&s3, &bucket, &data).await;
    let report = r.run_once(&CancellationToken::new()).await;
    assert!(report.all_archived(), "{report:?}");
    assert_eq!(report.merged, 1);
    let all: Vec<String> = (0..40).map(|s| line(m, h, s)).collect();
    assert_eq!(object_lines(&s3, &bucket, &key(m, h)).await, all);
    assert!(unshipped_files(&data).is_empty());
}

#[tokio::test]
async fn a_file_already_archived_is_deleted_without_rewriting_the_object() {
    let Some((s3, bucket, _dir, data)) = moto_and_spool().await else {
        return;
    };
    let m = id("00ce69");
    let h = hours_ago(5);
    let lines: Vec<String> = (0..20).map(|s| line(m, h, s)).collect();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let original = gzip(&text);
    s3.put(&bucket, &key(m, h), original.clone()).await;
    write_spool(&data, m, h, &lines[5..10], "");

    let r = rotator(&s3, &bucket, &data).await;
    assert!(r.run_once(&CancellationToken::new()).await.all_archived());
    assert_eq!(
        s3.get(&bucket, &key(m, h)).await,
        Some(original),
        "object must not be rewritten"
    );
    assert!(unshipped_files(&data).is_empty());
}

#[tokio::test]
async fn the_server_enforces_conditional_writes() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.create_bucket().await;
    let archive = s3_archive(&s3, &bucket).await;
    let k = ObjectKey::for_hour(KEY_PREFIX, PREFIX, id("00ce69"), hours_ago(9));
    assert!(archive.get(&k).await.expect("get").is_none());
    archive
        .put(&k, b"one".to_vec(), Condition::Absent)
        .await
        .expect("create");
    assert!(matches!(
        archive.put(&k, b"two".to_vec(), Condition::Absent).await,
        Err(ArchiveError::Conflict { .. })
    ));
    let v1 = archive.get(&k).await.expect("get").expect("exists");
    archive
        .put(&k, b"two".to_vec(), Condition::Matches(v1.etag.clone()))
        .await
        .expect("replace the version read");
    assert!(matches!(
        archive
            .put(&k, b"three".to_vec(), Condition::Matches(v1.etag))
            .await,
        Err(ArchiveError::Conflict { .. })
    ));
    assert_eq!(
        archive.get(&k).await.expect("get").expect("exists").body,
        b"two"
    );
    // ...which the start-up probe finds out, so no warning is due.
    assert!(
        archive
            .preflight(&ObjectKey::probe(KEY_PREFIX))
            .await
            .expect("preflight")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotators_racing_on_the_same_keys_lose_no_line() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.create_bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("host1"), dir.path().join("host2"));
    // Two hosts polled the same meters during a hand-over.
    let expected = two_hosts_same_keys(&d1, &d2);
    // Both rotators go through a proxy that holds the first two uploads
    // until both have arrived: one file at a time each, both start with the
    // oldest key, so both have read it absent and both create it at once.
    let proxy = S3Proxy::start(&s3.endpoint()).await;
    proxy.arm(On::Put, Fault::Hold, 2);
    let at = s3.at(&bucket).via(&proxy.endpoint());
    let r1 = Rotator::new(one_at_a_time(&d1), at.archive().await);
    let r2 = Rotator::new(one_at_a_time(&d2), at.archive().await);
    let (a, b) = race_two_passes(&r1, &r2, &proxy, Duration::from_secs(10)).await;
    assert!(a.all_archived(), "{a:?}");
    assert!(b.all_archived(), "{b:?}");
    for (k, lines) in &expected {
        assert_eq!(&object_lines(&s3, &bucket, k).await, lines, "{k}");
    }
    let (s1, s2) = (r1.stats().snapshot(), r2.stats().snapshot());
    assert!(
        s1.conflicts + s2.conflicts >= 1,
        "the forced race met no refused conditional write: {s1:?} {s2:?}"
    );
    // Every key was written by both, so one of each pair merged.
    assert_eq!(s1.merges + s2.merges, 40);
}

#[tokio::test]
async fn torn_last_line_is_dropped_before_upload() {
    let Some((s3, bucket, _dir, data)) = moto_and_spool().await else {
        return;
    };
    let m = id("00ce69");
    let h = hours_ago(2);
    let lines: Vec<String> = (0..3).map(|s| line(m, h, s)).collect();
    let torn = &line(m, h, 4)[..40];
    write_spool(&data, m, h, &lines, torn);
    let r = rotator(&s3, &bucket, &data).await;
    assert!(r.run_once(&CancellationToken::new()).await.all_archived());
    assert_eq!(object_lines(&s3, &bucket, &key(m, h)).await, lines);
    assert_eq!(r.stats().snapshot().lines_dropped, 1);
    assert!(unshipped_files(&data).is_empty());
}

#[tokio::test]
async fn unreadable_file_is_quarantined_not_retried_or_deleted() {
    let Some((s3, bucket, _dir, data)) = moto_and_spool().await else {
        return;
    };
    let m = id("00ce69");
    let h = hours_ago(2);
    let path = hour_file(&data, PREFIX, m, h);
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    let garbage: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    std::fs::write(&path, &garbage).expect("write");
    let good = write_spool(&data, id("0000ff"), h, &[line(id("0000ff"), h, 1)], "");

    let r = rotator(&s3, &bucket, &data).await;
    let report = r.run_once(&CancellationToken::new()).await;
    assert_eq!(report.quarantined, 1, "{report:?}");
    assert_eq!(report.archived, 1, "{report:?}");
    assert!(
        !report.all_archived(),
        "--once must report the quarantined file"
    );
    let name = path.file_name().expect("name");
    let moved = data.join("quarantine").join(name);
    assert_eq!(std::fs::read(&moved).expect("quarantined copy"), garbage);
    let why = std::fs::read_to_string(
        data.join("quarantine")
            .join(format!("{}.why", name.to_string_lossy())),
    )
    .expect("why file");
    assert!(why.contains("no complete JSON object"), "{why}");
    assert!(!path.exists() && !good.exists());
    assert_eq!(s3.keys(&bucket).await, vec![key(id("0000ff"), h)]);
    // The next pass does not see it again.
    let again = r.run_once(&CancellationToken::new()).await;
    assert_eq!((again.completed, again.quarantined), (0, 0));
}

#[tokio::test]
async fn dry_run_touches_nothing() {
    let Some((s3, bucket, _dir, data)) = moto_and_spool().await else {
        return;
    };
    let m = id("00ce69");
    let h = hours_ago(2);
    let file = write_spool(&data, m, h, &[line(m, h, 1)], "{\"torn");
    let before = std::fs::read(&file).expect("read");
    let out = rotator_command(&s3, &bucket, &data, &["--dry-run"])
        .output()
        .expect("run rotator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("s3://{bucket}/{}", key(m, h))),
        "{stdout}"
    );
    assert!(stdout.contains(&file.display().to_string()), "{stdout}");
    assert_eq!(std::fs::read(&file).expect("read"), before);
    assert!(
        s3.keys(&bucket).await.is_empty(),
        "dry run must not write to the bucket"
    );
    assert!(!data.join("quarantine").exists());
}

#[tokio::test]
async fn missing_bucket_is_one_clear_error_naming_it() {
    let Some(s3) = S3Server::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("logs");
    let m = id("00ce69");
    write_spool(&data, m, hours_ago(2), &[line(m, hours_ago(2), 1)], "");
    let out = rotator_command(&s3, "t-missing-bucket", &data, &["--once"])
        .output()
        .expect("run rotator");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("t-missing-bucket") && stderr.contains("check s3_bucket"),
        "{stderr}"
    );
    assert!(
        stderr.contains("credentials=EnvironmentVariable"),
        "start-up names the credentials source: {stderr}"
    );
    assert_eq!(unshipped_files(&data).len(), 1);
}

#[tokio::test]
async fn dir_archive_has_the_same_layout_and_merges() {
    let Some(s3) = S3Server::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("logs");
    let archive_dir = dir.path().join("archive");
    let m = id("00ce69");
    let h = hours_ago(2);
    let first: Vec<String> = (0..10).map(|s| line(m, h, s)).collect();
    write_spool(&data, m, h, &first, "");
    let archive_arg = format!("archive=dir:{}", archive_dir.display());
    let status = rotator_command(&s3, "unused", &data, &["--once", "--set", &archive_arg])
        .status()
        .expect("run rotator");
    assert!(status.success());
    let object = archive_dir.join(key(m, h));
    assert_eq!(
        gunzip(&std::fs::read(&object).expect("object")),
        first.iter().map(|l| format!("{l}\n")).collect::<String>()
    );

    // Late lines for the same hour are merged into the file.
    let late: Vec<String> = (5..15).map(|s| line(m, h, s)).collect();
    write_spool(&data, m, h, &late, "");
    let r = Rotator::new(
        options(&data),
        Archive::Dir(DirArchive::new(archive_dir.clone())),
    );
    assert!(r.run_once(&CancellationToken::new()).await.all_archived());
    let all: String = (0..15).map(|s| format!("{}\n", line(m, h, s))).collect();
    assert_eq!(gunzip(&std::fs::read(&object).expect("object")), all);
    assert!(unshipped_files(&data).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_then_restart_loses_and_duplicates_nothing() {
    let Some((s3, bucket, _dir, data)) = moto_and_spool().await else {
        return;
    };
    let mut expected = Vec::new();
    let files = 240u32;
    for n in 0..files {
        let m = CloudId::from_index(n % 20);
        let h = hours_ago(2 + i64::from(n / 20));
        let lines: Vec<String> = (0..120).map(|s| line(m, h, s * 3)).collect();
        // Every tenth hour was partly archived before (a previous host).
        if n % 10 == 0 {
            let old: String = (0..40)
                .map(|s| format!("{}\n", line(m, h, s * 3 + 1)))
                .collect();
            s3.put(&bucket, &key(m, h), gzip(&old)).await;
            let mut all = lines.clone();
            all.extend((0..40).map(|s| line(m, h, s * 3 + 1)));
            expected.push((key(m, h), canonical(&all)));
        } else {
            expected.push((key(m, h), canonical(&lines)));
        }
        write_spool(&data, m, h, &lines, "");
    }
    let premerged = s3.keys(&bucket).await.len();

    let mut child = Proc::spawn(
        rotator_command(&s3, &bucket, &data, &["--set", "upload_concurrency=8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "rotator",
    );
    // Kill it mid-drain: some objects written, not all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = s3.keys(&bucket).await.len();
        if n > premerged + 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotator made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill9();
    let left = unshipped_files(&data).len();
    assert!(left > 0, "the kill came too late to test anything");
    eprintln!("killed with {left} of {files} files left");

    let status = rotator_command(&s3, &bucket, &data, &["--once"])
        .status()
        .expect("restart");
    assert!(status.success(), "restart with --once failed");
    assert!(unshipped_files(&data).is_empty());
    for (k, lines) in &expected {
        assert_eq!(&object_lines(&s3, &bucket, k).await, lines, "{k}");
    }
}

/// A rotator over a directory archive (no server, so paused time works),
/// with `grace` and a pass every minute, on `clock`.
fn dir_rotator(data: &Path, archive: &Path, grace: Duration, clock: &Clock) -> Rotator {
    let opts = RotatorOptions {
        grace,
        every: Duration::from_secs(60),
        ..options(data)
    };
    Rotator::new(opts, Archive::Dir(DirArchive::new(archive.to_path_buf())))
        .with_clock(clock.clone())
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn an_hour_is_complete_exactly_when_the_clock_passes_its_end_and_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, archive) = (dir.path().join("logs"), dir.path().join("archive"));
    let m = id("00ce69");
    let h = HourBucket::of(at("2025-01-15T12:30:00Z"));
    let file = write_spool(&data, m, h, &[line(m, h, 1)], "");
    let grace = Duration::from_secs(120);
    // One second before 13:02, the hour end plus the grace.
    let clock = Clock::starting_at(at("2025-01-15T13:01:59Z"));
    let r = dir_rotator(&data, &archive, grace, &clock);
    let report = r.run_once(&CancellationToken::new()).await;
    assert_eq!(report.completed, 0, "{report:?}");
    assert!(file.exists());
    assert_eq!(r.plan().expect("plan").1, 1, "one file not completed yet");

    clock.set(at("2025-01-15T13:02:00Z"));
    let report = r.run_once(&CancellationToken::new()).await;
    assert_eq!((report.completed, report.archived), (1, 1), "{report:?}");
    assert!(!still_in_spool(&file));
    assert!(archive.join(key(m, h)).exists());
}

#[tokio::test(start_paused = true)]
async fn the_running_rotator_ships_an_hour_once_the_test_clock_passes_hour_end_plus_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, archive) = (dir.path().join("logs"), dir.path().join("archive"));
    let m = id("00ce69");
    let h = HourBucket::of(at("2025-01-15T12:30:00Z"));
    write_spool(&data, m, h, &[line(m, h, 1)], "");
    let object = archive.join(key(m, h));
    let ready = at("2025-01-15T13:05:00Z");
    // The hour is still being written; the rotator passes every minute.
    let clock = Clock::starting_at(at("2025-01-15T12:58:30Z"));
    let r = dir_rotator(&data, &archive, Duration::from_secs(300), &clock);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { r.run(stop).await }
    });
    // Ten minutes of passes in paused time: never before `ready`, and
    // within one pass after it.
    let mut shipped_at = None;
    while clock.now() < ready + chrono::Duration::minutes(5) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if shipped_at.is_none() && object.exists() {
            shipped_at = Some(clock.now());
        }
    }
    stop.cancel();
    task.await.expect("rotator task");
    let shipped_at = shipped_at.expect("the hour was never shipped");
    assert!(
        shipped_at >= ready,
        "shipped at {shipped_at}, before {ready}"
    );
    assert!(
        shipped_at <= ready + chrono::Duration::seconds(70),
        "shipped at {shipped_at}, more than a pass after {ready}"
    );
}
