//! One spool volume shared by several writing processes: two real
//! `rainforest pinger`s and a `rainforest server` taking on-demand reads,
//! all over one Redis and the simulator, write into one data directory.
//! Each process owns its files (its writer id is in every name), so no line
//! is lost or cut, and the rotator ships every line of all three.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use rainforest::archive::{Archive, DirArchive};
use rainforest::clock::Clock;
use rainforest::registry::{RedisRegistry, Registry};
use rainforest::rotator::Rotator;
use rainforest::simulator::{self, SimulateArgs, Simulator};
use rainforest::spool::{HourBucket, parse_file_name};
use rainforest::stream::Kind;
use support::RedisServer;
use support::pinger::Pinger;
use support::process::wait_for;
use support::rotator::{options, unshipped_files};
use support::server::{ADMIN, ServerProcess};
use support::spool::{PREFIX, dir_archive_lines, kind_lines, spool_files, spool_lines};
use tokio_util::sync::CancellationToken;

/// Enough that two pingers splitting them by rendezvous hashing both get
/// some (all to one pinger: 2 in 2^16).
const METERS: u32 = 16;

/// What the archive must hold for `lines`: one line per `(cloud_id, slot)`,
/// the first polled, and every line without a slot (the rotator's merge).
fn one_per_slot(lines: &[serde_json::Value]) -> BTreeSet<String> {
    let mut sorted: Vec<&serde_json::Value> = lines.iter().collect();
    sorted.sort_by_key(|v| {
        (
            v["polled_at"].as_str().unwrap_or("").to_string(),
            v.to_string(),
        )
    });
    let mut seen = HashSet::new();
    sorted
        .into_iter()
        .filter(|v| match v["slot"].as_str() {
            Some(slot) => seen.insert((v["cloud_id"].to_string(), slot.to_string())),
            None => true,
        })
        .map(|v| v.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pingers_and_a_server_sharing_one_spool_lose_no_line() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
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
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: METERS,
        latency: "5ms±3ms".parse().expect("latency"),
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator");
    let relay = sim.relay_url().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    // The server's spool is `<dir>/logs`; both pingers write there too.
    let data = dir.path().join("logs");
    let server = ServerProcess::start(&redis.url(), &ns, dir.path(), &relay);
    let pingers = [
        Pinger::start(&redis.url(), &ns, &relay, &data, &[]),
        Pinger::start(&redis.url(), &ns, &relay, &data, &[]),
    ];
    // On-demand reads through the server while both pingers poll.
    let client = reqwest::Client::new();
    let on_demand = simulator::meter_cloud_id(0);
    let mut records = Vec::new();
    for _ in 0..3 {
        let answer = client
            .post(format!("{}/api/event/{on_demand}", server.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("POST /api/event");
        assert_eq!(answer.status(), 200, "on-demand read");
        let record: serde_json::Value = answer.json().await.expect("record");
        records.push(record);
        // The server allows one read per meter per second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    wait_for("the on-demand records on disk", async || {
        let on_disk: HashSet<String> = spool_lines(&data)
            .iter()
            .map(|(_, v)| v["polled_at"].to_string())
            .collect();
        records
            .iter()
            .all(|r| on_disk.contains(&r["polled_at"].to_string()))
    })
    .await;
    // The pingers split the meters (fleet membership), and the second to
    // join starts its share a couple of heartbeats later: wait until it has
    // written too, so both pingers' files share the directory.
    let writer_ids = |data: &std::path::Path| -> BTreeSet<String> {
        spool_files(data)
            .iter()
            .filter_map(|p| parse_file_name(PREFIX, &p.file_name()?.to_string_lossy()))
            .filter_map(|n| n.writer.map(|w| w.to_string()))
            .collect()
    };
    wait_for("files of both pingers and the server", async || {
        writer_ids(&data).len() == 3
    })
    .await;
    for p in pingers {
        assert!(p.terminate().success(), "pinger stops cleanly");
    }
    // The server only writes when asked, and it has written its lines.
    drop(server);

    // Three writers, each in files of its own.
    let writers = writer_ids(&data);
    assert_eq!(writers.len(), 3, "two pingers and the server: {writers:?}");
    assert!(spool_files(&data).iter().all(|p| {
        p.file_name()
            .and_then(|n| parse_file_name(PREFIX, &n.to_string_lossy()))
            .is_some_and(|n| n.writer.is_some())
    }));
    // Every reading the simulator served is a whole line on disk.
    let lines: Vec<serde_json::Value> = spool_lines(&data).into_iter().map(|(_, v)| v).collect();
    let mut per_meter: BTreeMap<String, u64> = BTreeMap::new();
    for v in &lines {
        *per_meter
            .entry(v["cloud_id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    for i in 0..METERS {
        let id = simulator::meter_cloud_id(i);
        assert_eq!(
            per_meter.get(id.as_str()).copied().unwrap_or(0),
            sim.served_for(id),
            "meter {id}: lines on disk vs readings served"
        );
    }
    assert!(
        sim.served_for(on_demand) >= 3 + 2,
        "both pingers and the server polled"
    );

    // What the archive must hold: every stream ships (summation lines too, when a summation slot fell
    // in the run), each kind merged into its own objects.
    let all_kinds: Vec<serde_json::Value> = Kind::ALL
        .into_iter()
        .flat_map(|kind| kind_lines(&data, kind))
        .map(|(_, v)| v)
        .collect();

    // The rotator ships all three writers' files (all gone now) into one
    // object per meter and hour: nothing lost, hand-over duplicates merged.
    let root = dir.path().join("archive");
    let after_the_hour = HourBucket::of(chrono::Utc::now()).end() + chrono::Duration::minutes(1);
    let rotator = Rotator::new(options(&data), Archive::Dir(DirArchive::new(root.clone())))
        .with_clock(Clock::starting_at(after_the_hour));
    let report = rotator.run_once(&CancellationToken::new()).await;
    assert!(report.all_archived(), "{report:?}");
    assert!(unshipped_files(&data).is_empty());
    let archived: Vec<String> = dir_archive_lines(&root)
        .iter()
        .map(|v| v.to_string())
        .collect();
    let archived_set: BTreeSet<String> = archived.iter().cloned().collect();
    assert_eq!(archived.len(), archived_set.len(), "no line twice");
    assert_eq!(archived_set, one_per_slot(&all_kinds));
}
