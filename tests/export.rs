//! `rainforest export` over a hand-made directory archive and spool: every
//! reading exactly once, in time order, spool lines included, duplicates by
//! slot dropped (the first polled kept), missing hours empty, unreadable
//! objects reported without stopping, and files DuckDB opens as they are.

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rainforest::cloud_id::CloudId;
use rainforest::spool::{HourBucket, SpoolName};
use rainforest::stream::Kind;
use support::readings::{assert_success, demand_at, rainforest_over, write_object};
use support::spool::{PREFIX, write_spool, write_spool_as};

fn id(s: &str) -> CloudId {
    CloudId::parse(s).unwrap()
}

fn hour(h: u32) -> HourBucket {
    HourBucket::of(Utc.with_ymd_and_hms(2025, 3, 10, h, 0, 0).unwrap())
}

/// The fixture: what export must give, as (slot, meter) -> line.
struct Fixture {
    _dir: tempfile::TempDir,
    archive: std::path::PathBuf,
    data: std::path::PathBuf,
    out: std::path::PathBuf,
    expected: BTreeMap<(DateTime<Utc>, CloudId), String>,
}

/// Two meters, one reading a minute. Hours 10 and 11 archived, hour 12
/// missing everywhere, hour 13 only in the spool. The 10:59 slot's poll
/// went out after 11:00, so it sits in the 11:00 object; a duplicate of an
/// archived slot polled later is dropped, and one polled earlier (another
/// writer's spool file) is kept instead.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let data = dir.path().join("spool");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&data).unwrap();
    let mut expected = BTreeMap::new();
    // Lines by (meter, hour of the poll), where the pinger writes them.
    let mut files: BTreeMap<(CloudId, HourBucket), Vec<String>> = BTreeMap::new();
    let (a, b) = (id("0a0001"), id("0a0002"));
    let mut kw = 0.0;
    for m in [a, b] {
        for h in [10, 11, 13] {
            for minute in 0..60 {
                let slot = hour(h).start() + Duration::minutes(minute);
                let lag = if h == 10 && minute == 59 { 60_500 } else { 120 };
                kw += 0.25;
                let line = demand_at(m, slot, lag, kw);
                expected.insert((slot, m), line.clone());
                let polled = slot + Duration::milliseconds(lag);
                files
                    .entry((m, HourBucket::of(polled)))
                    .or_default()
                    .push(line);
            }
        }
    }
    for ((m, h), lines) in &files {
        if *h == hour(13) {
            write_spool(&data, *m, *h, lines, "");
        } else {
            write_object(&archive, *m, *h, lines);
        }
    }
    let later = demand_at(a, hour(10).start() + Duration::minutes(5), 2_000, 99.0);
    let slot2 = hour(11).start() + Duration::minutes(7);
    let earlier = demand_at(b, slot2, 10, 77.0);
    expected.insert((slot2, b), earlier.clone());
    write_spool_as(&data, Kind::Demand, "w2", a, hour(10), &[later]);
    write_spool_as(&data, Kind::Demand, "w2", b, hour(11), &[earlier]);
    Fixture {
        _dir: dir,
        archive,
        data,
        out,
        expected,
    }
}

fn export(f: &Fixture, format: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        "--meter",
        "0a0001,0a0002",
        "--from",
        "2025-03-10T10:00:00Z",
        "--to",
        "2025-03-10T14:00:00Z",
        "--format",
        format,
        "--output",
    ];
    let out = f.out.display().to_string();
    args.push(&out);
    args.extend_from_slice(extra);
    rainforest_over(&f.archive, &f.data, &args)
        .output()
        .expect("run rainforest export")
}

#[test]
fn every_reading_once_in_time_order_with_spool_lines_and_duplicates_by_slot_dropped() {
    let f = fixture();
    let run = export(&f, "jsonl", &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "export failed: {stderr}");
    let got: Vec<String> = std::fs::read_to_string(&f.out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = f.expected.values().cloned().collect();
    assert_eq!(got.len(), 2 * 3 * 60, "{stderr}");
    assert_eq!(got, want);
    assert!(stderr.contains("exported 360 demand readings"), "{stderr}");
}

#[test]
fn csv_has_a_header_and_iso_utc_times_and_an_existing_output_is_not_replaced() {
    let f = fixture();
    let run = export(&f, "csv", &[]);
    assert_success(&run);
    let text = std::fs::read_to_string(&f.out).unwrap();
    let mut rows = text.lines();
    assert_eq!(
        rows.next(),
        Some("cloud_id,slot,polled_at,demand_kw,meter_time,source,latency_ms")
    );
    assert_eq!(
        rows.next(),
        Some("0a0001,2025-03-10T10:00:00.000Z,2025-03-10T10:00:00.120Z,0.25,,relay,42")
    );
    assert_eq!(rows.count(), 359);

    let again = export(&f, "csv", &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&f.out).unwrap(), text);
    let forced = export(&f, "jsonl", &["--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read_to_string(&f.out).unwrap(), text);
}

#[test]
fn an_unreadable_object_is_reported_and_the_rest_is_exported() {
    let f = fixture();
    let bad = support::readings::object_path(&f.archive, Kind::Demand, id("0a0002"), hour(10));
    let lost: Vec<String> = support::spool::gunzip(&std::fs::read(&bad).unwrap())
        .lines()
        .map(str::to_string)
        .collect();
    std::fs::write(&bad, b"\x1f\x8b\x08\x00 this is not deflate data").unwrap();
    let run = export(&f, "jsonl", &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    let got: Vec<String> = std::fs::read_to_string(&f.out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = f
        .expected
        .values()
        .filter(|l| !lost.contains(l))
        .cloned()
        .collect();
    assert_eq!(lost.len(), 59);
    assert_eq!(got, want);
}

#[test]
fn a_range_with_nothing_archived_is_empty_not_an_error() {
    let f = fixture();
    let run = rainforest_over(
        &f.archive,
        &f.data,
        &[
            "export",
            "--meter",
            "0a0001",
            "--from",
            "2025-02-01",
            "--to",
            "2025-02-02",
            "--format",
            "csv",
        ],
    )
    .output()
    .unwrap();
    assert_success(&run);
    assert_eq!(String::from_utf8_lossy(&run.stdout).lines().count(), 1);
}

#[test]
fn duckdb_reads_the_parquet_file_with_the_same_rows_and_demand() {
    let f = fixture();
    let run = export(&f, "parquet", &[]);
    assert_success(&run);
    let probe = std::process::Command::new("python3")
        .args(["-c", "import duckdb"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        support::missing("duckdb is not installed for python3: `pip install duckdb`");
        return;
    }
    let script = format!(
        "import duckdb\n\
         r = duckdb.sql(\"select count(*), sum(demand_kw), count(distinct (cloud_id, slot)), \
         min(slot)::varchar, typeof(any_value(slot)) from read_parquet('{}')\").fetchall()[0]\n\
         print(r[0], repr(r[1]), r[2], r[3], r[4], sep='|')",
        f.out.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.trim().split('|').collect();
    let want_sum: f64 = f
        .expected
        .values()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["demand_kw"]
                .as_f64()
                .unwrap()
        })
        .sum();
    assert_eq!(parts[0], f.expected.len().to_string());
    let got_sum: f64 = parts[1].parse().unwrap();
    assert!((got_sum - want_sum).abs() < 1e-6, "{got_sum} vs {want_sum}");
    assert_eq!(parts[2], f.expected.len().to_string());
    assert!(parts[3].starts_with("2025-03-10 10:00:00"), "{text}");
    assert_eq!(parts[4], "TIMESTAMP WITH TIME ZONE", "{text}");
}

#[test]
fn sigterm_stops_an_export_and_leaves_no_file_behind() {
    let f = fixture();
    let out = f.out.display().to_string();
    // A century of (mostly empty) hours: long enough to be interrupted.
    let mut cmd = rainforest_over(
        &f.archive,
        &f.data,
        &[
            "export",
            "--meter",
            "0a0001",
            "--from",
            "2000-01-01",
            "--to",
            "2099-12-31",
            "--format",
            "parquet",
            "--output",
            &out,
        ],
    );
    cmd.stderr(std::process::Stdio::null());
    let mut child = support::process::Proc::spawn(&mut cmd, "rainforest export");
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(
        child.try_status().is_none(),
        "the export ended before the signal"
    );
    let status = child
        .terminate(std::time::Duration::from_secs(10))
        .expect("export stops on SIGTERM");
    assert_eq!(status.code(), Some(130));
    let left: Vec<_> = std::fs::read_dir(f.out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The price columns read the price record's own field names: a price line
/// as the pinger writes it exports its currency code, tier and labels.
#[test]
fn price_lines_export_their_currency_tier_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, data) = (dir.path().join("archive"), dir.path().join("spool"));
    std::fs::create_dir_all(&archive).unwrap();
    let m = id("0a0003");
    let slot = hour(10).start() + Duration::minutes(15);
    let record = rainforest::record::price::PriceRecord {
        cloud_id: m,
        polled_at: rainforest::record::format_time(slot + Duration::milliseconds(250)),
        slot: rainforest::record::format_time(slot),
        meter_time: None,
        price: 0.28,
        rate_label: Some("Peak".into()),
        tier_label: Some("Tier 2".into()),
        latency_ms: 12,
        source: "relay".into(),
        timestamp: Some(790_252_288),
        raw_price: Some(2800),
        trailing_digits: Some(4),
        currency: Some(840),
        tier: Some(2),
        device_mac_id: None,
        meter_mac_id: None,
    };
    let name = SpoolName {
        kind: Kind::Price,
        cloud_id: m,
        hour: hour(10),
        writer: None,
    };
    let path = name.path(&data, PREFIX);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, record.to_line()).unwrap();
    let run = rainforest_over(
        &archive,
        &data,
        &[
            "export",
            "--meter",
            "0a0003",
            "--kind",
            "price",
            "--from",
            "2025-03-10T10:00:00Z",
            "--to",
            "2025-03-10T11:00:00Z",
            "--format",
            "csv",
        ],
    )
    .output()
    .unwrap();
    assert_success(&run);
    let text = String::from_utf8_lossy(&run.stdout).to_string();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().expect("one price row").split(',').collect();
    let cell = |name: &str| {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} in {header:?}"));
        row[i]
    };
    assert_eq!(cell("price"), "0.28");
    assert_eq!(cell("Currency"), "840");
    assert_eq!(cell("Tier"), "2");
    assert_eq!(cell("rate_label"), "Peak");
    assert_eq!(cell("tier_label"), "Tier 2");
}
