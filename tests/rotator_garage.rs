//! The rotator on a store that ignores conditional writes: Garage 2.x (a
//! real single-node cluster per test, see `support::garage`) accepts
//! `If-Match`/`If-None-Match` on PutObject and ignores them, so there the
//! read-merge-write is protected by the Redis lock (`rotator::ArchiveLock`,
//! a private `redis-server` per test). Also the lock's own contract
//! against Redis: exclusion, bounded waiting, compare-and-delete, expiry
//! and renewal.

mod support;

use std::path::Path;
use std::time::Duration;

use rainforest::archive::{Archive, ObjectKey};
use rainforest::cloud_id::CloudId;
use rainforest::rotator::{ArchiveLock, LockError, Rotator};
use rainforest::spool::hour_file;
use support::RedisServer;
use support::garage::GarageServer;
use support::rotator::{
    one_at_a_time, options, race_two_passes, still_in_spool, two_hosts_same_keys,
};
use support::s3_proxy::{Fault, On, S3Proxy};
use support::spool::{KEY_PREFIX, PREFIX, gunzip, hours_ago, key, line, write_spool};
use tokio_util::sync::CancellationToken;

/// The object's lines, or an empty list when it does not exist.
async fn object_lines(garage: &GarageServer, key: &str) -> Vec<String> {
    let Some(gz) = garage.get(key).await else {
        return Vec::new();
    };
    gunzip(&gz).lines().map(str::to_string).collect()
}

/// Each call connects its own client, as a second host would.
async fn garage_archive(garage: &GarageServer) -> Archive {
    garage.at().archive().await
}

/// Keys of every lock left in Redis under `namespace`.
fn locks_left(redis: &RedisServer, namespace: &str) -> Vec<String> {
    let client = redis::Client::open(redis.url().as_str()).expect("redis url");
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("redis connection");
    redis::cmd("KEYS")
        .arg(format!("{namespace}:archive-lock:*"))
        .query(&mut conn)
        .expect("KEYS")
}

#[tokio::test]
async fn preflight_finds_that_garage_ignores_conditional_writes() {
    let Some(garage) = GarageServer::start() else {
        return;
    };
    let (logs, _guard) = support::capture_logs();
    let archive = garage_archive(&garage).await;
    assert!(
        !archive
            .preflight(&ObjectKey::probe(KEY_PREFIX))
            .await
            .expect("preflight"),
        "Garage is expected to ignore If-None-Match/If-Match; if this version enforces \
         them, the moto race test already covers it"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let alone = Rotator::new(options(dir.path()), archive);
    assert_eq!(alone.conditional_writes_enforced(), None);
    alone.preflight().await.expect("preflight");
    assert_eq!(alone.conditional_writes_enforced(), Some(false));
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("Configure redis_url"),
        "no loud warning naming redis_url: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotators_racing_on_garage_with_the_redis_lock_lose_no_line() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(garage) = GarageServer::start() else {
        return;
    };
    let namespace = redis.namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("host1"), dir.path().join("host2"));
    let expected = two_hosts_same_keys(&d1, &d2);
    let lock = || ArchiveLock::new(&redis.url(), &namespace).expect("lock");
    // Through a proxy that holds the first upload (made under the lock of
    // the oldest key) until the other rotator is seen waiting for that
    // lock: the two really contend, one file at a time each.
    let proxy = S3Proxy::start(&garage.endpoint()).await;
    let at = garage.at().via(&proxy.endpoint());
    let r1 = Rotator::new(one_at_a_time(&d1), at.archive().await).with_lock(lock());
    let r2 = Rotator::new(one_at_a_time(&d2), at.archive().await).with_lock(lock());
    r1.preflight().await.expect("preflight");
    r2.preflight().await.expect("preflight");
    assert_eq!(r1.conditional_writes_enforced(), Some(false));
    proxy.arm(On::Put, Fault::Hold, 1);
    let none = CancellationToken::new();
    let race = async {
        proxy.wait_held(1, Duration::from_secs(20)).await;
        let sets = redis.command_calls("set");
        if redis.can_restart() {
            wait_for_set_calls(&redis, sets + 2).await;
        } else {
            support::skipped(
                "a shared Redis counts other clients' SETs; the lock wait is not checked",
            );
        }
        proxy.release(1);
    };
    let (a, b, ()) = tokio::join!(r1.run_once(&none), r2.run_once(&none), race);
    assert!(a.all_archived(), "{a:?}");
    assert!(b.all_archived(), "{b:?}");
    for (k, lines) in &expected {
        assert_eq!(&object_lines(&garage, k).await, lines, "{k}");
    }
    let (s1, s2) = (r1.stats().snapshot(), r2.stats().snapshot());
    // Every key was written by both, so one of each pair merged.
    assert_eq!(s1.merges + s2.merges, 40);
    assert!(
        locks_left(&redis, &namespace).is_empty(),
        "locks not released"
    );
}

/// The same race without the lock, to show what the lock is for: a proxy
/// holds the first two uploads until both rotators (one file at a time,
/// both starting with the oldest key) have read the key absent and sent
/// their object; Garage ignores `If-None-Match`, so both writes succeed and
/// the later one replaces the other's lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lock_two_writers_racing_on_garage_lose_lines() {
    let Some(garage) = GarageServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("host1"), dir.path().join("host2"));
    let expected = two_hosts_same_keys(&d1, &d2);
    let proxy = S3Proxy::start(&garage.endpoint()).await;
    let at = garage.at().via(&proxy.endpoint());
    let r1 = Rotator::new(one_at_a_time(&d1), at.archive().await);
    let r2 = Rotator::new(one_at_a_time(&d2), at.archive().await);
    proxy.arm(On::Put, Fault::Hold, 2);
    let (a, b) = race_two_passes(&r1, &r2, &proxy, Duration::from_secs(20)).await;
    assert!(a.all_archived() && b.all_archived(), "{a:?} {b:?}");
    let mut short = Vec::new();
    for (k, lines) in &expected {
        let got = object_lines(&garage, k).await;
        if got.len() < lines.len() {
            short.push(format!("{k}: {} of {}", got.len(), lines.len()));
        }
    }
    assert!(
        !short.is_empty(),
        "the forced race lost no line; does this Garage enforce conditional writes now?"
    );
}

#[tokio::test]
async fn without_redis_nothing_is_uploaded_to_a_store_that_ignores_conditional_writes() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    if !redis.can_restart() {
        support::skipped("TEST_REDIS_URL's Redis cannot be stopped or isolated for this test");
        return;
    }
    let Some(garage) = GarageServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let m = CloudId::from_index(7);
    let h = hours_ago(3);
    write_spool(dir.path(), m, h, &[line(m, h, 1), line(m, h, 2)], "");
    let lock = ArchiveLock::new(&redis.url(), &redis.namespace()).expect("lock");
    let r = Rotator::new(options(dir.path()), garage_archive(&garage).await).with_lock(lock);
    r.preflight().await.expect("preflight");
    redis.stop();
    let none = CancellationToken::new();
    let report = r.run_once(&none).await;
    assert!(!report.all_archived(), "{report:?}");
    let e = report.store_error.as_ref().expect("a store-wide error");
    assert!(e.to_string().contains("archive lock"), "{e}");
    assert!(
        garage.get(&key(m, h)).await.is_none(),
        "uploaded without the lock"
    );
    assert!(
        still_in_spool(&hour_file(dir.path(), PREFIX, m, h)),
        "spool file lost"
    );
    redis.start_again();
    let report = r.run_once(&none).await;
    assert!(report.all_archived(), "{report:?}");
    assert_eq!(object_lines(&garage, &key(m, h)).await.len(), 2);
}

// The lock's own contract, against Redis only.

/// Waits (up to 5 s) until Redis has run at least `n` SETs in all.
async fn wait_for_set_calls(redis: &RedisServer, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let calls = redis.command_calls("set");
        if calls >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {calls} SETs reached Redis, expected {n}: the waiter is not trying"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn some_key(n: u32) -> ObjectKey {
    ObjectKey::for_hour(KEY_PREFIX, PREFIX, CloudId::from_index(n), hours_ago(2))
}

#[tokio::test]
async fn a_held_lock_makes_others_wait_then_gives_up() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = redis.namespace();
    let lock = ArchiveLock::new(&redis.url(), &ns)
        .expect("lock")
        .with_timing(Duration::from_secs(10), Duration::from_millis(300));
    let k = some_key(1);
    let held = lock.acquire(&k).await.expect("first acquire");
    let started = tokio::time::Instant::now();
    match lock.acquire(&k).await {
        Err(LockError::Busy { waited, .. }) => assert!(waited >= Duration::from_millis(300)),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "wait not bounded"
    );
    // Another key is not affected.
    lock.acquire(&some_key(2))
        .await
        .expect("other key")
        .release()
        .await
        .expect("release");
    held.release().await.expect("release");
    lock.acquire(&k)
        .await
        .expect("free after release")
        .release()
        .await
        .expect("release");
    assert!(locks_left(&redis, &ns).is_empty());
}

#[tokio::test]
async fn a_waiter_gets_the_lock_as_soon_as_the_holder_releases() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let lock = ArchiveLock::new(&redis.url(), &redis.namespace())
        .expect("lock")
        .with_timing(Duration::from_secs(10), Duration::from_secs(5));
    let k = some_key(1);
    let held = lock.acquire(&k).await.expect("first acquire");
    let before = redis.command_calls("set");
    let waiter = {
        let (lock, k) = (lock.clone(), k.clone());
        tokio::spawn(async move { lock.acquire(&k).await })
    };
    if redis.can_restart() {
        // The waiter started and keeps trying: its SET NX attempts reach
        // Redis and are refused while the lock is held.
        wait_for_set_calls(&redis, before + 2).await;
    } else {
        support::skipped(
            "a shared Redis counts other clients' SETs; the waiter's attempts are not checked",
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!waiter.is_finished(), "the waiter got a held lock");
    held.release().await.expect("release");
    let second = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("waiter not woken in time")
        .expect("task")
        .expect("acquire");
    second.ensure_held().expect("held");
    second.release().await.expect("release");
}

#[tokio::test]
async fn a_dead_holders_lock_expires_and_it_cannot_delete_the_next_holders() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = redis.namespace();
    let lock = ArchiveLock::new(&redis.url(), &ns)
        .expect("lock")
        .with_timing(Duration::from_millis(600), Duration::from_secs(5));
    let k = some_key(3);
    // A rotator that dies holding the lock: its guard never renews or
    // releases (simulated by setting the key as it would, then nothing).
    let client = redis::Client::open(redis.url().as_str()).expect("url");
    let mut conn = client.get_connection().expect("conn");
    let _: () = redis::cmd("SET")
        .arg(lock.redis_key(&k))
        .arg("dead-rotator")
        .arg("PX")
        .arg(600)
        .query(&mut conn)
        .expect("SET");
    let started = tokio::time::Instant::now();
    let next = lock.acquire(&k).await.expect("acquired after expiry");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The dead holder's compare-and-delete (its token) must not free it.
    let deleted: i64 = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
    .key(lock.redis_key(&k))
    .arg("dead-rotator")
    .invoke(&mut conn)
    .expect("script");
    assert_eq!(deleted, 0);
    assert_eq!(locks_left(&redis, &ns).len(), 1);
    next.release().await.expect("release");
    assert!(locks_left(&redis, &ns).is_empty());
}

#[tokio::test]
async fn renewal_keeps_a_slow_holder_locked_past_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let lock = ArchiveLock::new(&redis.url(), &redis.namespace())
        .expect("lock")
        .with_timing(Duration::from_millis(600), Duration::from_millis(100));
    let k = some_key(4);
    let held = lock.acquire(&k).await.expect("acquire");
    // Three ttls of work.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    held.ensure_held().expect("still held");
    assert!(matches!(
        lock.acquire(&k).await,
        Err(LockError::Busy { .. })
    ));
    held.release().await.expect("release");
}

#[tokio::test]
async fn a_lock_that_cannot_be_renewed_is_reported_lost_before_the_next_write() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    if !redis.can_restart() {
        support::skipped("TEST_REDIS_URL's Redis cannot be stopped or isolated for this test");
        return;
    }
    let lock = ArchiveLock::new(&redis.url(), &redis.namespace())
        .expect("lock")
        .with_timing(Duration::from_millis(600), Duration::from_millis(100));
    let held = lock.acquire(&some_key(5)).await.expect("acquire");
    // Redis gone for longer than the ttl: renewal cannot confirm the lock.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(matches!(held.ensure_held(), Err(LockError::Lost { .. })));
    redis.start_again();
}

#[tokio::test]
async fn a_lock_taken_over_is_reported_lost_and_not_released_by_its_old_holder() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = redis.namespace();
    let lock = ArchiveLock::new(&redis.url(), &ns)
        .expect("lock")
        .with_timing(Duration::from_millis(600), Duration::from_millis(100));
    let k = some_key(6);
    let held = lock.acquire(&k).await.expect("acquire");
    // As if the lock had expired and another rotator took it.
    let client = redis::Client::open(redis.url().as_str()).expect("url");
    let mut conn = client.get_connection().expect("conn");
    let _: () = redis::cmd("SET")
        .arg(lock.redis_key(&k))
        .arg("other-rotator")
        .query(&mut conn)
        .expect("SET");
    // The next renewal (a third of the ttl) finds the other token.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(held.ensure_held(), Err(LockError::Lost { .. })));
    held.release().await.expect("release");
    let owner: String = redis::cmd("GET")
        .arg(lock.redis_key(&k))
        .query(&mut conn)
        .expect("GET");
    assert_eq!(owner, "other-rotator");
}

/// `rainforest rotator` with a clean environment (no RAINFOREST_* or AWS_*
/// variables from the caller), Garage's keys and region, and `redis_url`.
fn rotator_command(
    garage: &GarageServer,
    redis: &RedisServer,
    namespace: &str,
    data_dir: &Path,
) -> std::process::Command {
    let mut cmd = support::process::rainforest_with_s3_keys(
        &garage.access_key(),
        &garage.secret_key(),
        data_dir,
    );
    let set = |k: &str, v: String| ["--set".to_string(), format!("{k}={v}")];
    cmd.current_dir(data_dir.parent().unwrap_or(data_dir))
        .args(["rotator", "--once", "--data-dir"])
        .arg(data_dir)
        .args(set("s3_bucket", garage.bucket()))
        .args(set("s3_endpoint", garage.endpoint()))
        .args(set("s3_region", garage.region()))
        .args(set("redis_url", redis.url()))
        .args(set("redis_namespace", namespace.to_string()))
        .args(set("rotate_grace", "30s".into()));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotator_processes_configured_with_redis_url_lose_no_line_on_garage() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(garage) = GarageServer::start() else {
        return;
    };
    let namespace = redis.namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("host1"), dir.path().join("host2"));
    let expected = two_hosts_same_keys(&d1, &d2);
    let spawn = |d: &Path| {
        rotator_command(&garage, &redis, &namespace, d)
            .output()
            .expect("run rainforest rotator")
    };
    let (one, two) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(&d1));
        let b = s.spawn(|| spawn(&d2));
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    for out in [&one, &two] {
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "rotator failed: {log}");
        assert!(
            log.contains("holds a Redis lock"),
            "lock not announced: {log}"
        );
    }
    for (k, lines) in &expected {
        assert_eq!(&object_lines(&garage, k).await, lines, "{k}");
    }
    assert!(locks_left(&redis, &namespace).is_empty());
}
