//! Export benchmark: one meter-year of demand (a reading every 6 s, about
//! 5.3 million lines in 8,760 hour objects) in a directory archive,
//! exported by the release binary to CSV and to Parquet, over a month and
//! over the whole year. Prints one JSON line per run: lines/s, wall time,
//! peak RSS (from `/usr/bin/time`) and output size. RSS should be the same
//! for a month and a year: the export streams an hour at a time.
//!
//! Run through `scripts/bench export [--days N] [--interval S]`. The
//! archive is generated once under `target/bench-export/` (a minute or two)
//! and reused; the clock starts only for the export. Every run's row count
//! is checked against the lines generated; a difference fails the bench.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{Duration, TimeZone, Utc};
use rainforest::archive::ObjectKey;
use rainforest::cloud_id::CloudId;
use rainforest::record::format_time;
use rainforest::spool::HourBucket;

const KEY_PREFIX: &str = "rainforest-logs";
const PREFIX: &str = "iseif-rainforest";

struct Args {
    days: i64,
    interval_s: i64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        days: 365,
        interval_s: 6,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--days" => a.days = it.next().context("--days N")?.parse()?,
            "--interval" => a.interval_s = it.next().context("--interval S")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}; use [--days N] [--interval S]"),
        }
    }
    if a.days < 1 || a.interval_s < 1 || 3600 % a.interval_s != 0 {
        bail!("--days must be at least 1 and --interval divide 3600");
    }
    Ok(a)
}

/// Writes the archive (hour objects of one meter) unless a complete one
/// is there; returns the line count.
fn generate(root: &Path, meter: CloudId, args: &Args) -> anyhow::Result<u64> {
    let per_hour = 3600 / args.interval_s;
    let hours = args.days * 24;
    let total = (hours * per_hour) as u64;
    let marker = root.join(".complete");
    if marker.exists() {
        return Ok(total);
    }
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let t0 = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<()> {
                    for h in (w..hours).step_by(2) {
                        let hour = HourBucket::of(start + Duration::hours(h));
                        let key = ObjectKey::for_hour(KEY_PREFIX, PREFIX, meter, hour);
                        let path = root.join(key.as_str());
                        std::fs::create_dir_all(path.parent().context("object dir")?)?;
                        let mut gz = flate2::write::GzEncoder::new(
                            Vec::new(),
                            flate2::Compression::fast(),
                        );
                        for k in 0..per_hour {
                            let slot = hour.start() + Duration::seconds(k * args.interval_s);
                            let polled = slot + Duration::milliseconds(37 + (k % 50));
                            writeln!(
                                gz,
                                r#"{{"cloud_id":"{meter}","slot":"{}","polled_at":"{}","meter_time":"{}","demand_kw":{:.3},"latency_ms":{},"source":"relay","TimeStamp":{},"Demand":{},"Multiplier":1,"Divisor":1000,"DigitsRight":3,"DigitsLeft":5,"SuppressLeadingZero":"Y"}}"#,
                                format_time(slot),
                                format_time(polled),
                                format_time(slot),
                                (k % 4000) as f64 / 1000.0,
                                80 + k % 60,
                                800_000_000 + h * 3600 + k,
                                k % 4000,
                            )?;
                        }
                        std::fs::write(path, gz.finish()?)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("generator panicked"))??;
        }
        Ok(())
    })?;
    std::fs::write(&marker, total.to_string())?;
    eprintln!(
        "generated {total} lines in {hours} objects in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(total)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let bin = std::env::var("BENCH_RAINFOREST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/rainforest")
        });
    if !bin.exists() {
        bail!(
            "{} missing: run through scripts/bench export",
            bin.display()
        );
    }
    let meter = CloudId::parse("0e0001")?;
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-export");
    let root = base.join(format!("{}d-{}s", args.days, args.interval_s));
    std::fs::create_dir_all(&root)?;
    let total = generate(&root, meter, &args)?;
    let spool = base.join("empty-spool");
    std::fs::create_dir_all(&spool)?;
    let per_day = (86_400 / args.interval_s) as u64;
    let month = args.days.min(30);
    for (range, days) in [("month", month), ("year", args.days)] {
        for format in ["csv", "parquet"] {
            let out = base.join(format!("out-{range}.{format}"));
            let _ = std::fs::remove_file(&out);
            let to = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + Duration::days(days);
            let t0 = Instant::now();
            let run = Command::new("/usr/bin/time")
                .args(["-f", "rss_kb=%M"])
                .arg(&bin)
                .arg("--set")
                .arg(format!("archive=dir:{}", root.display()))
                .arg("--data-dir")
                .arg(&spool)
                .args([
                    "export",
                    "--meter",
                    meter.as_str(),
                    "--from",
                    "2025-01-01T00:00:00Z",
                ])
                .args(["--to", &format_time(to), "--format", format, "--output"])
                .arg(&out)
                .env_remove("RAINFOREST_CONFIG")
                .output()
                .context("run /usr/bin/time rainforest export")?;
            let secs = t0.elapsed().as_secs_f64();
            let stderr = String::from_utf8_lossy(&run.stderr);
            if !run.status.success() {
                bail!("export failed: {stderr}");
            }
            let rss_kb: u64 = stderr
                .lines()
                .find_map(|l| l.strip_prefix("rss_kb="))
                .context("no rss from /usr/bin/time")?
                .trim()
                .parse()?;
            let rows: u64 = stderr
                .lines()
                .find_map(|l| l.strip_prefix("exported "))
                .and_then(|l| l.split_whitespace().next())
                .context("no row count")?
                .parse()?;
            let want = per_day * days as u64;
            if rows != want || (days == args.days && rows != total) {
                bail!("{range} {format}: exported {rows} rows, generated {want}");
            }
            let size = std::fs::metadata(&out)?.len();
            println!(
                "{}",
                serde_json::json!({
                    "bench": "export",
                    "range": range,
                    "days": days,
                    "format": format,
                    "lines": rows,
                    "seconds": (secs * 100.0).round() / 100.0,
                    "lines_per_s": (rows as f64 / secs).round(),
                    "peak_rss_mb": (rss_kb as f64 / 1024.0 * 10.0).round() / 10.0,
                    "output_mb": (size as f64 / 1e6 * 10.0).round() / 10.0,
                })
            );
            let _ = std::fs::remove_file(&out);
        }
    }
    Ok(())
}
