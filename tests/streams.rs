//! The summation and price streams end to end: the real `rainforest
//! pinger` binary over a users file, the in-process simulator as relay and
//! EAGLE-200, cadences shortened through `--set`.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::DateTime;
use rainforest::cloud_id::CloudId;
use rainforest::registry::{Cadence, LocalSource, User};
use rainforest::secret::Secret;
use rainforest::simulator::{self, SimulateArgs, Simulator};
use rainforest::stream::Kind;
use support::meters::{sim_user, users_text};
use support::pinger::{Pinger, run_paths};
use support::process::{rainforest, wait_within};
use support::spool::kind_lines;

async fn simulator(meters: u32) -> Simulator {
    Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters,
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator")
}

/// Lines of `kind` for meter `id`, ordered by slot.
fn lines(dir: &Path, kind: Kind, id: CloudId) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = kind_lines(dir, kind)
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v["cloud_id"] == id.as_str())
        .collect();
    out.sort_by_key(slot_ms);
    out
}

fn slot_ms(v: &serde_json::Value) -> i64 {
    let text = v["slot"].as_str().expect("every line has a slot");
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad slot {text:?}: {e}"))
        .timestamp_millis()
}

/// Consecutive slots are whole cadences apart, on one phase.
fn assert_on_grid(lines: &[serde_json::Value], cadence_ms: i64, what: &str) {
    let slots: Vec<i64> = lines.iter().map(slot_ms).collect();
    for w in slots.windows(2) {
        let step = w[1] - w[0];
        assert!(
            step > 0 && step % cadence_ms == 0,
            "{what}: slots {w:?} are not whole cadences of {cadence_ms} ms apart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summation_and_price_lines_at_their_cadences_from_relay_and_eagle_200() {
    let sim = simulator(3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, users, log) = run_paths(dir.path());
    let relay = sim_user(0);
    // Summation turned off for this meter alone; price at the default.
    let no_summation = User {
        cadence: Cadence {
            summation_s: Some(0),
            price_s: None,
        },
        ..sim_user(1)
    };
    let local_id = simulator::meter_cloud_id(2);
    let local = User {
        local: Some(LocalSource {
            host: sim.addr().to_string(),
            install_code: Secret::new(simulator::meter_install_code(local_id)),
        }),
        ..sim_user(2)
    };
    std::fs::write(
        &users,
        users_text(&[relay.clone(), no_summation.clone(), local]),
    )
    .unwrap();
    let pinger = Pinger::over_file(
        &users,
        sim.relay_url().as_str(),
        &data,
        &[
            "--set",
            "summation_interval=2s",
            "--set",
            "price_interval=3s",
            "--set",
            "local_networks=127.0.0.0/8",
            "--set",
            "poll_interval=10s",
        ],
        &log,
    );
    // The EAGLE-200 is paced to about one request a second, shared by all
    // its streams (here 0.1 + 0.5 + 0.33 a second). Generous for a loaded
    // machine.
    wait_within(
        "three summation and two price lines per relay meter, some from the EAGLE-200",
        Duration::from_secs(45),
        async || {
            lines(&data, Kind::Summation, relay.cloud_id).len() >= 3
                && !lines(&data, Kind::Summation, local_id).is_empty()
                && lines(&data, Kind::Price, relay.cloud_id).len() >= 2
                && lines(&data, Kind::Price, no_summation.cloud_id).len() >= 2
                && !lines(&data, Kind::Price, local_id).is_empty()
        },
    )
    .await;
    assert!(pinger.terminate().success());

    let summation = lines(&data, Kind::Summation, relay.cloud_id);
    assert_on_grid(&summation, 2_000, "relay summation");
    let mut last = 0.0;
    for v in &summation {
        assert_eq!(v["source"], "relay");
        let delivered = v["delivered_kwh"].as_f64().expect("delivered_kwh");
        let raw = v["SummationDelivered"]
            .as_u64()
            .expect("raw SummationDelivered");
        let divisor = v["Divisor"].as_u64().expect("raw Divisor");
        assert!(
            (delivered - raw as f64 / divisor as f64).abs() < 1e-9,
            "{v}"
        );
        assert!(delivered >= last, "summation went backwards: {v}");
        last = delivered;
        assert!(
            v["TimeStamp"].is_u64() && v["SummationReceived"].is_u64(),
            "{v}"
        );
        assert!(
            v.get("demand_kw").is_none(),
            "a demand field in a summation line: {v}"
        );
    }
    let price = lines(&data, Kind::Price, relay.cloud_id);
    assert_on_grid(&price, 3_000, "relay price");
    for v in &price {
        let p = v["price"].as_f64().expect("price");
        assert!(p == 0.12 || p == 0.28, "{v}");
        assert_eq!(v["Currency"], 840);
        assert_eq!(v["TrailingDigits"], 4);
        assert!(v["Tier"].is_u64() && v["rate_label"].is_string(), "{v}");
    }
    // The EAGLE-200 gives the same kinds from device_query, already scaled.
    for v in lines(&data, Kind::Summation, local_id) {
        assert_eq!(v["source"], "local");
        assert!(v["delivered_kwh"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v.get("SummationDelivered").is_none(), "{v}");
    }
    for v in lines(&data, Kind::Price, local_id) {
        assert_eq!(v["source"], "local");
        assert!(v["price"].as_f64().unwrap() > 0.0, "{v}");
    }
    // A cadence of 0 turns the stream off for that meter only.
    assert!(lines(&data, Kind::Summation, no_summation.cloud_id).is_empty());
    // Demand keeps its own files and its own schema.
    for (path, v) in support::spool::spool_lines(&data) {
        assert!(v["demand_kw"].is_number(), "{}: {v}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cadences_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.jl");
    for (line, field) in [
        (
            r#"{"cloud_id":"a00000","user_email":"a@b.org","user_pw":"x","summation_interval":"60s"}"#,
            "summation_interval",
        ),
        (
            r#"{"cloud_id":"a00000","user_email":"a@b.org","user_pw":"x","price_interval":-1}"#,
            "price_interval",
        ),
        (
            r#"{"cloud_id":"a00000","user_email":"a@b.org","user_pw":"x","price_interval":90000}"#,
            "price_interval",
        ),
    ] {
        std::fs::write(&users, format!("{line}\n")).unwrap();
        // The users file skips a bad line with a warning naming the field.
        let out = rainforest()
            .arg("--users-file")
            .arg(&users)
            .args(["users", "list"])
            .output()
            .expect("run rainforest users list");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("a00000"),
            "{line} accepted"
        );
        assert!(
            stderr.contains(&format!("`{field}`")) && stderr.contains("whole number of seconds"),
            "{line}: {stderr}"
        );
    }
    // The configuration's cadences too, every problem at once.
    let out = rainforest()
        .args([
            "config",
            "--set",
            "summation_interval=often",
            "--set",
            "price_interval=-5s",
        ])
        .output()
        .expect("run rainforest config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("summation_interval") && stderr.contains("price_interval"),
        "{stderr}"
    );
}
