//! Hostile inputs aimed at the outbound side: a write token trying to point
//! the pinger or an on-demand read somewhere no EAGLE-200 is (SSRF
//! spellings first), redirects that would carry the password elsewhere,
//! endless bodies, answers quoting remote content, and the caps and pacing
//! every outbound request passes.

mod support;

use std::time::{Duration, Instant};

use rainforest::cloud_id::CloudId;
use rainforest::protocol::{AddressPolicy, Eagle, EagleOptions, ErrorKind, ProtocolError, Source};
use rainforest::secret::Secret;
use rainforest::simulator::{self, SimulateArgs, Simulator};
use reqwest::StatusCode;
use serde_json::json;
use support::hostile::{Behaviour, HostileServer};
use support::server::{ADMIN, Backend, TestServer};

const ID: &str = "0000aa";

fn id() -> CloudId {
    CloudId::parse(ID).expect("id")
}

fn eagle(relay_url: url::Url, local_networks: AddressPolicy, max_concurrent: usize) -> Eagle {
    Eagle::new(EagleOptions {
        relay_url,
        request_timeout: Duration::from_secs(5),
        insecure_tls: false,
        trace_http: false,
        local_networks,
        max_concurrent,
        max_per_second: 10_000,
    })
    .expect("client builds")
}

fn local(host: &str) -> Source {
    Source::Local {
        host: host.to_string(),
        install_code: Secret::new("install-code-9f8e7d"),
    }
}

fn relay() -> Source {
    Source::Relay {
        user: "a@example.org".into(),
        password: Secret::new("topsecretpw"),
    }
}

#[tokio::test]
async fn ssrf_spellings_of_loopback_and_metadata_never_connect() {
    let target = HostileServer::start(Behaviour::Body("<x/>".into())).await;
    let port = target.addr().port();
    let unused = url::Url::parse("http://192.0.2.1/").expect("url");
    let client = eagle(unused.clone(), AddressPolicy::default(), 64);
    let spellings = [
        format!("127.0.0.1:{port}"),
        format!("2130706433:{port}"),
        format!("0177.0.0.1:{port}"),
        format!("0x7f.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::ffff:7f00:1]:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        format!("localhost.:{port}"),
        format!("LOCALHOST:{port}"),
        format!("0.0.0.0:{port}"),
        "169.254.169.254".to_string(),
        "[fd00:ec2::254]".to_string(),
        "10.0.0.1".to_string(),
        "192.168.1.20".to_string(),
        format!("http://127.0.0.1:{port}/internal/admin?x=1"),
        format!("user:pw@127.0.0.1:{port}"),
    ];
    for host in &spellings {
        let started = Instant::now();
        let err = client
            .read_demand(id(), &local(host))
            .await
            .expect_err(host);
        assert!(
            matches!(err.kind(), ErrorKind::Refused | ErrorKind::Connect),
            "{host}: {err}"
        );
        // Refused before any connection attempt, not after a timeout.
        assert!(started.elapsed() < Duration::from_secs(2), "{host}");
    }
    assert_eq!(target.connections(), 0, "a spelling reached loopback");

    // The control: with loopback opted in, the same listener is reached,
    // so the zero above is the policy's doing.
    let opted_in = eagle(unused, AddressPolicy::loopback(), 64);
    let _ = opted_in
        .read_demand(id(), &local(&format!("localhost:{port}")))
        .await;
    assert!(target.connections() > 0, "the opt-in did not open loopback");
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_as_an_address() {
    let target = HostileServer::start(Behaviour::Body("<x/>".into())).await;
    let client = eagle(
        url::Url::parse("http://192.0.2.1/").expect("url"),
        AddressPolicy::default(),
        64,
    );
    let err = client
        .read_demand(id(), &local(&format!("localhost:{}", target.addr().port())))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
    assert_eq!(target.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_hosts_that_are_not_host_port_naming_local_host() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    for host in [
        "http://127.0.0.1:28081/internal/admin?x=1",
        "127.0.0.1/admin",
        "user:pw@10.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "a'$(touch /tmp/rainforest-pwned)'",
    ] {
        let body =
            json!({"user_email": "a@example.org", "local": {"host": host, "install_code": "ic"}});
        let p = s
            .post(&format!("/api/users/{ID}"), Some(ADMIN), &body)
            .await
            .problem(422);
        assert_eq!(p["field"], "local.host", "{host}: {p}");
    }
    // Plain names and addresses keep working.
    for host in ["192.168.1.20", "10.0.0.5:8080", "eagle-00ce69.local"] {
        let body =
            json!({"user_email": "a@example.org", "local": {"host": host, "install_code": "ic"}});
        let a = s
            .post(&format!("/api/users/{ID}"), Some(ADMIN), &body)
            .await;
        assert!(a.status.is_success(), "{host}: {}", a.body);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_read_of_a_loopback_host_is_refused_and_names_only_the_kind() {
    let target = HostileServer::start(Behaviour::Body("<x>secret-admin-page</x>".into())).await;
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let host = format!("localhost:{}", target.addr().port());
    let body =
        json!({"user_email": "a@example.org", "local": {"host": host, "install_code": "ic"}});
    let a = s
        .post(&format!("/api/users/{ID}"), Some(ADMIN), &body)
        .await;
    assert!(a.status.is_success(), "{}", a.body);
    let p = s
        .post_empty(&format!("/api/event/{ID}"), Some(ADMIN))
        .await
        .problem(502);
    let detail = p["detail"].as_str().expect("detail");
    assert!(detail.contains("address refused"), "{detail}");
    assert!(!detail.contains("127.0.0.1"), "{detail}");
    assert_eq!(target.connections(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_never_quotes_what_the_remote_side_sent() {
    let hostile = HostileServer::start(Behaviour::Body(
        "<secret-admin-page>internal token 5e3c</secret-admin-page>".into(),
    ))
    .await;
    let relay_url = hostile.url("/cgi-bin/post_manager");
    let Some(s) = TestServer::start(Backend::Redis, SimulateArgs::default(), |c| {
        c.relay_url = relay_url;
    })
    .await
    else {
        return;
    };
    let body = json!({"user_email": "a@example.org", "user_pw": "pw-0000aa"});
    s.post(&format!("/api/users/{ID}"), Some(ADMIN), &body)
        .await;
    let a = s.post_empty(&format!("/api/event/{ID}"), Some(ADMIN)).await;
    let p = a.problem(502);
    assert!(
        !a.body.contains("secret-admin-page") && !a.body.contains("5e3c"),
        "{}",
        a.body
    );
    assert!(
        p["detail"].as_str().expect("detail").contains("malformed"),
        "{p}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_relay_redirect_is_a_failure_and_the_target_never_sees_the_password() {
    let target = HostileServer::start(Behaviour::Body("<x/>".into())).await;
    let redirector =
        HostileServer::start(Behaviour::Redirect(target.url("/got").to_string())).await;
    let client = eagle(redirector.url("/redir"), AddressPolicy::default(), 64);
    let err = client
        .read_demand(id(), &relay())
        .await
        .expect_err("redirect");
    assert_eq!(err.kind(), ErrorKind::Redirect, "{err}");
    assert!(matches!(err, ProtocolError::Redirect { status: 307 }));
    assert_eq!(redirector.requests().len(), 1);
    assert!(
        target.requests().is_empty(),
        "the redirect was followed: {:?}",
        target.requests()
    );
}

#[tokio::test]
async fn a_local_redirect_is_a_failure_and_carries_no_install_code() {
    let target = HostileServer::start(Behaviour::Body("<x/>".into())).await;
    let redirector =
        HostileServer::start(Behaviour::Redirect(target.url("/got").to_string())).await;
    let client = eagle(
        url::Url::parse("http://192.0.2.1/").expect("url"),
        AddressPolicy::loopback(),
        64,
    );
    let err = client
        .read_demand(id(), &local(&redirector.addr().to_string()))
        .await
        .expect_err("redirect");
    assert_eq!(err.kind(), ErrorKind::Redirect, "{err}");
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap_long_before_the_timeout() {
    let endless = HostileServer::start(Behaviour::Endless).await;
    let client = eagle(
        endless.url("/cgi-bin/post_manager"),
        AddressPolicy::default(),
        64,
    );
    let started = Instant::now();
    let err = client
        .read_demand(id(), &relay())
        .await
        .expect_err("capped");
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    assert!(err.to_string().contains("64 KiB"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The client stopped reading: the server could not push much more than
    // the cap plus the socket buffers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        endless.bytes_sent() < 64 * 1024 * 1024,
        "{} bytes sent",
        endless.bytes_sent()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_on_event_is_405_naming_post() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    let a = s.get("/api/event/00ce69", Some(ADMIN)).await;
    assert_eq!(
        a.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let p = a.problem(405);
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("POST /api/event/"),
        "{p}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_reads_in_a_standalone_server_share_the_global_caps() {
    let slow =
        HostileServer::start(Behaviour::Slow(Duration::from_millis(300), "<x/>".into())).await;
    let relay_url = slow.url("/cgi-bin/post_manager");
    let Some(s) = TestServer::start(Backend::Redis, SimulateArgs::default(), |c| {
        c.relay_url = relay_url;
        c.max_concurrent_requests = 1;
    })
    .await
    else {
        return;
    };
    let ids: Vec<String> = (0..3).map(|i| format!("0000a{i}")).collect();
    for id in &ids {
        let body = json!({"user_email": "a@example.org", "user_pw": "pw"});
        s.post(&format!("/api/users/{id}"), Some(ADMIN), &body)
            .await;
    }
    let paths: Vec<String> = ids.iter().map(|id| format!("/api/event/{id}")).collect();
    let reads = paths.iter().map(|p| s.post_empty(p, Some(ADMIN)));
    let answers = futures::future::join_all(reads).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    }
    assert_eq!(slow.requests().len(), 3);
    assert_eq!(slow.max_in_flight(), 1, "the cap of 1 was not applied");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waiting_for_its_pace_holds_no_global_permit() {
    let sim = Simulator::start(SimulateArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        meters: 2,
        ..SimulateArgs::default()
    })
    .await
    .expect("simulator");
    // One permit in the whole process.
    let client = eagle(sim.relay_url(), AddressPolicy::loopback(), 1);
    let meter = simulator::meter_cloud_id(0);
    let device = Source::Local {
        host: sim.addr().to_string(),
        install_code: Secret::new(simulator::meter_install_code(meter)),
    };
    client
        .read_demand(meter, &device)
        .await
        .expect("first read");
    // The device was just used: its next read waits about a second for the
    // pace. Meanwhile a relay meter must get the only permit at once.
    let waiting = {
        let client = client.clone();
        let device = device.clone();
        tokio::spawn(async move { client.read_demand(meter, &device).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = simulator::meter_cloud_id(1);
    let relay = Source::Relay {
        user: simulator::meter_email(other),
        password: Secret::new(simulator::meter_password(other)),
    };
    let started = Instant::now();
    client.read_demand(other, &relay).await.expect("relay read");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the relay meter waited {:?} behind a paced device",
        started.elapsed()
    );
    waiting.await.expect("task").expect("paced read");
}
