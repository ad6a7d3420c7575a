//! Reading the streams beside demand: energy counters (summation), price,
//! and the device's stored summation history.
//!
//! Owns what each kind's read asks for and what it gives back, for both
//! sources: the relay's `get_current_summation`, `get_price` and
//! `get_history_data`, and the EAGLE-200's `device_query` for the same
//! variables. Requests go through the same paced, capped path as demand
//! ([`Eagle`]'s `relay_by`/`local_by`), so every kind shares the global caps.
//! It knows nothing about cadences or files: the scheduler decides when, the
//! records decide the line.

use chrono::{DateTime, Utc};

use super::client::{Eagle, ReadError};
use super::pacing::Start;
use super::parse::{self, EAGLE_EPOCH_OFFSET};
use super::{Command, ProtocolError, Source};
use crate::cloud_id::CloudId;

/// One energy-counter reading, whichever source answered.
#[derive(Debug, Clone, PartialEq)]
pub struct SummationReading {
    /// Energy delivered to the premises, kWh, scaling applied.
    pub delivered_kwh: f64,
    /// Energy received from the premises (export), kWh, scaling applied.
    pub received_kwh: f64,
    /// When the meter measured it, if the source says.
    pub meter_time: Option<DateTime<Utc>>,
    /// The relay's raw fields (absent for an EAGLE-200, which sends kWh).
    pub raw: Option<parse::Summation>,
    /// The meter's MAC id (`0x…`), when known.
    pub meter_mac_id: Option<String>,
    /// When the request went out, after any wait for the caps (`None`
    /// for a reading no request of ours produced, such as a history entry).
    pub sent: Option<tokio::time::Instant>,
}

impl SummationReading {
    /// The reading a relay notification (or a history entry) carries.
    pub fn from_relay(raw: parse::Summation) -> Self {
        SummationReading {
            delivered_kwh: raw.delivered_kwh(),
            received_kwh: raw.received_kwh(),
            meter_time: Some(raw.header.meter_time()),
            meter_mac_id: Some(raw.header.meter_mac_id.clone()),
            raw: Some(raw),
            sent: None,
        }
    }
}

/// One price reading, whichever source answered.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceReading {
    /// Price per kWh in currency units (`Price` / 10^`TrailingDigits`).
    pub price: f64,
    /// When the meter reported it, if the source says.
    pub meter_time: Option<DateTime<Utc>>,
    /// The relay's raw fields, with currency, tier and labels (absent for
    /// an EAGLE-200, which sends the price alone).
    pub raw: Option<parse::Price>,
    /// The meter's MAC id (`0x…`), when known.
    pub meter_mac_id: Option<String>,
    /// When the request went out, after any wait for the caps (`None`
    /// for a reading no request of ours produced, such as a history entry).
    pub sent: Option<tokio::time::Instant>,
}

impl PriceReading {
    /// The reading a relay `PriceCluster` carries.
    pub fn from_relay(raw: parse::Price) -> Self {
        PriceReading {
            price: raw.value(),
            meter_time: Some(raw.header.meter_time()),
            meter_mac_id: Some(raw.header.meter_mac_id.clone()),
            raw: Some(raw),
            sent: None,
        }
    }
}

/// Seconds since the EAGLE epoch (2000-01-01) of `t`, clamped to what the
/// protocol's 32-bit times hold.
pub fn eagle_seconds(t: DateTime<Utc>) -> u32 {
    (t.timestamp() - EAGLE_EPOCH_OFFSET).clamp(0, i64::from(u32::MAX)) as u32
}

impl Eagle {
    /// Reads the energy counters, sent by `start`'s deadline or not at all.
    pub async fn read_summation_by(
        &self,
        cloud_id: CloudId,
        source: &Source,
        start: Start,
    ) -> Result<SummationReading, ReadError> {
        match source {
            Source::Relay { .. } => {
                let body = self
                    .relay_by(cloud_id, source, &Command::CurrentSummation, start)
                    .await?;
                Ok(SummationReading {
                    sent: Some(body.sent),
                    ..SummationReading::from_relay(parse::summation(&body)?)
                })
            }
            Source::Local { .. } => {
                let (address, reading, sent) = self
                    .query(cloud_id, source, SUMMATION_VARIABLES, start)
                    .await?;
                let delivered_kwh = reading
                    .delivered_kwh
                    .ok_or_else(|| not_reported("zigbee:CurrentSummationDelivered"))?;
                Ok(SummationReading {
                    delivered_kwh,
                    received_kwh: reading.received_kwh.unwrap_or(0.0),
                    meter_time: None,
                    raw: None,
                    meter_mac_id: Some(address),
                    sent: Some(sent),
                })
            }
        }
    }

    /// Reads the current price, sent by `start`'s deadline or not at all.
    pub async fn read_price_by(
        &self,
        cloud_id: CloudId,
        source: &Source,
        start: Start,
    ) -> Result<PriceReading, ReadError> {
        match source {
            Source::Relay { .. } => {
                let body = self
                    .relay_by(cloud_id, source, &Command::Price, start)
                    .await?;
                Ok(PriceReading {
                    sent: Some(body.sent),
                    ..PriceReading::from_relay(parse::price(&body)?)
                })
            }
            Source::Local { .. } => {
                let (address, reading, sent) =
                    self.query(cloud_id, source, PRICE_VARIABLES, start).await?;
                let price = reading.price.ok_or_else(|| not_reported("zigbee:Price"))?;
                Ok(PriceReading {
                    price,
                    meter_time: None,
                    raw: None,
                    meter_mac_id: Some(address),
                    sent: Some(sent),
                })
            }
        }
    }

    /// Asks the relay for the device's stored summations between `from`
    /// and `to`, `frequency_s` apart (the device may answer coarser, fewer,
    /// or out of order: callers sort and keep what falls in the range).
    /// EAGLE-200s keep no history the local API serves.
    pub async fn read_history_by(
        &self,
        cloud_id: CloudId,
        source: &Source,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        frequency_s: u32,
        start: Start,
    ) -> Result<Vec<parse::Summation>, ReadError> {
        if matches!(source, Source::Local { .. }) {
            return Err(ProtocolError::Malformed {
                reason: "an EAGLE-200's local API serves no history".into(),
            }
            .into());
        }
        let command = Command::HistoryData {
            start: eagle_seconds(from),
            end: Some(eagle_seconds(to)),
            frequency: Some(frequency_s),
        };
        let body = self.relay_by(cloud_id, source, &command, start).await?;
        Ok(parse::history(&body)?)
    }

    /// One `device_query` for `variables` of the EAGLE-200's meter.
    async fn query(
        &self,
        cloud_id: CloudId,
        source: &Source,
        variables: &[&str],
        start: Start,
    ) -> Result<(String, parse::LocalReading, tokio::time::Instant), ReadError> {
        let Source::Local { host, .. } = source else {
            return Err(ProtocolError::Malformed {
                reason: "device_query sent to a relay source".into(),
            }
            .into());
        };
        let address = self
            .local_meter_address(cloud_id, source, host, start)
            .await?;
        let body = self
            .local_by(cloud_id, source, &query_xml(&address, variables), start)
            .await?;
        Ok((address, parse::device_query(&body)?, body.sent))
    }
}

/// The EAGLE-200 variables a summation read asks for.
const SUMMATION_VARIABLES: &[&str] = &[
    "zigbee:CurrentSummationDelivered",
    "zigbee:CurrentSummationReceived",
];
/// The EAGLE-200 variables a price read asks for.
const PRICE_VARIABLES: &[&str] = &["zigbee:Price"];

fn not_reported(variable: &str) -> ProtocolError {
    ProtocolError::Malformed {
        reason: format!("the meter has not reported {variable} yet"),
    }
}

/// A `device_query` body asking the meter at `hardware_address` for
/// `variables` of its `Main` component.
pub(super) fn query_xml(hardware_address: &str, variables: &[&str]) -> String {
    let mut vars = String::new();
    for v in variables {
        vars.push_str(&format!(
            "        <Variable><Name>{v}</Name></Variable>\r\n"
        ));
    }
    format!(
        "<Command>\r\n  <Name>device_query</Name>\r\n  <DeviceDetails>\r\n    <HardwareAddress>{hardware_address}</HardwareAddress>\r\n  </DeviceDetails>\r\n  <Components>\r\n    <Component>\r\n      <Name>Main</Name>\r\n      <Variables>\r\n{vars}      </Variables>\r\n    </Component>\r\n  </Components>\r\n</Command>\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support/fixtures/eagle")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    #[test]
    fn summation_sample_scales_to_kwh_and_keeps_raw_fields() {
        let r =
            SummationReading::from_relay(parse::summation(&sample("relay-summation.xml")).unwrap());
        assert!((r.delivered_kwh - 10005.329).abs() < 1e-9);
        assert!((r.received_kwh - 12.345).abs() < 1e-9);
        assert_eq!(
            r.meter_time.unwrap().to_rfc3339(),
            "2025-01-15T10:36:00+00:00"
        );
        let raw = r.raw.unwrap();
        assert_eq!(
            (raw.delivered, raw.multiplier, raw.divisor),
            (0x98ab51, 1, 1000)
        );
    }

    #[test]
    fn price_sample_is_0_28_usd_tier_2_peak() {
        let r = PriceReading::from_relay(parse::price(&sample("relay-price.xml")).unwrap());
        assert!((r.price - 0.28).abs() < 1e-12);
        let raw = r.raw.unwrap();
        assert_eq!((raw.currency, raw.tier, raw.trailing_digits), (840, 2, 4));
        assert_eq!(raw.rate_label.as_deref(), Some("Peak"));
    }

    #[test]
    fn local_query_sample_gives_summation_and_the_query_names_its_variables() {
        let r = parse::device_query(&sample("local-device-query.xml")).unwrap();
        assert_eq!(r.delivered_kwh, Some(10005.329));
        assert_eq!(r.received_kwh, Some(12.345));
        assert_eq!(r.price, None);
        let xml = query_xml("0x0013500100c4e2f7", SUMMATION_VARIABLES);
        assert!(xml.contains("<Name>zigbee:CurrentSummationReceived</Name>"));
        assert!(xml.contains("<HardwareAddress>0x0013500100c4e2f7</HardwareAddress>"));
    }

    #[test]
    fn eagle_seconds_round_trip_the_epoch() {
        let t = parse::eagle_time(0x2f1a_4c10);
        assert_eq!(eagle_seconds(t), 0x2f1a_4c10);
        assert_eq!(eagle_seconds(DateTime::<Utc>::UNIX_EPOCH), 0);
    }
}
