//! Pinger benchmark: N simulated meters, a fixed run time, one JSON line.
//!
//! Run through `scripts/bench pinger [--meters N] [--seconds S]`. The
//! simulator runs as a separate `rainforest simulate` process (so its CPU is
//! not counted); the pinger runs in this process with the embedded users
//! file registry, and its CPU and peak RSS come from /proc/self.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rainforest::config::{Config, Layers};
use rainforest::pinger::{self, Pinger};
use rainforest::registry::Registry;
use rainforest::simulator::{meter_cloud_id, meter_email, meter_password};
use rainforest::spool::SpoolStats;
use tokio_util::sync::CancellationToken;

/// The same allocator as the `rainforest` binary, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    meters: u32,
    seconds: u64,
    latency: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        meters: 10_000,
        seconds: 60,
        latency: "150ms±50ms".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--meters" => a.meters = it.next().context("--meters N")?.parse()?,
            "--seconds" => a.seconds = it.next().context("--seconds S")?.parse()?,
            "--latency" => a.latency = it.next().context("--latency D")?,
            "--bench" => {}
            other => {
                bail!("unknown argument {other}; use --meters N --seconds S [--latency 150ms±50ms]")
            }
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn proc_field(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    ticks as f64 / 100.0
}

fn count_lines(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                n += bytes.iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
    }
    n
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let bin = PathBuf::from(
        std::env::var("BENCH_RAINFOREST_BIN")
            .unwrap_or_else(|_| "target/release/rainforest".into()),
    );
    let port = free_port()?;
    let sim = Sim(Command::new(&bin)
        .args([
            "simulate",
            "--meters",
            &a.meters.to_string(),
            "--latency",
            &a.latency,
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

    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users.jl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&users)?);
    for i in 0..a.meters {
        let id = meter_cloud_id(i);
        writeln!(
            f,
            r#"{{"cloud_id":"{id}","user_email":"{}","user_pw":"{}"}}"#,
            meter_email(id),
            meter_password(id)
        )?;
    }
    f.flush()?;
    drop(f);
    let data = dir.path().join("logs");
    // RAINFOREST_* variables tune the pinger under test (e.g. RAINFOREST_OPEN_FILES).
    let config: Config = Layers::defaults()
        .env(std::env::vars())
        .flag("users_file", users.display().to_string(), "bench")
        .flag("data_dir", data.display().to_string(), "bench")
        .flag(
            "relay_url",
            format!("http://127.0.0.1:{port}/cgi-bin/post_manager"),
            "bench",
        )
        .flag("user_reload_interval", "600s", "bench")
        .build()?;

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
        let eagle = pinger::eagle_from_config(&config, false)?;
        let spool = pinger::spool_from_config(&config)?;
        let cpu0 = cpu_seconds();
        let stop = CancellationToken::new();
        let spool_stats = spool.clone();
        let p = Pinger::start(&config, registry, eagle, spool, stop.clone());
        let counters = p.counters();
        // The first two intervals start every meter and create every hour
        // file (a once-an-hour cost in production); the steady-state figure
        // is taken after them.
        let warmup = (config.poll_interval * 2).min(Duration::from_secs(a.seconds / 2));
        tokio::time::sleep(warmup).await;
        let (cpu_warm, polls_warm) = (cpu_seconds(), {
            let w = counters.snapshot();
            w.polls_ok + w.failed()
        });
        tokio::time::sleep(Duration::from_secs(a.seconds).saturating_sub(warmup)).await;
        let steady_cpu = cpu_seconds() - cpu_warm;
        let steady_polls = {
            let e = counters.snapshot();
            e.polls_ok + e.failed() - polls_warm
        };
        stop.cancel();
        p.join().await;
        let cpu = cpu_seconds() - cpu0;
        let st = spool_stats.stats();
        let spool = (
            SpoolStats::get(&st.write_errors),
            SpoolStats::get(&st.lines_dropped),
        );
        anyhow::Ok((counters.snapshot(), cpu, steady_cpu, steady_polls, spool))
    });
    drop(sim);
    let (s, cpu, steady_cpu, steady_polls, (write_errors, lines_dropped)) = result?;
    let polls = s.polls_ok + s.failed();
    let slots = s.slots_polled + s.missed_slots;
    let lines_on_disk = count_lines(&data);
    println!(
        "{}",
        serde_json::json!({
            "meters": a.meters,
            "seconds": a.seconds,
            "polls_per_s": (polls as f64 / a.seconds as f64 * 10.0).round() / 10.0,
            "on_time_ratio": if slots == 0 { 0.0 } else { ((s.slots_on_time as f64 / slots as f64) * 10000.0).floor() / 10000.0 },
            "missed_slots": s.missed_slots,
            "failed_polls": s.failed(),
            "failures_by_kind": rainforest::protocol::ErrorKind::ALL
                .iter()
                .zip(s.failures)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.as_str().to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "cpu_s_per_1000_polls": if steady_polls == 0 { 0.0 } else { (steady_cpu / steady_polls as f64 * 1000.0 * 1000.0).round() / 1000.0 },
            "cpu_s_per_1000_polls_incl_startup": if polls == 0 { 0.0 } else { (cpu / polls as f64 * 1000.0 * 1000.0).round() / 1000.0 },
            "cpu_cores_used": (cpu / a.seconds as f64 * 1000.0).round() / 1000.0,
            "peak_rss_mb": proc_field("/proc/self/status", "VmHWM:").unwrap_or(0) / 1024,
            "lines_written": lines_on_disk,
            "lines_match_polls": lines_on_disk == s.polls_ok,
            "spool_write_errors": write_errors,
            "spool_lines_dropped": lines_dropped,
        })
    );
    Ok(())
}
