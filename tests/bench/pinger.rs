//! Pinger benchmark: N simulated meters, a fixed run time, one JSON line,
//! graded from outside.
//!
//! Run through `scripts/bench pinger [--meters N] [--seconds S] [--latency D]
//! [--error-rate R] [--registry redis|file]`. The simulator runs as a
//! separate `rainforest simulate --record-arrivals` process (so its CPU is
//! not counted) and is the judge: on-time and on-phase shares, skipped
//! slots and the spread of polls per meter come from its record of when
//! each meter's requests arrived, never from the pinger's own counters.
//! The pinger runs in this process as production runs it: the Redis
//! registry (a private `redis-server`, or `TEST_REDIS_URL`), credentials
//! sealed, statistics written every second; its CPU and peak RSS come from
//! /proc/self. `--registry file` uses the embedded users file instead.
//!
//! Exit status 1 when the lines on disk differ, meter by meter, from the
//! readings the simulator served: a benchmark that loses data has no
//! figures worth printing.

#[path = "../support/mod.rs"]
mod support;
mod usage;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rainforest::config::{Config, Layers};
use rainforest::pinger::{self, Pinger};
use rainforest::registry::{Registry, User};
use rainforest::secret::Secret;
use rainforest::simulator::{Arrivals, MeterArrivals, meter_cloud_id, meter_email, meter_password};
use rainforest::spool::SpoolStats;
use tokio_util::sync::CancellationToken;

/// The same allocator as the `rainforest` binary, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A gap between two polls of a meter within this of a whole number of
/// intervals is on phase (of exactly one interval: on time).
const TOLERANCE_MS: i64 = 500;

struct Args {
    meters: u32,
    seconds: u64,
    latency: String,
    error_rate: f64,
    redis: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        meters: 10_000,
        seconds: 60,
        latency: "150ms±50ms".into(),
        error_rate: 0.0,
        redis: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--meters" => a.meters = it.next().context("--meters N")?.parse()?,
            "--seconds" => a.seconds = it.next().context("--seconds S")?.parse()?,
            "--latency" => a.latency = it.next().context("--latency D")?,
            "--error-rate" => a.error_rate = it.next().context("--error-rate R")?.parse()?,
            "--registry" => {
                a.redis = match it.next().as_deref() {
                    Some("redis") => true,
                    Some("file") => false,
                    other => bail!("--registry redis|file, got {other:?}"),
                }
            }
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; use --meters N --seconds S [--latency 150ms±50ms] [--error-rate R] [--registry redis|file]"
            ),
        }
    }
    Ok(a)
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines on disk per cloud id.
fn lines_per_meter(dir: &Path, slots: (i64, i64)) -> anyhow::Result<OnDisk> {
    #[derive(serde::Deserialize)]
    struct Line {
        cloud_id: String,
        slot: Option<String>,
    }
    let mut out = OnDisk::default();
    for p in support::spool::spool_files(dir) {
        let demand = support::spool::file_kind(&p) == rainforest::stream::Kind::Demand;
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read spool file {}", p.display()))?;
        for (n, line) in text.lines().enumerate() {
            let parsed: Line = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a record", p.display(), n + 1))?;
            let slot_ms = parsed
                .slot
                .as_deref()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis());
            if demand {
                let in_window = slot_ms.is_some_and(|ms| ms >= slots.0 && ms < slots.1);
                *out.by_slot.entry(parsed.cloud_id.clone()).or_insert(0) += u64::from(in_window);
            }
            *out.lines.entry(parsed.cloud_id).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// What the spool holds, meter by meter.
#[derive(Default)]
struct OnDisk {
    /// Lines of every kind.
    lines: HashMap<String, u64>,
    /// Demand lines whose `slot` falls in the slot window.
    by_slot: HashMap<String, u64>,
}

/// The simulator's verdict on a run.
#[derive(Debug, Default)]
struct Graded {
    /// Slots in the steady window (meters x whole intervals).
    slots: u64,
    /// Demand polls that arrived in the window.
    arrived: u64,
    /// Arrivals one interval (±0.5 s) after the meter's previous one.
    on_time: u64,
    /// Arrivals a whole number of intervals (±0.5 s) after the previous one.
    on_phase: u64,
    /// Fewest and most demand polls any meter got in the window.
    per_meter: (u64, u64),
    /// Requests answered with something other than a reading (whole run).
    failed_served: u64,
    /// Readings served per meter (whole run).
    served: HashMap<String, u64>,
}

/// When a meter's demand polls arrived (ms): its summation and price reads
/// share the record but are not polls.
fn demand_polls(m: &MeterArrivals) -> impl Iterator<Item = u64> + '_ {
    m.at_ms
        .iter()
        .zip(&m.demand)
        .filter(|(_, demand)| **demand)
        .map(|(at, _)| *at)
}

fn grade(arrivals: &Arrivals, meters: u32, interval_ms: u64, from_ms: u64, to_ms: u64) -> Graded {
    let mut g = Graded {
        slots: u64::from(meters) * ((to_ms - from_ms) / interval_ms),
        per_meter: (u64::MAX, 0),
        ..Graded::default()
    };
    let mut asked = 0;
    for m in &arrivals.meters {
        // Every answer counts against the lines on disk, whatever its kind.
        let served = m.served.iter().filter(|s| **s).count() as u64;
        g.failed_served += m.served.len() as u64 - served;
        g.served.insert(m.cloud_id.clone(), served);
        // Timing is the demand polls': a summation or price read of the
        // same meter in between is not a poll early or late.
        let polls: Vec<u64> = demand_polls(m).collect();
        if polls.is_empty() {
            continue;
        }
        asked += 1;
        let mut in_window = 0;
        for (i, at) in polls.iter().enumerate() {
            if *at >= from_ms && *at < to_ms {
                in_window += 1;
                if let Some(prev) = i.checked_sub(1).map(|j| polls[j]) {
                    let gap = (*at - prev) as i64;
                    let k = (gap + interval_ms as i64 / 2) / interval_ms as i64;
                    let off = (gap - k * interval_ms as i64).abs();
                    if k >= 1 && off <= TOLERANCE_MS {
                        g.on_phase += 1;
                        if k == 1 {
                            g.on_time += 1;
                        }
                    }
                }
            }
        }
        g.arrived += in_window;
        g.per_meter = (g.per_meter.0.min(in_window), g.per_meter.1.max(in_window));
    }
    if asked < meters {
        g.per_meter.0 = 0;
    }
    g
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        (n as f64 / d as f64 * 10_000.0).floor() / 10_000.0
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let a = args()?;
    let bin = PathBuf::from(
        std::env::var("BENCH_RAINFOREST_BIN")
            .unwrap_or_else(|_| "target/release/rainforest".into()),
    );
    let port = support::free_port();
    let sim = Sim(Command::new(&bin)
        .args([
            "simulate",
            "--record-arrivals",
            "--meters",
            &a.meters.to_string(),
            "--latency",
            &a.latency,
            "--error-rate",
            &a.error_rate.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} simulate (build it with cargo build --release)",
                bin.display()
            )
        })?);

    let cleaned_s_ago = last_cleanup_s_ago();
    if let Some(s) = cleaned_s_ago.filter(|s| *s < QUIET_S) {
        eprintln!(
            "warning: the previous benchmark deleted its spool {s} s ago; ext4 hands out no \
             recently freed inode, so creating this run's files costs far more and the figures \
             read low (see README, Benchmarks). Wait {QUIET_S} s between runs."
        );
    }
    let dir = tempfile::tempdir()?;
    let users: Vec<User> = (0..a.meters)
        .map(|i| {
            let id = meter_cloud_id(i);
            User {
                cloud_id: id,
                user_email: meter_email(id),
                user_pw: Secret::new(meter_password(id)),
                active: true,
                local: None,
                cadence: Default::default(),
            }
        })
        .collect();
    let data = dir.path().join("logs");
    // RAINFOREST_* variables tune the pinger under test (e.g. RAINFOREST_OPEN_FILES).
    let mut layers = Layers::defaults()
        .env(std::env::vars())
        .flag("data_dir", data.display().to_string(), "bench")
        .flag(
            "relay_url",
            format!("http://127.0.0.1:{port}/cgi-bin/post_manager"),
            "bench",
        )
        .flag("user_reload_interval", "600s", "bench");
    let redis = if a.redis {
        let redis = support::RedisServer::start().context(
            "no Redis: install redis-server or set TEST_REDIS_URL (or use --registry file)",
        )?;
        let key = hex::encode(rand::random::<[u8; 32]>());
        layers = layers
            .flag("redis_url", redis.url(), "bench")
            .flag("redis_namespace", redis.namespace(), "bench")
            .flag("credentials_key", key, "bench");
        Some(redis)
    } else {
        let path = dir.path().join("users.jl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for u in &users {
            writeln!(
                f,
                r#"{{"cloud_id":"{}","user_email":"{}","user_pw":"{}"}}"#,
                u.cloud_id,
                u.user_email,
                u.user_pw.expose()
            )?;
        }
        f.flush()?;
        layers = layers.flag("users_file", path.display().to_string(), "bench");
        None
    };
    let config: Config = layers.build()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        // Wait for the simulator to listen.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let registry = Registry::from_config(&config).await?;
        if a.redis {
            for u in &users {
                registry.put(u).await?;
            }
        }
        let eagle = pinger::eagle_from_config(&config, false)?;
        let spool = pinger::spool_from_config(&config)?;
        let cpu0 = usage::cpu_seconds();
        let stop = CancellationToken::new();
        let spool_stats = spool.clone();
        let p = Pinger::start(&config, registry, eagle, spool, stop.clone());
        let counters = p.counters();
        // The first two intervals start every meter and create every hour
        // file (a once-an-hour cost in production); the steady-state figure
        // is taken after them.
        let warmup = (config.poll_interval * 2).min(Duration::from_secs(a.seconds / 2));
        tokio::time::sleep(warmup).await;
        let (cpu_warm, warm) = (usage::cpu_seconds(), counters.snapshot());
        let warm_wall = chrono::Utc::now().timestamp_millis();
        tokio::time::sleep(Duration::from_secs(a.seconds).saturating_sub(warmup)).await;
        let steady_cpu = usage::cpu_seconds() - cpu_warm;
        let steady = counters.snapshot().since(&warm);
        // Slots of the steady window on the wall clock, whole intervals,
        // the last one ended an interval before the stop so its polls are
        // done: every meter has exactly `whole` slots in it.
        let interval_ms = config.poll_interval.as_millis() as i64;
        let whole = ((chrono::Utc::now().timestamp_millis() - warm_wall) / interval_ms - 1).max(0);
        let slot_window = (warm_wall, warm_wall + whole * interval_ms, whole as u64);
        stop.cancel();
        p.join().await;
        let cpu = usage::cpu_seconds() - cpu0;
        // Taken before the arrival record is fetched and parsed, which is the
        // benchmark's memory, not the pinger's.
        let peak_rss_mb = usage::peak_rss_mb();
        let st = spool_stats.stats();
        let spool = (
            SpoolStats::get(&st.write_errors),
            SpoolStats::get(&st.lines_dropped),
        );
        let arrivals: Arrivals = reqwest::get(format!("http://127.0.0.1:{port}/sim/arrivals"))
            .await?
            .error_for_status()?
            .json()
            .await
            .context("the simulator's arrival record")?;
        anyhow::Ok((
            slot_window,
            counters.snapshot(),
            steady,
            warmup,
            cpu,
            steady_cpu,
            spool,
            arrivals,
            peak_rss_mb,
        ))
    });
    drop(sim);
    drop(redis);
    let (
        slot_window,
        s,
        steady,
        warmup,
        cpu,
        steady_cpu,
        (write_errors, lines_dropped),
        arrivals,
        peak_rss_mb,
    ) = result?;

    // The steady window in the simulator's clock: the whole intervals that
    // end at the last request it saw (the pinger stopping) and start after
    // the warm-up, which ends `warmup` after the first request.
    let interval_ms = config.poll_interval.as_millis() as u64;
    let times = || arrivals.meters.iter().flat_map(demand_polls);
    let first = times().min().context("the simulator saw no request")?;
    let last = times().max().unwrap_or(first);
    let whole = last.saturating_sub(first + warmup.as_millis() as u64) / interval_ms;
    let to_ms = last + 1;
    let g = grade(
        &arrivals,
        a.meters,
        interval_ms,
        to_ms - whole * interval_ms,
        to_ms,
    );

    let disk = lines_per_meter(&data, (slot_window.0, slot_window.1))?;
    let on_disk = &disk.lines;
    // Each poll counted for its slot, from the `slot` of its record: no
    // window edge adds or takes one, as the arrivals' window does.
    let by_slot = (0..a.meters).map(|i| {
        let id = meter_cloud_id(i).to_string();
        disk.by_slot.get(&id).copied().unwrap_or(0)
    });
    let by_slot = by_slot.fold((u64::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
    let mut differ: Vec<String> = g
        .served
        .iter()
        .filter(|(id, n)| on_disk.get(*id).copied().unwrap_or(0) != **n)
        .map(|(id, n)| {
            format!(
                "{id}: served {n}, on disk {}",
                on_disk.get(id).unwrap_or(&0)
            )
        })
        .collect();
    differ.extend(
        on_disk
            .iter()
            .filter(|(id, _)| !g.served.contains_key(*id))
            .map(|(id, n)| format!("{id}: served 0, on disk {n}")),
    );
    let lines_on_disk: u64 = on_disk.values().sum();
    let served_total: u64 = g.served.values().sum();
    let steady_polls = steady.polls_ok + steady.failed();
    let polls = s.polls_ok + s.failed();
    println!(
        "{}",
        serde_json::json!({
            "meters": a.meters,
            "seconds": a.seconds,
            "latency": a.latency,
            "registry": if a.redis { "redis" } else { "file" },
            "polls_per_s": (polls as f64 / a.seconds as f64 * 10.0).round() / 10.0,
            "window_slots": g.slots,
            "on_time_share": ratio(g.on_time, g.slots),
            "on_phase_share": ratio(g.on_phase, g.arrived),
            "polled_share": ratio(g.arrived, g.slots),
            "skipped_overload_share": ratio(steady.skipped_overload, g.slots),
            "polls_per_meter_min": g.per_meter.0,
            "polls_per_meter_max": g.per_meter.1,
            "slot_window_slots_per_meter": slot_window.2,
            "polls_per_meter_by_slot_min": by_slot.0,
            "polls_per_meter_by_slot_max": by_slot.1,
            "failed_served": g.failed_served,
            "failed_polls": s.failed(),
            "failures_by_kind": rainforest::protocol::ErrorKind::ALL
                .iter()
                .zip(s.failures)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.as_str().to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "capacity_ratio": s.capacity_ratio,
            "cpu_s_per_1000_polls": if steady_polls == 0 { 0.0 } else { (steady_cpu / steady_polls as f64 * 1000.0 * 1000.0).round() / 1000.0 },
            "cpu_s_per_1000_polls_incl_startup": if polls == 0 { 0.0 } else { (cpu / polls as f64 * 1000.0 * 1000.0).round() / 1000.0 },
            "cpu_cores_used": (cpu / a.seconds as f64 * 1000.0).round() / 1000.0,
            "peak_rss_mb": peak_rss_mb,
            "readings_served": served_total,
            "lines_written": lines_on_disk,
            "lines_match_served": differ.is_empty(),
            "spool_write_errors": write_errors,
            "spool_lines_dropped": lines_dropped,
            "quiet_disk": cleaned_s_ago.is_none_or(|s| s >= QUIET_S),
        })
    );
    // The spool goes now, not at exit, so the next run can tell how long
    // ago that was.
    drop(dir);
    mark_cleanup();
    if !differ.is_empty() {
        differ.sort();
        eprintln!(
            "lines on disk differ from the readings served for {} meters, e.g. {}",
            differ.len(),
            differ
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// How long before a run a deletion of many files skews it: ext4 keeps a
/// freed inode from reuse for a minute, five while its table is dirty.
const QUIET_S: u64 = 300;

/// Where a run notes when it deleted its spool.
fn cleanup_mark() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    PathBuf::from(target).join("bench-pinger-cleaned-at")
}

fn mark_cleanup() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Only a warning depends on it.
    let _ = std::fs::write(cleanup_mark(), now.to_string());
}

/// Seconds since a previous run deleted its spool, if one did.
fn last_cleanup_s_ago() -> Option<u64> {
    let at: u64 = std::fs::read_to_string(cleanup_mark())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(now.saturating_sub(at))
}
