//! The built image in containers, through testcontainers: Redis, an S3
//! server (the moto image compose uses), the simulator, a users import, the
//! pinger and the rotator each in their own container on a private network,
//! and a reading the simulator served arriving in the bucket.
//!
//! The images must exist: `scripts/compose-smoke` builds `rainforest:latest`
//! and the base images (CI runs it before the suite). Without a Docker
//! engine the test is skipped with a message, except under `CI`
//! (`support::docker`). No port is published: the containers talk to each
//! other by name, and the test reads the spool through a bind mount and the
//! bucket through an aws-cli container.

mod support;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use support::docker::{self, Engine};
use testcontainers::core::{Mount, WaitFor, wait::ExitWaitStrategy};
use testcontainers::{ContainerAsync, GenericImage, ImageExt, runners::AsyncRunner};

const RAINFOREST: (&str, &str) = ("rainforest", "latest");
/// The versions docker-compose.yml and docker-compose.local.yml pin.
const REDIS: (&str, &str) = ("redis", "7-bookworm");
const MOTO: (&str, &str) = ("motoserver/moto", "5.2.1");
const AWS_CLI: (&str, &str) = ("amazon/aws-cli", "2.17.0");

const BUCKET: &str = "rainforest-containers";
const REDIS_PASSWORD: &str = "containers-test-password";

#[test]
fn a_simulator_reading_reaches_the_bucket_through_the_containers() {
    let images = [RAINFOREST, REDIS, MOTO, AWS_CLI].map(|(n, t)| format!("{n}:{t}"));
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    match docker::run_with_engine(
        "a_simulator_reading_reaches_the_bucket_through_the_containers",
        &images,
    ) {
        Engine::Done => return,
        Engine::RunHere => {}
    }
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(simulator_reading_reaches_the_bucket());
}

/// A container on `net` under `name` (its host name there too).
fn on(
    net: &str,
    name: &str,
    image: GenericImage,
) -> testcontainers::ContainerRequest<GenericImage> {
    image.with_network(net).with_container_name(name)
}

fn rainforest() -> GenericImage {
    GenericImage::new(RAINFOREST.0, RAINFOREST.1)
}

async fn simulator_reading_reaches_the_bucket() {
    let run = support::unique_namespace();
    let net = format!("rf-{run}");
    let name = |what: &str| format!("{what}-{run}");
    let redis_url = format!("redis://:{REDIS_PASSWORD}@{}:6379/0", name("redis"));
    let s3_endpoint = format!("http://{}:5000", name("s3"));

    // The spool, shared by the pinger and the rotator (uid 10001 in the
    // image) and read here.
    let spool = tempfile::tempdir().expect("spool directory");
    open_to_all(spool.path());
    let spool_mount = || {
        Mount::bind_mount(
            spool.path().to_string_lossy().into_owned(),
            "/data/logs".to_string(),
        )
    };

    let _redis = on(
        &net,
        &name("redis"),
        GenericImage::new(REDIS.0, REDIS.1)
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections")),
    )
    .with_cmd(["redis-server", "--requirepass", REDIS_PASSWORD])
    .start()
    .await
    .expect("redis container");
    let _s3 = on(
        &net,
        &name("s3"),
        GenericImage::new(MOTO.0, MOTO.1)
            .with_wait_for(WaitFor::message_on_either_std("Running on")),
    )
    .with_cmd(["-H", "0.0.0.0", "-p", "5000"])
    .start()
    .await
    .expect("moto container");
    let _simulator = on(
        &net,
        &name("simulator"),
        rainforest().with_wait_for(WaitFor::message_on_stderr("Simulator listening")),
    )
    .with_cmd(["simulate", "--listen", "0.0.0.0:9445", "--meters", "3"])
    .start()
    .await
    .expect("simulator container");

    aws_out(&net, &s3_endpoint, &["s3", "mb", &format!("s3://{BUCKET}")]).await;
    let import = on(&net, &name("users"), rainforest().with_wait_for(exit_0()))
        .with_cmd([
            "users",
            "import",
            "--direct",
            "/etc/rainforest/users.example.jl",
        ])
        .with_env_var("RAINFOREST_REDIS_URL", &redis_url)
        .with_env_var("RAINFOREST_CREDENTIALS_KEY", support::TEST_CREDENTIALS_KEY)
        .start()
        .await
        .expect("users import container (exit 0)");
    let said =
        String::from_utf8_lossy(&import.stdout_to_vec().await.unwrap_or_default()).into_owned();
    assert!(said.contains("created 3"), "users import said: {said}");

    let pinger = on(&net, &name("pinger"), rainforest())
        .with_cmd(["pinger"])
        .with_env_var("RAINFOREST_REDIS_URL", &redis_url)
        .with_env_var("RAINFOREST_CREDENTIALS_KEY", support::TEST_CREDENTIALS_KEY)
        .with_env_var(
            "RAINFOREST_RELAY_URL",
            format!("http://{}:9445/cgi-bin/post_manager", name("simulator")),
        )
        .with_mount(spool_mount())
        .start()
        .await
        .expect("pinger container");

    // A reading the pinger wrote from the simulator's answer.
    let (file, reading) = first_reading(spool.path(), &pinger).await;

    // The rotator ships only completed hours: the same reading, in the
    // spool file of an hour three hours ago, is what it must upload.
    let now = chrono::Utc::now();
    let hour = now.format("%Y-%m-%d-%H").to_string();
    let past = (now - chrono::Duration::hours(3))
        .format("%Y-%m-%d-%H")
        .to_string();
    let file_name = file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("spool file name");
    assert!(
        file_name.contains(&hour),
        "{file_name} does not name the hour {hour}"
    );
    // Under no writer's id: the pinger is alive and never sealed that hour,
    // so a file under its id would (rightly) wait; a file of no live writer
    // ships once its hour is over by rotate_grace.
    let mut spool_name = rainforest::spool::parse_file_name(support::spool::PREFIX, file_name)
        .expect("the pinger's spool file name parses");
    spool_name.hour = rainforest::spool::HourBucket::of(now - chrono::Duration::hours(3));
    spool_name.writer = None;
    let past_file = spool_name.path(spool.path(), support::spool::PREFIX);
    let past_dir = past_file.parent().expect("hour directory").to_path_buf();
    std::fs::create_dir_all(&past_dir).expect("past hour directory");
    open_to_all(&past_dir);
    std::fs::write(&past_file, format!("{reading}\n")).expect("past hour spool file");

    let rotator = on(&net, &name("rotator"), rainforest())
        .with_cmd(["rotator"])
        .with_env_var("RAINFOREST_REDIS_URL", &redis_url)
        .with_env_var("RAINFOREST_S3_BUCKET", BUCKET)
        .with_env_var("RAINFOREST_S3_ENDPOINT", &s3_endpoint)
        .with_env_var("RAINFOREST_S3_REGION", "us-east-1")
        .with_env_var("RAINFOREST_ROTATE_EVERY", "2s")
        .with_env_var("AWS_ACCESS_KEY_ID", "test")
        .with_env_var("AWS_SECRET_ACCESS_KEY", "test")
        .with_mount(spool_mount())
        .start()
        .await
        .expect("rotator container");

    let cloud_id = field(&reading, "cloud_id");
    let day = (now - chrono::Duration::hours(3))
        .format("%Y/%m/%d")
        .to_string();
    let prefix = format!("rainforest-logs/{cloud_id}/{day}/");
    let mut listing = String::new();
    for _ in 0..40 {
        listing = aws_out(
            &net,
            &s3_endpoint,
            &["s3", "ls", "--recursive", &format!("s3://{BUCKET}/")],
        )
        .await;
        if listing
            .lines()
            .any(|l| l.contains(&prefix) && l.contains(&past))
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let key = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|k| k.starts_with(&prefix) && k.contains(&past) && k.ends_with(".jl.gz"))
        .unwrap_or_else(|| {
            panic!(
                "no object under {prefix} for {past} in the bucket; listing:\n{listing}\nrotator:\n{}",
                logs(&rotator)
            )
        })
        .to_string();
    // Through a bind mount: container logs carry text, not gzip bytes.
    let out = tempfile::tempdir().expect("download directory");
    open_to_all(out.path());
    aws_with(
        &net,
        &s3_endpoint,
        &[
            "s3",
            "cp",
            &format!("s3://{BUCKET}/{key}"),
            "/out/object.jl.gz",
        ],
        Some(out.path()),
    )
    .await;
    let gz = std::fs::read(out.path().join("object.jl.gz")).expect("downloaded object");
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{key} is not gzip text: {e}"));
    assert!(
        text.lines().any(|l| l == reading),
        "{key} lacks the simulator's reading {reading}; it holds:\n{text}"
    );
}

/// The first complete line the pinger wrote, and its file; waits up to a
/// minute (the first poll is within one 6 s interval).
async fn first_reading(
    spool: &Path,
    pinger: &ContainerAsync<GenericImage>,
) -> (std::path::PathBuf, String) {
    for _ in 0..60 {
        for file in support::spool::spool_files(spool) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("\"cloud_id\"") && text.contains('\n'))
            {
                return (file, line.to_string());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("the pinger wrote no reading in a minute:\n{}", logs(pinger));
}

/// One string field of a JSON line.
fn field(line: &str, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("reading {line} is not JSON: {e}"));
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("reading {line} has no {name}"))
        .to_string()
}

fn exit_0() -> WaitFor {
    WaitFor::exit(ExitWaitStrategy::new().with_exit_code(0))
}

/// The aws-cli image, run once against moto with `args` (and `out`
/// mounted at /out); its stdout.
async fn aws_with(net: &str, endpoint: &str, args: &[&str], out: Option<&Path>) -> Vec<u8> {
    let mut cmd = vec!["--endpoint-url", endpoint];
    cmd.extend_from_slice(args);
    let mut job = GenericImage::new(AWS_CLI.0, AWS_CLI.1)
        .with_entrypoint("aws")
        .with_wait_for(exit_0())
        .with_network(net)
        .with_env_var("AWS_ACCESS_KEY_ID", "test")
        .with_env_var("AWS_SECRET_ACCESS_KEY", "test")
        .with_env_var("AWS_DEFAULT_REGION", "us-east-1")
        .with_cmd(cmd);
    if let Some(dir) = out {
        job = job.with_mount(Mount::bind_mount(
            dir.to_string_lossy().into_owned(),
            "/out",
        ));
    }
    let job = job
        .start()
        .await
        .unwrap_or_else(|e| panic!("aws {args:?} against {endpoint}: {e}"));
    job.stdout_to_vec().await.expect("aws-cli output")
}

async fn aws_out(net: &str, endpoint: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&aws_with(net, endpoint, args, None).await).into_owned()
}

/// A container's stderr (where rainforest logs), for a failure message.
fn logs(c: &ContainerAsync<GenericImage>) -> String {
    let id = c.id().to_string();
    std::process::Command::new("docker")
        .args(["logs", "--tail", "40", &id])
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| format!("(docker logs {id}: {e})"))
}

/// World-writable, so the image's user (uid 10001) writes where the test
/// (root or not) created the directory.
fn open_to_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("chmod 777 {}: {e}", dir.display()));
}

#[test]
fn request_lines_are_lowered_to_the_engine_version() {
    let mut req = b"GET /v1.53/containers/json HTTP/1.1\r\n\r\nPOST /v1.41/x HTTP/1.1".to_vec();
    docker::lower_versions(&mut req, 41);
    assert_eq!(
        req,
        b"GET /v1.41/containers/json HTTP/1.1\r\n\r\nPOST /v1.41/x HTTP/1.1".to_vec()
    );
    assert_eq!(docker::partial_version_suffix(b"}\r\n\r\nGET /v1.5"), 6);
    assert_eq!(docker::partial_version_suffix(b"GET /v1.53"), 7);
    assert_eq!(docker::partial_version_suffix(b"}\r\n\r\nGET "), 1);
    assert_eq!(docker::partial_version_suffix(b"{\"a\":1}"), 0);
}
