//! The server and its Redis against hostile or careless clients: idle and
//! slow sockets, a connection flood, HTTPS, Redis over TLS with an ACL
//! user, and an API description whose every reference resolves.
//!
//! Sockets are real (loopback) and timeouts are set short through the
//! configuration, so each test waits a second or two, not the defaults.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rainforest::config::TlsFiles;
use rainforest::registry::{RedisRegistry, RegistryError};
use rainforest::simulator::SimulateArgs;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use support::server::{ADMIN, Backend, ServerProcess, TestServer};
use support::tls::TestCa;
use support::{RedisServer, unique_namespace};

/// A server over a users file (no Redis needed) with `adjust`ed limits.
async fn server(adjust: impl FnOnce(&mut rainforest::config::Config)) -> TestServer {
    TestServer::start(Backend::UsersFile, SimulateArgs::default(), adjust)
        .await
        .expect("a users-file server needs no Redis")
}

/// Sends `GET /healthz` on `stream` (keep-alive) and returns the status
/// line of the answer, reading exactly that one answer.
async fn raw_get(stream: &mut TcpStream) -> std::io::Result<String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok(text.lines().next().unwrap_or("").to_string());
            }
        }
    }
}

/// Whether the server closed `stream` (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 256];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_sockets_neither_delay_a_request_nor_outlive_the_header_timeout() {
    const IDLE: usize = 2000;
    // Both ends of every socket live in this process.
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the descriptor limit");
    assert!(
        limit >= (2 * IDLE + 500) as u64,
        "this test needs {} descriptors, the hard limit allows {limit}",
        2 * IDLE + 500
    );
    let header_timeout = Duration::from_secs(2);
    let s = server(|c| {
        c.max_connections = IDLE + 100;
        c.header_read_timeout = header_timeout;
    })
    .await;
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            TcpStream::connect(s.addr)
                .await
                .expect("connect an idle socket"),
        );
    }

    let asked = Instant::now();
    let answer = timeout(Duration::from_secs(1), reqwest::get(s.url("/healthz")))
        .await
        .expect("a request answers within a second despite 2000 idle sockets")
        .expect("request");
    assert_eq!(answer.status(), 200);
    assert!(asked.elapsed() < Duration::from_secs(1));
    // Still open: what closes them is the timeout, not the flood.
    assert!(
        opened.elapsed() < header_timeout,
        "opening took too long to tell"
    );
    assert!(!closed_within(&mut idle[0], Duration::from_millis(100)).await);

    let closes = idle
        .iter_mut()
        .map(|socket| closed_within(socket, header_timeout + Duration::from_secs(3)));
    let closed = futures::future::join_all(closes).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open, 0,
        "{open} idle sockets still open after the header timeout"
    );
    assert!(opened.elapsed() >= header_timeout);
    s.stop().await;
}

#[tokio::test]
async fn a_slowloris_header_is_cut_off_at_the_header_read_timeout() {
    let s = server(|c| c.header_read_timeout = Duration::from_secs(1)).await;
    let mut slow = TcpStream::connect(s.addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        .await
        .expect("start a header");
    let started = Instant::now();
    // A header line every 200 ms: bytes keep moving, so only the
    // header-read timeout can end this.
    let dribble = async {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = timeout(Duration::from_secs(3), dribble).await;
    assert!(
        closed_within(&mut slow, Duration::from_millis(500)).await,
        "a header dribbled for {:?} was not cut off",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_upload_is_closed_after_the_api_timeout() {
    let s = server(|c| {
        c.api_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(30);
        c.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stalled = TcpStream::connect(s.addr).await.expect("connect");
    let head = format!(
        "POST /api/users/00ce69 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"user_email\""
    );
    stalled.write_all(head.as_bytes()).await.expect("send head");
    // The handler is waiting for the body, so it is the request's time
    // limit, not the idle timeout, that ends it.
    assert!(
        closed_within(&mut stalled, Duration::from_secs(3)).await,
        "a stalled upload kept its connection"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_idle_timeout() {
    const PIPELINED: usize = 2000;
    let s = server(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let size = s.get("/api/openapi.json", Some(ADMIN)).await.body.len();
    let mut reader = TcpStream::connect(s.addr).await.expect("connect");
    let request = format!(
        "GET /api/openapi.json HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    );
    // Far more answer bytes than the socket buffers hold; never read.
    reader
        .write_all(request.repeat(PIPELINED).as_bytes())
        .await
        .expect("send pipelined requests");
    // Time for the server to fill both socket buffers and then sit blocked
    // past its idle timeout (generous: a busy 2-core machine is slow).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let ended = timeout(Duration::from_secs(10), async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the server kept a connection whose client stopped reading"
    );
    assert!(
        received < size * PIPELINED / 2,
        "{received} bytes of {} arrived: the connection was not cut",
        size * PIPELINED
    );
    s.stop().await;
}

#[tokio::test]
async fn over_the_connection_cap_new_clients_wait_and_open_ones_are_still_served() {
    let s = server(|c| {
        c.max_connections = 3;
        c.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut kept = TcpStream::connect(s.addr).await.expect("connect");
    assert_eq!(
        raw_get(&mut kept).await.expect("first answer"),
        "HTTP/1.1 200 OK"
    );
    let _idle1 = TcpStream::connect(s.addr).await.expect("connect");
    let idle2 = TcpStream::connect(s.addr).await.expect("connect");
    // Let the loop accept both before the next one arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The kernel completes the handshake (backlog), the server does not
    // take it: no answer while the cap is reached.
    let mut waiting = TcpStream::connect(s.addr)
        .await
        .expect("connect into the backlog");
    let early = timeout(Duration::from_millis(500), raw_get(&mut waiting)).await;
    assert!(
        early.is_err(),
        "a connection over the cap was served: {early:?}"
    );

    assert_eq!(
        timeout(Duration::from_secs(1), raw_get(&mut kept))
            .await
            .expect("an open connection is still served")
            .expect("answer"),
        "HTTP/1.1 200 OK"
    );

    // A slot frees: the waiting connection is taken and its request,
    // already sent, is answered.
    drop(idle2);
    let mut chunk = [0u8; 512];
    let n = timeout(Duration::from_secs(2), waiting.read(&mut chunk))
        .await
        .expect("served once a slot is free")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&chunk[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&chunk[..n])
    );
    s.stop().await;
}

#[tokio::test]
async fn https_is_served_with_tls_cert_and_key_and_plain_http_is_not() {
    let ca = TestCa::new();
    let files = TlsFiles {
        cert: ca.server_cert(),
        key: ca.server_key(),
    };
    let s = server(|c| c.tls = Some(files)).await;
    let root = reqwest::Certificate::from_pem(&std::fs::read(ca.ca_pem()).expect("read CA"))
        .expect("CA certificate");
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .expect("client");
    let port = s.addr.port();
    for host in ["localhost", "127.0.0.1"] {
        let answer = client
            .get(format!("https://{host}:{port}/api/openapi.json"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS to {host}: {e}"));
        assert_eq!(answer.status(), 200, "{host}");
    }
    // Not a certificate anyone trusts without the CA.
    let untrusting = reqwest::Client::new();
    assert!(
        untrusting
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_certificate_and_key_that_do_not_match_stop_the_server_naming_the_files() {
    let (one, other) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = support::process::rainforest()
        .current_dir(dir.path())
        .env("RAINFOREST_API_TOKEN", ADMIN)
        .env("RAINFOREST_USERS_FILE", dir.path().join("users.jl"))
        .env("RAINFOREST_TLS_CERT", one.server_cert())
        .env("RAINFOREST_TLS_KEY", other.server_key())
        .args(["server", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run rainforest server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&one.server_cert().display().to_string())
            && err.contains(&other.server_key().display().to_string()),
        "{err}"
    );

    let out = support::process::rainforest()
        .current_dir(dir.path())
        .env("RAINFOREST_TLS_CERT", one.server_cert())
        .args(["config"])
        .output()
        .expect("run rainforest config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`tls_key`") && err.contains("tls_cert"),
        "{err}"
    );
}

#[tokio::test]
async fn redis_over_tls_with_an_acl_user_serves_the_api_and_refuses_what_is_not_trusted() {
    let ca = TestCa::new();
    let Some(redis) = RedisServer::start_secured(&ca, "rainforest", "acl-pw-5e1f") else {
        return;
    };
    let url = redis.url();
    assert!(
        url.starts_with("rediss://rainforest:acl-pw-5e1f@127.0.0.1:"),
        "{url}"
    );
    let ns = unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&url, &ns, dir.path(), "http://127.0.0.1:9/");
    let http = reqwest::Client::new();
    let body = json!({"user_email": "tls@example.org", "user_pw": "meter-pw"});
    let created = http
        .post(format!("{}/api/users/00ce69", server.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert!(created.status().is_success(), "{}", created.status());
    let read: Value = http
        .get(format!("{}/api/users/00ce69", server.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["user_email"], "tls@example.org", "{read}");

    // The registry itself, in this process, over the same URL.
    let registry = RedisRegistry::connect(&url, &ns)
        .await
        .expect("rediss:// connects")
        .with_vault(support::test_vault());
    let id = "00ce69".parse().expect("cloud id");
    assert!(registry.get(id).await.expect("get").is_some());

    let port = url
        .split('@')
        .nth(1)
        .and_then(|r| r.split(['/', ':']).nth(1))
        .expect("port in URL");
    let ca_file = ca.ca_pem().display().to_string();
    for (what, bad) in [
        (
            "wrong password",
            format!("rediss://rainforest:not-it@127.0.0.1:{port}/0?ca_file={ca_file}"),
        ),
        (
            "the default user (switched off)",
            format!("rediss://:acl-pw-5e1f@127.0.0.1:{port}/0?ca_file={ca_file}"),
        ),
        (
            "the system trust store (the test CA is not in it)",
            format!("rediss://rainforest:acl-pw-5e1f@127.0.0.1:{port}/0"),
        ),
        (
            "plain TCP to the TLS port",
            format!("redis://rainforest:acl-pw-5e1f@127.0.0.1:{port}/0"),
        ),
    ] {
        let e: RegistryError = match RedisRegistry::connect(&bad, &ns).await {
            Ok(_) => panic!("{what}: {bad} connected"),
            Err(e) => e,
        };
        let text = e.to_string();
        assert!(
            !text.contains("acl-pw-5e1f") && !text.contains("not-it"),
            "{what}: {text}"
        );
    }
}

/// Every `$ref` in `doc` (JSON pointers into the same document).
fn refs(doc: &Value, out: &mut BTreeSet<String>) {
    match doc {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_ref_in_the_openapi_document_resolves() {
    let s = server(|_| {}).await;
    let doc = s.json("/api/openapi.json").await;
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty(), "the document uses components");
    let broken: Vec<&String> = all
        .iter()
        .filter(|r| {
            r.strip_prefix('#')
                .and_then(|pointer| doc.pointer(pointer))
                .is_none()
        })
        .collect();
    assert!(broken.is_empty(), "unresolvable: {broken:?}");
    s.stop().await;
}

/// Runs `scripts/add_users` with `echo` as the binary, so what it would
/// run is printed instead of sent.
fn add_users(args: &[&str]) -> std::process::Output {
    std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/add_users"))
        .env("ADD_USERS_BIN", "echo")
        .args(args)
        .output()
        .expect("run scripts/add_users")
}

#[test]
fn add_users_refuses_plain_http_to_another_machine_without_insecure() {
    for server in [
        "http://10.0.0.5:8000",
        "http://127.evil.example:8000",
        "http://admin:hunter2@api.example.org/",
        "http://[2001:db8::1]:8000",
    ] {
        let out = add_users(&["--server", server, "users.jl"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{server}: {err}");
        assert!(
            err.contains("--insecure") && !err.contains("hunter2"),
            "{server}: {err}"
        );
        assert!(out.stdout.is_empty(), "{server}: nothing may run");
    }
    for server in [
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
        "https://api.example.org",
    ] {
        let out = add_users(&[&format!("--server={server}"), "users.jl"]);
        assert!(out.status.success(), "{server}");
    }
    let out = add_users(&["--insecure", "--server", "http://10.0.0.5:8000", "users.jl"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "users import --server http://10.0.0.5:8000 users.jl",
        "--insecure is the script's own flag, not passed on"
    );
}
