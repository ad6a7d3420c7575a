//! Backfill end to end: the real `rainforest pinger` binary stopped and
//! restarted over a real Redis, the in-process simulator keeping each
//! meter's history. Cadences are seconds, so a "long" outage is a few.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::DateTime;
use rainforest::cloud_id::CloudId;
use rainforest::registry::{RedisRegistry, Registry};
use rainforest::simulator::{SimulateArgs, Simulator};
use rainforest::stream::Kind;
use support::RedisServer;
use support::meters::sim_user;
use support::pinger::{Pinger, metrics_text};
use support::process::{wait_for, wait_within};
use support::spool::kind_lines;

/// Summation every second, a gap after 4 s, history asked at 1 s spacing;
/// price off, demand slow, so the meter's requests are mostly summation.
const STREAMS: &[&str] = &[
    "--set",
    "summation_interval=1s",
    "--set",
    "price_interval=0",
    "--set",
    "backfill_after=4s",
    "--set",
    "backfill_frequency=1s",
    "--set",
    "poll_interval=2s",
];

/// How long a test waits for the backfill on a machine shared with other
/// suites.
const LOADED: Duration = Duration::from_secs(45);

/// How long the pinger stays down: well over `backfill_after`.
const OUTAGE: Duration = Duration::from_secs(8);

struct World {
    redis: RedisServer,
    ns: String,
    sim: Simulator,
    dir: tempfile::TempDir,
}

impl World {
    async fn start(history_max: u32) -> Option<World> {
        let redis = RedisServer::start()?;
        let ns = support::unique_namespace();
        let registry = Registry::Redis(
            RedisRegistry::connect(&redis.url(), &ns)
                .await
                .expect("connect redis"),
        );
        registry.put(&sim_user(0)).await.expect("put user");
        let sim = Simulator::start(SimulateArgs {
            listen: ([127, 0, 0, 1], 0).into(),
            meters: 1,
            history_max,
            history_unordered: true,
            ..SimulateArgs::default()
        })
        .await
        .expect("simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        Some(World {
            redis,
            ns,
            sim,
            dir,
        })
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("logs")
    }

    fn pinger(&self) -> Pinger {
        self.pinger_with(&[])
    }

    fn pinger_with(&self, extra: &[&str]) -> Pinger {
        let args: Vec<&str> = STREAMS.iter().chain(extra).copied().collect();
        Pinger::start(
            &self.redis.url(),
            &self.ns,
            self.sim.relay_url().as_str(),
            &self.data(),
            &args,
        )
    }
}

fn id() -> CloudId {
    sim_user(0).cloud_id
}

/// (slot ms, source, file) of every summation line, by slot.
fn summation(dir: &Path) -> Vec<(i64, String, String, serde_json::Value)> {
    let mut out: Vec<_> = kind_lines(dir, Kind::Summation)
        .into_iter()
        .map(|(path, v)| {
            let slot = v["slot"].as_str().expect("slot");
            let ms = DateTime::parse_from_rfc3339(slot)
                .unwrap_or_else(|e| panic!("bad slot {slot:?}: {e}"))
                .timestamp_millis();
            let source = v["source"].as_str().unwrap_or_default().to_string();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            (ms, source, file, v)
        })
        .collect();
    out.sort_by_key(|l| l.0);
    out
}

fn history(dir: &Path) -> Vec<(i64, String, String, serde_json::Value)> {
    summation(dir)
        .into_iter()
        .filter(|l| l.1 == "history")
        .collect()
}

fn live(dir: &Path) -> Vec<i64> {
    summation(dir)
        .into_iter()
        .filter(|l| l.1 == "relay")
        .map(|l| l.0)
        .collect()
}

/// The gap between the last live line before `outage_at` and the first
/// after it, once both are written.
fn try_gap_around(dir: &Path, outage_at: i64) -> Option<(i64, i64)> {
    let live = live(dir);
    let before = *live.iter().rfind(|&&t| t < outage_at)?;
    let after = *live.iter().find(|&&t| t > outage_at)?;
    Some((before, after))
}

fn gap_around(dir: &Path, outage_at: i64) -> (i64, i64) {
    try_gap_around(dir, outage_at).expect("live lines on both sides of the outage")
}

/// The device's one-second grid points strictly inside `(from, to)` (ms).
fn seconds_inside((from, to): (i64, i64)) -> usize {
    ((to - 1).div_euclid(1_000) - from.div_euclid(1_000)).max(0) as usize
}

/// Every history line sits inside the gap, once, in the hour file of its
/// own reading, with the raw fields.
fn assert_history_fills(dir: &Path, (from, to): (i64, i64)) {
    let lines = history(dir);
    let slots: Vec<i64> = lines.iter().map(|l| l.0).collect();
    let mut unique = slots.clone();
    unique.dedup();
    assert_eq!(unique, slots, "a history reading written twice");
    for (ms, _, file, v) in &lines {
        assert!(*ms > from && *ms < to, "history line outside the gap: {v}");
        let hour = DateTime::from_timestamp_millis(*ms)
            .unwrap()
            .format("%Y-%m-%d-%H")
            .to_string();
        assert!(
            file.contains("-summation-") && file.contains(&hour),
            "{file} is not the summation file of hour {hour}: {v}"
        );
        let meter_time = DateTime::parse_from_rfc3339(v["meter_time"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        assert_eq!(meter_time, *ms, "slot is not the device's time: {v}");
        for raw in [
            "TimeStamp",
            "SummationDelivered",
            "SummationReceived",
            "Multiplier",
            "Divisor",
        ] {
            assert!(v[raw].is_u64(), "no raw {raw}: {v}");
        }
    }
    // One line per whole second strictly inside the gap, as asked.
    assert_eq!(lines.len(), seconds_inside((from, to)), "history lines");
}

/// Runs a pinger until it has written `n` more live summation lines.
async fn run_until_live(world: &World, n: usize) -> Pinger {
    let had = live(&world.data()).len();
    let pinger = world.pinger();
    wait_for("live summation lines", async || {
        live(&world.data()).len() >= had + n
    })
    .await;
    pinger
}

/// A pinger runs until it has written two live lines, then stays down for
/// [`OUTAGE`]; returns when it went down (unix ms).
async fn run_then_stop_for_an_outage(world: &World) -> i64 {
    assert!(run_until_live(world, 2).await.terminate().success());
    let outage_at = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(OUTAGE).await;
    outage_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_gap_is_backfilled_once_into_the_right_hours_and_never_asked_again() {
    let Some(world) = World::start(16).await else {
        return;
    };
    let data = world.data();
    let outage_at = run_then_stop_for_an_outage(&world).await;
    let metrics_port = support::free_port();
    let second = world.pinger_with(&["--set", &format!("metrics_listen=127.0.0.1:{metrics_port}")]);
    wait_within("the gap backfilled", LOADED, async || {
        try_gap_around(&data, outage_at)
            .is_some_and(|gap| history(&data).len() >= seconds_inside(gap))
    })
    .await;
    // A few more slots: nothing else is asked for.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let metrics = metrics_text(metrics_port).await;
    let filled = history(&data).len();
    assert!(
        metrics.contains(&format!("rainforest_backfilled_readings_total {filled}\n")),
        "{metrics}"
    );
    assert!(metrics.contains("rainforest_gaps_open 0\n"), "{metrics}");
    assert!(second.terminate().success());
    assert_eq!(world.sim.history_requests_for(id()), 1);
    assert_history_fills(&data, gap_around(&data, outage_at));

    // A restart within backfill_after leaves no gap: nothing is asked.
    let written = history(&data).len();
    let third = run_until_live(&world, 3).await;
    assert!(third.terminate().success());
    assert_eq!(world.sim.history_requests_for(id()), 1, "asked again");
    assert_eq!(history(&data).len(), written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_history_answer_leaves_the_rest_open_and_it_is_retried() {
    // Two entries per answer: an 8 s gap takes several requests.
    let Some(world) = World::start(2).await else {
        return;
    };
    let data = world.data();
    let outage_at = run_then_stop_for_an_outage(&world).await;
    let second = world.pinger();
    // Several round trips, each after a live summation line: generous on a
    // loaded machine.
    wait_within("the whole gap backfilled", LOADED, async || {
        let Some(gap) = try_gap_around(&data, outage_at) else {
            return false;
        };
        history(&data).len() >= seconds_inside(gap)
    })
    .await;
    let asked = world.sim.history_requests_for(id());
    assert!(
        asked >= 3,
        "a partial answer was not followed up ({asked} requests)"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(second.terminate().success());
    assert_eq!(
        world.sim.history_requests_for(id()),
        asked,
        "a filled gap was asked for again"
    );
    assert_history_fills(&data, gap_around(&data, outage_at));
}
