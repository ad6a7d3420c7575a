//! Rotator benchmark: gzip and upload N one-hour spool files to a local S3
//! server, one JSON line of figures.
//!
//! Run through `scripts/bench rotator --files N [--lines L] [--concurrency C]`.
//! A private `moto_server` (`pip install 'moto[server]'`) is started on a free
//! loopback port, or `TEST_S3_ENDPOINT` is used. The files (L simulated
//! record lines each, default 600 = one meter-hour at 6 s) are written before
//! the clock starts; the rotator runs in this process, so `peak_rss_mb` is
//! its own (VmHWM of /proc/self/status). `mb_per_s` counts spool (input)
//! megabytes; moto's own CPU is not counted but shares the two cores.

use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use rainforest::archive::{Archive, S3Archive, S3Settings, StaticCredentials};
use rainforest::cloud_id::CloudId;
use rainforest::record::format_time;
use rainforest::rotator::{Rotator, RotatorOptions};
use rainforest::secret::Secret;
use rainforest::spool::{HourBucket, hour_file};
use tokio_util::sync::CancellationToken;

struct Args {
    files: u32,
    lines: u32,
    concurrency: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        files: 1000,
        lines: 600,
        concurrency: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--files" => a.files = it.next().context("--files N")?.parse()?,
            "--lines" => a.lines = it.next().context("--lines L")?.parse()?,
            "--concurrency" => a.concurrency = it.next().context("--concurrency C")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}; use --files N [--lines L] [--concurrency C]"),
        }
    }
    Ok(a)
}

/// The moto server, killed when dropped.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> anyhow::Result<(String, Option<Moto>)> {
    if let Ok(e) = std::env::var("TEST_S3_ENDPOINT")
        && !e.trim().is_empty()
    {
        return Ok((e, None));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start moto_server; install it with pip install 'moto[server]'")?;
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("moto_server did not listen on port {port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((format!("http://127.0.0.1:{port}"), Some(moto)))
}

/// Writes `files` spool files of `lines` record lines each; returns bytes.
fn write_spool(data: &Path, prefix: &str, files: u32, lines: u32) -> anyhow::Result<u64> {
    let now = HourBucket::of(Utc::now());
    let mut bytes = 0;
    for n in 0..files {
        let id = CloudId::from_index(n % 100);
        let hour = HourBucket(now.0 - 2 - i64::from(n / 100));
        let path = hour_file(data, prefix, id, hour);
        std::fs::create_dir_all(path.parent().context("hour dir")?)?;
        let mut f = BufWriter::new(std::fs::File::create(&path)?);
        for i in 0..lines {
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
            let text = format!("{line}\n");
            bytes += text.len() as u64;
            f.write_all(text.as_bytes())?;
        }
        f.flush()?;
    }
    Ok(bytes)
}

fn peak_rss_mb() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let (endpoint, _moto) = start_moto()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("logs");
    let prefix = "iseif-rainforest";
    let spool_bytes = write_spool(&data, prefix, a.files, a.lines)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, elapsed, stats) = rt.block_on(async {
        let bucket = format!("bench-{:08x}", rand::random::<u32>());
        let archive = S3Archive::connect(S3Settings {
            bucket: bucket.clone(),
            endpoint: Some(endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(StaticCredentials {
                access_key_id: "test".into(),
                secret_access_key: Secret::new("test"),
            }),
        })
        .await?;
        // Create the bucket with the SDK the archive uses.
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(&endpoint)
                .force_path_style(true)
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    "test", "test", None, None, "bench",
                ))
                .build(),
        );
        client
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .with_context(|| format!("cannot create bucket {bucket} at {endpoint}"))?;
        let opts = RotatorOptions {
            data_dir: data.clone(),
            file_prefix: prefix.into(),
            key_prefix: "rainforest-logs".into(),
            grace: Duration::from_millis(1),
            concurrency: a.concurrency,
            ..RotatorOptions::from_config(&rainforest::config::Config::defaults()?)
        };
        let rotator = Rotator::new(opts, Archive::S3(archive));
        let started = Instant::now();
        let report = rotator.run_once(&CancellationToken::new()).await;
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::Ok((report, elapsed, rotator.stats().snapshot()))
    })?;
    if !report.all_archived() {
        bail!("not every file was archived: {report:?}");
    }
    let round = |x: f64| (x * 10.0).round() / 10.0;
    println!(
        "{}",
        serde_json::json!({
            "files": a.files,
            "lines_per_file": a.lines,
            "concurrency": a.concurrency,
            "seconds": round(elapsed),
            "files_per_s": round(f64::from(a.files) / elapsed),
            "mb_per_s": round(spool_bytes as f64 / 1e6 / elapsed),
            "spool_mb": round(spool_bytes as f64 / 1e6),
            "gzip_mb": round(stats.bytes_uploaded as f64 / 1e6),
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}
