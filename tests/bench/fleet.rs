//! Fleet benchmark: several `rainforest pinger` processes share N meters
//! through one Redis, one is killed with `kill -9` mid-run and restarted,
//! and one JSON line says what that cost.
//!
//! Run through `scripts/bench fleet [--meters N] [--members M] [--seconds S]
//! [--latency D]`. Everything runs as production runs it: the release
//! binary for the simulator and each pinger (each with its own data
//! directory), default `poll_interval`, `member_heartbeat` and
//! `member_ttl`, credentials sealed in a private `redis-server` (or
//! `TEST_REDIS_URL`). The figures come from the spooled lines alone: each
//! names its meter and its `slot`, and every pinger puts a meter's slots on
//! the same grid, so the expected slots are known without asking anyone.
//!
//! - `handover_s`: from the kill until every meter the killed pinger was
//!   polling has been polled again by another.
//! - `missed_slots`: slots in the measured window (after start-up, before
//!   the stop) with no line.
//! - `duplicate_slots`: lines beyond the first for one `(cloud_id, slot)`,
//!   before the rotator's merge (which keeps one line per slot);
//!   `duplicate_slots_after_merge`: the same in the archive after the real
//!   rotator has shipped every pinger's directory, one after the other,
//!   into one archive (a directory), so the later ones merge into the
//!   objects the earlier wrote, as rotators on several hosts do; and
//!   `slots_lost_in_merge`: `(cloud_id, slot)`s on disk before and not in
//!   the archive after (must be 0).
//! - `missed_slots_per_orphan_max`: the most slots any meter missed, to hold
//!   against the hand-over window (`member_ttl + member_heartbeat +
//!   poll_interval` over `poll_interval`).
//! - `on_time_ratio`: slots of the window polled within 500 ms of the slot.

#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::DateTime;
use rainforest::archive::{Archive, DirArchive};
use rainforest::config::Layers;
use rainforest::registry::Registry;
use rainforest::rotator::{Rotator, RotatorOptions, gunzip};
use rainforest::scheduler::slots::phase_for;
use rainforest::simulator::{meter_cloud_id, meter_user};
use support::process::Proc;
use tokio_util::sync::CancellationToken;

/// A poll that started within this of its slot is on time.
const ON_TIME_MS: i64 = 500;

struct Args {
    meters: u32,
    members: usize,
    seconds: u64,
    latency: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        meters: 30_000,
        members: 3,
        seconds: 90,
        latency: "50ms±20ms".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--meters" => a.meters = it.next().context("--meters N")?.parse()?,
            "--members" => a.members = it.next().context("--members M")?.parse()?,
            "--seconds" => a.seconds = it.next().context("--seconds S")?.parse()?,
            "--latency" => a.latency = it.next().context("--latency D")?,
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; use --meters N --members M --seconds S [--latency 50ms±20ms]"
            ),
        }
    }
    if a.members < 2 {
        bail!("--members must be at least 2: one is killed");
    }
    if a.seconds < 60 {
        bail!(
            "--seconds must be at least 60: start-up, the kill's hand-over and the restart need room"
        );
    }
    Ok(a)
}

/// A child process killed when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct Line {
    cloud_id: String,
    slot_ms: i64,
    polled_ms: i64,
    /// A demand line (the slots graded; summation and price lines only
    /// count for the merge).
    demand: bool,
}

/// Every line under `dir` with its slot and poll time (unix ms).
fn lines(dir: &Path) -> anyhow::Result<Vec<Line>> {
    let ms = |v: &serde_json::Value, f: &str| -> anyhow::Result<i64> {
        let text = v[f]
            .as_str()
            .with_context(|| format!("a line without {f}: {v}"))?;
        Ok(DateTime::parse_from_rfc3339(text)?.timestamp_millis())
    };
    let mut out = Vec::new();
    for p in support::spool::spool_files(dir) {
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read spool file {}", p.display()))?;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: not a record: {line}", p.display()))?;
            out.push(Line {
                cloud_id: v["cloud_id"].as_str().unwrap_or_default().to_string(),
                slot_ms: ms(&v, "slot")?,
                polled_ms: ms(&v, "polled_at")?,
                demand: v.get("demand_kw").is_some(),
            });
        }
    }
    Ok(out)
}

/// Ships every pinger directory in turn into one directory archive with the
/// real rotator, its clock two hours ahead so the run's hours are over (a
/// writer that has stopped is gone at once: the grace is a millisecond),
/// then returns each archived line's `(object, cloud_id,
/// slot)` with how often it appears.
fn ship_and_count(
    config: &rainforest::config::Config,
    dirs: &[PathBuf],
    root: &Path,
) -> anyhow::Result<HashMap<(String, String, String), u32>> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for d in dirs {
            let opts = RotatorOptions {
                data_dir: d.clone(),
                grace: Duration::from_millis(1),
                ..RotatorOptions::from_config(config)
            };
            let later = chrono::Utc::now() + chrono::Duration::hours(2);
            let rotator = Rotator::new(opts, Archive::Dir(DirArchive::new(root.to_path_buf())))
                .with_clock(rainforest::clock::Clock::starting_at(later));
            rotator.preflight().await?;
            let report = rotator.run_once(&CancellationToken::new()).await;
            if !report.all_archived() {
                bail!("{}: not every file was archived: {report:?}", d.display());
            }
        }
        anyhow::Ok(())
    })?;
    let mut counts = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".jl.gz") {
                let object = path.strip_prefix(root)?.display().to_string();
                let text = gunzip(&std::fs::read(&path)?)
                    .with_context(|| format!("{object} is not gzip"))?;
                for line in String::from_utf8(text)?.lines() {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .with_context(|| format!("{object}: not a record: {line}"))?;
                    let field = |f: &str| v[f].as_str().unwrap_or_default().to_string();
                    *counts
                        .entry((object.clone(), field("cloud_id"), field("slot")))
                        .or_default() += 1;
                }
            }
        }
    }
    Ok(counts)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let bin = PathBuf::from(
        std::env::var("BENCH_RAINFOREST_BIN")
            .unwrap_or_else(|_| "target/release/rainforest".into()),
    );
    let port = support::free_port();
    let _sim = Kid(Command::new(&bin)
        .args(["simulate", "--meters", &a.meters.to_string()])
        .args(["--latency", &a.latency])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} simulate", bin.display()))?);
    let redis = support::RedisServer::start()
        .context("no Redis: install redis-server or set TEST_REDIS_URL")?;
    let ns = redis.namespace();
    let key = hex::encode(rand::random::<[u8; 32]>());
    let relay = format!("http://127.0.0.1:{port}/cgi-bin/post_manager");
    let config = Layers::defaults()
        .flag("redis_url", redis.url(), "bench")
        .flag("redis_namespace", ns.clone(), "bench")
        .flag("credentials_key", key.clone(), "bench")
        .build()?;
    let interval_ms = config.poll_interval.as_millis() as i64;
    let bound_ms =
        (config.member_ttl + config.member_heartbeat + config.poll_interval).as_millis() as i64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let registry = Registry::from_config(&config).await?;
        for i in 0..a.meters {
            registry.put(&meter_user(i)).await?;
        }
        anyhow::Ok(())
    })?;

    let dir = tempfile::tempdir()?;
    let pinger = |name: &str| -> anyhow::Result<(Proc, PathBuf)> {
        let data = dir.path().join(name).join("logs");
        std::fs::create_dir_all(&data)?;
        let mut cmd = support::process::clean(Command::new(&bin));
        cmd.arg("pinger")
            .env("RAINFOREST_REDIS_URL", redis.url())
            .env("RAINFOREST_REDIS_NAMESPACE", &ns)
            .env("RAINFOREST_CREDENTIALS_KEY", &key)
            .env("RAINFOREST_RELAY_URL", &relay)
            .env("RAINFOREST_DATA_DIR", &data)
            .env("RAINFOREST_USER_RELOAD_INTERVAL", "600s")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join(format!("{name}.log")),
            )?));
        Ok((Proc::spawn(&mut cmd, "rainforest pinger"), data))
    };
    let started = now_ms();
    let mut running = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..a.members {
        let (kid, data) = pinger(&format!("p{i}"))?;
        running.push(Some(kid));
        dirs.push(data);
    }
    // Start-up: each joiner waits two heartbeats, then the first slots and
    // the users' load; measured from a few intervals later.
    let total = Duration::from_secs(a.seconds);
    let kill_after = total / 3;
    std::thread::sleep(kill_after);
    let victim = a.members - 1;
    let killed_at = now_ms();
    if let Some(mut p) = running[victim].take() {
        p.kill9();
    }
    // Restarted after a full hand-over and a little more.
    std::thread::sleep(Duration::from_millis(bound_ms as u64) * 2);
    let (kid, data) = pinger(&format!("p{victim}-restarted"))?;
    let restarted_at = now_ms();
    running.push(Some(kid));
    dirs.push(data);
    let left = total.saturating_sub(Duration::from_millis((now_ms() - started) as u64));
    std::thread::sleep(left);
    let stopped_at = now_ms();
    // All at once, so none takes over another's meters inside the window.
    for p in running.iter().flatten() {
        p.signal("-TERM");
    }
    for p in running.iter_mut().flatten() {
        p.terminate(Duration::from_secs(20));
    }
    drop(running);

    // What each pinger said about skipped slots and hand-overs, for
    // reading the figures (on a loaded machine most misses are skips).
    for entry in std::fs::read_dir(dir.path())?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines().filter(|l| {
                l.contains("meters=")
                    || l.contains("Fleet:")
                    || l.contains("WARN")
                    || l.contains("ERROR")
            }) {
                eprintln!("{}: {line}", path.display());
            }
        }
    }
    let per_dir: Vec<Vec<Line>> = dirs
        .iter()
        .map(|d| lines(d))
        .collect::<anyhow::Result<_>>()?;
    // The window: after every member joined and polled a few intervals,
    // until the last whole interval before the stop.
    let from = started + 4 * interval_ms + 2 * config.member_heartbeat.as_millis() as i64;
    let to = stopped_at - interval_ms;
    let mut seen: HashMap<(String, i64), u32> = HashMap::new();
    let mut on_time = 0u64;
    for l in per_dir.iter().flatten().filter(|l| l.demand) {
        if l.slot_ms >= from && l.slot_ms < to {
            let n = seen.entry((l.cloud_id.clone(), l.slot_ms)).or_default();
            *n += 1;
            if *n == 1 && l.polled_ms - l.slot_ms <= ON_TIME_MS {
                on_time += 1;
            }
        }
    }
    let mut expected = 0u64;
    let mut missed = 0u64;
    let mut missed_max = 0u64;
    for i in 0..a.meters {
        let id = meter_cloud_id(i);
        let phase = phase_for(id, config.poll_interval).as_millis() as i64;
        let mut slot = from - (from - phase).rem_euclid(interval_ms);
        if slot < from {
            slot += interval_ms;
        }
        let mut meter_missed = 0;
        while slot < to {
            expected += 1;
            if !seen.contains_key(&(id.as_str().to_string(), slot)) {
                meter_missed += 1;
            }
            slot += interval_ms;
        }
        missed += meter_missed;
        missed_max = missed_max.max(meter_missed);
    }
    let duplicates: u64 = seen.values().map(|n| u64::from(n - 1)).sum();
    // The killed member's meters: those it polled in the last intervals
    // before the kill; each one's first slot after the kill elsewhere.
    let orphans: BTreeSet<&str> = per_dir[victim]
        .iter()
        .filter(|l| l.demand && l.slot_ms >= killed_at - 2 * interval_ms)
        .map(|l| l.cloud_id.as_str())
        .collect();
    let mut back: HashMap<&str, i64> = HashMap::new();
    for (i, d) in per_dir.iter().enumerate() {
        if i == victim {
            continue;
        }
        for l in d
            .iter()
            .filter(|l| l.demand && l.slot_ms > killed_at && l.slot_ms < restarted_at)
        {
            if orphans.contains(l.cloud_id.as_str()) {
                let e = back.entry(l.cloud_id.as_str()).or_insert(l.slot_ms);
                *e = (*e).min(l.slot_ms);
            }
        }
    }
    // Every (cloud_id, slot) on disk, whatever the stream; the archive must
    // hold each once.
    let on_disk: std::collections::HashSet<(String, i64)> = per_dir
        .iter()
        .flatten()
        .map(|l| (l.cloud_id.clone(), l.slot_ms))
        .collect();
    let archived = ship_and_count(&config, &dirs, &dir.path().join("archive"))?;
    let duplicates_after: u64 = archived.values().map(|n| u64::from(n - 1)).sum();
    let in_archive: std::collections::HashSet<(String, i64)> = archived
        .keys()
        .filter_map(|(_, id, slot)| {
            let ms = DateTime::parse_from_rfc3339(slot).ok()?.timestamp_millis();
            Some((id.clone(), ms))
        })
        .collect();
    let lost_in_merge = on_disk.difference(&in_archive).count();
    let handover_s = if back.len() == orphans.len() {
        back.values().max().map(|t| (t - killed_at) as f64 / 1000.0)
    } else {
        None
    };
    println!(
        "{}",
        serde_json::json!({
            "meters": a.meters,
            "members": a.members,
            "seconds": a.seconds,
            "poll_interval_s": interval_ms as f64 / 1000.0,
            "member_heartbeat_s": config.member_heartbeat.as_secs_f64(),
            "member_ttl_s": config.member_ttl.as_secs_f64(),
            "orphaned_meters": orphans.len(),
            "orphans_polled_again": back.len(),
            "handover_s": handover_s,
            "handover_bound_s": bound_ms as f64 / 1000.0,
            "window_slots": expected,
            "missed_slots": missed,
            "missed_slots_per_meter_max": missed_max,
            "missed_slots_allowed_per_meter": (bound_ms + interval_ms - 1) / interval_ms,
            "duplicate_slots": duplicates,
            "duplicate_slots_after_merge": duplicates_after,
            "slots_lost_in_merge": lost_in_merge,
            "on_time_ratio": if expected == 0 { 0.0 } else { (on_time as f64 / expected as f64 * 10_000.0).floor() / 10_000.0 },
        })
    );
    if duplicates_after > 0 || lost_in_merge > 0 {
        bail!("the merge left {duplicates_after} duplicate slots and lost {lost_in_merge}");
    }
    Ok(())
}
