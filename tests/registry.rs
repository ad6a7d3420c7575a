//! The user registry against a real Redis (via `tests/support`) and a real
//! users file.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rainforest::cloud_id::CloudId;
use rainforest::registry::{
    FileRegistry, LocalSource, MeterState, PutOutcome, RedisRegistry, Registry, RegistryError,
    StatsUpdate, StatsWriter, User,
};
use rainforest::secret::Secret;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use support::RedisServer;

fn id(s: &str) -> CloudId {
    CloudId::parse(s).unwrap()
}

fn user(cloud_id: &str, pw: &str) -> User {
    User {
        cloud_id: id(cloud_id),
        user_email: format!("u{cloud_id}@example.org"),
        user_pw: Secret::new(pw),
        active: true,
        local: None,
        cadence: Default::default(),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/fixtures")
        .join(name)
}

async fn redis_registry(server: &RedisServer) -> (Registry, String) {
    let ns = server.namespace();
    let r = RedisRegistry::connect(&server.url(), &ns).await.unwrap();
    (Registry::Redis(r), ns)
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Retries `op` until it succeeds, for the moments after Redis comes back.
async fn eventually<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what} never recovered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn put_reports_created_then_unchanged_then_updated() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    let mut u = user("00ce69", "pw1");

    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Created);
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Unchanged);
    let mut conn = raw(&server).await;
    let stamp: String = conn
        .hget(format!("{ns}:user:00ce69"), "updated_at")
        .await
        .unwrap();

    u.active = false;
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Updated);
    u.local = Some(LocalSource {
        host: "192.168.1.20".into(),
        install_code: Secret::new("c0de"),
    });
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Updated);
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Unchanged);
    assert_eq!(reg.get(u.cloud_id).await.unwrap(), Some(u.clone()));

    // Back to the relay: the local fields must not linger in the hash.
    u.local = None;
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Updated);
    let fields: Vec<String> = conn.hkeys(format!("{ns}:user:00ce69")).await.unwrap();
    assert!(
        !fields.contains(&"host".to_string()) && !fields.contains(&"install_code".to_string()),
        "{fields:?}"
    );
    let stamp2: String = conn
        .hget(format!("{ns}:user:00ce69"), "updated_at")
        .await
        .unwrap();
    assert_ne!(stamp, stamp2, "updated_at moves on a change");
    let members: Vec<String> = conn.smembers(format!("{ns}:users")).await.unwrap();
    assert_eq!(members, ["00ce69"]);
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn put_rejects_an_invalid_user_naming_the_field() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    let mut u = user("00ce69", "");
    let e = reg.put(&u).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Rejected { ref source, .. } if source.field == "user_pw"),
        "{e}"
    );
    u.user_pw = Secret::new("pw");
    u.user_email = "not an address".into();
    let e = reg.put(&u).await.unwrap_err();
    assert!(e.to_string().contains("`user_email`"), "{e}");
    assert_eq!(reg.get(u.cloud_id).await.unwrap(), None);
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn get_returns_the_user_and_debug_never_shows_the_password() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    reg.put(&user("00ce69", "hunter2")).await.unwrap();

    let got = reg.get(id("00ce69")).await.unwrap().unwrap();
    assert_eq!(got.user_pw.expose(), "hunter2");
    let shown = format!("{got:?} {reg:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert_eq!(reg.get(id("00ce6a")).await.unwrap(), None);
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn invalid_user_in_redis_is_named_by_get_and_skipped_by_load_all() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    reg.put(&user("00ce69", "pw")).await.unwrap();
    reg.put(&user("00ce6a", "pw")).await.unwrap();
    let mut conn = raw(&server).await;
    let _: () = conn
        .hset(format!("{ns}:user:00ce6a"), "active", "maybe")
        .await
        .unwrap();
    let _: () = conn.sadd(format!("{ns}:users"), "not-an-id").await.unwrap();

    let e = reg.get(id("00ce6a")).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("{ns}:user:00ce6a")) && text.contains("`active`"),
        "{text}"
    );
    let all = reg.load_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].cloud_id, id("00ce69"));
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn load_all_reads_5000_users_in_pipelined_batches() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    let users: Vec<User> = (0..5000u32)
        .map(|n| {
            let mut u = user(CloudId::from_index(n * 7 + 1).as_str(), &format!("pw-{n}"));
            u.active = n % 10 != 0;
            u
        })
        .collect();
    for chunk in users.chunks(500) {
        let puts = chunk.iter().map(|u| reg.put(u));
        for outcome in futures::future::try_join_all(puts).await.unwrap() {
            assert_eq!(outcome, PutOutcome::Created);
        }
    }

    let started = Instant::now();
    let loaded = reg.load_all().await.unwrap();
    let took = started.elapsed();

    assert_eq!(loaded.len(), 5000, "inactive users are included");
    assert_eq!(loaded.iter().filter(|u| !u.active).count(), 500);
    assert!(
        loaded.windows(2).all(|w| w[0].cloud_id < w[1].cloud_id),
        "sorted by cloud id"
    );
    let mut expected = users.clone();
    expected.sort_by_key(|u| u.cloud_id);
    assert_eq!(loaded, expected);
    assert!(took < Duration::from_secs(5), "load_all took {took:?}");
    let active: Vec<CloudId> = expected
        .iter()
        .filter(|u| u.active)
        .map(|u| u.cloud_id)
        .collect();
    assert_eq!(reg.active_ids().await.unwrap(), active, "across batches");
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn active_ids_skip_inactive_and_dangling_users_and_read_no_credentials() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    reg.put(&user("00ce69", "pw")).await.unwrap();
    let mut off = user("00ce6a", "pw");
    off.active = false;
    reg.put(&off).await.unwrap();
    reg.put(&user("00ce6b", "pw")).await.unwrap();
    let mut conn = raw(&server).await;
    // Written by an older version: no `active` field means active.
    let _: () = conn
        .hset_multiple(
            format!("{ns}:user:00ce6c"),
            &[
                ("user_email", "c@example.org"),
                ("user_pw", "pw"),
                ("source", "relay"),
            ],
        )
        .await
        .unwrap();
    let _: () = conn
        .hset(format!("{ns}:user:00ce6d"), "active", "maybe")
        .await
        .unwrap();
    for member in ["00ce6c", "00ce6d", "00dead", "not-an-id"] {
        let _: () = conn.sadd(format!("{ns}:users"), member).await.unwrap();
    }
    if server.can_restart() {
        // A private server: its command counters are this test's alone.
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let ids = reg.active_ids().await.unwrap();
    assert_eq!(ids, [id("00ce69"), id("00ce6b"), id("00ce6c")]);
    // The users the pinger would poll or keep, as load_all reads them: not
    // the dangling or malformed index entries, nor the hash without a source.
    assert_eq!(reg.census().await.unwrap().users, 4);

    if server.can_restart() {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(stats.contains("cmdstat_hmget:"), "{stats}");
        for reads_credentials in ["cmdstat_hgetall:", "cmdstat_hget:", "cmdstat_hvals:"] {
            assert!(!stats.contains(reads_credentials), "{stats}");
        }
    }
    assert_eq!(reg.load_all().await.unwrap().len(), 4, "the same users");
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn page_ids_walk_the_index_in_order_for_both_back_ends() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (redis_reg, ns) = redis_registry(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file_reg = Registry::File(FileRegistry::new(dir.path().join("users.jl")));
    let ids: Vec<CloudId> = (0..25u32).map(|n| CloudId::from_index(n * 3 + 1)).collect();
    for reg in [&redis_reg, &file_reg] {
        for cid in ids.iter().rev() {
            reg.put(&user(cid.as_str(), "pw")).await.unwrap();
        }
    }
    let mut conn = raw(&server).await;
    let _: () = conn.sadd(format!("{ns}:users"), "not-an-id").await.unwrap();

    for reg in [&redis_reg, &file_reg] {
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = reg.page_ids(after, 10).await.unwrap();
            assert!(page.ids.len() <= 10, "{page:?}");
            pages += 1;
            seen.extend_from_slice(&page.ids);
            if !page.more {
                break;
            }
            after = page.ids.last().copied();
        }
        assert_eq!(pages, 3, "{}", reg.describe());
        assert_eq!(seen, ids, "{}", reg.describe());
        let last = reg.page_ids(ids.last().copied(), 10).await.unwrap();
        assert!(last.ids.is_empty() && !last.more, "{last:?}");
    }
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn file_registry_active_ids_are_the_active_users() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::File(FileRegistry::new(dir.path().join("users.jl")));
    reg.put(&user("00ce6b", "pw")).await.unwrap();
    let mut off = user("00ce6a", "pw");
    off.active = false;
    reg.put(&off).await.unwrap();
    reg.put(&user("00ce69", "pw")).await.unwrap();
    assert_eq!(
        reg.active_ids().await.unwrap(),
        [id("00ce69"), id("00ce6b")]
    );
}

#[tokio::test]
async fn remove_deletes_index_entry_user_hash_and_stats_hash() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    let u = user("00ce69", "pw");
    reg.put(&u).await.unwrap();
    reg.put(&user("00ce6a", "pw")).await.unwrap();
    reg.write_stats(&[StatsUpdate {
        events_logged: 3,
        ..StatsUpdate::new(u.cloud_id)
    }])
    .await
    .unwrap();
    assert!(reg.stats(u.cloud_id).await.unwrap().is_some());

    assert!(reg.remove(u.cloud_id).await.unwrap());

    let mut conn = raw(&server).await;
    let user_exists: bool = conn.exists(format!("{ns}:user:00ce69")).await.unwrap();
    let stats_exists: bool = conn.exists(format!("{ns}:stats:00ce69")).await.unwrap();
    let indexed: bool = conn
        .sismember(format!("{ns}:users"), "00ce69")
        .await
        .unwrap();
    assert!(!user_exists && !stats_exists && !indexed);
    assert_eq!(reg.get(u.cloud_id).await.unwrap(), None);
    assert_eq!(reg.load_all().await.unwrap().len(), 1);
    assert!(
        !reg.remove(u.cloud_id).await.unwrap(),
        "second remove finds nothing"
    );

    // A poll that finishes after the removal does not bring the stats back.
    reg.write_stats(&[StatsUpdate {
        events_logged: 1,
        ..StatsUpdate::new(u.cloud_id)
    }])
    .await
    .unwrap();
    assert_eq!(reg.stats(u.cloud_id).await.unwrap(), None);
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn stats_batch_is_written_in_one_call_and_events_accumulate() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    let ids = [id("00ce69"), id("00ce6a"), id("00ce6b")];
    for i in ids {
        reg.put(&user(i.as_str(), "pw")).await.unwrap();
    }
    let mut conn = raw(&server).await;
    let creds_before: Vec<(String, String)> =
        conn.hgetall(format!("{ns}:user:00ce69")).await.unwrap();

    let batch = |events: u64, t: f64| -> Vec<StatsUpdate> {
        ids.iter()
            .map(|&cloud_id| StatsUpdate {
                events_logged: events,
                first_timestamp: Some(t),
                last_timestamp: Some(t + 5.5),
                ..StatsUpdate::new(cloud_id)
            })
            .collect()
    };
    reg.write_stats(&batch(2, 1_700_000_000.25)).await.unwrap();
    let mut second = batch(3, 1_700_000_100.0);
    second[1].last_error = Some(("timeout".into(), 1_700_000_101.5));
    second[1].consecutive_failures = Some(2);
    second[1].state = Some(MeterState::Backoff);
    reg.write_stats(&second).await.unwrap();

    for i in ids {
        let s = reg.stats(i).await.unwrap().unwrap();
        assert_eq!(s.total_events_logged, 5, "HINCRBY adds up for {i}");
        assert_eq!(
            s.first_timestamp,
            Some(1_700_000_000.25),
            "first timestamp is set once"
        );
        assert_eq!(s.last_timestamp, Some(1_700_000_105.5));
    }
    let s = reg.stats(ids[1]).await.unwrap().unwrap();
    assert_eq!(s.last_error_kind.as_deref(), Some("timeout"));
    assert_eq!(s.last_error_at, Some(1_700_000_101.5));
    assert_eq!((s.consecutive_failures, s.state), (2, MeterState::Backoff));

    let creds_after: Vec<(String, String)> =
        conn.hgetall(format!("{ns}:user:00ce69")).await.unwrap();
    assert_eq!(
        creds_before, creds_after,
        "stats writes never touch the credentials hash"
    );
    assert_eq!(reg.stats(id("0000ff")).await.unwrap(), None);
    server.delete_namespace(&ns);
}

/// The old system rewrote the whole record on every poll, so a password
/// changed between two polls was put back by the second one.
#[tokio::test]
async fn credential_update_between_two_stats_writes_is_not_undone() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    let mut u = user("00ce69", "old-pw");
    reg.put(&u).await.unwrap();
    let update = StatsUpdate {
        events_logged: 1,
        last_timestamp: Some(1_700_000_000.0),
        ..StatsUpdate::new(u.cloud_id)
    };

    reg.write_stats(std::slice::from_ref(&update))
        .await
        .unwrap();
    u.user_pw = Secret::new("new-pw");
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Updated);
    reg.write_stats(&[update]).await.unwrap();

    let got = reg.get(u.cloud_id).await.unwrap().unwrap();
    assert_eq!(got.user_pw.expose(), "new-pw");
    assert_eq!(
        reg.stats(u.cloud_id)
            .await
            .unwrap()
            .unwrap()
            .total_events_logged,
        2
    );
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn redis_outage_is_unavailable_and_the_same_registry_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    if !server.can_restart() {
        support::skipped("cannot stop the external Redis from TEST_REDIS_URL");
        return;
    }
    let (reg, _ns) = redis_registry(&server).await;
    let u = user("00ce69", "pw");
    reg.put(&u).await.unwrap();

    server.stop();
    let started = Instant::now();
    for _ in 0..3 {
        let e = reg.get(u.cloud_id).await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains(&server.url()), "names the URL: {e}");
    }
    let e = reg.load_all().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(reg.ping().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "outage reported quickly"
    );

    server.start_again();
    let got = eventually("get", || reg.get(u.cloud_id)).await;
    assert_eq!(got, Some(u), "data kept across a clean restart");
    assert_eq!(
        reg.put(&user("00ce6a", "pw")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(reg.load_all().await.unwrap().len(), 2);
}

#[tokio::test]
async fn unreachable_redis_url_is_unavailable_with_the_password_redacted() {
    let port = support::free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
    let e = RedisRegistry::connect(&url, "rainforest")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(e.is_unavailable(), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("check that Redis is running"), "{text}");
}

#[tokio::test]
async fn stats_writer_batches_and_keeps_updates_through_an_outage() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    let ids: Vec<CloudId> = (1..=50).map(CloudId::from_index).collect();
    for i in &ids {
        reg.put(&user(i.as_str(), "pw")).await.unwrap();
    }
    let shutdown = CancellationToken::new();
    let (writer, handle) =
        StatsWriter::spawn(reg.clone(), Duration::from_millis(100), shutdown.clone());
    let record_round = |t: f64| {
        for &i in &ids {
            writer.record(StatsUpdate {
                events_logged: 1,
                first_timestamp: Some(t),
                last_timestamp: Some(t),
                ..StatsUpdate::new(i)
            });
        }
    };
    record_round(1000.0);
    record_round(1006.0);
    eventually("first flush", || async {
        match reg.stats(ids[49]).await? {
            Some(s) if s.total_events_logged == 2 => Ok(()),
            other => Err(RegistryError::Config {
                reason: format!("not yet: {other:?}"),
            }),
        }
    })
    .await;

    if server.can_restart() {
        let (logs, _guard) = support::capture_logs();
        server.stop();
        record_round(1012.0);
        // Several ticks fail while Redis is down.
        tokio::time::sleep(Duration::from_millis(800)).await;
        record_round(1018.0);
        server.start_again();
        shutdown.cancel();
        handle.await.unwrap();
        let text = logs.text();
        assert_eq!(
            text.matches("Cannot write statistics").count(),
            1,
            "outage logged once:\n{text}"
        );
        assert_eq!(
            text.matches("Statistics writes work again").count(),
            1,
            "{text}"
        );
    } else {
        record_round(1012.0);
        record_round(1018.0);
        shutdown.cancel();
        handle.await.unwrap();
    }
    assert_eq!(writer.pending(), 0);
    for &i in &ids {
        let s = reg.stats(i).await.unwrap().unwrap();
        assert_eq!(s.total_events_logged, 4, "{i}");
        assert_eq!(
            (s.first_timestamp, s.last_timestamp),
            (Some(1000.0), Some(1018.0))
        );
    }
    server.delete_namespace(&ns);
}

// --- The embedded registry (users file) ---

#[tokio::test]
async fn old_format_users_file_loads_as_is() {
    let reg = Registry::File(FileRegistry::new(fixture("users_old_format.jsonl")));
    let users = reg.load_all().await.unwrap();
    let ids: Vec<&str> = users.iter().map(|u| u.cloud_id.as_str()).collect();
    assert_eq!(ids, ["00ce69", "00ce6a", "0a1b2c", "ffff01"]);
    assert!(users[0].active && !users[1].active);
    assert_eq!(
        users[2].user_pw.expose(),
        "carol-pw",
        "legacy stat fields ignored"
    );
    let local = users[3].local.as_ref().unwrap();
    assert_eq!(local.host, "192.168.1.20");
    assert_eq!(local.install_code.expose(), "dave-code");
    assert_eq!(
        reg.get(id("0A1B2C")).await.unwrap().unwrap().user_email,
        "carol@example.org"
    );
}

#[tokio::test]
async fn bad_lines_are_reported_with_line_and_reason_and_skipped() {
    let path = fixture("users_with_bad_lines.jsonl");
    let reg = Registry::File(FileRegistry::new(&path));
    let (logs, _guard) = support::capture_logs();

    let users = reg.load_all().await.unwrap();

    let ids: Vec<&str> = users.iter().map(|u| u.cloud_id.as_str()).collect();
    assert_eq!(ids, ["00ce69", "00ce6e"], "valid lines still load");
    let text = logs.text();
    let warned: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warned.len(), 4, "{text}");
    for (line, field) in [(4, "cloud_id"), (5, "actve"), (6, "user_pw"), (7, "JSON")] {
        let hit = warned.iter().find(|l| l.contains(&format!("line={line} ")));
        let hit = hit.unwrap_or_else(|| panic!("no warning for line {line}: {text}"));
        assert!(
            hit.contains(field),
            "line {line} should mention {field}: {hit}"
        );
        assert!(
            hit.contains(&path.display().to_string()),
            "names the file: {hit}"
        );
    }
    for secret in ["short-pw", "typo-pw", "trunc", "alice-pw", "erin-pw"] {
        assert!(!text.contains(secret), "log leaks {secret}: {text}");
    }

    // The pinger reloads every minute: the same bad lines are not repeated.
    reg.load_all().await.unwrap();
    assert_eq!(
        logs.text().lines().filter(|l| l.contains("WARN")).count(),
        4
    );
}

#[tokio::test]
async fn unknown_field_is_rejected_with_its_name() {
    let e = User::from_json_line(
        r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x", "polll_interval": 6}"#,
    )
    .unwrap_err();
    assert_eq!(e.field, "polll_interval");
    assert!(e.to_string().contains("unknown field"), "{e}");
    let e = serde_json::from_str::<User>(
        r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x", "colour": 1}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("`colour`"), "{e}");
}

#[tokio::test]
async fn missing_users_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.jsonl");
    let reg = Registry::File(FileRegistry::new(&path));
    let e = reg.load_all().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(reg.ping().await.is_err());
}

#[tokio::test]
async fn file_put_and_remove_round_trip_atomically_in_the_old_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.jsonl");
    std::fs::copy(fixture("users_with_bad_lines.jsonl"), &path).unwrap();
    let reg = Registry::File(FileRegistry::new(&path));

    let mut u = user("00ce70", "new-pw");
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Created);
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Unchanged);
    u.active = false;
    assert_eq!(reg.put(&u).await.unwrap(), PutOutcome::Updated);
    assert_eq!(reg.get(u.cloud_id).await.unwrap(), Some(u.clone()));

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# Users for the embedded registry."),
        "comments kept:\n{text}"
    );
    assert!(
        text.contains(r#""actve": false"#),
        "unparsable lines kept for a human to fix:\n{text}"
    );
    let line = text.lines().find(|l| l.contains("00ce70")).unwrap();
    assert_eq!(
        line,
        r#"{"cloud_id":"00ce70","user_email":"u00ce70@example.org","user_pw":"new-pw","active":false}"#
    );
    assert_eq!(text.lines().filter(|l| l.contains("00ce70")).count(), 1);

    // A put fixes a broken line for the same id in place.
    let fixed = user("00ce6b", "typo-fixed");
    assert_eq!(reg.put(&fixed).await.unwrap(), PutOutcome::Created);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("actve") && text.contains("typo-fixed"),
        "{text}"
    );

    assert!(reg.remove(u.cloud_id).await.unwrap());
    assert!(!reg.remove(u.cloud_id).await.unwrap());
    assert_eq!(reg.get(u.cloud_id).await.unwrap(), None);
    let ids: Vec<String> = reg
        .load_all()
        .await
        .unwrap()
        .iter()
        .map(|u| u.cloud_id.to_string())
        .collect();
    assert_eq!(ids, ["00ce69", "00ce6b", "00ce6e"]);

    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["users.jsonl"], "no temporary files left behind");
}

#[tokio::test]
async fn file_put_creates_a_missing_file_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.jsonl");
    let reg = Registry::File(FileRegistry::new(&path));
    assert_eq!(
        reg.put(&user("00ce69", "pw")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(reg.load_all().await.unwrap().len(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn file_registry_keeps_stats_in_memory_apart_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.jsonl");
    let reg = Registry::File(FileRegistry::new(&path));
    let u = user("00ce69", "pw");
    reg.put(&u).await.unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    let update = StatsUpdate {
        events_logged: 2,
        first_timestamp: Some(10.0),
        ..StatsUpdate::new(u.cloud_id)
    };
    reg.write_stats(&[update.clone(), update]).await.unwrap();
    let s = reg.stats(u.cloud_id).await.unwrap().unwrap();
    assert_eq!((s.total_events_logged, s.first_timestamp), (4, Some(10.0)));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "the file is not touched"
    );
    assert!(reg.remove(u.cloud_id).await.unwrap());
    assert_eq!(reg.stats(u.cloud_id).await.unwrap(), None);
}

#[tokio::test]
async fn a_refused_stats_key_does_not_hold_up_the_other_meters() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (reg, ns) = redis_registry(&server).await;
    for i in ["00ce69", "00ce6a"] {
        reg.put(&user(i, "pw")).await.unwrap();
    }
    let mut conn = raw(&server).await;
    let _: () = conn
        .set(format!("{ns}:stats:00ce6a"), "not a hash")
        .await
        .unwrap();

    let updates: Vec<StatsUpdate> = [id("00ce6a"), id("00ce69")]
        .into_iter()
        .map(|i| StatsUpdate {
            events_logged: 1,
            ..StatsUpdate::new(i)
        })
        .collect();
    let e = reg.write_stats(&updates).await.unwrap_err();

    assert!(matches!(e, RegistryError::Refused { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{ns}:stats:00ce6a")), "{e}");
    assert_eq!(
        reg.stats(id("00ce69"))
            .await
            .unwrap()
            .unwrap()
            .total_events_logged,
        1
    );
    server.delete_namespace(&ns);
}
