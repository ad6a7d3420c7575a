//! The HTTP server end to end: the real router served on `127.0.0.1:0`
//! ([`rainforest::server::run`]), a real `redis-server`, the in-process
//! simulator as the relay, and reqwest (or a raw socket, for request lines
//! reqwest would normalise) as the client. The start-up checks and the
//! `tokens` subcommand run the real binary.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use rainforest::pinger::{eagle_from_config, spool_from_config};
use rainforest::poll::Poller;
use rainforest::registry::{MeterState, RedisRegistry, Registry, StatsUpdate, User};
use rainforest::secret::Secret;
use rainforest::server::{AppState, AuthMode, ServerError};
use rainforest::simulator::{self, SimulateArgs, Simulator};
use rainforest::stats::Hub;
use rainforest::tokens::{Scope, TokenHash, TokenStore};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::RedisServer;
use support::process::{Proc, rainforest, wait_for};
use support::server::{ADMIN, Answer, Backend, TestServer, base_config, serve, set_redis};
use support::spool::spool_lines;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as is over a fresh connection (for paths reqwest would
/// normalise, like `/../`) and returns the status and body.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn raw_get(path: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn sim_user_body(i: u32) -> Value {
    let id = simulator::meter_cloud_id(i);
    json!({"user_email": simulator::meter_email(id), "user_pw": simulator::meter_password(id)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_created_updated_read_listed_and_deleted() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let body = json!({"user_email": "alice@example.org", "user_pw": "alice-secret-pw"});
    let a = s.post("/api/users/00CE69", Some(ADMIN), &body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.json()["outcome"], "created");
    assert_eq!(a.json()["user"]["cloud_id"], "00ce69");

    let a = s.post("/api/users/00ce69", Some(ADMIN), &body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["outcome"], "unchanged");

    let changed = json!({"user_email": "alice@example.org", "user_pw": "new-pw", "active": false});
    let a = s.post("/api/users/00ce69", Some(ADMIN), &changed).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["outcome"], "updated");

    let a = s.get("/api/users/00ce69", Some(ADMIN)).await;
    assert_eq!(a.status, StatusCode::OK);
    let u = a.json();
    assert_eq!(u["user_email"], "alice@example.org");
    assert_eq!(u["active"], false);
    assert_eq!(u["has_password"], true);
    assert_eq!(u["source"], "relay");
    assert_eq!(u["state"], "ok");
    assert_eq!(u["statistics"]["total_events_logged"], 0);
    assert!(u.get("user_pw").is_none(), "{u}");
    // The registry really has the new password.
    let stored = s
        .registry
        .get(u["cloud_id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.user_pw.expose(), "new-pw");

    s.post("/api/users/00ce6a", Some(ADMIN), &body).await;
    let a = s.get("/api/users", Some(ADMIN)).await;
    assert_eq!(a.status, StatusCode::OK);
    let page = a.json();
    let ids: Vec<&str> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["cloud_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["00ce69", "00ce6a"]);
    assert_eq!(page["next_cursor"], Value::Null);

    let a = s.delete("/api/users/00ce69", Some(ADMIN)).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    s.get("/api/users/00ce69", Some(ADMIN)).await.problem(404);
    s.delete("/api/users/00ce69", Some(ADMIN))
        .await
        .problem(404);
    s.stop().await;
}

/// How many clients are connected to the Redis behind `raw` (itself included).
async fn redis_clients(raw: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(raw)
        .await
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_redis_only_through_the_registry_connection() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    if !redis.can_restart() {
        support::skipped("other tests' clients share the external Redis from TEST_REDIS_URL");
        return;
    }
    let ns = support::unique_namespace();
    let registry = RedisRegistry::connect(&redis.url(), &ns)
        .await
        .expect("connect registry");
    // Tokens kept through the registry's own connection, like the server's.
    let token = TokenStore::new(registry.db().clone(), registry.keys().clone())
        .create("reader", Scope::Read, None)
        .await
        .expect("create token")
        .token;
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 1,
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = base_config(&sim, dir.path());
    set_redis(&mut config, &redis.url(), &ns);
    let mut raw = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let before = redis_clients(&mut raw).await;

    let (addr, shutdown, task) = serve(&config, Registry::Redis(registry), Hub::new()).await;
    for path in [
        "/api/users?limit=10",
        "/api/status",
        "/api/stats",
        "/metrics",
    ] {
        let answer = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .bearer_auth(token.expose())
            .send()
            .await
            .expect("GET");
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
    }

    assert_eq!(
        redis_clients(&mut raw).await,
        before,
        "token checks, paging and the status overview use the registry's connection, not new ones"
    );
    shutdown.cancel();
    let _ = task.await;
    redis.delete_namespace(&ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_users_with_a_cursor() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    for i in 0..25u32 {
        let u = User {
            cloud_id: rainforest::cloud_id::CloudId::from_index(0x100 + i * 7),
            user_email: format!("u{i}@example.org"),
            user_pw: Secret::new("pw"),
            active: true,
            local: None,
            cadence: Default::default(),
        };
        s.registry.put(&u).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/users?limit=10&cursor={c}"),
            None => "/api/users?limit=10".to_string(),
        };
        let page = s.get(&path, Some(ADMIN)).await.json();
        pages += 1;
        for u in page["users"].as_array().unwrap() {
            seen.push(u["cloud_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages are sorted and never repeat a user");

    s.get("/api/users?limit=0", Some(ADMIN)).await.problem(400);
    s.get("/api/users?limit=5000", Some(ADMIN))
        .await
        .problem(400);
    s.get("/api/users?cursor=..%2f", Some(ADMIN))
        .await
        .problem(400);
    s.get("/api/users?colour=blue", Some(ADMIN))
        .await
        .problem(400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_stays_quick_with_100000_users() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    // Written in the registry's schema with raw pipelines: 100,000 API calls
    // would test the client, not the listing.
    let client = redis::Client::open(s.redis_server().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for chunk in (0..100_000u32).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let id = rainforest::cloud_id::CloudId::from_index(*i);
            pipe.cmd("HSET")
                .arg(format!("{}:user:{id}", s.ns))
                .arg("user_email")
                .arg(format!("u{i}@example.org"))
                .arg("user_pw")
                .arg("pw")
                .arg("active")
                .arg("1")
                .arg("source")
                .arg("relay")
                .ignore();
            pipe.cmd("SADD")
                .arg(format!("{}:users", s.ns))
                .arg(id.as_str())
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
    let started = std::time::Instant::now();
    let first = s.get("/api/users?limit=1000", Some(ADMIN)).await.json();
    assert_eq!(first["users"].as_array().unwrap().len(), 1000);
    assert_eq!(first["users"][0]["cloud_id"], "000000");
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    assert_eq!(cursor, "0003e7");
    let second = s
        .get(
            &format!("/api/users?limit=1000&cursor={cursor}"),
            Some(ADMIN),
        )
        .await
        .json();
    assert_eq!(second["users"][0]["cloud_id"], "0003e8");
    let last = s
        .get("/api/users?limit=1000&cursor=01869f", Some(ADMIN))
        .await
        .json();
    assert_eq!(last["users"].as_array().unwrap().len(), 0);
    assert_eq!(last["next_cursor"], Value::Null);
    let near_end = s
        .get("/api/users?limit=1000&cursor=018690", Some(ADMIN))
        .await
        .json();
    assert_eq!(near_end["users"].as_array().unwrap().len(), 15);
    assert_eq!(near_end["next_cursor"], Value::Null);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "four pages took {elapsed:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_expired_revoked_and_under_scoped_tokens_are_refused() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let reader = s.token("reader", Scope::Read, None).await;
    let writer = s.token("writer", Scope::Write, None).await;
    let expiring = s
        .token(
            "short-lived",
            Scope::Admin,
            Some(Duration::from_millis(200)),
        )
        .await;
    let revoked = s.token("leaked", Scope::Admin, None).await;
    let body = json!({"user_email": "a@example.org", "user_pw": "pw"});

    let a = s.get("/api/users", None).await;
    a.problem(401);
    assert!(a.headers.get("www-authenticate").is_some());
    s.get("/api/users", Some("rft_0000")).await.problem(401);
    s.get("/api/users", Some(&format!("{ADMIN}x")))
        .await
        .problem(401);
    let basic = s
        .http
        .get(s.url("/api/users"))
        .basic_auth("admin", Some(ADMIN))
        .send()
        .await
        .unwrap();
    Answer::read(basic).await.problem(401);

    // Read can read, not write.
    assert_eq!(
        s.get("/api/users", Some(&reader)).await.status,
        StatusCode::OK
    );
    let p = s
        .post("/api/users/00ce69", Some(&reader), &body)
        .await
        .problem(403);
    assert!(p["detail"].as_str().unwrap().contains("write"), "{p}");
    s.delete("/api/users/00ce69", Some(&reader))
        .await
        .problem(403);
    s.post_empty("/api/event/00ce69", Some(&reader))
        .await
        .problem(403);
    // Write can write.
    assert_eq!(
        s.post("/api/users/00ce69", Some(&writer), &body)
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        s.get("/api/users/00ce69", Some(&writer)).await.status,
        StatusCode::OK
    );

    // Expired.
    assert_eq!(
        s.get("/api/users", Some(&expiring)).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = s.get("/api/users", Some(&expiring)).await.problem(401);
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");

    // Revoked.
    assert_eq!(
        s.get("/api/users", Some(&revoked)).await.status,
        StatusCode::OK
    );
    assert!(s.token_store().revoke("leaked").await.unwrap());
    s.get("/api/users", Some(&revoked)).await.problem(401);
    assert!(!s.token_store().revoke("leaked").await.unwrap());

    // Unknown /api/ paths need a token too; health checks do not.
    s.get("/api/nothing-here", None).await.problem(401);
    s.get("/api/nothing-here", Some(&reader)).await.problem(404);
    assert_eq!(s.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(s.get("/readyz", None).await.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_contains_a_password_install_code_token_or_token_hash() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let reader = s.token("reader", Scope::Read, None).await;
    let secrets = [
        "relay-pw-7f3a9c".to_string(),
        "install-code-5b2e".to_string(),
        ADMIN.to_string(),
        reader.clone(),
        TokenHash::of(ADMIN).to_hex(),
        TokenHash::of(&reader).to_hex(),
        simulator::meter_password(simulator::meter_cloud_id(0)),
    ];
    let mut answers = vec![
        s.post("/api/users/00ce69", Some(ADMIN), &json!({"user_email": "a@example.org", "user_pw": "relay-pw-7f3a9c"})).await,
        s.post("/api/users/00ce6a", Some(ADMIN), &json!({"user_email": "b@example.org", "local": {"host": "10.1.2.3", "install_code": "install-code-5b2e"}})).await,
        s.post("/api/users/a00000", Some(ADMIN), &sim_user_body(0)).await,
        s.post("/api/users/00ce6b", Some(ADMIN), &json!({"user_email": "c@example.org", "user_pw": "relay-pw-7f3a9c", "actve": 1})).await,
        s.post("/api/users/00ce6b", Some(ADMIN), &json!({"user_email": "relay-pw-7f3a9c", "user_pw": "relay-pw-7f3a9c"})).await,
        s.post("/api/users/00ce6b", Some(ADMIN), &json!({"user_email": "c@example.org", "user_pw": ["relay-pw-7f3a9c"]})).await,
    ];
    for path in [
        "/api/users",
        "/api/users/00ce69",
        "/api/users/00ce6a",
        "/api/event/a00000",
        "/api/openapi.json",
        "/api/users/zzzzzz",
        "/api/users?pw=relay-pw-7f3a9c",
        "/healthz",
        "/readyz",
    ] {
        answers.push(s.get(path, Some(&reader)).await);
        answers.push(s.get(path, Some(ADMIN)).await);
    }
    assert_eq!(answers[1].json()["user"]["local"]["has_install_code"], true);
    for a in &answers {
        for secret in &secrets {
            assert!(
                !a.body.contains(secret.as_str()),
                "an answer ({}) contains a secret: {}",
                a.status,
                a.body
            );
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_query_string_get_400_pointing_to_the_header() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    for path in [
        "/api/users/00ce69?pw=plaintext123",
        "/api/users?PW=plaintext123",
        "/api/event/00ce69?token=abc",
        "/healthz?password=x",
    ] {
        let p = s.get(path, None).await.problem(400);
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("Authorization: Bearer"), "{path}: {detail}");
        assert!(!detail.contains("plaintext123"), "{detail}");
    }
    // Even with a valid token: the password is in the URL either way.
    s.get("/api/users/00ce69?pw=plaintext123", Some(ADMIN))
        .await
        .problem(400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_shaped_and_malformed_ids_get_400_and_touch_nothing() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let long = "a".repeat(5000);
    let paths = [
        "/api/users/../../etc/passwd".to_string(),
        "/api/users/..".to_string(),
        "/api/users/%2e%2e".to_string(),
        "/api/users/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(),
        "/api/users/..%2F..%2Fetc".to_string(),
        "/api/users/00/ce69".to_string(),
        "/api/users/00ce69/".to_string(),
        "/api/users/00ce6%00".to_string(),
        "/api/users/00ce69%00".to_string(),
        "/api/users/%ff%fe%fd%fc%fb%fa".to_string(),
        "/api/users/00ce6g".to_string(),
        "/api/users/00ce6".to_string(),
        format!("/api/users/{long}"),
        "/api/event/../../../etc/passwd".to_string(),
        "/api/event/%2e%2e".to_string(),
        "/api/event/00ce69%2f..".to_string(),
    ];
    for path in &paths {
        let (status, body) = raw(s.addr, &raw_get(path, ADMIN)).await;
        assert_eq!(status, 400, "{path}: {body}");
        let p: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(p["status"], 400);
    }
    // Same for writes.
    for path in ["/api/users/..%2f..%2fx", "/api/users/00ce69%00"] {
        let body = r#"{"user_email": "a@example.org", "user_pw": "pw"}"#;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, _) = raw(s.addr, req.as_bytes()).await;
        assert_eq!(status, 400, "{path}");
    }
    // Nothing reached Redis or the spool.
    let client = redis::Client::open(s.redis_server().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("{}:user*", s.ns))
        .arg("COUNT")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    assert!(std::fs::read_dir(&s.data).map(|d| d.count()).unwrap_or(0) == 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_malformed_and_invalid_bodies_get_413_400_415_and_422() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let url = s.url("/api/users/00ce69");
    let send = |body: Vec<u8>, content_type: &'static str| {
        let req = s
            .http
            .post(&url)
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body);
        async move { Answer::read(req.send().await.expect("POST")).await }
    };
    let big = format!(
        r#"{{"user_email": "a@example.org", "user_pw": "{}"}}"#,
        "x".repeat(70_000)
    );
    send(big.clone().into_bytes(), "application/json")
        .await
        .problem(413);
    // Without Content-Length (chunked), the limit still holds.
    let req = format!(
        "POST /api/users/00ce69 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, body) = raw(s.addr, req.as_bytes()).await;
    assert_eq!(status, 413, "{body}");

    send(b"{\"user_email\": ".to_vec(), "application/json")
        .await
        .problem(400);
    send(b"".to_vec(), "application/json").await.problem(400);
    send(
        b"user_email=a".to_vec(),
        "application/x-www-form-urlencoded",
    )
    .await
    .problem(415);
    for (body, field) in [
        (
            r#"{"user_email": "a@example.org", "user_pw": "x", "actve": false}"#,
            "actve",
        ),
        (
            r#"{"user_email": "not-an-email", "user_pw": "x"}"#,
            "user_email",
        ),
        (r#"{"user_email": "a@example.org"}"#, "user_pw"),
        (
            r#"{"user_email": "a@example.org", "user_pw": 5}"#,
            "user_pw",
        ),
        (
            r#"{"user_email": "a@example.org", "user_pw": "x", "total_events_logged": 9}"#,
            "total_events_logged",
        ),
        (
            r#"{"user_email": "a@example.org", "user_pw": "x", "cloud_id": "00ce6a"}"#,
            "cloud_id",
        ),
        (
            r#"{"user_email": "a@example.org", "local": {"host": "h", "install_code": "c", "port": 1}}"#,
            "local.port",
        ),
        ("[]", "(body)"),
    ] {
        let p = send(body.as_bytes().to_vec(), "application/json")
            .await
            .problem(422);
        assert_eq!(p["field"], field, "{body}: {p}");
    }
    // Nothing was stored by any of them.
    s.get("/api/users/00ce69", Some(ADMIN)).await.problem(404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_reads_the_meter_into_the_spool_once_per_second_at_most() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let id = simulator::meter_cloud_id(0);
    s.post(&format!("/api/users/{id}"), Some(ADMIN), &sim_user_body(0))
        .await;
    let before = s.sim.requests_for(id);

    let a = s.post_empty(&format!("/api/event/{id}"), Some(ADMIN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let record = a.json();
    assert_eq!(record["cloud_id"], id.as_str());
    assert!(record["demand_kw"].is_number(), "{record}");
    assert_eq!(record["source"], "relay");
    assert_eq!(s.sim.requests_for(id), before + 1);

    // A second read within the second is refused without calling out.
    let a = s.post_empty(&format!("/api/event/{id}"), Some(ADMIN)).await;
    a.problem(429);
    assert!(a.headers.get("retry-after").is_some());
    assert_eq!(s.sim.requests_for(id), before + 1);

    // The line went through the spool, like a scheduled poll.
    let polled_at = record["polled_at"].as_str().unwrap().to_string();
    let data = s.data.clone();
    wait_for("the record in a spool file", async || {
        spool_lines(&data)
            .iter()
            .any(|(_, l)| l["polled_at"] == polled_at.as_str())
    })
    .await;
    let stats = s.get(&format!("/api/users/{id}"), Some(ADMIN)).await.json();
    assert_eq!(stats["statistics"]["total_events_logged"], 1, "{stats}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        s.post_empty(&format!("/api/event/{id}"), Some(ADMIN))
            .await
            .status,
        StatusCode::OK
    );

    // Unknown users are 404 and call nobody; wrong credentials are 502.
    s.post_empty("/api/event/00ce69", Some(ADMIN))
        .await
        .problem(404);
    let other = simulator::meter_cloud_id(1);
    s.post(
        &format!("/api/users/{other}"),
        Some(ADMIN),
        &json!({"user_email": simulator::meter_email(other), "user_pw": "wrong"}),
    )
    .await;
    let p = s
        .post_empty(&format!("/api/event/{other}"), Some(ADMIN))
        .await
        .problem(502);
    assert_eq!(p["type"], "urn:rainforest:problem:meter-auth-failed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_are_cut_off_with_a_503_problem() {
    let slow = SimulateArgs {
        latency: "1500ms".parse().expect("latency"),
        ..SimulateArgs::default()
    };
    let Some(s) = TestServer::start(Backend::Redis, slow, |c| {
        c.api_timeout = Duration::from_millis(300);
        c.request_timeout = Duration::from_secs(5);
    })
    .await
    else {
        return;
    };
    let id = simulator::meter_cloud_id(0);
    s.post(&format!("/api/users/{id}"), Some(ADMIN), &sim_user_body(0))
        .await;
    let started = std::time::Instant::now();
    let p = s
        .post_empty(&format!("/api/event/{id}"), Some(ADMIN))
        .await
        .problem(503);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert!(
        p["detail"].as_str().unwrap().contains("took too long"),
        "{p}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_slower_than_request_timeout_is_a_504_problem() {
    let slow = SimulateArgs {
        latency: "1500ms".parse().expect("latency"),
        ..SimulateArgs::default()
    };
    let Some(s) = TestServer::start(Backend::Redis, slow, |c| {
        c.request_timeout = Duration::from_millis(200)
    })
    .await
    else {
        return;
    };
    let id = simulator::meter_cloud_id(0);
    s.post(&format!("/api/users/{id}"), Some(ADMIN), &sim_user_body(0))
        .await;
    let p = s
        .post_empty(&format!("/api/event/{id}"), Some(ADMIN))
        .await
        .problem(504);
    assert_eq!(p["type"], "urn:rainforest:problem:meter-timeout");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_read_counts_the_reading_but_keeps_the_pingers_pause() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    // Two meters the pinger has paused: one with rejected credentials (that
    // were fixed since, so the read succeeds), one backing off.
    let paused = [
        (simulator::meter_cloud_id(0), MeterState::AuthFailed, 4),
        (simulator::meter_cloud_id(1), MeterState::Backoff, 7),
    ];
    for (i, &(id, state, streak)) in paused.iter().enumerate() {
        s.post(
            &format!("/api/users/{id}"),
            Some(ADMIN),
            &sim_user_body(i as u32),
        )
        .await;
        s.registry
            .write_stats(&[StatsUpdate {
                last_error: Some(("auth".into(), 1_700_000_000.0)),
                consecutive_failures: Some(streak),
                state: Some(state),
                last_demand_kw: Some(-99.0),
                ..StatsUpdate::new(id)
            }])
            .await
            .expect("write stats");
    }
    for &(id, state, streak) in &paused {
        let a = s.post_empty(&format!("/api/event/{id}"), Some(ADMIN)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let kw = a.json()["demand_kw"].as_f64().expect("demand_kw");
        let stats = s.registry.stats(id).await.expect("stats").expect("some");
        assert_eq!(stats.state, state, "{id}: the read must not end the pause");
        assert_eq!(stats.consecutive_failures, streak, "{id}: streak kept");
        assert_eq!(stats.last_demand_kw, Some(kw), "{id}: demand updated");
        assert_eq!(stats.total_events_logged, 1);
        assert!(stats.last_timestamp.is_some() && stats.first_timestamp.is_some());
        let view = s.get(&format!("/api/users/{id}"), Some(ADMIN)).await.json();
        assert_eq!(view["state"], state.as_str(), "{view}");
        assert_eq!(view["statistics"]["consecutive_failures"], streak, "{view}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_503_and_the_server_recovers_without_a_restart() {
    let Some(mut s) = TestServer::redis().await else {
        return;
    };
    if !s.redis_server().can_restart() {
        support::skipped("TEST_REDIS_URL's Redis cannot be stopped");
        return;
    }
    let reader = s.token("reader", Scope::Read, None).await;
    s.post(
        "/api/users/00ce69",
        Some(ADMIN),
        &json!({"user_email": "a@example.org", "user_pw": "pw"}),
    )
    .await;
    assert_eq!(
        s.get("/api/users/00ce69", Some(ADMIN)).await.status,
        StatusCode::OK
    );

    s.redis_mut().stop();
    let a = s.get("/api/users/00ce69", Some(ADMIN)).await;
    a.problem(503);
    assert!(a.headers.get("retry-after").is_some());
    s.get("/api/users", Some(ADMIN)).await.problem(503);
    s.post(
        "/api/users/00ce6a",
        Some(ADMIN),
        &json!({"user_email": "a@example.org", "user_pw": "pw"}),
    )
    .await
    .problem(503);
    // Tokens kept in Redis cannot be checked either: 503, not 401.
    s.get("/api/users", Some(&reader)).await.problem(503);
    let not_ready = s.get("/readyz", None).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !not_ready.body.contains("127.0.0.1") && !not_ready.body.contains("Redis"),
        "{}",
        not_ready.body
    );
    assert_eq!(s.get("/healthz", None).await.status, StatusCode::OK);

    s.redis_mut().start_again();
    let server = &s;
    wait_for("the API to answer 200 again", async || {
        server.get("/api/users/00ce69", Some(ADMIN)).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(s.get("/readyz", None).await.status, StatusCode::OK);
    assert_eq!(
        s.get("/api/users", Some(&reader)).await.status,
        StatusCode::OK
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_route_with_bearer_auth() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let reader = s.token("reader", Scope::Read, None).await;
    s.get("/api/openapi.json", None).await.problem(401);
    let a = s.get("/api/openapi.json", Some(&reader)).await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with('3'),
        "{}",
        doc["openapi"]
    );
    for (path, methods) in [
        ("/api/users", &["get"][..]),
        ("/api/users/{cloud_id}", &["get", "post", "delete"][..]),
        ("/api/event/{cloud_id}", &["post"][..]),
        ("/api/openapi.json", &["get"][..]),
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"][..]),
        ("/api/status", &["get"][..]),
        ("/api/stats", &["get"][..]),
        ("/api/fleet", &["get"][..]),
        ("/api/coverage", &["get"][..]),
        ("/status", &["get"][..]),
        ("/metrics", &["get"][..]),
    ] {
        for m in methods {
            let op = &doc["paths"][path][m];
            assert!(op.is_object(), "{m} {path} missing");
            if path.starts_with("/api/") {
                assert!(
                    op["security"][0]["bearer"].is_array(),
                    "{m} {path} has no bearer requirement"
                );
                assert!(
                    op["responses"]["401"].is_object(),
                    "{m} {path} does not document 401"
                );
            }
        }
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        12,
        "an undocumented or extra path"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let post = &doc["paths"]["/api/users/{cloud_id}"]["post"];
    for status in ["200", "201", "400", "401", "403", "413", "422", "503"] {
        assert!(
            post["responses"][status].is_object(),
            "POST does not document {status}"
        );
    }
    assert!(doc["paths"]["/api/event/{cloud_id}"]["post"]["responses"]["429"].is_object());
    assert_eq!(
        doc["components"]["schemas"]["UserBody"]["additionalProperties"],
        false
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_read_token_and_api_stats_has_its_schema() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let reader = s.token("prometheus", Scope::Read, None).await;
    s.get("/metrics", None).await.problem(401);
    s.get("/metrics", Some("rft_not-a-token"))
        .await
        .problem(401);
    let a = s.get("/metrics", Some(&reader)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        a.body.lines().any(|l| l == "rainforest_registry_up 1"),
        "{}",
        a.body
    );

    let doc = s.get("/api/openapi.json", Some(&reader)).await.json();
    let metrics = &doc["paths"]["/metrics"]["get"];
    assert!(metrics["security"][0]["bearer"].is_array(), "{metrics}");
    let ok = &doc["paths"]["/api/stats"]["get"]["responses"]["200"];
    let schema_ref = ok["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("/api/stats has no schema: {ok}"));
    let name = schema_ref.rsplit('/').next().unwrap();
    let schema = doc["components"]["schemas"][name].to_string();
    for part in ["registry", "meters", "HubSnapshot"] {
        assert!(schema.contains(part), "{part} not in {name}: {schema}");
    }
    for (name, field) in [
        ("HubSnapshot", "pinger"),
        ("PingerSnapshot", "polls_per_s"),
        ("RotatorSnapshot", "files_pending"),
        ("RegistryCounts", "stale_10m"),
    ] {
        assert!(
            doc["components"]["schemas"][name]["properties"][field].is_object(),
            "{name}.{field} not in the document"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_problem_json() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    s.get("/nothing", None).await.problem(404);
    let put = s
        .http
        .put(s.url("/api/users/00ce69"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    Answer::read(put).await.problem(405);
    let post = s.http.post(s.url("/healthz")).send().await.unwrap();
    Answer::read(post).await.problem(405);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_to_start_without_any_token() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let registry = Registry::Redis(RedisRegistry::connect(&redis.url(), &ns).await.unwrap());
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 1,
        ..SimulateArgs::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&sim, dir.path());
    set_redis(&mut config, &redis.url(), &ns);
    let base = config.clone();
    let poller = || {
        Poller::new(
            eagle_from_config(&base, false).unwrap(),
            spool_from_config(&base).unwrap(),
        )
    };
    let e = AppState::from_config(&config, registry.clone(), poller(), AuthMode::Required)
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::NoToken), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("rainforest tokens create") && text.contains("--no-auth"),
        "{text}"
    );
    // --no-auth starts anyway.
    AppState::from_config(&config, registry.clone(), poller(), AuthMode::Disabled)
        .await
        .unwrap();
    // A short bootstrap token is refused.
    config.api_token = Some(Secret::new("short"));
    let e = AppState::from_config(&config, registry.clone(), poller(), AuthMode::Required)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServerError::WeakBootstrapToken { len: 5 }),
        "{e}"
    );
    // A token in Redis is enough.
    config.api_token = None;
    let store = TokenStore::connect(&redis.url(), &ns).await.unwrap();
    store.create("ops", Scope::Admin, None).await.unwrap();
    AppState::from_config(&config, registry.clone(), poller(), AuthMode::Required)
        .await
        .unwrap();
}

#[test]
fn binary_without_a_token_exits_2_explaining_how_to_create_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = rainforest()
        .current_dir(dir.path())
        .args(["server", "--redis-url", &redis.url()])
        .args([
            "--set",
            &format!("redis_namespace={}", support::unique_namespace()),
        ])
        .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("logs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rainforest tokens create --name admin --scope admin"),
        "{err}"
    );
    assert!(err.contains("RAINFOREST_API_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_no_auth_serves_and_warns_on_every_request() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let log = dir.path().join("stderr.log");
    let child = rainforest()
        .current_dir(dir.path())
        .args(["server", "--no-auth", "--redis-url", &redis.url()])
        .args([
            "--set",
            &format!("redis_namespace={}", support::unique_namespace()),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("logs"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Proc::from_child(child);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the server to listen", async || {
        http.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    for _ in 0..2 {
        let r = http.get(format!("{base}/api/users")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let status = child
        .terminate(Duration::from_secs(10))
        .expect("the server stops within 10 s of SIGTERM");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Authentication is DISABLED"), "{text}");
    assert_eq!(
        text.matches("without authentication (--no-auth)").count(),
        2,
        "{text}"
    );
}

#[test]
fn tokens_cli_shows_a_token_once_lists_without_secrets_and_revokes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        rainforest()
            .current_dir(dir.path())
            .args([
                "--redis-url",
                &redis.url(),
                "--set",
                &format!("redis_namespace={ns}"),
            ])
            .arg("tokens")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "create",
        "--name",
        "importer",
        "--scope",
        "write",
        "--expires",
        "30d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("rft_") && token.len() == 68, "{token}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only this once"));

    let again = run(&["create", "--name", "importer", "--scope", "read"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let list = run(&["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("importer") && text.contains("write") && text.contains("active"),
        "{text}"
    );
    assert!(
        !text.contains(&token) && !text.contains(&TokenHash::of(&token).to_hex()),
        "{text}"
    );

    // Stored as a hash only.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let hash: String = redis::cmd("HGET")
        .arg(format!("{ns}:tokens"))
        .arg("importer")
        .query(&mut conn)
        .unwrap();
    assert_eq!(hash, TokenHash::of(&token).to_hex());
    let record: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{ns}:token:{hash}"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(record["scope"], "write");
    assert!(record.contains_key("expires_at"));
    assert!(
        !record.values().any(|v| v.contains(&token[4..])),
        "{record:?}"
    );

    assert!(run(&["revoke", "importer"]).status.success());
    assert!(!run(&["revoke", "importer"]).status.success());
    assert!(!String::from_utf8_lossy(&run(&["list"]).stdout).contains("importer"));
}
