//! The one Redis layer (`rainforest::db`) as its users meet it: the
//! registry, the token store and the archive lock report an outage the
//! same way, token expiry follows an injected clock, and no module opens
//! its own Redis client.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rainforest::archive::ObjectKey;
use rainforest::clock::Clock;
use rainforest::cloud_id::CloudId;
use rainforest::db::CHECK_REDIS;
use rainforest::registry::{RedisRegistry, RegistryError};
use rainforest::rotator::{ArchiveLock, LockError};
use rainforest::tokens::{AuthError, Authenticator, Scope, TokenError, TokenStore};

use support::RedisServer;

/// `<target> is unavailable: <what failed> (<CHECK_REDIS>)`: the shape every
/// Redis user's outage message has. Returns the part between.
fn outage_detail<'a>(text: &'a str, target: &str) -> &'a str {
    let head = format!("{target} is unavailable: ");
    let tail = format!(" ({CHECK_REDIS})");
    assert!(
        text.starts_with(&head) && text.ends_with(&tail),
        "not the shared outage shape: {text}"
    );
    &text[head.len()..text.len() - tail.len()]
}

fn lock_key() -> ObjectKey {
    ObjectKey::probe("db-test")
}

#[tokio::test]
async fn an_unreachable_redis_reads_the_same_from_registry_tokens_and_lock() {
    let port = support::free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
    let target = format!("Redis at {}", rainforest::config::redact_url(&url));

    let registry = RedisRegistry::connect(&url, "rainforest")
        .await
        .expect_err("nothing listens");
    assert!(matches!(registry, RegistryError::Unavailable { .. }));
    let tokens = TokenStore::connect(&url, "rainforest")
        .await
        .expect_err("nothing listens");
    assert!(matches!(tokens, TokenError::Unavailable { .. }));
    let lock = ArchiveLock::new(&url, "rainforest")
        .expect("the URL is valid; nothing is contacted yet")
        .acquire(&lock_key())
        .await
        .expect_err("nothing listens");
    assert!(matches!(lock, LockError::Unavailable { .. }), "{lock}");

    let texts = [registry.to_string(), tokens.to_string(), lock.to_string()];
    for text in &texts {
        assert!(!text.contains("hunter2"), "{text}");
        let detail = outage_detail(text, &target);
        assert!(detail.starts_with("cannot connect: "), "{text}");
    }
}

#[tokio::test]
async fn a_stopped_redis_reads_the_same_from_registry_tokens_and_lock_and_all_recover() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    if !server.can_restart() {
        support::skipped("cannot stop the external Redis from TEST_REDIS_URL");
        return;
    }
    let url = server.url();
    let ns = server.namespace();
    let target = format!("Redis at {url}");
    let registry = RedisRegistry::connect(&url, &ns).await.expect("registry");
    let tokens = TokenStore::connect(&url, &ns).await.expect("token store");
    let lock = ArchiveLock::new(&url, &ns)
        .expect("lock")
        .with_timing(Duration::from_secs(5), Duration::from_millis(200));
    lock.acquire(&lock_key())
        .await
        .expect("lock while Redis runs")
        .release()
        .await
        .expect("release");
    let id = CloudId::parse("00ce69").expect("id");
    let hash = rainforest::tokens::TokenHash::of("rft_nope");

    server.stop();
    let started = Instant::now();
    let registry_err = registry.get(id).await.expect_err("Redis is down");
    let tokens_err = tokens.lookup(&hash).await.expect_err("Redis is down");
    let lock_err = lock.acquire(&lock_key()).await.expect_err("Redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an outage is reported, not waited out"
    );
    assert!(registry_err.is_unavailable(), "{registry_err}");
    assert!(tokens_err.is_unavailable(), "{tokens_err}");
    assert!(lock_err.is_unavailable(), "{lock_err}");
    for (text, op) in [
        (
            registry_err.to_string(),
            format!("HGETALL {ns}:user:00ce69"),
        ),
        (tokens_err.to_string(), "token lookup".to_string()),
        (lock_err.to_string(), format!("SET {ns}:archive-lock:")),
    ] {
        let detail = outage_detail(&text, &target);
        assert!(
            detail.starts_with(&op),
            "names the operation {op:?}: {text}"
        );
        assert!(detail.contains(" failed: "), "{text}");
    }

    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all_back = registry.get(id).await.is_ok()
            && tokens.lookup(&hash).await.is_ok()
            && lock.acquire(&lock_key()).await.is_ok();
        if all_back {
            break;
        }
        assert!(Instant::now() < deadline, "the same values never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.delete_namespace(&ns);
}

#[tokio::test]
async fn token_expiry_follows_the_store_clock() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ns = server.namespace();
    let start: DateTime<Utc> = "2025-01-15T12:00:00Z".parse().expect("time");
    let clock = Clock::starting_at(start);
    let store = TokenStore::connect(&server.url(), &ns)
        .await
        .expect("token store")
        .with_clock(clock.clone());
    let new = store
        .create("ci", Scope::Read, Some(Duration::from_secs(3600)))
        .await
        .expect("create");
    let stamped = new.info.created_at - start.timestamp() as f64;
    assert!(
        (0.0..60.0).contains(&stamped),
        "stamped by the store's clock: {stamped}"
    );
    assert_eq!(new.info.expires_at, Some(new.info.created_at + 3600.0));
    assert!(store.has_usable_token().await.expect("list"));
    let auth = Authenticator::new(None, Some(store.clone()));
    let p = auth
        .verify(new.token.expose())
        .await
        .expect("valid for an hour");
    assert_eq!(p.scope, Scope::Read);

    clock.advance(Duration::from_secs(3600));
    assert!(!store.has_usable_token().await.expect("list"));
    assert!(matches!(
        auth.verify(new.token.expose()).await,
        Err(AuthError::Expired { ref name }) if name == "ci"
    ));
    server.delete_namespace(&ns);
}

/// Every Rust file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_db_layer_opens_a_redis_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let hits: Vec<String> = files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("source file");
            let rel = path
                .strip_prefix(&src)
                .expect("under src")
                .display()
                .to_string();
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains("Client::open"))
                .map(|(n, _)| format!("{rel}:{}", n + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(hits[0].starts_with("db/conn.rs:"), "{hits:?}");
}
