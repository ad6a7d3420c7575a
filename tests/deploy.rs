//! The deployment files: what `docker-compose` resolves from
//! docker-compose.yml (and docker-compose.local.yml), what the image build
//! sends and caches. The compose checks run the real `docker-compose
//! config`; no Docker engine is needed.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Each service of `docker-compose config`'s output and the text of its
/// block; `None` when docker-compose is missing (and the test may skip).
fn resolved_services(env: &str, files: &[&str]) -> Option<BTreeMap<String, String>> {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, env).unwrap();
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(root()).arg("--env-file").arg(&env_file);
    for f in files {
        cmd.args(["-f", f]);
    }
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
    let Some(prod) = resolved_services(ENV, &["docker-compose.yml"]) else {
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

    let Some(local) = resolved_services(ENV, &["docker-compose.yml", "docker-compose.local.yml"])
    else {
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
    let Some(prod) = resolved_services(ENV, &["docker-compose.yml"]) else {
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
    let Some(local) = resolved_services(ENV, &["docker-compose.yml", "docker-compose.local.yml"])
    else {
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
