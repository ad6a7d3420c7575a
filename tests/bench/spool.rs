//! Spool benchmark: the write load of one pinger with many more meters than
//! open descriptors, through the real [`Spool`], printing one JSON line.
//!
//! Each meter gets one ~380-byte line every `--interval` seconds (default
//! 6), spread evenly over the interval (100,000 meters: ~16,700 lines/s),
//! with `--open-files` (default 15,000) in the pool, so nearly every write
//! is a miss that evicts another file, and every evicted file must be made
//! durable before it is closed. Figures, over the steady window (after the
//! first interval, which opens every file once) and over the whole run:
//! lines/s written, the writer thread's CPU, syncs (`syncfs` calls) and
//! files synced per second, lines dropped, how far the writer fell behind
//! (lines appended but not yet written when the load stops, and the time
//! the last flush then takes), peak RSS.
//!
//! Run through `scripts/bench spool [--meters N] [--seconds S]
//! [--open-files F] [--interval I] [--dir D]`. The files go under
//! `target/bench-spool` (a real disk, not tmpfs, which would make syncs
//! free) unless `--dir` says otherwise, and are removed afterwards.

mod usage;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use rainforest::cloud_id::CloudId;
use rainforest::spool::{Spool, SpoolOptions, SpoolStats};

/// Bytes per line, about a demand record's.
const LINE_BYTES: usize = 380;
/// Appends are made this often, each a slice of the interval's meters.
const TICK: Duration = Duration::from_millis(10);

struct Args {
    meters: u32,
    seconds: u64,
    open_files: usize,
    interval: u64,
    dir: Option<std::path::PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        meters: 100_000,
        seconds: 20,
        open_files: 15_000,
        interval: 6,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--meters" => a.meters = it.next().context("--meters N")?.parse()?,
            "--seconds" => a.seconds = it.next().context("--seconds S")?.parse()?,
            "--open-files" => a.open_files = it.next().context("--open-files F")?.parse()?,
            "--interval" => a.interval = it.next().context("--interval I")?.parse()?,
            "--dir" => a.dir = Some(it.next().context("--dir D")?.into()),
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; use --meters N --seconds S --open-files F --interval I --dir D"
            ),
        }
    }
    if a.interval == 0 || a.meters == 0 || a.seconds <= a.interval {
        bail!("--meters and --interval must be positive and --seconds longer than --interval");
    }
    Ok(a)
}

/// User + system CPU seconds of this process's thread named `name`.
fn thread_cpu(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        return usage::stat_cpu_seconds(&stat);
    }
    0.0
}

/// A demand line of [`LINE_BYTES`] for meter `m`.
fn line(m: CloudId, seq: u64) -> String {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut l = format!(
        "{{\"cloud_id\":\"{m}\",\"polled_at\":\"{now}\",\"seq\":{seq},\"demand_kw\":1.234,\"pad\":\""
    );
    let pad = LINE_BYTES.saturating_sub(l.len() + 3);
    l.extend(std::iter::repeat_n('x', pad));
    l.push_str("\"}\n");
    l
}

#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    written: u64,
    syncs: u64,
    synced: u64,
    cpu: f64,
}

fn snapshot(stats: &SpoolStats) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        written: SpoolStats::get(&stats.lines_written),
        syncs: SpoolStats::get(&stats.syncs),
        synced: SpoolStats::get(&stats.files_synced),
        cpu: thread_cpu("spool-writer"),
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

async fn run(a: Args) -> anyhow::Result<serde_json::Value> {
    let limit = rlimit::increase_nofile_limit(a.open_files as u64 + 256)
        .context("raise the descriptor limit")?;
    if limit < a.open_files as u64 + 64 {
        bail!(
            "the descriptor limit is {limit}; --open-files {} needs more (ulimit -n)",
            a.open_files
        );
    }
    let base = a
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("target/bench-spool"));
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let dir = tempfile::tempdir_in(&base).context("a directory for the spool")?;
    let spool = Spool::start(SpoolOptions {
        data_dir: dir.path().to_path_buf(),
        prefix: "bench".into(),
        open_files: a.open_files,
        flush_every: Duration::from_secs(1),
    })
    .context("start the spool")?;
    let stats = || spool.stats();
    let ticks_per_interval = a.interval * 1000 / TICK.as_millis() as u64;
    let per_tick = (u64::from(a.meters)).div_ceil(ticks_per_interval);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = snapshot(stats());
    let deadline = start.at + Duration::from_secs(a.seconds);
    let warm_until = start.at + Duration::from_secs(a.interval);
    let mut warm: Option<Snapshot> = None;
    let (mut appended, mut next) = (0u64, 0u64);
    let mut longest_append = Duration::ZERO;
    while Instant::now() < deadline {
        tick.tick().await;
        if warm.is_none() && Instant::now() >= warm_until {
            warm = Some(snapshot(stats()));
        }
        for _ in 0..per_tick {
            let m = CloudId::from_index((next % u64::from(a.meters)) as u32);
            let t = Instant::now();
            spool
                .append(m, Utc::now(), line(m, next))
                .await
                .context("append")?;
            longest_append = longest_append.max(t.elapsed());
            next += 1;
            appended += 1;
        }
    }
    let end = snapshot(stats());
    let behind = appended.saturating_sub(end.written);
    let drain = Instant::now();
    spool.flush().await;
    let drain_s = drain.elapsed().as_secs_f64();
    let warm = warm.unwrap_or(start);
    let secs = |from: &Snapshot| end.at.duration_since(from.at).as_secs_f64();
    let per_s = |x: u64, from: &Snapshot| x as f64 / secs(from);
    let st = stats();
    let figures = serde_json::json!({
        "bench": "spool",
        "meters": a.meters,
        "interval_s": a.interval,
        "open_files": a.open_files,
        "seconds": a.seconds,
        "offered_lines_per_s": round(f64::from(a.meters) / a.interval as f64, 1),
        "steady_lines_per_s": round(per_s(end.written - warm.written, &warm), 1),
        "steady_writer_cpu_share": round((end.cpu - warm.cpu) / secs(&warm), 3),
        "steady_syncs_per_s": round(per_s(end.syncs - warm.syncs, &warm), 2),
        "steady_files_synced_per_s": round(per_s(end.synced - warm.synced, &warm), 1),
        "lines_per_s": round(per_s(end.written - start.written, &start), 1),
        "writer_cpu_s": round(end.cpu - start.cpu, 2),
        "syncs": end.syncs - start.syncs,
        "files_synced": end.synced - start.synced,
        "fsync_errors": SpoolStats::get(&st.fsync_errors),
        "lines_appended": appended,
        "lines_behind_at_stop": behind,
        "final_flush_s": round(drain_s, 2),
        "longest_append_ms": round(longest_append.as_secs_f64() * 1000.0, 1),
        "lines_dropped": SpoolStats::get(&st.lines_dropped),
        "write_errors": SpoolStats::get(&st.write_errors),
        "peak_rss_mb": usage::peak_rss_mb(),
    });
    spool.close().await;
    Ok(figures)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let figures = rt.block_on(run(a))?;
    println!("{figures}");
    Ok(())
}
