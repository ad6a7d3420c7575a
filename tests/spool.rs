//! The spool on a real file system: whole lines only, a bounded pool of open
//! files, torn tails cut, and disk errors retried without losing lines.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rainforest::cloud_id::CloudId;
use rainforest::spool::{HourBucket, Spool, SpoolOptions, hour_file};
use rainforest::stream::Kind;
use support::spool::written_lines;

fn spool(dir: &Path, open_files: usize) -> Spool {
    Spool::start(SpoolOptions {
        data_dir: dir.to_path_buf(),
        prefix: "iseif-rainforest".into(),
        open_files,
        flush_every: Duration::from_millis(100),
    })
    .expect("start spool")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn line(id: CloudId, n: usize) -> String {
    // Long lines make interleaving, if it happened, visible.
    format!(
        "{{\"cloud_id\":\"{id}\",\"n\":{n},\"pad\":\"{}\"}}\n",
        "x".repeat(3000)
    )
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:.80}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_interleave_and_a_small_pool_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = spool(dir.path(), 4);
    let t = at("2025-01-15T10:20:00Z");
    let mut tasks = Vec::new();
    for m in 0..20u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let id = CloudId::from_index(m);
            for n in 0..50 {
                s.append(id, t, line(id, n)).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Everything written, yet never more than the pool's 4 files open.
    s.flush().await;
    let open_here = std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter(|target| target.starts_with(dir.path()))
                .count()
        })
        .unwrap_or(0);
    assert!(
        open_here <= 4,
        "{open_here} spool files open with a pool of 4"
    );
    s.close().await;
    for m in 0..20u32 {
        let id = CloudId::from_index(m);
        let lines = written_lines(&s, Kind::Demand, id, HourBucket::of(t));
        let ns: Vec<u64> = lines.iter().map(|v| v["n"].as_u64().expect("n")).collect();
        assert_eq!(ns, (0..50).collect::<Vec<u64>>(), "meter {id}");
    }
    assert_eq!(
        rainforest::spool::SpoolStats::get(&s.stats().lines_written),
        1000
    );
    assert!(rainforest::spool::SpoolStats::get(&s.stats().files_opened) >= 20);
}

#[tokio::test]
async fn lines_go_to_the_utc_hour_of_polled_at() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = spool(dir.path(), 8);
    let id = CloudId::parse("00ce69").expect("id");
    s.append(id, at("2025-01-15T10:59:59.999Z"), line(id, 1))
        .await
        .expect("append");
    s.append(id, at("2025-01-15T11:00:00.000Z"), line(id, 2))
        .await
        .expect("append");
    s.close().await;
    let w = s.writer();
    let p10 = dir.path().join(format!(
        "2025-01-15-10/iseif-rainforest-00ce69-2025-01-15-10.{w}.jl"
    ));
    let p11 = dir.path().join(format!(
        "2025-01-15-11/iseif-rainforest-00ce69-2025-01-15-11.{w}.jl"
    ));
    assert_eq!(read_lines(&p10)[0]["n"], 1);
    assert_eq!(read_lines(&p11)[0]["n"], 2);
}

#[tokio::test]
async fn another_writers_file_is_never_touched_even_with_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = CloudId::parse("00ce69").expect("id");
    let t = at("2025-01-15T10:20:00Z");
    // A file of the old layout (or of a writer that crashed) for the hour.
    let other = hour_file(dir.path(), "iseif-rainforest", id, HourBucket::of(t));
    std::fs::create_dir_all(other.parent().expect("parent")).expect("mkdir");
    let torn = "{\"n\":0}\n{\"n\":1,\"cut here";
    std::fs::write(&other, torn).expect("write");
    let s = spool(dir.path(), 8);
    s.append(id, t, line(id, 2)).await.expect("append");
    s.close().await;
    // Its bytes stay as they were (the rotator drops the torn tail when it
    // ships the file); our line is in our own file.
    assert_eq!(std::fs::read_to_string(&other).expect("read"), torn);
    let ns: Vec<u64> = written_lines(&s, Kind::Demand, id, HourBucket::of(t))
        .iter()
        .map(|v| v["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(ns, vec![2]);
}

#[tokio::test]
async fn two_spools_on_one_directory_write_separate_files_and_lose_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = CloudId::parse("00ce69").expect("id");
    let t = chrono::Utc::now();
    let (a, b) = (spool(dir.path(), 2), spool(dir.path(), 2));
    assert_ne!(a.writer(), b.writer());
    for n in 0..20 {
        a.append(id, t, line(id, n)).await.expect("append a");
        b.append(id, t, line(id, 100 + n)).await.expect("append b");
    }
    a.close().await;
    b.close().await;
    let h = HourBucket::of(t);
    assert_ne!(
        a.file_of(Kind::Demand, id, h),
        b.file_of(Kind::Demand, id, h)
    );
    let ns = |s: &Spool| -> Vec<u64> {
        written_lines(s, Kind::Demand, id, h)
            .iter()
            .map(|v| v["n"].as_u64().expect("n"))
            .collect()
    };
    assert_eq!(ns(&a), (0..20).collect::<Vec<u64>>());
    assert_eq!(ns(&b), (100..120).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_errors_are_counted_and_retried_until_the_lines_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = CloudId::parse("00ce69").expect("id");
    let t = at("2025-01-15T10:20:00Z");
    // A plain file where the hour directory must go: every open fails, as
    // on a broken disk (permissions do not stop root, this does).
    let blocker = dir.path().join("2025-01-15-10");
    std::fs::write(&blocker, "not a directory").expect("write blocker");
    let s = spool(dir.path(), 8);
    for n in 0..3 {
        s.append(id, t, line(id, n)).await.expect("append");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        rainforest::spool::SpoolStats::get(&s.stats().write_errors) >= 2,
        "errors are counted and retried"
    );
    assert_eq!(
        rainforest::spool::SpoolStats::get(&s.stats().lines_written),
        0
    );
    std::fs::remove_file(&blocker).expect("remove blocker");
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.close().await;
    let lines = written_lines(&s, Kind::Demand, id, HourBucket::of(t));
    assert_eq!(lines.len(), 3);
}

#[tokio::test]
async fn each_kind_goes_to_its_own_file_and_demand_keeps_the_old_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = CloudId::parse("00ce69").expect("id");
    let t = at("2025-01-15T10:20:00Z");
    let s = spool(dir.path(), 8);
    s.append(id, t, line(id, 1)).await.expect("append demand");
    s.append_kind(Kind::Summation, id, t, line(id, 2))
        .await
        .expect("append summation");
    s.close().await;
    let w = s.writer();
    let demand = dir.path().join(format!(
        "2025-01-15-10/iseif-rainforest-00ce69-2025-01-15-10.{w}.jl"
    ));
    let summation = dir.path().join(format!(
        "2025-01-15-10/iseif-rainforest-summation-00ce69-2025-01-15-10.{w}.jl"
    ));
    assert_eq!(read_lines(&demand).len(), 1);
    assert_eq!(read_lines(&demand)[0]["n"], 1);
    assert_eq!(read_lines(&summation).len(), 1);
    assert_eq!(read_lines(&summation)[0]["n"], 2);
}
