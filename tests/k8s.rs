//! The example Kubernetes manifests under docker/k8s/: every document is a
//! well-formed object, every container runs a real subcommand with real
//! flags of the built binary, every environment name is one the binary
//! reads, each container gets only the secrets it uses, every container
//! has requests and limits, nothing binds a host port, and the ConfigMap's
//! configuration names only known keys. No cluster is needed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rainforest::config::keys;
use serde_json::Value;
use support::process::rainforest;

fn k8s_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/k8s"))
}

/// Every document of every manifest, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(k8s_dir())
        .unwrap_or_else(|e| panic!("docker/k8s: {e}"))
        .map(|e| e.expect("docker/k8s entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest under docker/k8s");
    let mut docs = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        for de in serde_norway::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(de)
                .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"));
            if !doc.is_null() {
                docs.push((name.clone(), doc));
            }
        }
    }
    docs
}

/// `kind/name` of a document, for messages.
fn id(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The containers of a workload (Deployment, StatefulSet), or none.
fn containers(doc: &Value) -> Vec<&Value> {
    doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The rainforest command line a container runs: its `args` (the image's
/// entrypoint is `rainforest`), or what `sh -c` hands to `exec rainforest`.
fn rainforest_args(c: &Value) -> Vec<String> {
    let command = strings(&c["command"]);
    if command.is_empty() {
        return strings(&c["args"]);
    }
    match command.as_slice() {
        [sh, dash_c, script] if sh == "sh" && dash_c == "-c" => {
            let (_, rest) = script
                .split_once("exec rainforest ")
                .unwrap_or_else(|| panic!("sh -c must `exec rainforest ...`: {script}"));
            rest.split_whitespace().map(str::to_string).collect()
        }
        [bin, rest @ ..] if bin == "rainforest" => rest.to_vec(),
        _ => panic!("a container runs something other than rainforest: {command:?}"),
    }
}

fn help(args: &[&str]) -> String {
    let out = rainforest()
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("rainforest {args:?} --help: {e}"));
    assert!(out.status.success(), "rainforest {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_document_names_its_api_kind_and_name_and_no_secret_is_included() {
    let docs = documents();
    for (file, doc) in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(
                doc[field].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: a document without {field}"
            );
        }
        assert!(
            doc["metadata"]["name"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{file}: {} has no metadata.name",
            id(doc)
        );
        assert_ne!(
            doc["kind"], "Secret",
            "{file}: secrets are referenced, never shipped"
        );
    }
    let kinds: BTreeSet<String> = docs.iter().map(|(_, d)| id(d)).collect();
    for want in [
        "ConfigMap/rainforest-config",
        "StatefulSet/rainforest-pinger",
        "Deployment/rainforest-server",
        "Service/rainforest-server",
        "Deployment/rainforest-rotator",
    ] {
        assert!(kinds.contains(want), "docker/k8s lacks {want}: {kinds:?}");
    }
}

#[test]
fn every_container_runs_a_real_subcommand_with_real_flags() {
    let top = help(&[]);
    for (file, doc) in documents() {
        for c in containers(&doc) {
            let image = c["image"].as_str().unwrap_or_default();
            assert!(
                image.starts_with("rainforest:"),
                "{file}: {} runs image {image}",
                id(&doc)
            );
            let args = rainforest_args(c);
            let sub = args
                .first()
                .unwrap_or_else(|| panic!("{file}: {} names no subcommand", id(&doc)));
            assert!(
                top.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
                "{file}: `{sub}` is not a subcommand of rainforest:\n{top}"
            );
            let sub_help = help(&[sub]);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or(flag);
                // --shard comes with the fleet (issue 11).
                assert!(
                    sub_help.contains(&format!("{flag} "))
                        || sub_help.contains(&format!("{flag}\n")),
                    "{file}: `rainforest {sub}` has no flag {flag}:\n{sub_help}"
                );
            }
        }
    }
}

#[test]
fn the_sharded_pingers_split_by_ordinal_into_as_many_shards_as_replicas() {
    for (file, doc) in documents() {
        for c in containers(&doc) {
            let args = rainforest_args(c);
            let Some(i) = args.iter().position(|a| a == "--shard") else {
                continue;
            };
            let spec = args
                .get(i + 1)
                .unwrap_or_else(|| panic!("{file}: --shard without I/N"));
            let (index, n) = spec
                .split_once('/')
                .unwrap_or_else(|| panic!("{file}: --shard {spec}"));
            assert_eq!(
                index, "${HOSTNAME##*-}",
                "{file}: the shard index must be the pod's ordinal"
            );
            assert_eq!(
                doc["kind"], "StatefulSet",
                "{file}: ordinals need a StatefulSet"
            );
            assert_eq!(
                n.parse::<u64>().ok(),
                doc["spec"]["replicas"].as_u64(),
                "{file}: --shard I/{n} with {} replicas",
                doc["spec"]["replicas"]
            );
        }
    }
}

/// The secret keys each subcommand needs, and no other.
fn secrets_needed(sub: &str) -> BTreeSet<&'static str> {
    let keys: &[&str] = match sub {
        "pinger" => &["redis-password", "credentials-key"],
        "server" => &["redis-password", "credentials-key", "api-token"],
        "rotator" => &[
            "redis-password",
            "aws-access-key-id",
            "aws-secret-access-key",
        ],
        other => panic!("no secret list for `{other}`"),
    };
    keys.iter().copied().collect()
}

#[test]
fn each_container_gets_only_the_secrets_it_uses_and_env_names_the_binary_reads() {
    let config_keys: BTreeSet<String> = keys::KEYS.iter().map(|k| keys::env_name(k.name)).collect();
    for (file, doc) in documents() {
        for c in containers(&doc) {
            let args = rainforest_args(c);
            let sub = args[0].as_str();
            let sub_help = help(&[sub]);
            let env = c["env"].as_array().cloned().unwrap_or_default();
            let values: Vec<String> = env
                .iter()
                .filter_map(|e| e["value"].as_str().map(str::to_string))
                .collect();
            let mut secrets = BTreeSet::new();
            for e in &env {
                let name = e["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: env without name"));
                if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
                    secrets.insert(key.to_string());
                }
                let known = if name.starts_with("RAINFOREST_") {
                    config_keys.contains(name) || sub_help.contains(&format!("[env: {name}="))
                } else {
                    // The AWS SDK's own names, or a value other entries
                    // interpolate as $(NAME).
                    name.starts_with("AWS_")
                        || values.iter().any(|v| v.contains(&format!("$({name})")))
                };
                assert!(
                    known,
                    "{file}: {} sets {name}, which rainforest {sub} does not read",
                    id(&doc)
                );
            }
            let secrets: BTreeSet<&str> = secrets.iter().map(String::as_str).collect();
            assert_eq!(
                secrets,
                secrets_needed(sub),
                "{file}: the secrets of {}",
                id(&doc)
            );
        }
    }
}

#[test]
fn every_container_has_requests_and_limits_and_nothing_binds_the_host() {
    for (file, doc) in documents() {
        for c in containers(&doc) {
            for part in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !c["resources"][part][resource].is_null(),
                        "{file}: {} has no resources.{part}.{resource}",
                        id(&doc)
                    );
                }
            }
        }
        let text = serde_json::to_string(&doc).unwrap();
        for field in ["hostPort", "hostNetwork", "hostPath", "nodePort"] {
            assert!(
                !text.contains(&format!("\"{field}\"")),
                "{file}: {} uses {field}",
                id(&doc)
            );
        }
    }
}

#[test]
fn the_config_map_names_only_known_keys_and_every_volume_it_mounts_exists() {
    let docs = documents();
    let by_id: BTreeMap<String, &Value> = docs.iter().map(|(_, d)| (id(d), d)).collect();
    let config = by_id["ConfigMap/rainforest-config"];
    let toml_text = config["data"]["rainforest.toml"]
        .as_str()
        .expect("the ConfigMap holds rainforest.toml");
    let table: toml::Table =
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("rainforest.toml: {e}"));
    for key in table.keys() {
        assert!(
            keys::find(key).is_some(),
            "the ConfigMap sets `{key}`, which is no configuration key"
        );
    }
    for (file, doc) in &docs {
        for v in doc["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(name) = v["configMap"]["name"].as_str() {
                assert!(
                    by_id.contains_key(&format!("ConfigMap/{name}")),
                    "{file}: no ConfigMap {name}"
                );
            }
            if let Some(name) = v["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(
                    by_id.contains_key(&format!("PersistentVolumeClaim/{name}")),
                    "{file}: no PersistentVolumeClaim {name}"
                );
            }
        }
    }
}
