//! Bulk loading end to end: the real `rainforest` binary as server,
//! importer and pinger, `scripts/add_users`, a real `redis-server`, and a
//! Redis filled in the old system's layout.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rainforest::cloud_id::CloudId;
use rainforest::registry::Registry;
use rainforest::simulator::{self, SimulateArgs, Simulator};
use support::RedisServer;
use support::process::{Proc, clean, rainforest};
use support::server::{ADMIN, ServerProcess};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/fixtures")
        .join(name)
}

fn id(s: &str) -> CloudId {
    CloudId::parse(s).unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The registry as the binary writes it: sealed with the tests' key.
async fn registry(redis: &RedisServer, ns: &str) -> Registry {
    Registry::Redis(support::sealed_registry(&redis.url(), ns).await)
}

/// The cloud ids in the registry, in order.
async fn loaded_ids(redis: &RedisServer, ns: &str) -> Vec<String> {
    registry(redis, ns)
        .await
        .load_all()
        .await
        .unwrap()
        .iter()
        .map(|u| u.cloud_id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_through_the_server_reports_bad_lines_and_a_second_run_changes_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&redis.url(), &ns, dir.path(), "http://127.0.0.1:9/");
    let import = || {
        rainforest()
            .env("RAINFOREST_API_TOKEN", ADMIN)
            .args(["users", "import", "--server", &server.base])
            .arg(fixture("users_with_bad_lines.jsonl"))
            .output()
            .unwrap()
    };

    let first = import();
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(1), "{out}{err}");
    assert_eq!(
        out.trim(),
        "created 2, updated 0, unchanged 0, failed 4",
        "{err}"
    );
    for (line, why) in [
        ("line 4:", "cloud_id"),
        ("line 5:", "actve"),
        ("line 6:", "user_pw"),
        ("line 7:", "not valid JSON"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(line) && l.contains(why)),
            "no `{line} ... {why}` in:\n{err}"
        );
    }
    for pw in ["alice-pw", "short-pw", "typo-pw", "erin-pw"] {
        assert!(!err.contains(pw) && !out.contains(pw), "{err}");
    }
    // Plain progress lines, not a bar, when stderr is not a terminal.
    assert!(err.contains("progress: "), "{err}");

    let reg = registry(&redis, &ns).await;
    let users = reg.load_all().await.unwrap();
    let ids: Vec<&str> = users.iter().map(|u| u.cloud_id.as_str()).collect();
    assert_eq!(ids, ["00ce69", "00ce6e"]);

    let second = import();
    let (out, err) = text(&second);
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(
        out.trim(),
        "created 0, updated 0, unchanged 2, failed 4",
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_a_bad_or_missing_token_stops_and_says_why() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&redis.url(), &ns, dir.path(), "http://127.0.0.1:9/");
    let out = rainforest()
        .env("RAINFOREST_API_TOKEN", "not-the-token-at-all-0000")
        .args(["users", "import", "--server", &server.base])
        .arg(fixture("users_old_format.jsonl"))
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("refused the token (401)") && err.contains("tokens create"),
        "{err}"
    );

    let out = rainforest()
        .args(["users", "import", "--server", &server.base])
        .arg(fixture("users_old_format.jsonl"))
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("RAINFOREST_API_TOKEN"), "{err}");
    assert!(
        registry(&redis, &ns)
            .await
            .load_all()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_import_from_stdin_is_idempotent() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let run = || {
        let mut child = rainforest()
            .args([
                "--redis-url",
                &redis.url(),
                "--set",
                &format!("redis_namespace={ns}"),
            ])
            .args(["users", "import", "--direct", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = std::fs::read(fixture("users_old_format.jsonl")).unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
        child.wait_with_output().unwrap()
    };
    let first = run();
    let (out, err) = text(&first);
    assert!(first.status.success(), "{out}{err}");
    assert_eq!(out.trim(), "created 4, updated 0, unchanged 0, failed 0");
    let second = run();
    assert_eq!(
        text(&second).0.trim(),
        "created 0, updated 0, unchanged 4, failed 0"
    );

    let reg = registry(&redis, &ns).await;
    let bob = reg.get(id("00ce6a")).await.unwrap().unwrap();
    assert!(!bob.active);
    let dave = reg.get(id("ffff01")).await.unwrap().unwrap();
    assert_eq!(dave.local.unwrap().host, "192.168.1.20");
    // Statistics in a file line are not imported (only the legacy Redis
    // import carries them over).
    assert!(reg.stats(id("0a1b2c")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_redis_import_carries_statistics_over_once() {
    let Some(legacy) = RedisServer::start() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    {
        let client = redis::Client::open(legacy.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let set = |conn: &mut redis::Connection, k: &str, v: &str| {
            redis::cmd("SET").arg(k).arg(v).exec(conn).unwrap();
        };
        set(
            &mut conn,
            "0a1b2c",
            r#"{"user_email": "carol@example.org", "user_pw": "carol-pw", "total_events_logged": 48213, "first_timestamp": 1497312000.52, "last_timestamp": 1528848000.25}"#,
        );
        set(
            &mut conn,
            "00CE6A",
            r#"{"user_email": "bob@example.org", "user_pw": "bob-pw", "total_events_logged": "17", "first_timestamp": "1500000000.5", "last_timestamp": null}"#,
        );
        set(
            &mut conn,
            "00ce6b",
            r#"{"user_email": "nopw@example.org", "user_pw": ""}"#,
        );
        set(&mut conn, "00ce6c", "{not json");
        redis::cmd("HSET")
            .arg("00ce6d")
            .arg("user_email")
            .arg("x@example.org")
            .exec(&mut conn)
            .unwrap();
        // Not users: other keys of the old app are left alone.
        set(&mut conn, "foobar", "{}");
        set(&mut conn, "session:42", "{}");
    }
    let run = || {
        rainforest()
            .args([
                "--redis-url",
                &redis.url(),
                "--set",
                &format!("redis_namespace={ns}"),
            ])
            .args(["users", "import", "--from-legacy-redis", &legacy.url()])
            .output()
            .unwrap()
    };
    let first = run();
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(1), "{out}{err}");
    assert_eq!(
        out.trim(),
        "created 2, updated 0, unchanged 0, failed 3 (statistics carried over for 2)",
        "{err}"
    );
    for key in ["key 00ce6b:", "key 00ce6c:", "key 00ce6d:"] {
        assert!(err.contains(key), "no {key} in {err}");
    }
    assert!(!err.contains("foobar") && !err.contains("session"), "{err}");

    let reg = registry(&redis, &ns).await;
    let carol = reg.get(id("0a1b2c")).await.unwrap().unwrap();
    assert_eq!(carol.user_email, "carol@example.org");
    assert_eq!(carol.user_pw.expose(), "carol-pw");
    let stats = reg.stats(id("0a1b2c")).await.unwrap().unwrap();
    assert_eq!(stats.total_events_logged, 48213);
    assert_eq!(stats.first_timestamp, Some(1497312000.52));
    assert_eq!(stats.last_timestamp, Some(1528848000.25));
    let bob = reg.stats(id("00ce6a")).await.unwrap().unwrap();
    assert_eq!(
        (bob.total_events_logged, bob.first_timestamp),
        (17, Some(1500000000.5))
    );

    // Again: nothing changes, and events are not counted twice.
    let second = run();
    assert_eq!(
        text(&second).0.trim(),
        "created 0, updated 0, unchanged 2, failed 3"
    );
    let stats = reg.stats(id("0a1b2c")).await.unwrap().unwrap();
    assert_eq!(stats.total_events_logged, 48213);
    if !legacy.can_restart() {
        // A shared TEST_REDIS_URL outlives the test.
        let client = redis::Client::open(legacy.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let keys = [
            "0a1b2c",
            "00CE6A",
            "00ce6b",
            "00ce6c",
            "00ce6d",
            "foobar",
            "session:42",
        ];
        redis::cmd("DEL").arg(&keys[..]).exec(&mut conn).unwrap();
        redis.delete_namespace(&ns);
    }
}

/// The issue's "done": `scripts/add_users config/users.example.jl` against
/// a running server loads the users, and a running pinger polls them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_users_script_loads_the_example_file_and_the_pinger_polls_them() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 3,
        ..SimulateArgs::default()
    })
    .await
    .unwrap();
    let relay = sim.relay_url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&redis.url(), &ns, dir.path(), &relay);
    let pinger = rainforest()
        .current_dir(dir.path())
        .args(["pinger", "--redis-url", &redis.url(), "--relay-url", &relay])
        .args(["--set", &format!("redis_namespace={ns}")])
        .args([
            "--set",
            "poll_interval=500ms",
            "--set",
            "user_reload_interval=1s",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("logs"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pinger = Proc::from_child(pinger);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = clean(Command::new(root.join("scripts/add_users")))
        .current_dir(root)
        .env("RAINFOREST_API_TOKEN", ADMIN)
        .args(["--server", &server.base, "config/users.example.jl"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        "created 3, updated 0, unchanged 0, failed 0",
        "{stderr}"
    );

    assert_eq!(
        loaded_ids(&redis, &ns).await,
        ["a00000", "a00001", "a00002"]
    );

    // Within a minute (here: a few seconds, with short intervals) every
    // loaded meter has been polled into the spool.
    let mut polled = false;
    for _ in 0..200 {
        if (0..3).all(|i| sim.requests_for(simulator::meter_cloud_id(i)) > 0)
            && (0..3).all(|i| {
                reg_stats_sync(&redis, &ns, simulator::meter_cloud_id(i)).is_some_and(|n| n > 0)
            })
        {
            polled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pinger.kill9();
    assert!(polled, "the pinger did not poll every imported meter");
}

/// `total_events_logged` of a meter, read with a plain connection.
fn reg_stats_sync(redis: &RedisServer, ns: &str, id: CloudId) -> Option<u64> {
    let client = redis::Client::open(redis.url()).ok()?;
    let mut conn = client.get_connection().ok()?;
    redis::cmd("HGET")
        .arg(format!("{ns}:stats:{id}"))
        .arg("total_events_logged")
        .query::<Option<u64>>(&mut conn)
        .ok()
        .flatten()
}

/// The EC2 path on a host with only Docker: `scripts/add_users FILE` with
/// no built binary runs the import inside the compose `server` container,
/// which holds the token, with the file on standard input. A stand-in for
/// `docker compose` answers `ps -q server` and runs `exec -T server
/// rainforest ...` as the real binary with the container's token, its
/// loopback address mapped to the test server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_users_without_a_built_binary_imports_inside_the_compose_server_container() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&redis.url(), &ns, dir.path(), "http://127.0.0.1:9/");
    let compose = support::process::fake_compose(dir.path(), &server.base, ADMIN);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = clean(Command::new(root.join("scripts/add_users")))
        .current_dir(root)
        .env("ADD_USERS_VIA", "compose")
        .env("ADD_USERS_COMPOSE", &compose)
        .arg("config/users.example.jl")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        "created 3, updated 0, unchanged 0, failed 0",
        "{stderr}"
    );
    let calls = std::fs::read_to_string(dir.path().join("compose-calls")).unwrap();
    assert_eq!(
        calls.trim(),
        "exec -T server rainforest users import --server http://127.0.0.1:8000 -",
        "the file must go in on standard input, to the container's own server"
    );
    assert_eq!(
        loaded_ids(&redis, &ns).await,
        ["a00000", "a00001", "a00002"]
    );
    redis.delete_namespace(&ns);
}

/// `rainforest` over the test Redis under namespace `ns`, running `args`.
fn users_cmd(redis: &RedisServer, ns: &str, args: &[&str]) -> Command {
    let mut cmd = rainforest();
    cmd.args(["--redis-url", &redis.url()])
        .args(["--set", &format!("redis_namespace={ns}")])
        .args(args);
    cmd
}

/// Backups and moving hosts: `users export` writes every user (sealed, a
/// private file) so that `users import` reads it back unchanged, into the
/// same Redis or a new one; `--decrypt` writes credentials in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_round_trips_every_user_sealed_or_decrypted() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (old, new) = (support::unique_namespace(), support::unique_namespace());
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("users_old_format.jsonl");
    let seeded = users_cmd(&redis, &old, &["users", "import", "--direct"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(seeded.status.success(), "{:?}", text(&seeded));
    let original = registry(&redis, &old).await.load_all().await.unwrap();
    assert_eq!(original.len(), 4);

    let backup = dir.path().join("users-backup.jl");
    let out = users_cmd(&redis, &old, &["users", "export"])
        .arg(&backup)
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Exported 4 users"), "{err}");
    let sealed = std::fs::read_to_string(&backup).unwrap();
    assert_eq!(sealed.lines().count(), 4, "{sealed}");
    // Three passwords and one install code, none in clear.
    assert_eq!(sealed.matches("\"v1:").count(), 4, "{sealed}");
    assert!(
        !sealed.contains("alice-pw") && !sealed.contains("dave-code"),
        "{sealed}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&backup).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the backup holds credentials");

    let import = |ns: &str, file: &Path| {
        let out = users_cmd(&redis, ns, &["users", "import", "--direct"])
            .arg(file)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout.trim().to_string()
    };
    // Into the same Redis: nothing changes.
    assert_eq!(
        import(&old, &backup),
        "created 0, updated 0, unchanged 4, failed 0"
    );
    // Into a new one (same key): every user as it was.
    assert_eq!(
        import(&new, &backup),
        "created 4, updated 0, unchanged 0, failed 0"
    );
    assert_eq!(
        registry(&redis, &new).await.load_all().await.unwrap(),
        original
    );

    // --decrypt: credentials in clear, and they too read back unchanged.
    let clear_file = dir.path().join("users-clear.jl");
    let out = users_cmd(&redis, &new, &["users", "export", "--decrypt"])
        .arg(&clear_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let clear = std::fs::read_to_string(&clear_file).unwrap();
    assert!(
        clear.contains("dave-code") && !clear.contains("\"v1:"),
        "{clear}"
    );
    assert_eq!(
        import(&new, &clear_file),
        "created 0, updated 0, unchanged 4, failed 0"
    );

    // Without a key a sealed export is refused, pointing at --decrypt.
    let out = users_cmd(&redis, &old, &["users", "export"])
        .env_remove("RAINFOREST_CREDENTIALS_KEY")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success() && stdout.is_empty(),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("--decrypt"), "{stderr}");

    redis.delete_namespace(&old);
    redis.delete_namespace(&new);
}
