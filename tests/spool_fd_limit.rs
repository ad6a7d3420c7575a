//! The spool under a descriptor limit lower than its `open_files`: it must
//! shrink its pool and keep writing, not fail every line. A test binary of
//! its own, because it lowers the whole process's limit.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use rainforest::cloud_id::CloudId;
use rainforest::spool::{HourBucket, Spool, SpoolOptions, SpoolStats};
use rainforest::stream::Kind;
use support::spool::written_lines;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_shrinks_the_pool_and_loses_no_line() {
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("read nofile limit");
    rlimit::Resource::NOFILE
        .set(128, hard)
        .expect("lower the soft nofile limit");
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::start(SpoolOptions {
        data_dir: dir.path().to_path_buf(),
        prefix: "iseif-rainforest".into(),
        open_files: 10_000,
        flush_every: Duration::from_millis(100),
    })
    .expect("start spool");
    // The current hour: the writer's open files, not late segments, are
    // what the descriptor limit squeezes.
    let t: DateTime<Utc> = Utc::now();
    for round in 0..3 {
        for m in 0..400u32 {
            let id = CloudId::from_index(m);
            let line = format!("{{\"cloud_id\":\"{id}\",\"n\":{round}}}\n");
            spool.append(id, t, line).await.expect("append");
        }
        spool.flush().await;
    }
    spool.close().await;
    assert_eq!(SpoolStats::get(&spool.stats().lines_written), 1200);
    // Every line landed on its first attempt: the pool adapted instead of
    // failing writes until the end.
    assert_eq!(SpoolStats::get(&spool.stats().write_errors), 0);
    for m in 0..400u32 {
        let id = CloudId::from_index(m);
        let lines = written_lines(&spool, Kind::Demand, id, HourBucket::of(t));
        assert_eq!(lines.len(), 3, "meter {id}");
    }
}
