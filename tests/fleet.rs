//! Several pingers sharing the meters: the real `rainforest pinger`
//! binaries over one `redis-server` namespace (or a users file with
//! `--shard`), the in-process simulator as the relay, each pinger with its
//! own data directory so its spooled lines tell which slots it polled.
//!
//! Timings are short (`support::fleet`): 300 ms cadence and heartbeat, a
//! 1.5 s member ttl. Windows are chosen by each line's `slot`, which every
//! pinger computes alike, so the edges of a hand-over are excluded by
//! instant, not by guessing how long the machine took.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rainforest::registry::{RedisRegistry, Registry};
use rainforest::simulator::{self, SimulateArgs, Simulator};
use support::RedisServer;
use support::fleet::{
    HEARTBEAT, INTERVAL, Member, SLACK, TTL, assert_split, covered, handover_ms, now_ms,
};
use support::meters::users_text;
use support::pinger::Pinger;
use support::process::wait_for;

const METERS: u32 = 24;

/// Time for a joiner to be seen and take its share: its start-up, the two
/// heartbeats its `active_from` waits, and slack.
fn settle() -> Duration {
    HEARTBEAT * 2 + SLACK
}

async fn simulator() -> Simulator {
    Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: METERS,
        latency: "5ms±3ms".parse().expect("latency"),
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator")
}

fn all_meters() -> BTreeSet<String> {
    (0..METERS)
        .map(|i| simulator::meter_cloud_id(i).as_str().to_string())
        .collect()
}

struct Setup {
    redis: RedisServer,
    ns: String,
    sim: Simulator,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Option<Setup> {
        let redis = RedisServer::start()?;
        let ns = support::unique_namespace();
        let registry = Registry::Redis(
            RedisRegistry::connect(&redis.url(), &ns)
                .await
                .expect("connect redis"),
        );
        for i in 0..METERS {
            registry
                .put(&support::meters::sim_user(i))
                .await
                .expect("put user");
        }
        Some(Setup {
            redis,
            ns,
            sim: simulator().await,
            dir: tempfile::tempdir().expect("tempdir"),
        })
    }

    fn member(&self, name: &str, extra: &[&str]) -> Member {
        Member::start(
            &self.redis.url(),
            &self.ns,
            self.sim.relay_url().as_str(),
            self.dir.path(),
            name,
            extra,
        )
    }

    /// Live member ids in the `<ns>:members` index.
    fn members_index(&self) -> Vec<String> {
        let client = redis::Client::open(self.redis.url()).expect("redis client");
        let mut conn = client.get_connection().expect("redis connection");
        redis::cmd("ZRANGE")
            .arg(format!("{}:members", self.ns))
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .expect("ZRANGE members")
    }
}

/// Waits until `members` together polled every meter in `[from, to)`.
async fn wait_covered(members: &[&Member], from: i64, to: i64) {
    let all = all_meters();
    wait_for("every meter polled in the window", async || {
        covered(members, from, to, &all)
    })
    .await;
}

/// Waits until the wall clock is past `at_ms`.
async fn sleep_until_ms(at_ms: i64) {
    let left = at_ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// A window of a few slots of every meter, starting at `from`.
fn window(from: i64) -> (i64, i64) {
    (from, from + (INTERVAL * 4).as_millis() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pingers_split_disjointly_and_a_third_takes_only_its_share() {
    let Some(s) = Setup::new().await else {
        return;
    };
    let all = all_meters();
    let port = support::free_port();
    let metrics = format!("metrics_listen=127.0.0.1:{port}");
    let a = s.member("a", &["--set", &metrics]);
    // Alone, the first pinger polls everything at once.
    let started = now_ms();
    wait_covered(&[&a], started, i64::MAX).await;

    // The joiners reload users only every ten minutes: what they load at
    // start, before their share is theirs, must be polled from the instant
    // it becomes theirs, not from the next reload (the others let it go
    // at that instant).
    let slow_reload = ["--set", "user_reload_interval=600s"];
    let b = s.member("b", &slow_reload);
    let (from, to) = window(now_ms() + settle().as_millis() as i64);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b], from, to).await;
    let two = assert_split(&[&a, &b], from, to, &all);
    assert!(two.iter().all(|set| set.len() >= 4), "uneven: {two:?}");
    // Both pingers put a meter's slots on one wall-clock grid: the epoch
    // plus the meter's phase plus whole intervals.
    let step = INTERVAL.as_millis() as i64;
    for (id, slots) in a.slots(0, i64::MAX).into_iter().chain(b.slots(0, i64::MAX)) {
        let cloud_id = rainforest::cloud_id::CloudId::parse(&id).expect("cloud id");
        let phase = rainforest::scheduler::slots::phase_for(cloud_id, INTERVAL).as_millis() as i64;
        for slot in slots {
            assert_eq!(
                slot.rem_euclid(step),
                phase,
                "{id}: slot {slot} off the grid"
            );
        }
    }
    assert_eq!(s.members_index().len(), 2);
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(text.contains("rainforest_fleet_members 2"), "{text}");
    assert!(
        text.contains(&format!("rainforest_fleet_owned_meters {}", two[0].len())),
        "{text}"
    );

    let c = s.member("c", &slow_reload);
    let (from, to) = window(now_ms() + settle().as_millis() as i64);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b, &c], from, to).await;
    let three = assert_split(&[&a, &b, &c], from, to, &all);
    assert!(three[2].len() >= 3, "the joiner took too little: {three:?}");
    // The join moved meters only to the joiner, none between a and b.
    for (before, after) in two.iter().zip(&three) {
        assert!(
            after.is_subset(before),
            "moved between old members: {before:?} -> {after:?}"
        );
    }
    assert_eq!(
        three[0].len() + three[1].len() + three[2].len(),
        METERS as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pinger_s_meters_come_back_within_the_ttl_and_a_clean_stop_s_within_an_interval() {
    let Some(s) = Setup::new().await else {
        return;
    };
    let all = all_meters();
    let mut a = s.member("a", &[]);
    wait_covered(&[&a], now_ms(), i64::MAX).await;
    let mut b = s.member("b", &[]);
    let mut c = s.member("c", &[]);
    let (from, to) = window(now_ms() + settle().as_millis() as i64);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b, &c], from, to).await;
    let sets = assert_split(&[&a, &b, &c], from, to, &all);

    // kill -9: no clean-up; the key expires after the ttl.
    let killed_at = now_ms();
    c.kill9();
    wait_for("the killed pinger's meters polled again", async || {
        handover_ms(&[&a, &b], &sets[2], killed_at).is_some()
    })
    .await;
    let took = handover_ms(&[&a, &b], &sets[2], killed_at).unwrap_or(i64::MAX);
    let bound = TTL + HEARTBEAT + INTERVAL + SLACK;
    assert!(
        took <= bound.as_millis() as i64,
        "kill -9 handed over after {took} ms (bound {bound:?})"
    );
    // The survivors split everything again, and only c's share moved.
    let (from, to) = window(now_ms() + settle().as_millis() as i64);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b], from, to).await;
    let two = assert_split(&[&a, &b], from, to, &all);
    assert!(sets[0].is_subset(&two[0]) && sets[1].is_subset(&two[1]));

    // A clean stop leaves the fleet at once: the index shrinks now, not
    // after the ttl, and b's meters are back within a heartbeat and a slot.
    let stopped_at = now_ms();
    b.terminate();
    assert_eq!(
        s.members_index().len(),
        1,
        "b left the index on its way out"
    );
    wait_for("the stopped pinger's meters polled again", async || {
        handover_ms(&[&a], &two[1], stopped_at).is_some()
    })
    .await;
    let took = handover_ms(&[&a], &two[1], stopped_at).unwrap_or(i64::MAX);
    let bound = HEARTBEAT + INTERVAL + SLACK;
    assert!(
        took <= bound.as_millis() as i64,
        "a clean stop handed over after {took} ms (bound {bound:?})"
    );
    a.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingers_cut_off_from_redis_keep_their_own_share_and_grab_nothing() {
    let Some(mut s) = Setup::new().await else {
        return;
    };
    if !s.redis.can_restart() {
        support::skipped("TEST_REDIS_URL points at a Redis this test cannot stop");
        return;
    }
    let all = all_meters();
    let a = s.member("a", &[]);
    wait_covered(&[&a], now_ms(), i64::MAX).await;
    let b = s.member("b", &[]);
    let (from, to) = window(now_ms() + settle().as_millis() as i64);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b], from, to).await;
    let before = assert_split(&[&a, &b], from, to, &all);

    // Both lose Redis, and with it each other: each keeps its last view,
    // well past the ttl after which the other's key would have expired.
    s.redis.stop();
    let cut = now_ms();
    let (from, to) = (cut + 500, cut + (TTL * 2).as_millis() as i64 + 500);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b], from, to).await;
    let during = assert_split(&[&a, &b], from, to, &all);
    assert_eq!(during, before, "a pinger cut off changed its share");

    // Redis back: the same split, without a moment of one grabbing all.
    s.redis.start_again();
    let back = now_ms();
    let (from, to) = (back, back + (settle() + INTERVAL * 4).as_millis() as i64);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b], from, to).await;
    let after = assert_split(&[&a, &b], from, to, &all);
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_shards_split_disjointly_without_membership() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.jl");
    let list: Vec<_> = (0..METERS).map(support::meters::sim_user).collect();
    std::fs::write(&users, users_text(&list)).expect("users file");
    let shards: Vec<Member> = (0..3)
        .map(|i| {
            let data = dir.path().join(format!("s{i}")).join("logs");
            std::fs::create_dir_all(&data).expect("data dir");
            let shard = format!("{i}/3");
            let pinger = Pinger::over_file(
                &users,
                sim.relay_url().as_str(),
                &data,
                &["--shard", &shard],
                &dir.path().join(format!("s{i}.log")),
            );
            Member {
                data,
                pinger: Some(pinger),
            }
        })
        .collect();
    let refs: Vec<&Member> = shards.iter().collect();
    let (from, to) = window(now_ms() + 500);
    sleep_until_ms(to).await;
    wait_covered(&refs, from, to).await;
    let sets = assert_split(&refs, from, to, &all_meters());
    assert!(sets.iter().all(|s| !s.is_empty()), "{sets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingers_started_together_split_after_their_first_heartbeats() {
    let Some(s) = Setup::new().await else {
        return;
    };
    // Each may find the others not yet announced and start alone; the next
    // heartbeat shows them all, and from then on the split holds.
    let a = s.member("a", &[]);
    let b = s.member("b", &[]);
    let c = s.member("c", &[]);
    let (from, to) = window(now_ms() + settle().as_millis() as i64);
    sleep_until_ms(to).await;
    wait_covered(&[&a, &b, &c], from, to).await;
    let sets = assert_split(&[&a, &b, &c], from, to, &all_meters());
    assert!(sets.iter().all(|s| !s.is_empty()), "{sets:?}");
}
