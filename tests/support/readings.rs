//! Hand-made archives for the read-back tests (coverage, export): demand
//! lines with a `slot`, gzipped hour objects written straight into a
//! directory archive, and the binary pointed at such an archive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use rainforest::archive::ObjectKey;
use rainforest::cloud_id::CloudId;
use rainforest::record::format_time;
use rainforest::spool::HourBucket;
use rainforest::stream::Kind;

use super::spool::{KEY_PREFIX, PREFIX};

/// A demand line for `slot`, polled `lag_ms` after it, with `kw` demand.
pub fn demand_at(cloud_id: CloudId, slot: DateTime<Utc>, lag_ms: i64, kw: f64) -> String {
    serde_json::json!({
        "cloud_id": cloud_id.as_str(),
        "slot": format_time(slot),
        "polled_at": format_time(slot + Duration::milliseconds(lag_ms)),
        "demand_kw": kw,
        "latency_ms": 42,
        "source": "relay",
    })
    .to_string()
}

/// The file of `cloud_id`'s `kind` object for `hour` in the directory
/// archive at `root` (default prefixes).
pub fn object_path(root: &Path, kind: Kind, cloud_id: CloudId, hour: HourBucket) -> PathBuf {
    root.join(ObjectKey::for_stream(KEY_PREFIX, PREFIX, kind, cloud_id, hour).as_str())
}

/// Writes `lines` as the gzipped demand object of `cloud_id`'s `hour`.
pub fn write_object(root: &Path, cloud_id: CloudId, hour: HourBucket, lines: &[String]) -> PathBuf {
    let path = object_path(root, Kind::Demand, cloud_id, hour);
    std::fs::create_dir_all(path.parent().expect("object dir")).expect("mkdir");
    std::fs::write(&path, gzip_lines(lines)).expect("write object");
    path
}

/// `lines`, each followed by a newline, as one gzip member (an object's body).
pub fn gzip_lines(lines: &[String]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for l in lines {
        gz.write_all(l.as_bytes()).expect("gzip");
        gz.write_all(b"\n").expect("gzip");
    }
    gz.finish().expect("gzip")
}

/// The binary reading the directory archive `archive` and the spool
/// `data_dir`, with `args` after the global flags.
pub fn rainforest_over(archive: &Path, data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = super::process::rainforest();
    cmd.arg("--set")
        .arg(format!("archive=dir:{}", archive.display()))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args);
    cmd
}

/// Asserts that a run of the binary exited 0, showing its stderr if not
/// (the panic names the caller's line).
#[track_caller]
pub fn assert_success(run: &Output) {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
