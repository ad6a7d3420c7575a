//! The simulator driven by the real client over real HTTP: both protocols,
//! credentials, injected latency, errors and garbage, and the counters tests
//! and benchmarks rely on. Also the `--latency` syntax.

use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use rainforest::cloud_id::CloudId;
use rainforest::protocol::{
    AddressPolicy, Command, Eagle, EagleOptions, ErrorKind, ProtocolError, Source, Start, parse,
};
use rainforest::secret::Secret;
use rainforest::simulator::{
    self, LatencySpec, SimulateArgs, Simulator, meter_cloud_id, meter_email, meter_install_code,
    meter_password,
};

fn args() -> SimulateArgs {
    SimulateArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        meters: 5,
        ..SimulateArgs::default()
    }
}

async fn start(args: SimulateArgs) -> Simulator {
    Simulator::start(args).await.expect("simulator starts")
}

fn eagle(sim: &Simulator, timeout: Duration) -> Eagle {
    Eagle::new(EagleOptions {
        relay_url: sim.relay_url(),
        request_timeout: timeout,
        insecure_tls: false,
        trace_http: false,
        // The simulator's EAGLE-200 side is on loopback: opted in here.
        local_networks: AddressPolicy::loopback(),
        max_concurrent: 64,
        max_per_second: 10_000,
    })
    .expect("client builds")
}

fn relay(id: CloudId) -> Source {
    Source::Relay {
        user: meter_email(id),
        password: Secret::new(meter_password(id)),
    }
}

fn local(sim: &Simulator, install_code: &str) -> Source {
    Source::Local {
        host: sim.addr().to_string(),
        install_code: Secret::new(install_code),
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn relay_demand_is_plausible_current_and_counted() {
    let sim = start(args()).await;
    let eagle = eagle(&sim, TIMEOUT);
    assert_eq!(sim.relay_url().path(), "/cgi-bin/post_manager");
    for i in 0..5 {
        let id = meter_cloud_id(i);
        let reading = eagle.read_demand(id, &relay(id)).await.unwrap();
        assert!(
            (-10.0..15.0).contains(&reading.demand_kw),
            "meter {id}: {} kW",
            reading.demand_kw
        );
        let skew = (reading.meter_time.unwrap() - Utc::now())
            .num_seconds()
            .abs();
        assert!(skew <= 2, "meter time {skew} s from now");
        let raw = reading.raw.unwrap();
        assert_eq!((raw.multiplier, raw.divisor), (1, 1000));
        assert_eq!(raw.header.device_mac_id, format!("0xd8d5b90000{id}"));
        let mac = reading.meter_mac_id.unwrap();
        assert!(mac.starts_with("0x") && mac.len() == 18, "{mac}");
    }
    let id = meter_cloud_id(2);
    eagle.read_demand(id, &relay(id)).await.unwrap();
    assert_eq!(sim.requests_for(id), 2);
    assert_eq!(sim.requests_for(meter_cloud_id(0)), 1);
    assert_eq!(sim.requests(), 6);
    sim.stop().await;
}

#[tokio::test]
async fn wrong_password_is_bad_credentials_until_fixed() {
    let sim = start(args()).await;
    let eagle = eagle(&sim, TIMEOUT);
    let id = meter_cloud_id(1);
    let wrong = Source::Relay {
        user: meter_email(id),
        password: Secret::new("nope"),
    };
    let err = eagle.read_demand(id, &wrong).await.unwrap_err();
    assert!(
        matches!(err, ProtocolError::BadCredentials { .. }),
        "{err:?}"
    );

    sim.set_password(id, "nope");
    eagle.read_demand(id, &wrong).await.unwrap();
    let err = eagle.read_demand(id, &relay(id)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Auth,
        "the old password stops working"
    );
    assert_eq!(sim.requests_for(id), 3);
    sim.stop().await;
}

#[tokio::test]
async fn unknown_ids_and_wrong_users_are_bad_credentials() {
    let sim = start(args()).await;
    let eagle = eagle(&sim, TIMEOUT);
    let stranger = CloudId::from_index(0x00ce69);
    let err = eagle
        .read_demand(stranger, &relay(stranger))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::BadCredentials { .. }),
        "{err:?}"
    );
    let beyond = meter_cloud_id(5);
    let err = eagle.read_demand(beyond, &relay(beyond)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert_eq!(sim.requests_for(beyond), 0);

    let id = meter_cloud_id(0);
    let other_user = Source::Relay {
        user: meter_email(meter_cloud_id(1)),
        password: Secret::new(meter_password(id)),
    };
    let err = eagle.read_demand(id, &other_user).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert_eq!(sim.requests(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn other_relay_commands_answer_parsable_notifications() {
    let sim = start(args()).await;
    let eagle = eagle(&sim, TIMEOUT);
    let id = meter_cloud_id(3);
    let source = relay(id);

    let body = eagle
        .relay(id, &source, &Command::CurrentSummation)
        .await
        .unwrap();
    let s = parse::summation(&body).unwrap();
    assert!(s.delivered_kwh() > 1000.0, "{}", s.delivered_kwh());

    let body = eagle.relay(id, &source, &Command::Price).await.unwrap();
    let p = parse::price(&body).unwrap();
    assert_eq!(p.currency, 840);
    assert!(p.value() > 0.0);

    let now = s.header.timestamp;
    let history = Command::HistoryData {
        start: now - 3600,
        end: None,
        frequency: Some(900),
    };
    let body = eagle.relay(id, &source, &history).await.unwrap();
    let entries = parse::history(&body).unwrap();
    assert!(
        (4..=5).contains(&entries.len()),
        "{} entries",
        entries.len()
    );
    assert!(entries.windows(2).all(|w| {
        w[0].header.timestamp < w[1].header.timestamp && w[0].delivered <= w[1].delivered
    }));
    assert_eq!(entries[0].header.timestamp, now - 3600);
    sim.stop().await;
}

#[tokio::test]
async fn unknown_commands_and_anonymous_requests_get_relay_errors() {
    let sim = start(args()).await;
    let http = reqwest::Client::new();
    let id = meter_cloud_id(0);
    let answer = http
        .post(sim.relay_url())
        .header("Cloud-ID", id.as_str())
        .header("User", meter_email(id))
        .header("Password", meter_password(id))
        .body("<Command><name>get_weather</name></Command>")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.bytes().await.unwrap();
    let err = parse::demand(&body).unwrap_err();
    assert!(
        matches!(&err, ProtocolError::Relay { message } if message == "Unknown command"),
        "{err:?}"
    );

    let answer = http
        .post(sim.relay_url())
        .body("<Command/>")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.text().await.unwrap(),
        "<Error>\r\n  <Text>Unauthorized: user and password do not match this cloud id</Text>\r\n</Error>\r\n"
    );
    sim.stop().await;
}

#[tokio::test]
async fn latency_delays_and_slow_answers_time_out() {
    let sim = start(SimulateArgs {
        latency: "60ms±10ms".parse().unwrap(),
        ..args()
    })
    .await;
    let id = meter_cloud_id(0);
    let started = Instant::now();
    eagle(&sim, TIMEOUT)
        .read_demand(id, &relay(id))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    sim.stop().await;

    let sim = start(SimulateArgs {
        latency: "300ms".parse().unwrap(),
        ..args()
    })
    .await;
    let err = eagle(&sim, Duration::from_millis(100))
        .read_demand(id, &relay(id))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::Timeout { after_ms: 100 }),
        "{err:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn garbage_answers_are_malformed() {
    let sim = start(SimulateArgs {
        garbage_rate: 1.0,
        ..args()
    })
    .await;
    let eagle = eagle(&sim, TIMEOUT);
    let id = meter_cloud_id(4);
    for _ in 0..15 {
        let err = eagle.read_demand(id, &relay(id)).await.unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err:?}");
    }
    // All three kinds show up.
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let body = http
            .post(sim.relay_url())
            .header("Cloud-ID", id.as_str())
            .header("User", meter_email(id))
            .header("Password", meter_password(id))
            .body(Command::InstantaneousDemand.to_xml())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        bodies.push(body);
    }
    assert!(bodies.iter().any(String::is_empty));
    assert!(bodies.iter().any(|b| b.contains("502 Bad Gateway")));
    assert!(
        bodies
            .iter()
            .any(|b| b.starts_with("<InstantaneousDemand>"))
    );
    sim.stop().await;
}

#[tokio::test]
async fn error_rate_gives_relay_errors() {
    let sim = start(SimulateArgs {
        error_rate: 1.0,
        ..args()
    })
    .await;
    let eagle = eagle(&sim, TIMEOUT);
    let id = meter_cloud_id(0);
    let mut offline = 0;
    for _ in 0..16 {
        match eagle.read_demand(id, &relay(id)).await.unwrap_err() {
            ProtocolError::Relay { message } => {
                assert_eq!(message, "EAGLE is offline");
                offline += 1;
            }
            ProtocolError::Status { status: 500 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(offline >= 8, "{offline} of 16 were relay errors");
    // Credentials are checked before the (simulated) gateway is reached.
    let wrong = Source::Relay {
        user: meter_email(id),
        password: Secret::new("nope"),
    };
    let err = eagle.read_demand(id, &wrong).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    sim.stop().await;
}

#[tokio::test]
async fn local_eagle_200_reads_demand_and_rejects_wrong_install_codes() {
    let sim = start(args()).await;
    let id = meter_cloud_id(2);
    let eagle_a = eagle(&sim, TIMEOUT);
    let devices = eagle_a
        .local_devices(id, &local(&sim, &meter_install_code(id)))
        .await
        .unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].model_id, "electric_meter");
    assert_eq!(devices[0].connection_status, "Connected");

    // A fresh client: device_list then device_query (paced one second apart).
    let reading = eagle(&sim, TIMEOUT)
        .read_demand(id, &local(&sim, &meter_install_code(id)))
        .await
        .unwrap();
    assert!(
        (-10.0..15.0).contains(&reading.demand_kw),
        "{} kW",
        reading.demand_kw
    );
    assert_eq!(
        reading.meter_mac_id.as_deref(),
        Some(devices[0].hardware_address.as_str())
    );
    assert_eq!(sim.requests_for(id), 3);

    let err = eagle(&sim, TIMEOUT)
        .read_demand(id, &local(&sim, "ic-wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::BadCredentials { .. }),
        "{err:?}"
    );
    let stranger = CloudId::from_index(0x123456);
    let err = eagle(&sim, TIMEOUT)
        .local_devices(stranger, &local(&sim, &meter_install_code(stranger)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    sim.stop().await;
}

#[tokio::test]
async fn bad_settings_are_refused_and_run_stops_on_shutdown() {
    for bad in [
        SimulateArgs {
            meters: 0,
            ..args()
        },
        SimulateArgs {
            error_rate: 1.5,
            ..args()
        },
        SimulateArgs {
            garbage_rate: -0.1,
            ..args()
        },
    ] {
        assert!(Simulator::start(bad).await.is_err());
    }

    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(simulator::run(args(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
}

#[test]
fn latency_spec_parses_all_three_forms() {
    let ms = Duration::from_millis;
    let spec = |s: &str| s.parse::<LatencySpec>();
    assert_eq!(
        spec("150ms").unwrap(),
        LatencySpec {
            mean: ms(150),
            spread: ms(0)
        }
    );
    assert_eq!(
        spec("150ms±50ms").unwrap(),
        LatencySpec {
            mean: ms(150),
            spread: ms(50)
        }
    );
    assert_eq!(
        spec("150ms+-50ms").unwrap(),
        LatencySpec {
            mean: ms(150),
            spread: ms(50)
        }
    );
    assert_eq!(
        spec(" 1s ± 5ms ").unwrap(),
        LatencySpec {
            mean: ms(1000),
            spread: ms(5)
        }
    );
    assert_eq!(spec("0").unwrap(), LatencySpec::ZERO);
    assert!(spec("0ms").unwrap().is_zero());
    for bad in [
        "",
        "fast",
        "150",
        "150ms±",
        "±50ms",
        "150ms+-",
        "-5ms",
        "150ms±50ms±1ms",
    ] {
        let err = spec(bad).unwrap_err().to_string();
        assert!(err.contains("150ms±50ms"), "{bad:?}: {err}");
    }
    assert_eq!(spec("150ms±50ms").unwrap().to_string(), "150ms±50ms");
}

#[test]
fn command_line_defaults_and_flags() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let d = Cli::parse_from(["simulate"]).args;
    assert_eq!(d.listen.to_string(), "127.0.0.1:9445");
    assert_eq!((d.meters, d.seed), (10, 1));
    assert!(d.latency.is_zero());
    assert_eq!((d.error_rate, d.garbage_rate), (0.0, 0.0));

    let a = Cli::parse_from([
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--meters",
        "20000",
        "--latency",
        "150ms+-50ms",
        "--error-rate",
        "0.05",
        "--garbage-rate",
        "0.01",
        "--seed",
        "7",
    ])
    .args;
    assert_eq!(a.latency.spread, Duration::from_millis(50));
    assert_eq!(
        (a.meters, a.seed, a.error_rate, a.garbage_rate),
        (20000, 7, 0.05, 0.01)
    );
    assert!(Cli::try_parse_from(["simulate", "--latency", "soon"]).is_err());
}

#[tokio::test]
async fn the_arrival_record_tells_demand_polls_from_other_reads() {
    let sim = start(SimulateArgs {
        record_arrivals: true,
        ..args()
    })
    .await;
    let eagle = eagle(&sim, TIMEOUT);
    let (relay_id, local_id) = (meter_cloud_id(1), meter_cloud_id(2));
    let relay_source = relay(relay_id);
    eagle.read_demand(relay_id, &relay_source).await.unwrap();
    eagle
        .read_summation_by(relay_id, &relay_source, Start::ANYTIME)
        .await
        .unwrap();
    eagle
        .read_price_by(relay_id, &relay_source, Start::ANYTIME)
        .await
        .unwrap();
    // device_list, then a device_query for demand, then one for summation.
    let local_source = local(&sim, &meter_install_code(local_id));
    eagle.read_demand(local_id, &local_source).await.unwrap();
    eagle
        .read_summation_by(local_id, &local_source, Start::ANYTIME)
        .await
        .unwrap();

    let record = sim.arrivals();
    let demand = |id: CloudId| {
        let m = record
            .meters
            .iter()
            .find(|m| m.cloud_id == id.as_str())
            .expect("the meter's arrivals");
        assert_eq!(m.demand.len(), m.at_ms.len());
        m.demand.clone()
    };
    assert_eq!(demand(relay_id), [true, false, false]);
    assert_eq!(demand(local_id), [false, true, false]);
    sim.stop().await;
}
