//! Spool and archive fixtures: record lines, spool files written as the
//! pinger writes them, object keys, and reading lines back from a spool
//! directory or a gzipped object.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rainforest::archive::ObjectKey;
use rainforest::cloud_id::CloudId;
use rainforest::record::format_time;
use rainforest::spool::{
    HourBucket, Segment, Spool, SpoolName, WriterId, hour_file, parse_segment,
};
use rainforest::stream::Kind;

/// The default spool file prefix (`file_prefix`).
pub const PREFIX: &str = "iseif-rainforest";
/// The default archive key prefix (`s3_prefix`).
pub const KEY_PREFIX: &str = "rainforest-logs";

/// The hour `n` hours before the current one.
pub fn hours_ago(n: i64) -> HourBucket {
    HourBucket(HourBucket::of(Utc::now()).0 - n)
}

/// A record line (no newline) polled `second` seconds into `hour`.
pub fn line(cloud_id: CloudId, hour: HourBucket, second: u32) -> String {
    let t: DateTime<Utc> =
        hour.start() + chrono::Duration::milliseconds(i64::from(second) * 1000 + 123);
    serde_json::json!({
        "cloud_id": cloud_id.as_str(),
        "polled_at": format_time(t),
        "demand_kw": f64::from(second) / 1000.0,
        "latency_ms": 42,
        "source": "relay",
    })
    .to_string()
}

/// Writes a spool file with `lines` (each followed by a newline) and then
/// `tail` verbatim (a torn last line, say); returns its path.
pub fn write_spool(
    data_dir: &Path,
    cloud_id: CloudId,
    hour: HourBucket,
    lines: &[String],
    tail: &str,
) -> PathBuf {
    let path = hour_file(data_dir, PREFIX, cloud_id, hour);
    std::fs::create_dir_all(path.parent().expect("hour dir")).expect("mkdir");
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str(tail);
    std::fs::write(&path, text).expect("write spool file");
    path
}

/// The archive key of one meter's hour under the default prefixes.
pub fn key(cloud_id: CloudId, hour: HourBucket) -> String {
    ObjectKey::for_hour(KEY_PREFIX, PREFIX, cloud_id, hour)
        .as_str()
        .to_string()
}

/// `lines` as the archive stores them: ordered by `polled_at`, no duplicates.
pub fn canonical(lines: &[String]) -> Vec<String> {
    let set: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (v["polled_at"].as_str().unwrap_or("").to_string(), l.clone())
        })
        .collect();
    set.into_iter().map(|(_, l)| l).collect()
}

/// The text of a gzipped object (several members allowed).
pub fn gunzip(gz: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::MultiGzDecoder::new(gz)
        .read_to_string(&mut out)
        .expect("object is gzip of UTF-8");
    out
}

/// Every spool file under `dir` (any depth), sorted by path: `.jl` files
/// and the ones the rotator has claimed for shipping (`.jl.shipping-*`),
/// whose lines are still only in the spool.
pub fn spool_files(dir: &Path) -> Vec<PathBuf> {
    walk(dir, &|name| {
        name.ends_with(".jl") || name.contains(".jl.shipping-")
    })
}

/// Every file under `dir` (any depth) whose name ends in `suffix`, sorted.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    walk(dir, &|name| name.ends_with(suffix))
}

fn walk(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if wanted(&p.to_string_lossy()) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The stream a spool file holds, from the kind marker in its name
/// (`<prefix>-summation-<id>-…`); unmarked names are demand.
pub fn file_kind(path: &Path) -> rainforest::stream::Kind {
    use rainforest::stream::Kind;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [Kind::Summation, Kind::Price]
        .into_iter()
        .find(|k| name.contains(&format!("-{}-", k.as_str())))
        .unwrap_or(Kind::Demand)
}

/// Every line of every demand spool file under `dir` ([`spool_files`]),
/// with its file, parsed; panics on a line that is not a complete JSON
/// value. Demand only, so counts of polls do not change when a meter's
/// summation or price lines land beside them ([`kind_lines`] reads those).
pub fn spool_lines(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    kind_lines(dir, rainforest::stream::Kind::Demand)
}

/// Every line of every spool file of stream `kind` under `dir`, with its
/// file, parsed; panics on a line that is not a complete JSON value.
pub fn kind_lines(dir: &Path, kind: rainforest::stream::Kind) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for p in spool_files(dir)
        .into_iter()
        .filter(|p| file_kind(p) == kind)
    {
        let text = std::fs::read_to_string(&p).expect("read spool file");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: unparseable line {line:?}: {e}", p.display()));
            out.push((p.clone(), v));
        }
    }
    out
}

/// When each line of meter `cloud_id` under `dir` was polled (unix
/// milliseconds, from `polled_at`), in order: what a test checks slots and
/// duplicates with.
pub fn polled_at_ms(dir: &Path, cloud_id: CloudId) -> Vec<i64> {
    let mut out: Vec<i64> = spool_lines(dir)
        .iter()
        .filter(|(_, v)| v["cloud_id"] == cloud_id.as_str())
        .map(|(p, v)| {
            let text = v["polled_at"].as_str().unwrap_or_default();
            DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|e| panic!("{}: bad polled_at {text:?}: {e}", p.display()))
                .timestamp_millis()
        })
        .collect();
    out.sort_unstable();
    out
}

/// The gaps between consecutive polls in `times` (milliseconds) that are
/// long enough to hide a skipped slot: at least one and a half `interval`s.
/// A poll that starts late moves its own time, never the next slot, so on
/// a machine whose polls start within half an interval of their slots an
/// unbroken run of slots shows no such gap.
pub fn skipped_slot_gaps(times: &[i64], interval: std::time::Duration) -> Vec<(i64, i64)> {
    let limit = interval.as_millis() as i64 * 3 / 2;
    times
        .windows(2)
        .filter(|w| w[1] - w[0] >= limit)
        .map(|w| (w[0], w[1] - w[0]))
        .collect()
}

/// Every spool file under `dir` ends with a newline (no torn last line),
/// as a clean stop leaves them; panics naming the first that does not.
pub fn assert_files_whole(dir: &Path) {
    for p in spool_files(dir) {
        let bytes = std::fs::read(&p).expect("read spool file");
        assert!(
            bytes.last() == Some(&b'\n'),
            "{} does not end on a whole line",
            p.display()
        );
    }
}

/// Every line of every object in a directory archive (`archive =
/// dir:<root>`), parsed; panics on an object that is not gzipped lines.
pub fn dir_archive_lines(root: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in files_under(root, ".jl.gz") {
        let gz = std::fs::read(&p).expect("read archived object");
        for line in gunzip(&gz).lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: unparseable line {line:?}: {e}", p.display())),
            );
        }
    }
    out
}

/// Every line `spool` wrote for meter `cloud_id`'s `kind` in `hour`, in
/// writing order: its main file, then its late segments by number (lines
/// that came after the writer had sealed the hour). Panics on a line that
/// is not JSON.
pub fn written_lines(
    spool: &Spool,
    kind: Kind,
    cloud_id: CloudId,
    hour: HourBucket,
) -> Vec<serde_json::Value> {
    let main = spool.file_of(kind, cloud_id, hour);
    let dir = main.parent().expect("hour dir");
    let own = main
        .file_name()
        .and_then(|n| parse_segment(PREFIX, &n.to_string_lossy()))
        .map(|(name, _)| name)
        .expect("the spool's own file name parses");
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let (name, seg) = parse_segment(PREFIX, &e.file_name().to_string_lossy())?;
            let n = match seg {
                Segment::Main => 0,
                Segment::Late(n) => n,
            };
            (name == own).then(|| (n, e.path()))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for (_, p) in files {
        let text = std::fs::read_to_string(&p).expect("read spool file");
        for line in text.lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: bad line {line:.80}: {e}", p.display())),
            );
        }
    }
    out
}

/// A record line with a `slot` (the scheduled instant, `slot_second` into
/// `hour`) polled `delay_ms` after it: two of these with the same slot are
/// a hand-over duplicate.
pub fn slot_line(cloud_id: CloudId, hour: HourBucket, slot_second: u32, delay_ms: i64) -> String {
    let slot: DateTime<Utc> = hour.start() + chrono::Duration::seconds(i64::from(slot_second));
    serde_json::json!({
        "cloud_id": cloud_id.as_str(),
        "slot": format_time(slot),
        "polled_at": format_time(slot + chrono::Duration::milliseconds(delay_ms)),
        "demand_kw": f64::from(slot_second) / 1000.0 + delay_ms as f64,
        "source": "relay",
    })
    .to_string()
}

/// Writes the main spool file of `writer` for meter `cloud_id`'s `kind` in
/// `hour` with `lines`, as that writer would name it; returns its path.
pub fn write_spool_as(
    data_dir: &Path,
    kind: Kind,
    writer: &str,
    cloud_id: CloudId,
    hour: HourBucket,
    lines: &[String],
) -> PathBuf {
    let name = SpoolName {
        kind,
        cloud_id,
        hour,
        writer: Some(WriterId::parse(writer).expect("writer id")),
    };
    let path = name.path(data_dir, PREFIX);
    std::fs::create_dir_all(path.parent().expect("hour dir")).expect("mkdir");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).expect("write spool file");
    path
}

/// Leaves the heartbeat file a writer keeps (`writers/<id>.heartbeat`,
/// holding the last hour it sealed), last beaten `age` ago: a live writer
/// with a recent beat, a dead one with an old beat.
pub fn heartbeat(data_dir: &Path, writer: &str, sealed: Option<HourBucket>, age: Duration) {
    let dir = data_dir.join(rainforest::spool::heartbeat::WRITERS_DIR);
    std::fs::create_dir_all(&dir).expect("mkdir writers");
    let path = dir.join(format!("{writer}.heartbeat"));
    let text = sealed.map(|h| format!("{h}\n")).unwrap_or_default();
    std::fs::write(&path, text).expect("write heartbeat");
    let beat = std::time::SystemTime::now() - age;
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(beat))
        .expect("set the heartbeat's time");
}
