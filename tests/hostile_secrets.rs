//! Nothing secret or internal leaks: credentials are sealed in Redis on
//! every write path, a sealed value opens only for its own user, processes
//! refuse to run a Redis registry without a key, and no URL password,
//! address or whole e-mail reaches someone who should not see it.

mod support;

use std::collections::HashMap;
use std::process::Output;

use rainforest::cloud_id::CloudId;
use rainforest::config::Layers;
use rainforest::registry::{RedisRegistry, Registry, RegistryError, User};
use rainforest::secret::Secret;
use rainforest::tokens::Scope;
use rainforest::vault::CredentialKey;
use reqwest::StatusCode;
use serde_json::json;
use support::RedisServer;
use support::process::rainforest;
use support::server::{ADMIN, TestServer};

const API_PW: &str = "api-pw-hunter2";
const IMPORT_PW: &str = "import-pw-swordfish";
const LEGACY_PW: &str = "legacy-pw-trustno1";
const INSTALL_CODE: &str = "ic-0xdeadbeef";
const CLEAR_PW: &str = "clear-pw-letmein";

fn id(s: &str) -> CloudId {
    CloudId::parse(s).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every user hash under `ns`, as Redis holds it.
fn raw_users(url: &str, ns: &str) -> HashMap<String, HashMap<String, String>> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{ns}:users"))
        .query(&mut conn)
        .unwrap();
    ids.into_iter()
        .map(|id| {
            let hash: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(format!("{ns}:user:{id}"))
                .query(&mut conn)
                .unwrap();
            (id, hash)
        })
        .collect()
}

fn assert_no_plaintext(users: &HashMap<String, HashMap<String, String>>) {
    let dump = format!("{users:?}");
    for secret in [API_PW, IMPORT_PW, LEGACY_PW, INSTALL_CODE, CLEAR_PW] {
        assert!(!dump.contains(secret), "{secret} in clear in Redis: {dump}");
    }
    for hash in users.values() {
        for field in ["user_pw", "install_code"] {
            if let Some(v) = hash.get(field) {
                assert!(v.starts_with("v1:"), "{field} not sealed: {dump}");
            }
        }
    }
}

fn rainforest_on(url: &str, ns: &str) -> std::process::Command {
    let mut cmd = rainforest();
    cmd.args([
        "--redis-url",
        url,
        "--set",
        &format!("redis_namespace={ns}"),
    ]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_import_legacy_import_and_rekey_leave_no_plaintext_in_redis() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let url = s.redis_server().url();
    let ns = s.ns.clone();
    // The API.
    let created = s
        .post(
            "/api/users/00ce69",
            Some(ADMIN),
            &json!({"user_email": "a@example.org", "user_pw": API_PW,
                    "local": {"host": "10.0.0.2", "install_code": INSTALL_CODE}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    // The import straight into the registry.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.jl");
    std::fs::write(
        &file,
        format!("{{\"cloud_id\": \"00ce6a\", \"user_email\": \"b@example.org\", \"user_pw\": \"{IMPORT_PW}\"}}\n"),
    )
    .unwrap();
    let out = rainforest_on(&url, &ns)
        .args(["users", "import", "--direct"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The old system's layout, in another database of the same server.
    let mut legacy_url = url::Url::parse(&url).unwrap();
    legacy_url.set_path("/1");
    let legacy_url = legacy_url.to_string();
    {
        let mut conn = redis::Client::open(legacy_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("SET")
            .arg("00ce6b")
            .arg(format!(
                "{{\"user_email\": \"c@example.org\", \"user_pw\": \"{LEGACY_PW}\"}}"
            ))
            .exec(&mut conn)
            .unwrap();
    }
    let out = rainforest_on(&url, &ns)
        .args(["users", "import", "--from-legacy-redis", &legacy_url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let before_rekey = raw_users(&url, &ns);
    assert_eq!(before_rekey.len(), 3, "{before_rekey:?}");
    assert_no_plaintext(&before_rekey);

    // A user written in clear (before encryption was turned on) still reads.
    let clear = RedisRegistry::connect(&url, &ns).await.unwrap();
    clear
        .put(&User {
            cloud_id: id("00ce6c"),
            user_email: "d@example.org".into(),
            user_pw: Secret::new(CLEAR_PW),
            active: true,
            local: None,
            cadence: Default::default(),
        })
        .await
        .unwrap();
    let user = s.registry.get(id("00ce6c")).await.unwrap().unwrap();
    assert_eq!(user.user_pw.expose(), CLEAR_PW);

    // Rekey to a new key: everything moves, the clear one is sealed.
    let new_key = "ab".repeat(32);
    let key_file = dir.path().join("new.key");
    std::fs::write(&key_file, format!("{new_key}\n")).unwrap();
    let rekey = || {
        rainforest_on(&url, &ns)
            .args(["users", "rekey", "--new-key-file"])
            .arg(&key_file)
            .output()
            .unwrap()
    };
    let first = rekey();
    let said = text(&first);
    assert!(first.status.success(), "{said}");
    assert!(
        said.contains(
            "1 sealed from clear, 3 moved from an older key, 0 already current, 0 failed"
        ),
        "{said}"
    );
    let after = raw_users(&url, &ns);
    assert_no_plaintext(&after);
    let new = CredentialKey::from_hex(&Secret::new(&new_key), "test").unwrap();
    let new_id = new.id().to_string();
    assert!(
        after["00ce69"]["install_code"].starts_with(&format!("v1:{new_id}:")),
        "{after:?}"
    );
    // Running it again changes nothing.
    let second = rekey();
    assert!(
        text(&second).contains("0 sealed from clear, 0 moved from an older key, 4 already current"),
        "{}",
        text(&second)
    );
    // A reader holding both keys (as during the rekey) opens everything...
    let both = support::test_vault().rotated_to(new.clone());
    let reader = RedisRegistry::connect(&url, &ns)
        .await
        .unwrap()
        .with_vault(both);
    let users = reader.load_all().await.unwrap();
    assert_eq!(users.len(), 4);
    assert_eq!(
        users[0].local.as_ref().unwrap().install_code.expose(),
        INSTALL_CODE
    );
    // ...and one with only the old key is told which key id it lacks.
    let e = s.registry.get(id("00ce6a")).await.unwrap_err().to_string();
    assert!(e.contains(&new_id) && e.contains("user_pw"), "{e}");
    assert!(!e.contains(IMPORT_PW), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_value_moved_to_another_user_does_not_open() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    for (cloud_id, pw) in [("00ce69", API_PW), ("00ce6a", "other-pw")] {
        let r = s
            .post(
                &format!("/api/users/{cloud_id}"),
                Some(ADMIN),
                &json!({"user_email": "a@example.org", "user_pw": pw}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let url = s.redis_server().url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stolen: String = redis::cmd("HGET")
        .arg(format!("{}:user:00ce69", s.ns))
        .arg("user_pw")
        .query(&mut conn)
        .unwrap();
    redis::cmd("HSET")
        .arg(format!("{}:user:00ce6a", s.ns))
        .arg("user_pw")
        .arg(&stolen)
        .exec(&mut conn)
        .unwrap();
    let e = s.registry.get(id("00ce6a")).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Invalid { ref field, .. } if field == "user_pw"),
        "{e}"
    );
    assert!(!e.to_string().contains(API_PW), "{e}");
}

#[test]
fn server_pinger_and_run_refuse_a_redis_registry_without_a_key() {
    // No Redis is needed: the key is checked before connecting.
    for command in ["server", "pinger", "run"] {
        let out = rainforest()
            .env_remove("RAINFOREST_CREDENTIALS_KEY")
            .env("RAINFOREST_API_TOKEN", ADMIN)
            .args(["--redis-url", "redis://127.0.0.1:9/0", command])
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {said}");
        assert!(
            said.contains("openssl rand -hex 32")
                && said.contains("credentials_key_file")
                && said.contains("allow_plaintext_credentials"),
            "{command}: {said}"
        );
    }
}

#[test]
fn config_never_prints_a_redis_password_even_when_the_url_does_not_parse() {
    for url in ["redis://:s3cr#t@redis/0", "redis://:s3cr3t@redis/0"] {
        let out = rainforest()
            .args(["--set", &format!("redis_url={url}"), "config"])
            .output()
            .unwrap();
        let said = text(&out);
        assert!(!said.contains("s3cr"), "{said}");
        assert!(said.contains("[redacted]@redis"), "{said}");
    }
    // And the key itself is never shown.
    let out = rainforest().arg("config").output().unwrap();
    let said = text(&out);
    assert!(!said.contains(support::TEST_CREDENTIALS_KEY), "{said}");
    assert!(said.contains("credentials_key = \"[redacted]\""), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_only_ready_or_not() {
    let Some(mut s) = TestServer::redis().await else {
        return;
    };
    let ready = s.get("/readyz", None).await;
    assert_eq!(ready.body, r#"{"status":"ready"}"#);
    if !s.redis_server().can_restart() {
        return;
    }
    let port = s.redis_server().url();
    s.redis_mut().stop();
    let not_ready = s.get("/readyz", None).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let port = port
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    for leak in [port.as_str(), "127.0.0.1", "Redis", "refused"] {
        assert!(!not_ready.body.contains(leak), "{leak}: {}", not_ready.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tokens_see_masked_emails_and_admins_see_them_whole() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let r = s
        .post(
            "/api/users/00ce69",
            Some(ADMIN),
            &json!({"user_email": "someone@example.org", "user_pw": "pw"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let reader = s.token("dashboard", Scope::Read, None).await;
    for path in ["/api/users/00ce69", "/api/users"] {
        let read = s.get(path, Some(&reader)).await.body;
        assert!(!read.contains("someone@"), "{read}");
        assert!(read.contains("s*****e@example.org"), "{read}");
        let admin = s.get(path, Some(ADMIN)).await.body;
        assert!(admin.contains("someone@example.org"), "{admin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_keeps_its_token_for_the_tab_only() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let page = s.get("/status", None).await.body;
    assert!(page.contains("sessionStorage.setItem"), "{page}");
    assert!(!page.contains("localStorage.setItem"), "{page}");
}

#[tokio::test]
async fn the_demo_listens_on_loopback_unless_listen_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("logs").display().to_string();
    let mut config = Layers::defaults()
        .flag("data_dir", data.clone(), "--data-dir")
        .build()
        .unwrap();
    assert!(config.listen.ip().is_unspecified());
    let sim = rainforest::runner::start_demo(1, &mut config)
        .await
        .unwrap();
    assert!(config.listen.ip().is_loopback(), "{}", config.listen);
    sim.stop().await;

    let mut chosen = Layers::defaults()
        .flag("data_dir", data, "--data-dir")
        .flag("listen", "0.0.0.0:8123", "--set listen")
        .build()
        .unwrap();
    let sim = rainforest::runner::start_demo(1, &mut chosen)
        .await
        .unwrap();
    assert_eq!(chosen.listen.to_string(), "0.0.0.0:8123");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_credentials_are_allowed_only_when_asked_for() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let config = |allow: &str| {
        Layers::defaults()
            .flag("redis_url", redis.url(), "--redis-url")
            .flag("redis_namespace", ns.clone(), "--set")
            .flag("allow_plaintext_credentials", allow, "--set")
            .build()
            .unwrap()
    };
    let e = Registry::from_config(&config("false")).await.unwrap_err();
    assert!(matches!(e, RegistryError::Config { .. }), "{e}");
    let registry = Registry::from_config(&config("true")).await.unwrap();
    registry
        .put(&User {
            cloud_id: id("00ce69"),
            user_email: "a@example.org".into(),
            user_pw: Secret::new(CLEAR_PW),
            active: true,
            local: None,
            cadence: Default::default(),
        })
        .await
        .unwrap();
    let raw = raw_users(&redis.url(), &ns);
    assert_eq!(raw["00ce69"]["user_pw"], CLEAR_PW);
}
