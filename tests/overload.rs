//! Overload is a state, not a collapse: what the scheduler does when the
//! relay is too slow for the global caps.
//!
//! The scheduler runs in-process under paused time with a stand-in relay
//! that goes through the real [`Caps`] (rank-ordered permits, start
//! deadlines) and records when each request goes out, the way the
//! simulator records arrivals. Paused time makes a minute of 600 meters
//! take milliseconds and every figure exact. One test drives the real EAGLE
//! client against the simulator, so the deadline is proven to sit where the
//! request waits for the caps; one runs the real `rainforest pinger` over
//! capacity and reads what it tells the operator.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rainforest::cloud_id::CloudId;
use rainforest::poll::{PollError, Polled, Poller};
use rainforest::protocol::pacing::Caps;
use rainforest::protocol::{AddressPolicy, Eagle, EagleOptions, ReadError, Reading, Source, Start};
use rainforest::record::Record;
use rainforest::registry::{StatsUpdate, User};
use rainforest::scheduler::{ReadMeter, Scheduler, SchedulerOptions, slots};
use rainforest::secret::Secret;
use rainforest::simulator::{self, SimulateArgs, Simulator};
use rainforest::spool::{Spool, SpoolOptions};
use support::process::{Proc, rainforest, wait_for};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(6);
const MAX_START_LAG: Duration = Duration::from_millis(1500);
const METERS: u32 = 600;
/// 240 permits of 3 s: 80 polls/s for the 100/s that 600 meters need.
const PERMITS: usize = 240;
const SLOW: Duration = Duration::from_secs(3);

/// A relay behind the real caps whose answers take `latency`; it records
/// when each request went out.
#[derive(Clone)]
struct Relay(Arc<RelayInner>);

struct RelayInner {
    caps: Caps,
    latency_ms: AtomicU64,
    arrivals: Mutex<HashMap<CloudId, Vec<Instant>>>,
}

impl Relay {
    fn new(permits: usize, latency: Duration) -> Relay {
        Relay::behind(Caps::new(permits, 1_000_000), latency)
    }

    fn behind(caps: Caps, latency: Duration) -> Relay {
        Relay(Arc::new(RelayInner {
            caps,
            latency_ms: AtomicU64::new(latency.as_millis() as u64),
            arrivals: Mutex::new(HashMap::new()),
        }))
    }

    fn set_latency(&self, latency: Duration) {
        self.0
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    fn arrivals(&self) -> HashMap<CloudId, Vec<Instant>> {
        self.0.arrivals.lock().unwrap().clone()
    }
}

impl ReadMeter for Relay {
    fn read(
        &self,
        user: &User,
        _slot: chrono::DateTime<Utc>,
        start: Start,
    ) -> impl Future<Output = Result<Polled, PollError>> + Send {
        let relay = self.0.clone();
        let id = user.cloud_id;
        async move {
            let _permit = relay.caps.admit(start).await?;
            relay
                .arrivals
                .lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(Instant::now());
            let sent = Instant::now();
            let latency = Duration::from_millis(relay.latency_ms.load(Ordering::Relaxed));
            tokio::time::sleep(latency).await;
            let reading = Reading {
                demand_kw: 1.0,
                meter_time: None,
                raw: None,
                meter_mac_id: None,
                sent: Some(sent),
            };
            Ok(Polled {
                record: Record::new(id, Utc::now(), 0, "relay", &reading),
                stats: StatsUpdate::new(id),
                at: 0.0,
                sent,
            })
        }
    }

    fn caps(&self) -> Option<&Caps> {
        Some(&self.0.caps)
    }
}

fn users(n: u32) -> Vec<User> {
    (0..n).map(simulator::meter_user).collect()
}

fn scheduler(relay: Relay, shutdown: CancellationToken) -> Scheduler<Relay> {
    Scheduler::new(
        SchedulerOptions {
            poll_interval: INTERVAL,
            max_backoff: Duration::from_secs(60),
            auth_backoff: Duration::from_secs(900),
            max_start_lag: MAX_START_LAG,
        },
        relay,
        None,
        shutdown,
    )
}

/// How far after its slot on the meter's phase grid a request went out.
fn off_phase(id: CloudId, origin: Instant, at: Instant) -> Duration {
    let phase = slots::phase_for(id, INTERVAL);
    let since = at.duration_since(origin).saturating_sub(phase);
    Duration::from_nanos((since.as_nanos() % INTERVAL.as_nanos()) as u64)
}

/// Polls per meter whose slots fall in `from..to`. Each poll counts for
/// its slot (when it went out less how far after the slot that was), so one
/// that went out a moment after its slot at the window's edge is not
/// counted in the wrong window.
fn polls_by_slot(
    arrivals: &HashMap<CloudId, Vec<Instant>>,
    origin: Instant,
    from: Instant,
    to: Instant,
) -> Vec<usize> {
    (0..METERS)
        .map(|i| {
            let id = simulator::meter_cloud_id(i);
            arrivals.get(&id).map_or(0, |t| {
                t.iter()
                    .map(|a| *a - off_phase(id, origin, *a))
                    .filter(|slot| *slot >= from && *slot < to)
                    .count()
            })
        })
        .collect()
}

/// Runs the meters through a minute of overload, after two intervals for
/// the shedding to learn the round trip, and checks that what the caps
/// allow (80 % of the slots, less a little headroom) went out on its slot,
/// with the skips rotating.
async fn a_minute_of_overload_skips_evenly(sched: &mut Scheduler<Relay>, relay: &Relay) {
    let origin = sched.origin();
    let counters = sched.counters();
    sched.apply(users(METERS));
    tokio::time::sleep(INTERVAL * 2).await;
    let from = Instant::now();
    let before = counters.snapshot();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let to = Instant::now();
    let arrivals = relay.arrivals();
    let minute = counters.snapshot().since(&before);
    let skipped = minute.skipped_overload;

    let polls = polls_by_slot(&arrivals, origin, from, to);
    let (least, most) = (*polls.iter().min().unwrap(), *polls.iter().max().unwrap());
    let total: usize = polls.iter().sum();
    // 10 slots per meter in the minute; the caps allow 80 % of them, and
    // planned shedding leaves 3 % of that free so no queue forms (about
    // 4,650), a little less after a second in which a queue was shed.
    assert!(
        (4_500..=5_000).contains(&total),
        "{total} polls went out in a minute; the caps allow about 4,800"
    );
    assert!(
        skipped >= 1_000,
        "{skipped} slots skipped; the caps are 20 % short"
    );
    assert!(
        most - least <= 1,
        "polls per meter over a minute range {least}..{most}: skips must rotate"
    );
    // Between two rounds of skips the counts span two for up to an
    // interval (see `scheduler::shed`); never more.
    let (fewest, most_skips) = sched.skip_spread().unwrap();
    assert!(
        most_skips - fewest <= 2,
        "skips per meter range {fewest}..{most_skips}"
    );
    for (id, times) in &arrivals {
        for at in times {
            let off = off_phase(*id, origin, *at);
            assert!(
                off <= MAX_START_LAG,
                "meter {id} polled {off:?} after its slot: a poll ran late instead of being skipped"
            );
        }
    }
    // What the pinger reports as on time (its summary line, /metrics) is
    // what reached the relay on time: the lag runs to when the request
    // left, not to when the poll began waiting for the caps.
    let sent: Vec<Duration> = arrivals
        .iter()
        .flat_map(|(id, times)| {
            times
                .iter()
                .filter(|a| **a >= from && **a < to)
                .map(|a| off_phase(*id, origin, *a))
        })
        .collect();
    let prompt = sent
        .iter()
        .filter(|off| **off <= Duration::from_millis(500))
        .count();
    // The slots that are not shed go out on their slot, not after a wait
    // at the caps: shedding at the slot leaves no queue to wait in.
    assert!(
        prompt * 100 >= sent.len() * 99,
        "{prompt} of {} polls went out within 500 ms of their slot",
        sent.len()
    );
    // (Shares, not counts: the pinger counts a poll when it ends, the relay
    // when it arrives, and the shed slots make each second's count vary.)
    let (reported, reported_prompt) = (minute.slots_polled, minute.slots_on_time);
    let share = |n: u64, of: u64| n as f64 / of.max(1) as f64;
    assert!(
        reported.abs_diff(sent.len() as u64) <= 20
            && (share(reported_prompt, reported) - share(prompt as u64, sent.len() as u64)).abs()
                <= 0.002,
        "the pinger reports {reported_prompt} of {reported} polls on time; the relay saw \
         {prompt} of {}",
        sent.len()
    );
}

/// The same minute with the rate cap short instead of the in-flight cap:
/// 80 starts a second for the 100 a second 600 meters need, the relay
/// itself fast. Its waiters are ranked like the in-flight cap's, so the
/// skips rotate just the same.
#[tokio::test(start_paused = true)]
async fn overload_at_the_rate_cap_skips_evenly_too() {
    let relay = Relay::behind(Caps::new(10_000, 80), Duration::from_millis(20));
    let shutdown = CancellationToken::new();
    let mut sched = scheduler(relay.clone(), shutdown.clone());
    a_minute_of_overload_skips_evenly(&mut sched, &relay).await;
    shutdown.cancel();
    sched.drain().await;
}

#[tokio::test(start_paused = true)]
async fn overload_skips_evenly_keeps_phase_and_recovers_within_one_interval() {
    let relay = Relay::new(PERMITS, SLOW);
    let shutdown = CancellationToken::new();
    let mut sched = scheduler(relay.clone(), shutdown.clone());
    let origin = sched.origin();
    a_minute_of_overload_skips_evenly(&mut sched, &relay).await;

    // The relay is fast again: within one interval every meter is on time.
    relay.set_latency(Duration::from_millis(20));
    let fast = Instant::now();
    tokio::time::sleep(INTERVAL * 3).await;
    let arrivals = relay.arrivals();
    let settled = fast + INTERVAL;
    for i in 0..METERS {
        let id = simulator::meter_cloud_id(i);
        let after: Vec<Duration> = arrivals[&id]
            .iter()
            .filter(|a| **a >= settled)
            .map(|a| off_phase(id, origin, *a))
            .collect();
        assert_eq!(
            after.len(),
            2,
            "meter {id}: every slot from one interval after recovery is polled"
        );
        assert!(
            after.iter().all(|off| *off <= Duration::from_millis(500)),
            "meter {id} still late one interval after recovery: {after:?}"
        );
    }
    shutdown.cancel();
    sched.drain().await;
}

/// Meters that join while others have skipped for minutes neither jump
/// the queue nor pay for the skips before them: from their first minute
/// they are polled as often as the old ones.
#[tokio::test(start_paused = true)]
async fn meters_that_join_during_overload_start_at_the_fleet_minimum() {
    let relay = Relay::new(PERMITS / 2, SLOW);
    let shutdown = CancellationToken::new();
    let mut sched = scheduler(relay.clone(), shutdown.clone());
    let origin = sched.origin();
    sched.apply(users(METERS / 2));
    tokio::time::sleep(Duration::from_secs(300)).await;
    let (floor, _) = sched.skip_spread().unwrap();
    assert!(
        floor >= 8,
        "the first half skipped at least {floor} each in five minutes of overload; 8 expected"
    );
    sched.apply(users(METERS));
    tokio::time::sleep(INTERVAL * 2).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let polls = polls_by_slot(&relay.arrivals(), origin, from, Instant::now());
    let (least, most) = (*polls.iter().min().unwrap(), *polls.iter().max().unwrap());
    assert!(
        most - least <= 1,
        "polls per meter in the minute after the join range {least}..{most}"
    );
    // A newcomer that started from zero would trail by `floor` (8 or more)
    // skips. The round's edge (see `scheduler::shed`) leaves the old meters
    // up to two apart when the newcomers join at the fewest, and each side
    // rounds its own share after that: four at most.
    let (fewest, most_skips) = sched.skip_spread().unwrap();
    assert!(
        most_skips - fewest <= 4,
        "newcomers neither jump the queue nor pay for old skips: {fewest}..{most_skips}"
    );
    shutdown.cancel();
    sched.drain().await;
}

/// The simulator with two meters answering in 600 ms (arrivals recorded)
/// and a real EAGLE client with one permit in the whole process.
async fn one_permit_against_a_600ms_relay() -> (Simulator, Eagle) {
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 2,
        latency: "600ms".parse().expect("latency"),
        record_arrivals: true,
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator");
    let client = Eagle::new(EagleOptions {
        relay_url: sim.relay_url(),
        request_timeout: Duration::from_secs(5),
        insecure_tls: false,
        trace_http: false,
        local_networks: AddressPolicy::loopback(),
        max_concurrent: 1,
        max_per_second: 10_000,
    })
    .expect("client builds");
    (sim, client)
}

#[tokio::test]
async fn a_request_that_cannot_go_out_by_its_deadline_is_late_not_sent() {
    let (sim, client) = one_permit_against_a_600ms_relay().await;
    let relay = |i: u32| {
        let id = simulator::meter_cloud_id(i);
        let source = Source::Relay {
            user: simulator::meter_email(id),
            password: Secret::new(simulator::meter_password(id)),
        };
        (id, source)
    };
    let (first, first_source) = relay(0);
    let busy = tokio::spawn({
        let client = client.clone();
        async move { client.read_demand(first, &first_source).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (second, second_source) = relay(1);
    let deadline = Instant::now() + Duration::from_millis(200);
    let late = client
        .read_demand_by(second, &second_source, Start::by(deadline, 0))
        .await;
    assert!(
        matches!(late, Err(ReadError::Late(_))),
        "the only permit is busy for 600 ms: {late:?}"
    );
    assert!(busy.await.unwrap().is_ok());
    assert_eq!(sim.requests_for(second), 0, "a late request is never sent");
    // With room, the same call goes out.
    let deadline = Instant::now() + Duration::from_millis(200);
    client
        .read_demand_by(second, &second_source, Start::by(deadline, 0))
        .await
        .expect("sent when a permit is free");
    assert_eq!(sim.requests_for(second), 1);
    // The simulator's record, which the pinger benchmark grades from.
    let record = sim.arrivals();
    let seen: Vec<(&str, &[bool])> = record
        .meters
        .iter()
        .map(|m| (m.cloud_id.as_str(), m.served.as_slice()))
        .collect();
    assert_eq!(
        seen,
        [
            (first.as_str(), &[true][..]),
            (second.as_str(), &[true][..])
        ]
    );
}

#[tokio::test]
async fn a_poll_that_waits_for_the_caps_is_stamped_when_its_request_leaves() {
    let (_sim, client) = one_permit_against_a_600ms_relay().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::start(SpoolOptions {
        data_dir: dir.path().to_path_buf(),
        prefix: "iseif-rainforest".into(),
        open_files: 16,
        flush_every: Duration::from_secs(1),
    })
    .expect("spool");
    let poller = Poller::new(client.clone(), spool.clone());
    // The only permit is busy for 600 ms from here.
    let busy = tokio::spawn({
        let (client, user) = (client.clone(), simulator::meter_user(0));
        async move { client.read_demand(user.cloud_id, &user.source()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked_wall = Utc::now();
    let asked = Instant::now();
    let polled = poller
        .poll_by(
            &simulator::meter_user(1),
            Some(asked_wall),
            Start::by(asked + Duration::from_secs(3), 0),
        )
        .await
        .expect("sent once the permit is free");
    assert!(busy.await.unwrap().is_ok());
    let waited = polled.sent.duration_since(asked);
    assert!(
        waited >= Duration::from_millis(400),
        "the request waited ~500 ms for the permit: {waited:?}"
    );
    let polled_at = chrono::DateTime::parse_from_rfc3339(&polled.record.polled_at)
        .expect("polled_at")
        .to_utc();
    let stamped_after = (polled_at - asked_wall).to_std().unwrap_or_default();
    assert!(
        stamped_after >= Duration::from_millis(400),
        "polled_at is when the request left, {stamped_after:?} after the poll began waiting"
    );
    assert!(
        (550..1_000).contains(&polled.record.latency_ms),
        "latency_ms is the 600 ms round trip, without the wait: {}",
        polled.record.latency_ms
    );
    spool.close().await;
}

#[tokio::test]
async fn the_pinger_says_once_a_minute_that_it_is_over_capacity_and_what_to_raise() {
    // 20 meters every second through 4 permits of 800 ms: 5 polls/s for 20.
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 20,
        latency: "800ms".parse().expect("latency"),
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let users_file = dir.path().join("users.jl");
    let text: String = users(20).iter().map(|u| u.to_file_line() + "\n").collect();
    std::fs::write(&users_file, text).expect("users file");
    let log = dir.path().join("pinger.log");
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let mut cmd = rainforest();
    cmd.arg("pinger")
        .arg("--users-file")
        .arg(&users_file)
        .args(["--relay-url", sim.relay_url().as_str()])
        .arg("--data-dir")
        .arg(dir.path().join("logs"))
        .args([
            "--set",
            "poll_interval=1s",
            "--set",
            "request_timeout=900ms",
        ])
        .args(["--set", "max_concurrent_requests=4"])
        .args(["--set", &format!("metrics_listen={metrics}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut pinger = Proc::spawn(&mut cmd, "rainforest pinger");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("three summary lines", async || {
        read_log().matches("skipped_overload=").count() >= 3
    })
    .await;
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    pinger.terminate(Duration::from_secs(10));
    let text = read_log();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Over capacity"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per minute, not one per interval:\n{text}"
    );
    let warning = warnings[0];
    assert!(
        warning.contains("20 polls/s needed")
            && warning.contains("raise max_concurrent_requests from 4 to at least"),
        "says by how much and what to raise: {warning}"
    );
    let skipped: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("rainforest_polls_skipped_overload_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no skip counter in /metrics:\n{body}"));
    assert!(skipped > 0, "{body}");
    let ratio: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("rainforest_capacity_ratio "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no capacity gauge in /metrics:\n{body}"));
    assert!(
        (0.15..0.4).contains(&ratio),
        "about 5 of the 20 polls/s needed: {ratio}"
    );
}
