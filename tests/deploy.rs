//! The deployment files: what `docker-compose` resolves from
//! docker-compose.yml (and docker-compose.local.yml), what the image build
//! sends and caches, and the operators' kit (alert rules, dashboard)
//! against the metrics the services serve. The compose checks run the real
//! `docker-compose config`; no Docker engine is needed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rainforest::rotator::RotatorStats;
use rainforest::scheduler::Counters;
use rainforest::simulator::SimulateArgs;
use rainforest::spool::{Spool, SpoolOptions};
use rainforest::stats::Hub;
use support::server::{ADMIN, Backend, TestServer};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Each service of `docker-compose config`'s output and the text of its
/// block, for `args` (`-f FILE`, `--profile NAME`); `None` when
/// docker-compose is missing (and the test may skip).
fn resolved_services(env: &str, args: &[&str]) -> Option<BTreeMap<String, String>> {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, env).unwrap();
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(root()).arg("--env-file").arg(&env_file);
    cmd.args(args);
    let out = match cmd.arg("config").output() {
        Ok(out) => out,
        Err(e) => {
            support::missing(&format!(
                "docker-compose not runnable ({e}): apt-get install docker-compose"
            ));
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut services = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_services = false;
    for line in text.lines() {
        // Blank lines occur inside quoted multi-line values.
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            in_services = line == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            current = Some(name.to_string());
            services.insert(name.to_string(), String::new());
        } else if let Some(name) = &current {
            let block = services.get_mut(name).unwrap();
            block.push_str(line);
            block.push('\n');
        }
    }
    Some(services)
}

const PROD: &[&str] = &["-f", "docker-compose.yml"];
const LOCAL: &[&str] = &["-f", "docker-compose.yml", "-f", "docker-compose.local.yml"];

const ENV: &str = "REDIS_PASSWORD=0123456789abcdef\n\
    RAINFOREST_API_TOKEN=token-9f1c\n\
    RAINFOREST_CREDENTIALS_KEY=credkey-77aa\n\
    RAINFOREST_S3_BUCKET=bucket-x\n\
    AWS_ACCESS_KEY_ID=akid-5e5e\n\
    AWS_SECRET_ACCESS_KEY=secret-4d4d\n";

/// Which services a value of `.env` reaches.
fn holders(services: &BTreeMap<String, String>, value: &str) -> Vec<String> {
    services
        .iter()
        .filter(|(_, block)| block.contains(value))
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn compose_gives_each_secret_only_to_the_services_that_use_it() {
    let Some(prod) = resolved_services(ENV, PROD) else {
        return;
    };
    assert_eq!(holders(&prod, "token-9f1c"), ["server"]);
    assert_eq!(holders(&prod, "credkey-77aa"), ["pinger", "server"]);
    assert_eq!(holders(&prod, "akid-5e5e"), ["rotator"]);
    assert_eq!(holders(&prod, "secret-4d4d"), ["rotator"]);
    assert_eq!(holders(&prod, "bucket-x"), ["rotator"]);
    // Redis's password is in every service that opens Redis, and only there.
    assert_eq!(
        holders(&prod, "0123456789abcdef"),
        ["pinger", "redis", "rotator", "server"]
    );

    let Some(local) = resolved_services(ENV, LOCAL) else {
        return;
    };
    assert_eq!(holders(&local, "token-9f1c"), ["server"]);
    assert_eq!(
        holders(&local, "credkey-77aa"),
        ["pinger", "seed-users", "server"]
    );
    assert_eq!(holders(&local, "akid-5e5e"), Vec::<String>::new());
    assert!(
        !local["simulator"].contains("environment"),
        "the simulator needs no variable:\n{}",
        local["simulator"]
    );
}

#[test]
fn every_rainforest_service_gets_the_common_settings_and_its_own() {
    let Some(prod) = resolved_services(ENV, PROD) else {
        return;
    };
    for name in ["server", "pinger", "rotator"] {
        let block = &prod[name];
        for key in [
            "RAINFOREST_REDIS_URL",
            "RAINFOREST_DATA_DIR",
            "RAINFOREST_LOG_DIR",
            "RAINFOREST_LOG_MAX_FILES",
        ] {
            assert!(block.contains(key), "{name} lacks {key}:\n{block}");
        }
    }
    assert!(prod["pinger"].contains("RAINFOREST_METRICS_LISTEN: 0.0.0.0:9100"));
    assert!(prod["rotator"].contains("RAINFOREST_METRICS_LISTEN: 0.0.0.0:9101"));
    for name in ["server", "pinger"] {
        assert!(
            prod[name].contains("nofile"),
            "{name} needs a nofile limit:\n{}",
            prod[name]
        );
    }
}

#[test]
fn the_local_rotator_waits_for_the_bucket_and_moto_publishes_no_port() {
    let Some(local) = resolved_services(ENV, LOCAL) else {
        return;
    };
    let rotator = &local["rotator"];
    let bucket = rotator
        .split_once("s3-bucket:")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("the rotator must depend on s3-bucket:\n{rotator}"));
    assert!(
        bucket
            .trim_start()
            .starts_with("condition: service_completed_successfully"),
        "{rotator}"
    );
    assert!(!local["s3"].contains("ports"), "{}", local["s3"]);
    assert!(
        !local["s3-bucket"].contains("|| true"),
        "{}",
        local["s3-bucket"]
    );
}

#[test]
fn the_pinger_scales_no_fixed_name_and_no_published_port() {
    // `docker compose up --scale pinger=3` starts three pingers only if none
    // of them claims a container name or a host port the others need too.
    for args in [PROD, LOCAL] {
        let Some(services) = resolved_services(ENV, args) else {
            return;
        };
        let pinger = &services["pinger"];
        for field in ["container_name", "ports:", "hostname"] {
            assert!(!pinger.contains(field), "pinger has {field}:\n{pinger}");
        }
    }
}

#[test]
fn the_observability_profile_runs_prometheus_with_the_rules_on_loopback_only() {
    let args = ["-f", "docker-compose.yml", "--profile", "observability"];
    let Some(services) = resolved_services(ENV, &args) else {
        return;
    };
    let prom = &services["prometheus"];
    assert!(prom.contains("docker/prometheus:/etc/prometheus"), "{prom}");
    assert!(prom.contains("127.0.0.1"), "{prom}");
    // docker-compose 1.x lists every service; the profile keeps it off by default.
    assert!(prom.contains("profiles:\n    - observability"), "{prom}");
    let config = read("docker/prometheus/prometheus.yml");
    assert!(config.contains("/etc/prometheus/alerts.yml"), "{config}");
}

#[test]
fn the_build_context_leaves_out_target_data_secrets_and_history() {
    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for entry in ["target/", "data/", ".env", ".git"] {
        assert!(lines.contains(&entry), ".dockerignore lacks {entry}");
    }
}

#[test]
fn the_dependency_layer_fails_loudly_and_does_not_copy_benches() {
    let dockerfile = read("docker/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let text = instructions.join("\n");
    assert!(!text.contains("|| true"), "a build step hides failures");
    assert!(
        !instructions
            .iter()
            .any(|l| l.starts_with("COPY") && l.contains("tests")),
        "copying tests/ makes a bench edit rebuild the dependencies"
    );
}

/// Every `rainforest_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rainforest_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // "rainforest_*" in prose names no metric.
        if end > "rainforest_".len() {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The PromQL of every panel target of the Grafana dashboard.
fn dashboard_exprs() -> String {
    let doc: serde_json::Value =
        serde_json::from_str(&read("docker/grafana/rainforest.json")).expect("dashboard is JSON");
    let panels = doc["panels"].as_array().expect("dashboard has panels");
    let mut exprs = String::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("panel has targets") {
            exprs.push_str(target["expr"].as_str().expect("target has an expr"));
            exprs.push('\n');
        }
    }
    exprs
}

/// The in-process server with a pinger's and a rotator's counters attached,
/// as in `rainforest run`: every metric family the services can export.
async fn served_metric_names() -> Option<BTreeSet<String>> {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::start(SpoolOptions {
        data_dir: dir.path().to_path_buf(),
        prefix: "metrics".into(),
        open_files: 4,
        flush_every: Duration::from_millis(100),
    })
    .expect("start spool");
    let hub = Hub::new();
    hub.attach_pinger(Arc::new(Counters::default()), spool);
    hub.attach_rotator(Arc::new(RotatorStats::default()));
    let server =
        TestServer::start_with_hub(Backend::Redis, SimulateArgs::default(), |_| {}, hub).await?;
    let answer = server.get("/metrics", Some(ADMIN)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let names = answer
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("a sample line has a name")
                .to_string()
        })
        .collect();
    server.stop().await;
    Some(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alert_rules_and_the_dashboard_name_is_served() {
    let rules = read("docker/prometheus/alerts.yml");
    for alert in [
        "RainforestMetersStale",
        "RainforestAuthFailuresRising",
        "RainforestUploadBacklog",
        "RainforestRotatorFailing",
        "RainforestRegistryUnreachable",
        "RainforestPingerGone",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "alerts.yml lacks {alert}"
        );
    }
    let Some(served) = served_metric_names().await else {
        return;
    };
    for (what, text) in [("alerts.yml", rules), ("the dashboard", dashboard_exprs())] {
        let named = metric_names(&text);
        assert!(!named.is_empty(), "{what} names no rainforest_ metric");
        let missing: Vec<_> = named.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{what} names metrics /metrics does not serve: {missing:?}\nserved: {served:?}"
        );
    }
}
