//! The simulator's answer bodies, in the exact shapes of
//! `shared/eagle/samples/`: relay fragments with CRLF line ends, EAGLE-200
//! documents with LF. Each writer appends to one caller-owned `String`, so a
//! request costs one allocation however many fields it carries.

use std::fmt::Write;

/// The relay's answer to wrong or missing credentials and unknown cloud ids,
/// byte for byte (HTTP 200; the client classifies it as bad credentials).
pub(crate) const AUTH_ERROR: &str = "<Error>\r\n  <Text>Unauthorized: user and password do not match this cloud id</Text>\r\n</Error>\r\n";
/// The relay's answer when the gateway behind it is unreachable.
pub(crate) const OFFLINE_ERROR: &str = "<Error>\r\n  <Text>EAGLE is offline</Text>\r\n</Error>\r\n";
/// The answer to a command the simulator does not implement.
pub(crate) const UNKNOWN_COMMAND: &str = "<Error><Text>Unknown command</Text></Error>\r\n";
/// The page a broken proxy in front of the relay serves.
pub(crate) const HTML_502: &str = "<html><body>502 Bad Gateway</body></html>";
/// The body of an injected HTTP 500.
pub(crate) const HTML_500: &str = "<html><body>500 Internal Server Error</body></html>";

/// The MAC ids every relay notification starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Macs {
    /// The EAGLE's ZigBee MAC.
    pub(crate) device: u64,
    /// The meter's MAC.
    pub(crate) meter: u64,
}

/// Appends an `InstantaneousDemand` notification; `watts` goes out as signed
/// 24-bit two's complement with divisor 1000, i.e. in kW.
pub(crate) fn demand(out: &mut String, macs: Macs, timestamp: u32, watts: i32) {
    let raw = (watts as u32) & 0x00ff_ffff;
    let _ = write!(
        out,
        concat!(
            "<InstantaneousDemand>\r\n",
            "  <DeviceMacId>0x{dev:016x}</DeviceMacId>\r\n",
            "  <MeterMacId>0x{met:016x}</MeterMacId>\r\n",
            "  <TimeStamp>0x{ts:08x}</TimeStamp>\r\n",
            "  <Demand>0x{raw:06x}</Demand>\r\n",
            "  <Multiplier>0x00000001</Multiplier>\r\n",
            "  <Divisor>0x000003e8</Divisor>\r\n",
            "  <DigitsRight>0x03</DigitsRight>\r\n",
            "  <DigitsLeft>0x05</DigitsLeft>\r\n",
            "  <SuppressLeadingZero>Y</SuppressLeadingZero>\r\n",
            "</InstantaneousDemand>\r\n",
        ),
        dev = macs.device,
        met = macs.meter,
        ts = timestamp,
        raw = raw,
    );
}

/// Appends a `CurrentSummation` notification (Wh with divisor 1000, i.e. kWh),
/// each line prefixed by `indent` so it can nest inside `HistoryData`.
pub(crate) fn summation(
    out: &mut String,
    indent: &str,
    macs: Macs,
    timestamp: u32,
    delivered_wh: u32,
    received_wh: u32,
) {
    let _ = write!(
        out,
        concat!(
            "{i}<CurrentSummation>\r\n",
            "{i}  <DeviceMacId>0x{dev:016x}</DeviceMacId>\r\n",
            "{i}  <MeterMacId>0x{met:016x}</MeterMacId>\r\n",
            "{i}  <TimeStamp>0x{ts:08x}</TimeStamp>\r\n",
            "{i}  <SummationDelivered>0x{del:08x}</SummationDelivered>\r\n",
            "{i}  <SummationReceived>0x{rec:08x}</SummationReceived>\r\n",
            "{i}  <Multiplier>0x00000001</Multiplier>\r\n",
            "{i}  <Divisor>0x000003e8</Divisor>\r\n",
            "{i}  <DigitsRight>0x01</DigitsRight>\r\n",
            "{i}  <DigitsLeft>0x06</DigitsLeft>\r\n",
            "{i}  <SuppressLeadingZero>Y</SuppressLeadingZero>\r\n",
            "{i}</CurrentSummation>\r\n",
        ),
        i = indent,
        dev = macs.device,
        met = macs.meter,
        ts = timestamp,
        del = delivered_wh,
        rec = received_wh,
    );
}

/// Appends a `HistoryData` notification holding one `CurrentSummation` per
/// `(timestamp, delivered_wh, received_wh)` entry, in order.
pub(crate) fn history(
    out: &mut String,
    macs: Macs,
    entries: impl IntoIterator<Item = (u32, u32, u32)>,
) {
    out.push_str("<HistoryData>\r\n");
    for (ts, delivered, received) in entries {
        summation(out, "  ", macs, ts, delivered, received);
    }
    out.push_str("</HistoryData>\r\n");
}

/// Appends a `PriceCluster` notification: a two-tier tariff, peak 16:00-21:00 UTC.
pub(crate) fn price(out: &mut String, macs: Macs, timestamp: u32) {
    let (price, tier, label) = tariff(timestamp);
    let _ = write!(
        out,
        concat!(
            "<PriceCluster>\r\n",
            "  <DeviceMacId>0x{dev:016x}</DeviceMacId>\r\n",
            "  <MeterMacId>0x{met:016x}</MeterMacId>\r\n",
            "  <TimeStamp>0x{ts:08x}</TimeStamp>\r\n",
            "  <Price>0x{price:08x}</Price>\r\n",
            "  <Currency>0x0348</Currency>\r\n",
            "  <TrailingDigits>0x04</TrailingDigits>\r\n",
            "  <Tier>0x{tier:02x}</Tier>\r\n",
            "  <RateLabel>{label}</RateLabel>\r\n",
            "</PriceCluster>\r\n",
        ),
        dev = macs.device,
        met = macs.meter,
        ts = timestamp,
        price = price,
        tier = tier,
        label = label,
    );
}

/// The simulated tariff at EAGLE time `timestamp`: raw price (4 trailing
/// digits), tier and rate label; peak 16:00-21:00 UTC.
pub(crate) fn tariff(timestamp: u32) -> (u32, u32, &'static str) {
    let hour = timestamp % 86_400 / 3600;
    if (16..21).contains(&hour) {
        (2800, 2, "Peak")
    } else {
        (1200, 1, "Off-Peak")
    }
}

/// [`tariff`]'s price in currency units, as an EAGLE-200 reports `zigbee:Price`.
pub(crate) fn tariff_price(timestamp: u32) -> f64 {
    f64::from(tariff(timestamp).0) / 10_000.0
}

/// Appends an EAGLE-200 `DeviceList` with the one electric meter.
pub(crate) fn device_list(out: &mut String, meter_mac: u64, unix_secs: u32) {
    let _ = write!(
        out,
        concat!(
            "<DeviceList>\n",
            "  <Device>\n",
            "    <HardwareAddress>0x{met:016x}</HardwareAddress>\n",
            "    <Manufacturer>Generic</Manufacturer>\n",
            "    <ModelId>electric_meter</ModelId>\n",
            "    <Protocol>Zigbee</Protocol>\n",
            "    <LastContact>0x{lc:08x}</LastContact>\n",
            "    <ConnectionStatus>Connected</ConnectionStatus>\n",
            "    <NetworkAddress>0x0000</NetworkAddress>\n",
            "    <Name>Power Meter</Name>\n",
            "  </Device>\n",
            "</DeviceList>\n",
        ),
        met = meter_mac,
        lc = unix_secs,
    );
}

/// Appends an EAGLE-200 `Device` answer to `device_query` with demand (kW),
/// both energy counters (kWh) and the price when given, values already scaled as the
/// device does.
pub(crate) fn device_query(
    out: &mut String,
    meter_mac: u64,
    unix_secs: u32,
    demand_kw: f64,
    delivered_kwh: f64,
    received_kwh: f64,
    price: Option<f64>,
) {
    let _ = write!(
        out,
        concat!(
            "<Device>\n",
            "  <DeviceDetails>\n",
            "    <HardwareAddress>0x{met:016x}</HardwareAddress>\n",
            "    <Name>Power Meter</Name>\n",
            "    <Protocol>Zigbee</Protocol>\n",
            "    <LastContact>0x{lc:08x}</LastContact>\n",
            "    <ConnectionStatus>Connected</ConnectionStatus>\n",
            "    <NetworkAddress>0x0000</NetworkAddress>\n",
            "  </DeviceDetails>\n",
            "  <Components>\n",
            "    <Component>\n",
            "      <HardwareId>all</HardwareId>\n",
            "      <FixedId>0</FixedId>\n",
            "      <Name>Main</Name>\n",
            "      <Variables>\n",
        ),
        met = meter_mac,
        lc = unix_secs,
    );
    variable(
        out,
        "zigbee:InstantaneousDemand",
        demand_kw,
        "kW",
        "Instantaneous Demand",
    );
    variable(
        out,
        "zigbee:CurrentSummationDelivered",
        delivered_kwh,
        "kWh",
        "Total Meter Energy Delivered",
    );
    variable(
        out,
        "zigbee:CurrentSummationReceived",
        received_kwh,
        "kWh",
        "Total Meter Energy Received",
    );
    if let Some(price) = price {
        variable(out, "zigbee:Price", price, "USD", "Price");
    }
    out.push_str("      </Variables>\n    </Component>\n  </Components>\n</Device>\n");
}

fn variable(out: &mut String, name: &str, value: f64, units: &str, description: &str) {
    let _ = write!(
        out,
        concat!(
            "        <Variable>\n",
            "          <Name>{name}</Name>\n",
            "          <Value>{value:.6}</Value>\n",
            "          <Units>{units}</Units>\n",
            "          <Description>{description}</Description>\n",
            "        </Variable>\n",
        ),
        name = name,
        value = value,
        units = units,
        description = description,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse;

    const MACS: Macs = Macs {
        device: 0xd8d5_b900_0000_a1c3,
        meter: 0x0013_5001_00c4_e2f7,
    };

    /// The project's copies of `shared/eagle/samples/`.
    macro_rules! sample {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/fixtures/eagle/",
                $name
            ))
        };
    }

    /// The writers reproduce the samples byte for byte from their values.
    #[test]
    fn writers_reproduce_the_samples() {
        let mut out = String::new();
        demand(&mut out, MACS, 0x2f1a_4c10, 2654);
        assert_eq!(out, sample!("relay-demand.xml"));
        out.clear();
        summation(&mut out, "", MACS, 0x2f1a_4c10, 0x0098_ab51, 0x3039);
        assert_eq!(out, sample!("relay-summation.xml"));
        out.clear();
        device_query(
            &mut out,
            MACS.meter,
            0x6743_a1b2,
            2.654,
            10005.329,
            12.345,
            None,
        );
        assert_eq!(out, sample!("local-device-query.xml"));
        out.clear();
        device_list(&mut out, MACS.meter, 0x6743_a1b2);
        assert_eq!(out, sample!("local-device-list.xml"));
        assert_eq!(AUTH_ERROR, sample!("relay-error.xml"));
    }

    #[test]
    fn negative_demand_is_24_bit_twos_complement() {
        let mut out = String::new();
        demand(&mut out, MACS, 0x2f1a_4c16, -1000);
        assert!(out.contains("<Demand>0xfffc18</Demand>"), "{out}");
        assert_eq!(parse::demand(out.as_bytes()).unwrap().demand, -1000);
    }

    #[test]
    fn every_writer_parses_with_the_crate_parsers() {
        let mut out = String::new();
        history(&mut out, MACS, [(1, 10, 0), (2, 20, 5)]);
        let h = parse::history(out.as_bytes()).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[1].header.timestamp, h[1].delivered, h[1].received),
            (2, 20, 5)
        );
        out.clear();
        price(&mut out, MACS, 17 * 3600);
        let p = parse::price(out.as_bytes()).unwrap();
        assert_eq!(
            (p.price, p.tier, p.rate_label.as_deref()),
            (2800, 2, Some("Peak"))
        );
        for err in [AUTH_ERROR, OFFLINE_ERROR, UNKNOWN_COMMAND] {
            assert!(parse::demand(err.as_bytes()).is_err());
        }
        assert!(matches!(
            parse::demand(AUTH_ERROR.as_bytes()),
            Err(crate::protocol::ProtocolError::BadCredentials { .. })
        ));
    }
}
