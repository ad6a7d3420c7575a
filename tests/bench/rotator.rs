//! Rotator benchmark: ships N one-hour spool files to a local S3 server in
//! three cases and prints one JSON line of figures per case:
//! - `fresh`: every key is new (one `If-None-Match: *` PUT each into an
//!   empty bucket, after the start-up probe found them enforced);
//! - `merge`: every key already holds half of the hour (the odd lines),
//!   the spool file the other half plus an overlap, so each file costs a
//!   GET, a gunzip, a merge and an `If-Match` PUT;
//! - `lock`: fresh keys with the Redis merge lock held around each
//!   read-merge-write (as on a store that ignores conditional writes).
//!
//! Run through `scripts/bench rotator --files N [--lines L] [--concurrency C]
//! [--case fresh|merge|lock]...` (every case unless some are named).
//! moto and Redis come from the test harness (`tests/support`: a private
//! `moto_server` and `redis-server` on free loopback ports, or
//! `TEST_S3_ENDPOINT` / `TEST_REDIS_URL`). The files (L simulated record
//! lines each, default 600 = one meter-hour at 6 s) are written before the
//! clock starts. `cpu_ms_per_file` is this process's user + system CPU
//! (the rotator runs here; moto's and Redis' CPU is not counted, but they
//! share the two cores); `mb_per_s` counts spool (input) megabytes. After
//! each case every object is read back and compared, line for line, with
//! what it must hold; any difference fails the benchmark.

#[path = "../support/mod.rs"]
mod support;
mod usage;

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use futures::StreamExt;
use rainforest::cloud_id::CloudId;
use rainforest::record::format_time;
use rainforest::rotator::{ArchiveLock, Rotator, RotatorOptions};
use rainforest::spool::{HourBucket, hour_file};
use support::RedisServer;
use support::s3::S3Server;
use support::spool::{KEY_PREFIX, PREFIX, key};
use tokio_util::sync::CancellationToken;

struct Args {
    files: u32,
    lines: u32,
    concurrency: usize,
    /// The cases to run (all three unless `--case` names some).
    cases: Vec<Case>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        files: 1000,
        lines: 600,
        concurrency: 8,
        cases: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--files" => a.files = it.next().context("--files N")?.parse()?,
            "--lines" => a.lines = it.next().context("--lines L")?.parse()?,
            "--concurrency" => a.concurrency = it.next().context("--concurrency C")?.parse()?,
            "--case" => a.cases.push(match it.next().as_deref() {
                Some("fresh") => Case::Fresh,
                Some("merge") => Case::Merge,
                Some("lock") => Case::Lock,
                other => bail!("--case fresh|merge|lock, not {other:?}"),
            }),
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; use --files N [--lines L] [--concurrency C] [--case fresh|merge|lock]..."
            ),
        }
    }
    if a.cases.is_empty() {
        a.cases = vec![Case::Fresh, Case::Merge, Case::Lock];
    }
    Ok(a)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Fresh,
    Merge,
    Lock,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Fresh => "fresh",
            Case::Merge => "merge",
            Case::Lock => "lock",
        }
    }
}

/// File `n`'s meter and hour: 100 meters, then the hour before, and so on,
/// counted back from the hour the benchmark started in. Fixed for the run:
/// a full-size case takes long enough to cross the turn of an hour, and the
/// check afterwards must look for each file where it was written.
fn file_of(n: u32) -> (CloudId, HourBucket) {
    static START: std::sync::OnceLock<HourBucket> = std::sync::OnceLock::new();
    let now = *START.get_or_init(|| HourBucket::of(Utc::now()));
    (
        CloudId::from_index(n % 100),
        HourBucket(now.0 - 2 - i64::from(n / 100)),
    )
}

/// Line `i` of a meter's hour (with its newline): a full relay record,
/// polled every 6 s, so lines sort by `i`.
fn record(id: CloudId, hour: HourBucket, n: u32, i: u32) -> String {
    let t = hour.start() + chrono::Duration::milliseconds(i64::from(i) * 6000 + 137);
    let demand = (n * 7 + i * 13) % 5000;
    let line = serde_json::json!({
        "cloud_id": id.as_str(),
        "polled_at": format_time(t),
        "meter_time": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "demand_kw": f64::from(demand) / 1000.0,
        "latency_ms": 120 + i % 80,
        "source": "relay",
        "TimeStamp": 790_000_000 + i * 6,
        "Demand": demand,
        "Multiplier": 1,
        "Divisor": 1000,
        "DigitsRight": 3,
        "DigitsLeft": 6,
        "SuppressLeadingZero": "Y",
        "DeviceMacId": "0xd8d5b9000000a1c3",
        "MeterMacId": "0x0013500100c4e2f7",
    });
    format!("{line}\n")
}

/// Which lines the spool file holds; in the merge case the archive holds
/// the odd ones, the spool the even ones and every tenth odd one again.
fn in_spool(case: Case, i: u32) -> bool {
    case != Case::Merge || i.is_multiple_of(2) || i % 10 == 1
}

/// Writes the spool files; returns their bytes.
fn write_spool(data: &Path, case: Case, files: u32, lines: u32) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for n in 0..files {
        let (id, hour) = file_of(n);
        let path = hour_file(data, PREFIX, id, hour);
        std::fs::create_dir_all(path.parent().context("hour dir")?)?;
        let mut f = BufWriter::new(std::fs::File::create(&path)?);
        for i in (0..lines).filter(|i| in_spool(case, *i)) {
            let text = record(id, hour, n, i);
            bytes += text.len() as u64;
            f.write_all(text.as_bytes())?;
        }
        f.flush()?;
    }
    Ok(bytes)
}

fn gzip(text: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text)?;
    Ok(e.finish()?)
}

/// The merge case's archive before the run: the odd lines of every hour.
async fn preload(s3: &S3Server, bucket: &str, files: u32, lines: u32) -> anyhow::Result<()> {
    let client = s3.client();
    let puts = futures::stream::iter(0..files).map(|n| {
        let client = client.clone();
        async move {
            let (id, hour) = file_of(n);
            let text: String = (0..lines)
                .filter(|i| i % 2 == 1)
                .map(|i| record(id, hour, n, i))
                .collect();
            client
                .put_object()
                .bucket(bucket)
                .key(key(id, hour))
                .body(gzip(text.as_bytes())?.into())
                .send()
                .await
                .with_context(|| format!("preload {}", key(id, hour)))?;
            anyhow::Ok(())
        }
    });
    let results: Vec<_> = puts.buffer_unordered(16).collect().await;
    results.into_iter().collect()
}

/// Reads every object back; each must hold exactly lines `0..lines` of its
/// hour, in order, once.
async fn verify(s3: &S3Server, bucket: &str, files: u32, lines: u32) -> anyhow::Result<()> {
    let client = s3.client();
    let checks = futures::stream::iter(0..files).map(|n| {
        let client = client.clone();
        async move {
            let (id, hour) = file_of(n);
            let k = key(id, hour);
            let got = client
                .get_object()
                .bucket(bucket)
                .key(&k)
                .send()
                .await
                .with_context(|| format!("{k} is missing"))?
                .body
                .collect()
                .await
                .with_context(|| format!("read {k}"))?
                .into_bytes();
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(&got[..])
                .read_to_string(&mut text)
                .with_context(|| format!("{k} is not gzip of UTF-8"))?;
            let want: String = (0..lines).map(|i| record(id, hour, n, i)).collect();
            if text != want {
                bail!(
                    "{k} holds {} lines, expected {lines} (or they differ)",
                    text.lines().count()
                );
            }
            anyhow::Ok(())
        }
    });
    let results: Vec<_> = checks.buffer_unordered(16).collect().await;
    results.into_iter().collect()
}

async fn run_case(
    s3: &S3Server,
    redis: &RedisServer,
    a: &Args,
    case: Case,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("logs");
    let spool_bytes = write_spool(&data, case, a.files, a.lines)?;
    let bucket = s3.create_bucket().await;
    if case == Case::Merge {
        preload(s3, &bucket, a.files, a.lines).await?;
    }
    let opts = RotatorOptions {
        data_dir: data.clone(),
        file_prefix: PREFIX.into(),
        key_prefix: KEY_PREFIX.into(),
        grace: Duration::from_millis(1),
        concurrency: a.concurrency,
        ..RotatorOptions::from_config(&rainforest::config::Config::defaults()?)
    };
    let mut rotator = Rotator::new(opts, s3.at(&bucket).archive().await);
    if case != Case::Lock {
        // As a running rotator does at start-up: moto enforces conditional
        // writes, so new keys are created with one PUT, no GET first.
        rotator.preflight().await?;
    }
    if case == Case::Lock {
        // Without a start-up probe the rotator takes the lock for every
        // key, as it does on a store that ignores conditional writes.
        let lock = ArchiveLock::new(&redis.url(), &redis.namespace())?;
        rotator = rotator.with_lock(lock);
    }
    let (cpu0, started) = (usage::cpu_seconds(), Instant::now());
    let report = rotator.run_once(&CancellationToken::new()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = usage::cpu_seconds() - cpu0;
    if !report.all_archived() {
        bail!("{}: not every file was archived: {report:?}", case.name());
    }
    let stats = rotator.stats().snapshot();
    if case == Case::Merge && stats.merges != u64::from(a.files) {
        bail!(
            "merge: {} of {} files were merged into an existing object",
            stats.merges,
            a.files
        );
    }
    verify(s3, &bucket, a.files, a.lines)
        .await
        .with_context(|| format!("{}: the archive is wrong", case.name()))?;
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    Ok(serde_json::json!({
        "case": case.name(),
        "files": a.files,
        "lines_per_file": a.lines,
        "concurrency": a.concurrency,
        "seconds": round(elapsed, 1),
        "files_per_s": round(f64::from(a.files) / elapsed, 1),
        "mb_per_s": round(spool_bytes as f64 / 1e6 / elapsed, 1),
        "cpu_ms_per_file": round(cpu * 1000.0 / f64::from(a.files), 2),
        "spool_mb": round(spool_bytes as f64 / 1e6, 1),
        "gzip_mb": round(stats.bytes_uploaded as f64 / 1e6, 1),
        "verified_objects": a.files,
        "peak_rss_mb": usage::peak_rss_mb(),
    }))
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let s3 = S3Server::start().context("no S3 server (see tests/support/s3.rs)")?;
        let redis = RedisServer::start().context("no Redis (see tests/support/mod.rs)")?;
        for &case in &a.cases {
            let figures = run_case(&s3, &redis, &a, case).await?;
            println!("{figures}");
        }
        anyhow::Ok(())
    })
}
