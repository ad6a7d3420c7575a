//! The rotator and the spool's writers: what it ships depends on who wrote
//! a file (a live writer's sealed hours, a gone writer's files after the
//! grace), every stream kind reaches its own key, rotators on two hosts
//! merge hand-over duplicates by slot, and the conditional-write probe
//! stays out of the data prefix. A local directory archive where the store
//! does not matter, moto where conditional writes do.

mod support;

use std::path::Path;
use std::time::Duration;

use rainforest::archive::{Archive, DirArchive, ObjectKey};
use rainforest::cloud_id::CloudId;
use rainforest::rotator::{Rotator, RotatorOptions};
use rainforest::spool::{HourBucket, Spool, SpoolOptions};
use rainforest::stream::Kind;
use support::rotator::{options, unshipped_files};
use support::s3::S3Server;
use support::spool::{
    KEY_PREFIX, PREFIX, canonical, gunzip, heartbeat, hours_ago, line, slot_line, write_spool_as,
};
use tokio_util::sync::CancellationToken;

fn dir_rotator(opts: RotatorOptions, root: &Path) -> Rotator {
    Rotator::new(opts, Archive::Dir(DirArchive::new(root.to_path_buf())))
}

fn key_of(kind: Kind, m: CloudId, h: HourBucket) -> ObjectKey {
    ObjectKey::for_stream(KEY_PREFIX, PREFIX, kind, m, h)
}

/// The lines of the object at `key`, in the archive's order.
async fn object(archive: &Archive, key: &ObjectKey) -> Vec<String> {
    let stored = archive
        .get(key)
        .await
        .expect("read the archive")
        .unwrap_or_else(|| panic!("{key} is not in the archive"));
    gunzip(&stored.body).lines().map(str::to_string).collect()
}

fn spool(data: &Path) -> Spool {
    Spool::start(SpoolOptions {
        data_dir: data.to_path_buf(),
        prefix: PREFIX.into(),
        open_files: 16,
        flush_every: Duration::from_millis(100),
    })
    .expect("spool")
}

/// Appends a line of `kind` for `hour` and waits until the writer wrote it.
async fn append(spool: &Spool, kind: Kind, m: CloudId, hour: HourBucket, second: u32) -> String {
    let l = line(m, hour, second);
    let at = hour.start() + chrono::Duration::seconds(i64::from(second));
    spool
        .append_kind(kind, m, at, format!("{l}\n"))
        .await
        .expect("append");
    spool.flush().await;
    l
}

#[tokio::test]
async fn a_live_writers_unsealed_file_waits_and_ships_once_the_writer_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, root) = (dir.path().join("logs"), dir.path().join("archive"));
    let (m, h) = (CloudId::from_index(1), hours_ago(2));
    let writer = "pinger-7-00000001";
    let lines = vec![line(m, h, 1), line(m, h, 2)];
    // Alive (beat just now), but it has sealed only the hour before: an
    // hour two hours old that its writer still holds open.
    heartbeat(&data, writer, Some(HourBucket(h.0 - 1)), Duration::ZERO);
    let file = write_spool_as(&data, Kind::Demand, writer, m, h, &lines);
    let opts = RotatorOptions {
        grace: Duration::from_secs(60),
        ..options(&data)
    };
    let r = dir_rotator(opts, &root);
    let first = r.run_once(&CancellationToken::new()).await;
    assert_eq!(first.completed, 0, "{first:?}");
    assert!(file.exists(), "a live writer's unsealed file stays");
    assert!(
        r.archive()
            .get(&key_of(Kind::Demand, m, h))
            .await
            .expect("get")
            .is_none()
    );
    // The writer dies: its last beat is older than the grace.
    heartbeat(
        &data,
        writer,
        Some(HourBucket(h.0 - 1)),
        Duration::from_secs(61),
    );
    let second = r.run_once(&CancellationToken::new()).await;
    assert!(second.all_archived(), "{second:?}");
    assert_eq!(second.archived, 1, "{second:?}");
    assert_eq!(
        object(r.archive(), &key_of(Kind::Demand, m, h)).await,
        canonical(&lines)
    );
    assert!(unshipped_files(&data).is_empty());
}

#[tokio::test]
async fn the_heartbeat_of_a_gone_writer_goes_once_all_its_files_have_shipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, root) = (dir.path().join("logs"), dir.path().join("archive"));
    let m = CloudId::from_index(1);
    let silent = Duration::from_secs(61);
    // Gone, with a finished hour to ship: its heartbeat goes with the file.
    let shipped = "pinger-1-00000001";
    heartbeat(&data, shipped, None, silent);
    write_spool_as(
        &data,
        Kind::Demand,
        shipped,
        m,
        hours_ago(2),
        &[line(m, hours_ago(2), 1)],
    );
    // Gone, but its file for the running hour cannot ship yet: it stays.
    let waiting = "pinger-2-00000002";
    heartbeat(&data, waiting, None, silent);
    write_spool_as(
        &data,
        Kind::Demand,
        waiting,
        m,
        hours_ago(0),
        &[line(m, hours_ago(0), 1)],
    );
    // Gone, and left no file at all (stopped before its first flush).
    let empty = "pinger-3-00000003";
    heartbeat(&data, empty, None, silent);
    // Alive (beat just now) with nothing written yet: it stays.
    let live = "pinger-4-00000004";
    heartbeat(&data, live, None, Duration::ZERO);
    let opts = RotatorOptions {
        grace: Duration::from_secs(60),
        ..options(&data)
    };
    let r = dir_rotator(opts, &root);
    let report = r.run_once(&CancellationToken::new()).await;
    assert_eq!(report.archived, 1, "{report:?}");
    let mut left: Vec<String> = rainforest::spool::writers(&data)
        .expect("read the heartbeats")
        .into_keys()
        .map(|w| w.to_string())
        .collect();
    left.sort();
    assert_eq!(left, vec![waiting.to_string(), live.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_hour_ships_before_the_grace_and_a_late_line_is_merged_into_the_same_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, root) = (dir.path().join("logs"), dir.path().join("archive"));
    let spool = spool(&data);
    let (m, h) = (CloudId::from_index(2), hours_ago(2));
    // Three lines in one flush: the writer's first write of the hour goes
    // to its main file, which it then seals (the hour is long over).
    let mut lines = Vec::new();
    for s in 0..3 {
        let l = line(m, h, s);
        let at = h.start() + chrono::Duration::seconds(i64::from(s));
        spool.append(m, at, format!("{l}\n")).await.expect("append");
        lines.push(l);
    }
    spool.flush().await;
    // A grace far longer than the hour's age: only the writer's seal can
    // let the file go.
    let opts = RotatorOptions {
        grace: Duration::from_secs(3 * 3600),
        ..options(&data)
    };
    let r = dir_rotator(opts, &root);
    let first = r.run_once(&CancellationToken::new()).await;
    // One file, or more if the spool's own ticker flushed between the
    // appends (then the later lines were already late segments).
    assert!(first.all_archived() && first.archived >= 1, "{first:?}");
    let main = spool.file_of(Kind::Demand, m, h);
    assert!(!main.exists(), "the sealed file was shipped and deleted");
    assert!(unshipped_files(&data).is_empty());
    // A late poll of that hour: it goes to a late segment of its own.
    lines.push(append(&spool, Kind::Demand, m, h, 40).await);
    assert!(!main.exists(), "a sealed file is never written again");
    let left = unshipped_files(&data);
    assert_eq!(left.len(), 1, "{left:?}");
    let late = left[0].to_string_lossy();
    assert!(late.contains(".late") && late.ends_with(".jl"), "{left:?}");
    let second = r.run_once(&CancellationToken::new()).await;
    assert_eq!((second.archived, second.merged), (1, 1), "{second:?}");
    assert_eq!(
        object(r.archive(), &key_of(Kind::Demand, m, h)).await,
        canonical(&lines)
    );
    assert!(unshipped_files(&data).is_empty());
    spool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_ships_to_its_streams_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, root) = (dir.path().join("logs"), dir.path().join("archive"));
    let spool = spool(&data);
    let (m, h) = (CloudId::from_index(3), hours_ago(2));
    let mut written = Vec::new();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        written.push((kind, append(&spool, kind, m, h, i as u32).await));
    }
    spool.close().await;
    let r = dir_rotator(options(&data), &root);
    let report = r.run_once(&CancellationToken::new()).await;
    assert!(report.all_archived(), "{report:?}");
    assert_eq!(report.archived, 3, "{report:?}");
    for (kind, l) in written {
        let key = key_of(kind, m, h);
        if kind != Kind::Demand {
            assert!(key.as_str().contains(&format!("-{kind}-")), "{key}");
        }
        assert_eq!(object(r.archive(), &key).await, vec![l], "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotators_on_two_hosts_merge_into_the_same_objects_keeping_the_first_poll_of_each_slot() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.create_bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("host1"), dir.path().join("host2"));
    let h = hours_ago(2);
    let mut expected = Vec::new();
    for n in 0..12u32 {
        let m = CloudId::from_index(n);
        // Host 1's pinger polled slots 0, 6 and 12 s; it handed the meter
        // over at slot 12, which host 2's pinger polled too, and earlier.
        let a = vec![
            slot_line(m, h, 0, 50),
            slot_line(m, h, 6, 40),
            slot_line(m, h, 12, 30),
        ];
        let b = vec![slot_line(m, h, 12, 10), slot_line(m, h, 18, 20)];
        write_spool_as(&d1, Kind::Demand, "pinger-a-1-00000001", m, h, &a);
        write_spool_as(&d2, Kind::Demand, "pinger-b-2-00000002", m, h, &b);
        let want = canonical(&[a[0].clone(), a[1].clone(), b[0].clone(), b[1].clone()]);
        expected.push((key_of(Kind::Demand, m, h), want));
    }
    let r1 = Rotator::new(options(&d1), s3.at(&bucket).archive().await);
    let r2 = Rotator::new(options(&d2), s3.at(&bucket).archive().await);
    r1.preflight().await.expect("preflight 1");
    r2.preflight().await.expect("preflight 2");
    assert_eq!(r1.conditional_writes_enforced(), Some(true));
    let stop = CancellationToken::new();
    let (p1, p2) = tokio::join!(r1.run_once(&stop), r2.run_once(&stop));
    assert!(p1.all_archived(), "{p1:?}");
    assert!(p2.all_archived(), "{p2:?}");
    for (key, want) in &expected {
        assert_eq!(&object(r1.archive(), key).await, want, "{key}");
    }
    assert!(unshipped_files(&d1).is_empty());
    assert!(unshipped_files(&d2).is_empty());
}

#[tokio::test]
async fn the_probe_object_sits_next_to_the_data_prefix_in_a_directory_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, root) = (dir.path().join("logs"), dir.path().join("archive"));
    let r = dir_rotator(options(&data), &root);
    r.preflight().await.expect("preflight");
    let probe = root.join(format!("{KEY_PREFIX}.rainforest-conditional-write-probe"));
    assert!(probe.is_file(), "{} is missing", probe.display());
    let under = support::spool::files_under(&root.join(KEY_PREFIX), "");
    assert!(
        under.is_empty(),
        "nothing but data under the prefix: {under:?}"
    );
}

#[tokio::test]
async fn the_probe_object_sits_next_to_the_data_prefix_in_s3() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.create_bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("logs");
    let (m, h) = (CloudId::from_index(5), hours_ago(2));
    write_spool_as(
        &data,
        Kind::Demand,
        "gone-1-00000001",
        m,
        h,
        &[line(m, h, 1)],
    );
    let r = Rotator::new(options(&data), s3.at(&bucket).archive().await);
    r.preflight().await.expect("preflight");
    assert!(r.run_once(&CancellationToken::new()).await.all_archived());
    assert_eq!(
        s3.keys(&bucket).await,
        vec![
            format!("{KEY_PREFIX}.rainforest-conditional-write-probe"),
            key_of(Kind::Demand, m, h).as_str().to_string(),
        ]
    );
}
