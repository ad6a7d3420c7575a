//! Parser tests over every sample fragment in `tests/support/fixtures/eagle/` (copied
//! from `shared/eagle/samples/`), with the expected values from its README,
//! plus a property test that the parsers never panic on arbitrary bytes.

use std::path::PathBuf;

use proptest::prelude::*;
use rainforest::protocol::{ErrorKind, ProtocolError, parse};

fn sample(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/fixtures/eagle")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn relay_demand_is_2_654_kw_at_2025_01_15_10_36() {
    let d = parse::demand(&sample("relay-demand.xml")).unwrap();
    assert!(close(d.kw(), 2.654), "{}", d.kw());
    assert_eq!(
        d.header.meter_time().to_rfc3339(),
        "2025-01-15T10:36:00+00:00"
    );
    assert_eq!(d.header.meter_mac_id, "0x0013500100c4e2f7");
    assert_eq!(d.header.device_mac_id, "0xd8d5b9000000a1c3");
    assert_eq!(
        (d.multiplier, d.divisor, d.digits_right, d.digits_left),
        (1, 1000, 3, 5)
    );
    assert_eq!(d.suppress_leading_zero, "Y");
}

#[test]
fn relay_demand_export_is_negative() {
    let d = parse::demand(&sample("relay-demand-export.xml")).unwrap();
    assert_eq!(d.demand, -1000);
    assert!(close(d.kw(), -1.0));
}

#[test]
fn zero_multiplier_and_divisor_mean_one() {
    let d = parse::demand(&sample("relay-demand-zero-scale.xml")).unwrap();
    assert_eq!((d.multiplier, d.divisor), (0, 0));
    assert!(close(d.kw(), 1234.0));
}

#[test]
fn relay_error_is_bad_credentials_with_text() {
    let err = parse::demand(&sample("relay-error.xml")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    let ProtocolError::BadCredentials { message } = err else {
        unreachable!()
    };
    assert!(
        message.contains("user and password do not match"),
        "{message}"
    );
}

#[test]
fn summation_delivered_and_received() {
    let s = parse::summation(&sample("relay-summation.xml")).unwrap();
    assert!(close(s.delivered_kwh(), 10005.329));
    assert!(close(s.received_kwh(), 12.345));
}

#[test]
fn price_is_0_28_usd_tier_2_peak() {
    let p = parse::price(&sample("relay-price.xml")).unwrap();
    assert!(close(p.value(), 0.28));
    assert_eq!((p.currency, p.tier), (840, 2));
    assert_eq!(p.rate_label.as_deref(), Some("Peak"));
}

#[test]
fn history_holds_two_summations_in_order() {
    let h = parse::history(&sample("relay-history.xml")).unwrap();
    assert_eq!(h.len(), 2);
    assert!(h[0].header.timestamp < h[1].header.timestamp);
    assert!(close(h[1].delivered_kwh(), 10005.329));
}

#[test]
fn local_device_list_has_one_connected_meter() {
    let list = parse::device_list(&sample("local-device-list.xml")).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].hardware_address, "0x0013500100c4e2f7");
    assert_eq!(list[0].model_id, "electric_meter");
    assert_eq!(list[0].connection_status, "Connected");
}

#[test]
fn local_device_query_values() {
    let r = parse::device_query(&sample("local-device-query.xml")).unwrap();
    assert!(close(r.demand_kw.unwrap(), 2.654));
    assert!(close(r.delivered_kwh.unwrap(), 10005.329));
    assert!(close(r.received_kwh.unwrap(), 12.345));
}

#[test]
fn element_names_are_case_insensitive_and_lists_one_or_many() {
    let body = b"<instantaneousDEMAND>\n<demand>0x10</demand><TIMESTAMP>0x1</TIMESTAMP><Extra>x</Extra>\n</instantaneousDEMAND>";
    let d = parse::demand(body).unwrap();
    assert_eq!(d.demand, 16);
    let two = b"<DeviceList><Device><ModelId>a</ModelId></Device><Device><ModelId>electric_meter</ModelId></Device></DeviceList>";
    assert_eq!(parse::device_list(two).unwrap().len(), 2);
}

#[test]
fn truncated_html_and_empty_bodies_are_malformed() {
    let full = sample("relay-demand.xml");
    for body in [
        &full[..full.len() / 2],
        b"<html><body>502 Bad Gateway</body></html>",
        b"",
        b"\r\n",
    ] {
        let err = parse::demand(body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed, "{body:?} -> {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse::demand(&bytes);
        let _ = parse::summation(&bytes);
        let _ = parse::history(&bytes);
        let _ = parse::price(&bytes);
        let _ = parse::device_list(&bytes);
        let _ = parse::device_query(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_mangled_samples(cut in 0usize..400, flip in 0usize..400, byte in any::<u8>()) {
        let mut body = sample("relay-demand.xml");
        if flip < body.len() { body[flip] = byte; }
        body.truncate(cut.min(body.len()));
        let _ = parse::demand(&body);
    }
}
