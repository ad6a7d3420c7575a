//! The rotator against a hostile store: moto behind the fault-injecting
//! proxy (`support::s3_proxy`) answering 403, `ExpiredToken`, 500 and
//! slowly, or corrupting bodies in flight; and the spool writer appending
//! to an hour while the rotator ships it. Each test checks what ends up in
//! moto, line by line, and what is left in the spool.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use rainforest::archive::{Archive, S3Archive};
use rainforest::clock::Clock;
use rainforest::cloud_id::CloudId;
use rainforest::rotator::Rotator;
use rainforest::spool::{HourBucket, Spool, SpoolOptions};
use support::rotator::{options, still_in_spool, unshipped_files};
use support::s3::S3Server;
use support::s3_proxy::{Fault, On, S3Proxy};
use support::spool::{canonical, gunzip, hours_ago, key, line, write_spool};
use tokio_util::sync::CancellationToken;

/// moto, a bucket, and the proxy in front of it.
async fn hostile_store() -> Option<(S3Server, String, S3Proxy)> {
    let s3 = S3Server::start()?;
    let bucket = s3.create_bucket().await;
    let proxy = S3Proxy::start(&s3.endpoint()).await;
    Some((s3, bucket, proxy))
}

/// `n` files of 20 lines each, one per meter, for the hour two hours ago;
/// returns every key with the lines it must hold.
fn backlog(data: &Path, n: u32) -> Vec<(String, Vec<String>)> {
    let h = hours_ago(2);
    (0..n)
        .map(|i| {
            let m = CloudId::from_index(i);
            let lines: Vec<String> = (0..20).map(|s| line(m, h, s)).collect();
            write_spool(data, m, h, &lines, "");
            (key(m, h), canonical(&lines))
        })
        .collect()
}

/// Asserts every key holds exactly its lines (no line lost, none twice).
async fn assert_archived(s3: &S3Server, bucket: &str, expected: &[(String, Vec<String>)]) {
    for (k, lines) in expected {
        let gz = s3
            .get(bucket, k)
            .await
            .unwrap_or_else(|| panic!("{k} is not in {bucket}"));
        let got: Vec<String> = gunzip(&gz).lines().map(str::to_string).collect();
        assert_eq!(&got, lines, "{k}");
    }
}

#[tokio::test]
async fn a_403_keeps_every_file_and_pauses_the_rotator_with_one_error_per_pause() {
    let Some((s3, bucket, proxy)) = hostile_store().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = backlog(dir.path(), 12);
    let mut opts = options(dir.path());
    opts.every = Duration::from_millis(20);
    opts.operator_pause = Duration::from_millis(400);
    let archive = s3.at(&bucket).via(&proxy.endpoint()).archive().await;
    let r = Rotator::new(opts.clone(), archive);
    proxy.arm_always(On::Put, Fault::Status(403, "AccessDenied"));

    let (logs, _guard) = support::capture_logs();
    let stop = CancellationToken::new();
    let run = r.run(stop.clone());
    tokio::pin!(run);
    let window = Duration::from_millis(1500);
    let _ = tokio::time::timeout(window, &mut run).await;

    let text = logs.text();
    let errors = text
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("refused access"))
        .count();
    // Start-up, then one attempt per pause: a handful in the window, not
    // one per file per pass (12 files, a pass every 20 ms).
    let most = 2 + window.as_millis().div_ceil(opts.operator_pause.as_millis()) as usize;
    assert!(
        (1..=most).contains(&errors),
        "{errors} errors in {window:?}, expected 1..={most}:\n{text}"
    );
    assert!(
        text.contains("s3:PutObject"),
        "the error says what to check:\n{text}"
    );
    // Each attempt stops the pass: at most `concurrency` uploads per error
    // (plus the start-up probe), never the whole backlog.
    assert!(
        proxy.puts() <= errors * opts.concurrency + 1,
        "{} PUTs for {errors} paused attempts",
        proxy.puts()
    );
    assert_eq!(
        unshipped_files(dir.path()).len(),
        expected.len(),
        "files kept"
    );
    assert!(s3.keys(&bucket).await.is_empty(), "nothing stored");

    // The operator fixes the permission: the next attempt drains it all.
    proxy.disarm();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                () = &mut run => panic!("the rotator stopped by itself"),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if unshipped_files(dir.path()).is_empty() {
                break;
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "not drained: {:?}",
        unshipped_files(dir.path())
    );
    stop.cancel();
    run.await;
    assert_archived(&s3, &bucket, &expected).await;
}

#[tokio::test]
async fn an_expired_token_reloads_the_credentials_and_the_retry_succeeds() {
    let Some((s3, bucket, proxy)) = hostile_store().await else {
        return;
    };
    let proxy = Arc::new(proxy);
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = backlog(dir.path(), 3);
    // An instance role mid-rotation: the keys handed out are expired until
    // the store has said so once; later answers are fresh.
    let asked = Arc::new(AtomicUsize::new(0));
    let provider = {
        let (asked, proxy) = (asked.clone(), proxy.clone());
        let (key, secret) = (s3.access_key(), s3.secret_key());
        aws_credential_types::credential_fn::provide_credentials_fn(move || {
            asked.fetch_add(1, Ordering::SeqCst);
            let id = if proxy.forged() == 0 {
                "expired-key".to_string()
            } else {
                key.clone()
            };
            let secret = secret.clone();
            async move { Ok(Credentials::new(id, secret, None, None, "rotating-test")) }
        })
    };
    proxy.arm_always(On::Any, Fault::ExpiredFor("expired-key".into()));
    let settings = s3.at(&bucket).via(&proxy.endpoint()).settings();
    let archive =
        S3Archive::connect_with_provider(settings, SharedCredentialsProvider::new(provider))
            .await
            .expect("archive");
    let r = Rotator::new(options(dir.path()), Archive::S3(archive));

    let (logs, _guard) = support::capture_logs();
    let report = r.run_once(&CancellationToken::new()).await;
    assert!(report.all_archived(), "{report:?}\n{}", logs.text());
    assert!(
        proxy.forged() >= 1,
        "the expired key never reached the store"
    );
    assert!(
        asked.load(Ordering::SeqCst) >= 2,
        "the credentials were not loaded again"
    );
    assert!(
        logs.text().contains("expired"),
        "the expiry is logged:\n{}",
        logs.text()
    );
    assert_archived(&s3, &bucket, &expected).await;
    assert!(unshipped_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_body_corrupted_in_flight_is_refused_by_its_checksum_and_the_file_is_kept() {
    let Some((s3, bucket, proxy)) = hostile_store().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = backlog(dir.path(), 3);
    let mut opts = options(dir.path());
    opts.concurrency = 1;
    let archive = s3.at(&bucket).via(&proxy.endpoint()).archive().await;
    let r = Rotator::new(opts, archive);
    proxy.arm(On::Put, Fault::CorruptBody, 1);

    let report = r.run_once(&CancellationToken::new()).await;
    assert_eq!(
        proxy.bad_digests(),
        1,
        "the upload carried no Content-MD5 matching its body"
    );
    assert_eq!((report.archived, report.failed), (2, 1), "{report:?}");
    assert!(
        report.store_error.is_none(),
        "one key's problem: {report:?}"
    );
    let h = hours_ago(2);
    let first = rainforest::spool::hour_file(
        dir.path(),
        support::spool::PREFIX,
        CloudId::from_index(0),
        h,
    );
    assert!(still_in_spool(&first), "the refused file must stay");
    assert_eq!(s3.get(&bucket, &expected[0].0).await, None);

    let again = r.run_once(&CancellationToken::new()).await;
    assert!(again.all_archived(), "{again:?}");
    assert_archived(&s3, &bucket, &expected).await;
    assert!(unshipped_files(dir.path()).is_empty());
}

#[tokio::test]
async fn answers_of_500_and_slow_answers_are_retried_in_the_same_pass_without_duplicates() {
    let Some((s3, bucket, proxy)) = hostile_store().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = backlog(dir.path(), 6);
    let archive = s3.at(&bucket).via(&proxy.endpoint()).archive().await;
    let r = Rotator::new(options(dir.path()), archive);
    proxy.arm(On::Put, Fault::Status(500, "InternalError"), 3);
    proxy.arm(On::Get, Fault::Status(503, "SlowDown"), 2);
    proxy.arm(On::Put, Fault::Delay(Duration::from_millis(1500)), 2);
    // A 500 after the store wrote the object: the SDK's retry is refused
    // (If-None-Match), the rotator re-reads and finds every line there, so
    // nothing is written twice.
    proxy.arm(On::Put, Fault::AnswerLost(500, "InternalError"), 1);
    let report = r.run_once(&CancellationToken::new()).await;
    assert!(report.all_archived(), "{report:?}");
    assert_eq!(
        report.failed, 0,
        "the SDK's retries absorb them: {report:?}"
    );
    assert_eq!(proxy.forged(), 6, "every injected error was met");
    // One PUT per file, plus one per 500 retried.
    assert_eq!(proxy.puts(), expected.len() + 4);
    assert_eq!(r.stats().snapshot().conflicts, 1, "the lost answer's retry");
    assert_archived(&s3, &bucket, &expected).await;
    assert!(unshipped_files(dir.path()).is_empty());
}

fn spool(data: &Path) -> Spool {
    Spool::start(SpoolOptions {
        data_dir: data.to_path_buf(),
        prefix: support::spool::PREFIX.into(),
        open_files: 16,
        flush_every: Duration::from_millis(100),
    })
    .expect("spool")
}

/// Appends `line` (a record of `hour`) through the spool writer and waits
/// until it is on disk.
async fn append(spool: &Spool, m: CloudId, hour: HourBucket, second: u32) -> String {
    let l = line(m, hour, second);
    let polled_at = hour.start() + chrono::Duration::seconds(i64::from(second));
    spool
        .append(m, polled_at, format!("{l}\n"))
        .await
        .expect("append");
    spool.flush().await;
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_appended_to_a_finished_hour_during_its_upload_is_shipped_not_deleted() {
    let Some((s3, bucket, proxy)) = hostile_store().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = spool(dir.path());
    let (m, h) = (CloudId::from_index(3), hours_ago(2));
    let mut lines = Vec::new();
    for s in 0..3 {
        lines.push(append(&spool, m, h, s).await);
    }
    let archive = s3.at(&bucket).via(&proxy.endpoint()).archive().await;
    let r = Arc::new(Rotator::new(options(dir.path()), archive));
    proxy.arm(On::Put, Fault::Hold, 1);
    let pass = {
        let r = r.clone();
        tokio::spawn(async move { r.run_once(&CancellationToken::new()).await })
    };
    // The rotator has read the file and its upload is in flight: a late
    // poll of that hour lands now.
    proxy.wait_held(1, Duration::from_secs(10)).await;
    lines.push(append(&spool, m, h, 30).await);
    proxy.release(1);
    let first = pass.await.expect("pass");
    assert!(first.all_archived(), "{first:?}");
    let second = r.run_once(&CancellationToken::new()).await;
    assert!(second.all_archived(), "{second:?}");
    assert_eq!(second.merged, 1, "the late line is merged: {second:?}");
    assert_archived(&s3, &bucket, &[(key(m, h), canonical(&lines))]).await;
    assert!(unshipped_files(dir.path()).is_empty());
    spool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_the_writer_appends_to_the_open_file_during_its_upload_is_merged_before_the_delete()
{
    let Some((s3, bucket, proxy)) = hostile_store().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = spool(dir.path());
    // The live hour, still open in the writer; the rotator's clock says it
    // is over (an hour rollover seen by the rotator first).
    let now = chrono::Utc::now();
    let (m, h) = (CloudId::from_index(4), HourBucket::of(now));
    let mut lines = Vec::new();
    for s in 0..3 {
        lines.push(append(&spool, m, h, s).await);
    }
    let clock = Clock::starting_at(h.end() + chrono::Duration::minutes(5));
    let archive = s3.at(&bucket).via(&proxy.endpoint()).archive().await;
    let r = Arc::new(Rotator::new(options(dir.path()), archive).with_clock(clock));
    proxy.arm(On::Put, Fault::Hold, 1);
    let pass = {
        let r = r.clone();
        tokio::spawn(async move { r.run_once(&CancellationToken::new()).await })
    };
    proxy.wait_held(1, Duration::from_secs(10)).await;
    // The writer still holds the file open, so this lands in the file the
    // rotator has already read.
    lines.push(append(&spool, m, h, 31).await);
    proxy.release(1);
    let report = pass.await.expect("pass");
    assert!(report.all_archived(), "{report:?}");
    assert_archived(&s3, &bucket, &[(key(m, h), canonical(&lines))]).await;
    assert!(
        unshipped_files(dir.path()).is_empty(),
        "{:?}",
        unshipped_files(dir.path())
    );
    spool.close().await;
}
