//! What a benchmark reads about its own process from `/proc`: CPU time and
//! peak resident memory. Shared by the benches that run the code under test
//! in their own process (`mod usage;`), so every bench counts CPU and RSS
//! the same way. Each bench uses only part of it, hence the `dead_code`
//! allowance.

#![allow(dead_code)]

/// This process's user + system CPU seconds so far.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_cpu_seconds(&stat)
}

/// User + system CPU seconds in the text of a `/proc/.../stat` file (of a
/// process or of one of its threads); 0 where the text does not parse.
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    // The fields after the command name, which is in parentheses (and may
    // hold spaces); utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second()
}

/// The kernel's clock ticks per second, which `/proc` counts CPU time in;
/// 100 (Linux's usual value) when `getconf` cannot say.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// This process's peak resident memory (`VmHWM`), in whole megabytes.
pub fn peak_rss_mb() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}
