//! The pinger end to end: the real `rainforest pinger` binary, a real
//! `redis-server`, and the in-process simulator as the relay. Intervals are
//! shortened through `--set`, so each test runs in seconds.

mod support;

use std::path::Path;
use std::time::Duration;

use rainforest::cloud_id::CloudId;
use rainforest::registry::{MeterState, RedisRegistry, Registry, User};
use rainforest::secret::Secret;
use rainforest::simulator::{self, SimulateArgs, Simulator};
use support::RedisServer;
use support::meters::users_text;
use support::pinger::{Pinger, lines_for};
use support::process::{wait_for, wait_within};
use support::spool::{polled_at_ms, skipped_slot_gaps, spool_lines};

/// How soon a fixed password must show as a line: the reload (300 ms), the
/// next slot (300 ms) and slack for a busy machine; far below the default
/// `auth_backoff` of 15 minutes the fix used to wait out.
const RECOVERY: Duration = Duration::from_secs(3);

fn user(i: u32) -> User {
    support::meters::sim_user(i)
}

async fn simulator(meters: u32) -> Simulator {
    Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters,
        latency: "5ms±3ms".parse().expect("latency"),
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator")
}

async fn setup(
    meters: u32,
) -> Option<(RedisServer, String, Registry, Simulator, tempfile::TempDir)> {
    let redis = RedisServer::start()?;
    let ns = support::unique_namespace();
    let registry = Registry::Redis(
        RedisRegistry::connect(&redis.url(), &ns)
            .await
            .expect("connect redis"),
    );
    let sim = simulator(meters).await;
    let dir = tempfile::tempdir().expect("tempdir");
    Some((redis, ns, registry, sim, dir))
}

/// Replaces the users file the way the README says: a temporary file in the
/// same directory, renamed over it.
fn replace_users_file(path: &Path, users: &[User]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, users_text(users)).expect("write temporary users file");
    std::fs::rename(&tmp, path).expect("rename over the users file");
}

/// The "User list reloaded." lines of a pinger's log that stopped meters.
fn reloads_that_stopped(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("User list reloaded.") && !l.contains("stopped=0"))
        .map(str::to_string)
        .collect()
}

/// How often `text` appears in a pinger's log.
fn log_count(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.matches(text).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_in_redis_are_polled_into_the_right_files_and_removed_users_stop() {
    let Some((redis, ns, registry, sim, dir)) = setup(4).await else {
        return;
    };
    let data = dir.path().join("logs");
    for i in 0..3 {
        registry.put(&user(i)).await.expect("put");
    }
    let metrics_port = support::free_port();
    let metrics_listen = format!("metrics_listen=127.0.0.1:{metrics_port}");
    let pinger = Pinger::start(
        &redis.url(),
        &ns,
        sim.relay_url().as_str(),
        &data,
        &["--set", &metrics_listen],
    );
    wait_for("three meters with two lines each", async || {
        (0..3).all(|i| lines_for(&data, simulator::meter_cloud_id(i)) >= 2)
    })
    .await;
    // A standalone pinger exposes its own metrics.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics.contains("rainforest_polls_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rainforest_spool_lines_written_total"),
        "{metrics}"
    );
    // A failed fsync at an hour's seal is counted where alerts can see it.
    assert!(
        metrics.contains("rainforest_spool_fsync_errors_total 0"),
        "{metrics}"
    );
    // It also publishes its snapshot in Redis for a split deployment's server.
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    wait_for("service snapshot published", async || {
        let keys: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{ns}:services"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let Some(key) = keys.first() else {
            return false;
        };
        let body: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        body.is_some_and(|b| b.contains("polls_per_s"))
    })
    .await;
    // The fourth meter is not a user: never polled.
    assert_eq!(sim.requests_for(simulator::meter_cloud_id(3)), 0);

    for (path, v) in spool_lines(&data) {
        let id = v["cloud_id"].as_str().expect("cloud_id");
        let polled_at = v["polled_at"].as_str().expect("polled_at");
        // 2026-11-27T09:20:25.929Z -> 2026-11-27-09
        let hour = format!("{}-{}", &polled_at[..10], &polled_at[11..13]);
        // iseif-rainforest-<id>-<hour>.<writer id>.jl in the hour's directory.
        assert_eq!(path.parent(), Some(data.join(&hour).as_path()));
        let name = path
            .file_name()
            .and_then(|n| {
                rainforest::spool::parse_file_name("iseif-rainforest", &n.to_string_lossy())
            })
            .unwrap_or_else(|| panic!("{} is not a spool file name", path.display()));
        assert_eq!(
            (name.cloud_id.as_str(), name.hour.to_string()),
            (id, hour.clone())
        );
        assert!(name.writer.is_some(), "{}", path.display());
        let raw = v["Demand"].as_i64().expect("Demand");
        let kw = v["demand_kw"].as_f64().expect("demand_kw");
        assert!((kw - raw as f64 / 1000.0).abs() < 1e-9, "{v}");
        assert!(
            v["MeterMacId"]
                .as_str()
                .is_some_and(|m| m.starts_with("0x"))
        );
    }

    // Statistics reach Redis, apart from the credentials.
    let id0 = simulator::meter_cloud_id(0);
    wait_for("statistics written", async || {
        registry
            .stats(id0)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.total_events_logged >= 2)
    })
    .await;

    registry
        .remove(simulator::meter_cloud_id(2))
        .await
        .expect("remove");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let before = sim.requests_for(simulator::meter_cloud_id(2));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        sim.requests_for(simulator::meter_cloud_id(2)),
        before,
        "removed user still polled"
    );
    assert!(pinger.terminate().success(), "SIGTERM must exit 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_back_off_flag_auth_failed_and_recover_once_fixed() {
    let Some((redis, ns, registry, sim, dir)) = setup(2).await else {
        return;
    };
    let data = dir.path().join("logs");
    let mut bad = user(0);
    bad.user_pw = Secret::new("wrong");
    registry.put(&bad).await.expect("put");
    let pinger = Pinger::start(&redis.url(), &ns, sim.relay_url().as_str(), &data, &[]);
    let id = bad.cloud_id;
    wait_for("auth_failed state", async || {
        registry
            .stats(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.state == MeterState::AuthFailed)
    })
    .await;
    // Backing off: far fewer requests than one per 300 ms slot.
    let before = sim.requests_for(id);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        sim.requests_for(id) <= before + 1,
        "no backoff after bad credentials"
    );
    assert_eq!(lines_for(&data, id), 0);

    // With the default auth_backoff (15 min), only the credential change
    // can end the pause: the next reload and slot poll with the new password.
    registry.put(&user(0)).await.expect("fix password");
    wait_within(
        "polled OK within a few intervals of the fix",
        RECOVERY,
        async || lines_for(&data, id) >= 1,
    )
    .await;
    wait_for("recovered with lines", async || lines_for(&data, id) >= 2).await;
    wait_for("state ok again", async || {
        registry
            .stats(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.state == MeterState::Ok)
    })
    .await;
    // The statistics writer did not undo the credential fix.
    let stored = registry.get(id).await.expect("get").expect("user");
    assert_eq!(stored.user_pw.expose(), simulator::meter_password(id));
    assert!(pinger.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_no_polls() {
    let Some((mut redis, ns, registry, sim, dir)) = setup(2).await else {
        return;
    };
    if !redis.can_restart() {
        support::skipped("TEST_REDIS_URL points at a Redis this test cannot restart");
        return;
    }
    // Half a second between slots: a poll may start up to 250 ms late on a
    // loaded machine before a gap could be mistaken for a skipped slot.
    let interval = Duration::from_millis(500);
    let data = dir.path().join("logs");
    registry.put(&user(0)).await.expect("put");
    let id = user(0).cloud_id;
    let pinger = Pinger::start(
        &redis.url(),
        &ns,
        sim.relay_url().as_str(),
        &data,
        // A slot skipped for overload (a late start on a busy machine) is
        // not what this test is about: allow a late start, keep the slot.
        &[
            "--set",
            "poll_interval=500ms",
            "--set",
            "max_start_lag=450ms",
        ],
    );
    wait_for("first lines", async || lines_for(&data, id) >= 1).await;
    redis.stop();
    let outage_from = chrono::Utc::now().timestamp_millis();
    let during = lines_for(&data, id);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let outage_to = chrono::Utc::now().timestamp_millis();
    let after_outage = lines_for(&data, id);
    assert!(
        after_outage >= during + 3,
        "polling stalled while Redis was down ({during} -> {after_outage})"
    );
    redis.start_again();
    wait_for("statistics caught up", async || {
        let logged = registry
            .stats(id)
            .await
            .ok()
            .flatten()
            .map(|s| s.total_events_logged);
        logged.is_some_and(|n| n as usize >= after_outage)
    })
    .await;
    assert!(pinger.terminate().success());
    // Every successful poll is a line...
    let times = polled_at_ms(&data, id);
    let served = sim.served_for(id) as usize;
    assert_eq!(times.len(), served, "lines on disk vs readings served");
    // ...and every slot was polled, the outage's included: a skipped slot
    // leaves a gap of two intervals between polls.
    let in_outage = times
        .iter()
        .filter(|t| (outage_from..outage_to).contains(t))
        .count();
    assert!(
        in_outage >= 3,
        "{in_outage} polls during the 2 s outage: {times:?}"
    );
    assert_eq!(
        skipped_slot_gaps(&times, interval),
        Vec::<(i64, i64)>::new(),
        "slots skipped (poll time ms, gap ms); outage {outage_from}..{outage_to}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_at_most_the_last_second_and_a_restart_duplicates_nothing() {
    const METERS: u32 = 20;
    let Some((redis, ns, registry, sim, dir)) = setup(METERS).await else {
        return;
    };
    let data = dir.path().join("logs");
    let ids: Vec<CloudId> = (0..METERS).map(simulator::meter_cloud_id).collect();
    for i in 0..METERS {
        registry.put(&user(i)).await.expect("put");
    }
    let pinger = Pinger::start(
        &redis.url(),
        &ns,
        sim.relay_url().as_str(),
        &data,
        &["--set", "poll_interval=100ms"],
    );
    wait_for("lines from every meter", async || {
        ids.iter().all(|id| lines_for(&data, *id) >= 3)
    })
    .await;
    pinger.kill9();
    // Answers the simulator had ready when the pinger died may still be
    // counted a moment later; none can be after a pause.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let served_before: Vec<u64> = ids.iter().map(|id| sim.served_for(*id)).collect();
    let before: Vec<Vec<i64>> = ids.iter().map(|id| polled_at_ms(&data, *id)).collect();
    for ((id, served), lines) in ids.iter().zip(&served_before).zip(&before) {
        assert_no_duplicates(*id, lines);
        let lines = lines.len() as u64;
        // The spool flushes once a second, so a kill -9 loses at most the
        // last second: ten polls at 100 ms, plus the one in flight and a
        // flush that ran late on a loaded machine.
        assert!(
            lines <= *served && served - lines <= KILL9_MAX_LOST,
            "meter {id}: {lines} lines on disk for {served} readings served before kill -9"
        );
    }

    // A restart appends after whatever the crash left, still whole lines,
    // and a clean stop loses nothing it was served.
    let again = Pinger::start(&redis.url(), &ns, sim.relay_url().as_str(), &data, &[]);
    wait_for("more lines after restart", async || {
        spool_lines(&data).len() >= before.iter().map(Vec::len).sum::<usize>() + 20
    })
    .await;
    assert!(again.terminate().success());
    support::spool::assert_files_whole(&data);
    for ((id, served_then), lines_then) in ids.iter().zip(&served_before).zip(&before) {
        let lines = polled_at_ms(&data, *id);
        assert_no_duplicates(*id, &lines);
        let served_since = sim.served_for(*id) - served_then;
        assert_eq!(
            (lines.len() - lines_then.len()) as u64,
            served_since,
            "meter {id}: lines written after the restart vs readings served"
        );
    }
}

/// The most lines per meter a `kill -9` may cost at a 100 ms interval: the
/// spool's documented last second (ten polls) plus slack for one poll in
/// flight and a flush delayed by a busy machine.
const KILL9_MAX_LOST: u64 = 15;

/// Each poll has its own `polled_at`; the same one twice is a line written
/// twice.
fn assert_no_duplicates(id: CloudId, times: &[i64]) {
    let dupes: Vec<&i64> = times
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    assert!(dupes.is_empty(), "meter {id}: duplicate lines at {dupes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_fixed_by_renaming_a_new_users_file_over_the_old_ends_the_auth_pause() {
    let sim = simulator(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, users, log) = (
        dir.path().join("logs"),
        dir.path().join("users.jl"),
        dir.path().join("pinger.log"),
    );
    let mut bad = user(0);
    bad.user_pw = Secret::new("wrong");
    let id = bad.cloud_id;
    replace_users_file(&users, &[bad, user(1)]);
    let pinger = Pinger::over_file(&users, sim.relay_url().as_str(), &data, &[], &log);
    wait_for("the other meter polled", async || {
        lines_for(&data, user(1).cloud_id) >= 2
    })
    .await;
    // Rejected once, then paused for the default auth_backoff (15 min).
    assert!(sim.requests_for(id) >= 1);
    let before = sim.requests_for(id);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        sim.requests_for(id),
        before,
        "no pause after bad credentials"
    );

    replace_users_file(&users, &[user(0), user(1)]);
    wait_within(
        "polled OK within a few intervals of the fix",
        RECOVERY,
        async || lines_for(&data, id) >= 1,
    )
    .await;
    assert!(pinger.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_file_caught_half_written_or_emptied_stops_no_meter() {
    let sim = simulator(3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, users, log) = (
        dir.path().join("logs"),
        dir.path().join("users.jl"),
        dir.path().join("pinger.log"),
    );
    let all = [user(0), user(1), user(2)];
    replace_users_file(&users, &all);
    // Reloads once a second, so the test can act between two of them.
    let pinger = Pinger::over_file(
        &users,
        sim.relay_url().as_str(),
        &data,
        &["--set", "user_reload_interval=1s"],
        &log,
    );
    wait_for("every meter polled", async || {
        all.iter().all(|u| lines_for(&data, u.cloud_id) >= 1)
    })
    .await;
    let polled_before: Vec<u64> = all.iter().map(|u| sim.requests_for(u.cloud_id)).collect();

    // Rewritten in place, as `python3 gen.py > users.jl` does: truncated,
    // then half a line, then the whole file, each seen by a reload (and
    // each older than a second by the next one).
    let text = users_text(&all);
    std::fs::write(&users, "").expect("truncate");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&users, &text[..text.len() / 2]).expect("half a file");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&users, &text).expect("whole file");
    assert_eq!(reloads_that_stopped(&log), Vec::<String>::new());

    // Emptied and left looking settled: a sudden drop to zero users is
    // held back with a warning, and the file is restored in time.
    const HELD_BACK: &str = "suddenly holds far fewer users";
    let warned = log_count(&log, HELD_BACK);
    std::fs::write(&users, "").expect("truncate");
    std::fs::File::options()
        .write(true)
        .open(&users)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)))
        .expect("age the empty file");
    wait_within("the drop held back", Duration::from_secs(5), async || {
        log_count(&log, HELD_BACK) > warned
    })
    .await;
    replace_users_file(&users, &all);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    assert_eq!(reloads_that_stopped(&log), Vec::<String>::new());
    for (u, before) in all.iter().zip(polled_before) {
        assert!(
            sim.requests_for(u.cloud_id) >= before + 5,
            "{} not polled on through the rewrites",
            u.cloud_id
        );
    }

    // A deliberate, stable change is still applied: a user removed...
    replace_users_file(&users, &all[..2]);
    wait_within(
        "the removed meter stopped",
        Duration::from_secs(5),
        async || {
            reloads_that_stopped(&log)
                .iter()
                .any(|l| l.contains("stopped=1"))
        },
    )
    .await;
    // ...and even every user, once the next reload reads the same file.
    replace_users_file(&users, &[]);
    wait_within("every meter stopped", Duration::from_secs(5), async || {
        reloads_that_stopped(&log)
            .iter()
            .any(|l| l.contains("stopped=2"))
    })
    .await;
    assert!(pinger.terminate().success());
}
