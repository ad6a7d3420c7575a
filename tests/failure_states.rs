//! What the pinger makes of a relay that fails: the real `rainforest
//! pinger` against the simulator with `error_rate` and `garbage_rate` set,
//! its counts held against what the simulator says it served, and each
//! meter's state in Redis and in `/metrics` checked against the failure
//! it met.

mod support;

use std::collections::BTreeSet;

use rainforest::cloud_id::CloudId;
use rainforest::registry::{MeterState, Registry, UserStats};
use rainforest::secret::Secret;
use rainforest::simulator::{self, AnswerKind, SimulateArgs, Simulator};
use support::RedisServer;
use support::meters::sim_user;
use support::pinger::{Pinger, lines_for};
use support::process::wait_for;

/// The pinger's `polls_total` outcome for each kind of answer the
/// simulator sends.
const KINDS: [(AnswerKind, &str); 4] = [
    (AnswerKind::Reading, "ok"),
    (AnswerKind::RelayError, "relay_error"),
    (AnswerKind::ServerError, "http_status"),
    (AnswerKind::Garbage, "malformed"),
];

struct World {
    _redis: RedisServer,
    registry: Registry,
    sim: Simulator,
    pinger: Pinger,
    metrics: String,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Redis with `meters` users (meter 0 with a wrong password when
/// `bad_first`), the simulator with `faults`, and the pinger over both at a
/// 200 ms interval with its metrics on a free port.
async fn world(meters: u32, faults: SimulateArgs, bad_first: bool) -> Option<World> {
    let redis = RedisServer::start()?;
    let ns = redis.namespace();
    let registry = Registry::Redis(support::sealed_registry(&redis.url(), &ns).await);
    for i in 0..meters {
        let mut user = sim_user(i);
        if bad_first && i == 0 {
            user.user_pw = Secret::new("wrong");
        }
        registry.put(&user).await.expect("put user");
    }
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters,
        latency: "5ms±3ms".parse().expect("latency"),
        ..faults
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("logs");
    let port = support::free_port();
    let pinger = Pinger::start(
        &redis.url(),
        &ns,
        sim.relay_url().as_str(),
        &data,
        &[
            "--set",
            "poll_interval=200ms",
            "--set",
            &format!("metrics_listen=127.0.0.1:{port}"),
        ],
    );
    Some(World {
        _redis: redis,
        registry,
        sim,
        pinger,
        metrics: format!("http://127.0.0.1:{port}/metrics"),
        data,
        _dir: dir,
    })
}

impl World {
    /// The value of the sample `name` (with its labels) in `/metrics`;
    /// panics when the endpoint does not answer or lacks the sample.
    async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(&self.metrics)
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {}: {e}", self.metrics))
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}")) as u64
    }

    async fn stats(&self, id: CloudId) -> Option<UserStats> {
        self.registry.stats(id).await.ok().flatten()
    }
}

fn polls(outcome: &str) -> String {
    format!("rainforest_polls_total{{outcome=\"{outcome}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_relay_fault_is_counted_by_its_kind_as_the_simulator_served_it() {
    const METERS: u32 = 12;
    let faults = SimulateArgs {
        error_rate: 0.4,
        garbage_rate: 0.25,
        seed: 7,
        ..SimulateArgs::default()
    };
    let Some(w) = world(METERS, faults, false).await else {
        return;
    };
    let ids: Vec<CloudId> = (0..METERS).map(simulator::meter_cloud_id).collect();
    // While the faults come in, each meter's stored state must fit its
    // stored streak, and every kind of failure must reach Redis.
    let mut kinds_seen = BTreeSet::new();
    let mut backoff_seen = false;
    wait_for("every kind of fault served and stored", async || {
        for id in &ids {
            let Some(s) = w.stats(*id).await else {
                continue;
            };
            assert_eq!(
                s.state == MeterState::Ok,
                s.consecutive_failures == 0,
                "meter {id}: state {:?} with {} failures in a row",
                s.state,
                s.consecutive_failures
            );
            assert_ne!(s.state, MeterState::AuthFailed, "meter {id}");
            backoff_seen |= s.state == MeterState::Backoff;
            kinds_seen.extend(s.last_error_kind);
        }
        let served = KINDS.iter().all(|(k, _)| w.sim.answers(*k) >= 3)
            && w.sim.answers(AnswerKind::Reading) > 2 * u64::from(METERS);
        served && backoff_seen && kinds_seen.len() >= 3
    })
    .await;
    let expected: BTreeSet<String> = KINDS[1..].iter().map(|(_, o)| o.to_string()).collect();
    assert_eq!(kinds_seen, expected, "failure kinds stored in Redis");

    // The pinger's counts lie between what the simulator had served just
    // before and just after they were read: nothing counted that was not
    // served, and nothing served missed but the polls still in flight (at
    // most one per meter, all kinds together).
    let before: Vec<u64> = KINDS.iter().map(|(k, _)| w.sim.answers(*k)).collect();
    let mut counted = Vec::new();
    for (_, outcome) in KINDS {
        counted.push(w.metric(&polls(outcome)).await);
    }
    let after: Vec<u64> = KINDS.iter().map(|(k, _)| w.sim.answers(*k)).collect();
    let mut in_flight = 0;
    for (i, (_, outcome)) in KINDS.iter().enumerate() {
        assert!(
            counted[i] <= after[i],
            "{outcome}: pinger counted {}, simulator served only {}",
            counted[i],
            after[i]
        );
        in_flight += before[i].saturating_sub(counted[i]);
    }
    assert!(
        in_flight <= u64::from(METERS),
        "served {before:?} (ok, relay_error, http_status, malformed) but counted {counted:?}"
    );
    for other in ["auth", "timeout", "connect", "redirect", "address_refused"] {
        assert_eq!(w.metric(&polls(other)).await, 0, "{other} polls counted");
    }
    assert_eq!(w.sim.answers(AnswerKind::AuthError), 0);
    assert!(w.pinger.terminate().success());
    // A clean stop: every reading served is a line.
    let lines: u64 = ids.iter().map(|id| lines_for(&w.data, *id) as u64).sum();
    assert_eq!(lines, w.sim.answers(AnswerKind::Reading));
}

/// Runs the pinger against a relay failing every request with `faults`
/// (meter 0 with a wrong password when `bad_password`), and checks the
/// states that must follow: meter 0 paused as `auth_failed`, every other
/// meter in `backoff` with a growing streak of failures of `kinds`, polled
/// far less than once a slot.
async fn every_poll_fails(faults: SimulateArgs, bad_password: bool, kinds: &[&str]) {
    const METERS: u32 = 4;
    let Some(w) = world(METERS, faults, bad_password).await else {
        return;
    };
    let bad = simulator::meter_cloud_id(0);
    let first_good = u32::from(bad_password);
    let others: Vec<CloudId> = (first_good..METERS)
        .map(simulator::meter_cloud_id)
        .collect();
    let started = tokio::time::Instant::now();
    wait_for("auth_failed and backoff states stored", async || {
        let bad_ok = !bad_password
            || w.stats(bad).await.is_some_and(|s| {
                s.state == MeterState::AuthFailed && s.last_error_kind.as_deref() == Some("auth")
            });
        let mut others_ok = true;
        for id in &others {
            others_ok &= w.stats(*id).await.is_some_and(|s| {
                s.state == MeterState::Backoff
                    && s.consecutive_failures >= 3
                    && s.last_error_kind
                        .as_deref()
                        .is_some_and(|k| kinds.contains(&k))
            });
        }
        bad_ok && others_ok
    })
    .await;
    let meters = |state: &str| format!("rainforest_meters{{state=\"{state}\"}}");
    let paused = u64::from(bad_password);
    assert_eq!(w.metric(&meters("auth_failed")).await, paused);
    assert_eq!(w.metric(&meters("backoff")).await, others.len() as u64);
    assert_eq!(w.metric(&meters("ok")).await, 0);
    assert_eq!(w.metric(&polls("ok")).await, 0);
    assert_eq!(
        w.metric(&polls("auth")).await,
        paused,
        "one try, then the pause"
    );
    let failed: u64 = {
        let mut n = 0;
        for kind in kinds {
            n += w.metric(&polls(kind)).await;
        }
        n
    };
    assert!(failed >= 3 * others.len() as u64, "{failed} failures");
    // Backing off: doubling from 200 ms up to `max_backoff` (1 s) leaves
    // far fewer requests than the slots that passed.
    let slots = (started.elapsed().as_millis() / 200) as u64 + 2;
    for id in &others {
        let requests = w.sim.requests_for(*id);
        assert!(
            requests * 2 <= slots + 2,
            "meter {id}: {requests} requests in {slots} slots; no backoff"
        );
    }
    assert!(w.pinger.terminate().success());
    for id in (0..METERS).map(simulator::meter_cloud_id) {
        assert_eq!(lines_for(&w.data, id), 0, "meter {id} has lines");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_always_errs_backs_every_meter_off_and_bad_credentials_pause() {
    every_poll_fails(
        SimulateArgs {
            error_rate: 1.0,
            ..SimulateArgs::default()
        },
        true,
        &["relay_error", "http_status"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_only_sends_garbage_backs_every_meter_off_as_malformed() {
    every_poll_fails(
        SimulateArgs {
            garbage_rate: 1.0,
            ..SimulateArgs::default()
        },
        // A garbled rejection is garbage too, so no meter can be told
        // its password is wrong here.
        false,
        &["malformed"],
    )
    .await;
}
