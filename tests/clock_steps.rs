//! Wall-clock steps (NTP, a VM resumed, an operator's `date -s`) against
//! hour bucketing and poll slots, with an injected [`Clock`] in the poller
//! and the rotator: the real client, spool and directory archive, the
//! simulator as relay.
//!
//! Slots run on the monotonic clock and must not notice a step; hours
//! follow the wall clock, so a step back revisits an hour that may already
//! be sealed and shipped, and a step forward leaves hours behind that must
//! still be sealed.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rainforest::archive::{Archive, DirArchive};
use rainforest::clock::Clock;
use rainforest::cloud_id::CloudId;
use rainforest::pinger::{eagle_from_config, spool_from_config};
use rainforest::poll::Poller;
use rainforest::rotator::{Rotator, RotatorOptions};
use rainforest::scheduler::{Scheduler, SchedulerOptions};
use rainforest::simulator::{self, SimulateArgs, Simulator};
use rainforest::spool::HourBucket;
use support::meters::sim_user;
use support::process::wait_for;
use support::server::base_config;
use support::spool::{dir_archive_lines, spool_lines};

async fn simulator() -> Simulator {
    Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 2,
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator")
}

/// `polled_at` of every line under `dir` (spool) for meter `id`, by hour.
fn hours_of(lines: &[serde_json::Value], id: CloudId) -> Vec<HourBucket> {
    lines
        .iter()
        .filter(|v| v["cloud_id"] == id.as_str())
        .map(|v| {
            let at = v["polled_at"].as_str().expect("polled_at");
            HourBucket::of(DateTime::parse_from_rfc3339(at).expect("time").to_utc())
        })
        .collect()
}

fn spooled(dir: &Path) -> Vec<serde_json::Value> {
    spool_lines(dir).into_iter().map(|(_, v)| v).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_back_into_a_shipped_hour_and_a_step_over_an_hour_lose_no_line() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = base_config(&sim, dir.path());
    let archive = dir.path().join("archive");
    let spool = spool_from_config(&config).expect("spool");
    // The hour before the real one: the spool's own bookkeeping (which
    // follows the system clock) still counts it as recent, as it would
    // after a real step back.
    let real = HourBucket::of(Utc::now());
    let earlier = HourBucket(real.0 - 1);
    let clock = Clock::starting_at(earlier.end() - chrono::Duration::seconds(2));
    let poller = Poller::new(eagle_from_config(&config, false).expect("eagle"), spool)
        .with_clock(clock.clone());
    let rotator = Rotator::new(
        RotatorOptions {
            grace: Duration::from_secs(120),
            ..RotatorOptions::from_config(&config)
        },
        Archive::Dir(DirArchive::new(archive.clone())),
    )
    .with_clock(clock.clone());
    let user = sim_user(0);
    let id = user.cloud_id;
    let stop = tokio_util::sync::CancellationToken::new();

    let a = poller.poll(&user).await.expect("poll a");
    // Forward past the whole next hour: `earlier` is complete, `real` was
    // never written, the poll lands two hours on.
    clock.set(earlier.end() + chrono::Duration::minutes(90));
    let b = poller.poll(&user).await.expect("poll b");
    poller.spool().flush().await;
    let report = rotator.run_once(&stop).await;
    assert_eq!(
        report.archived, 1,
        "the hour left behind is sealed: {report:?}"
    );
    assert_eq!(hours_of(&dir_archive_lines(&archive), id), [earlier]);
    let hour_dir = config.data_dir.join(earlier.to_string());
    assert!(
        !hour_dir.exists(),
        "the shipped hour's directory is removed"
    );

    // Back into the shipped hour: the line must reach a new file there...
    clock.set(earlier.end() - chrono::Duration::seconds(1));
    let c = poller.poll(&user).await.expect("poll c");
    poller.spool().flush().await;
    wait_for("the late line on disk", async || {
        poller.spool().flush().await;
        hours_of(&spooled(&config.data_dir), id).contains(&earlier)
    })
    .await;
    // ...and the next pass merges it into the hour's object.
    clock.set(earlier.end() + chrono::Duration::minutes(91));
    let report = rotator.run_once(&stop).await;
    assert_eq!(report.archived, 1, "{report:?}");

    let archived = dir_archive_lines(&archive);
    let mut kept: Vec<String> = archived
        .iter()
        .chain(spooled(&config.data_dir).iter())
        .map(|v| v["polled_at"].as_str().unwrap_or_default().to_string())
        .collect();
    kept.sort();
    let mut polled = vec![a.record.polled_at, c.record.polled_at, b.record.polled_at];
    polled.sort();
    assert_eq!(kept, polled, "every poll kept once");
    assert_eq!(hours_of(&archived, id), [earlier, earlier]);
    assert_eq!(sim.served_for(id), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_keep_their_pace_through_steps_of_the_wall_clock() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = base_config(&sim, dir.path());
    let spool = spool_from_config(&config).expect("spool");
    let start = HourBucket::of(Utc::now()).start() + chrono::Duration::minutes(30);
    let clock = Clock::starting_at(start);
    let poller = Poller::new(
        eagle_from_config(&config, false).expect("eagle"),
        spool.clone(),
    )
    .with_clock(clock.clone());
    let interval = Duration::from_millis(200);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut scheduler = Scheduler::new(
        SchedulerOptions {
            poll_interval: interval,
            max_backoff: Duration::from_secs(1),
            auth_backoff: Duration::from_secs(900),
            // This test is about the wall clock, not overload: a late start
            // on a busy machine must not turn into a skipped slot.
            max_start_lag: interval - Duration::from_millis(1),
        },
        poller,
        None,
        stop.clone(),
    );
    let id = simulator::meter_cloud_id(0);
    scheduler.apply(vec![sim_user(0)]);
    let counters = scheduler.counters();
    let began = tokio::time::Instant::now();
    // An hour back, then three forward, each after a few slots.
    wait_for("polls before the steps", async || sim.served_for(id) >= 3).await;
    clock.set(start - chrono::Duration::hours(1));
    let n = sim.served_for(id);
    wait_for("polls after stepping back", async || {
        sim.served_for(id) >= n + 3
    })
    .await;
    clock.set(start + chrono::Duration::hours(2));
    let n = sim.served_for(id);
    wait_for("polls after stepping forward", async || {
        sim.served_for(id) >= n + 3
    })
    .await;
    stop.cancel();
    scheduler.drain().await;
    let elapsed = began.elapsed();
    spool.close().await;

    // One poll per slot throughout: as many as the monotonic time allows,
    // none skipped, none doubled.
    let polls = sim.served_for(id);
    let slots = (elapsed.as_millis() / interval.as_millis()) as u64;
    assert!(
        polls + 2 >= slots && polls <= slots + 1,
        "{polls} polls in {slots} slots of {elapsed:?}"
    );
    assert_eq!(counters.snapshot().missed_slots, 0);
    // Every poll is a line, in the hour its stepped clock gave it.
    let hours = hours_of(&spooled(&config.data_dir), id);
    assert_eq!(hours.len() as u64, polls);
    let at = |t: DateTime<Utc>| HourBucket::of(t);
    for h in [
        at(start - chrono::Duration::hours(1)),
        at(start),
        at(start + chrono::Duration::hours(2)),
    ] {
        assert!(hours.contains(&h), "no line in hour {h}: {hours:?}");
    }
}
