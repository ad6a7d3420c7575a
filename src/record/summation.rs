//! The summation stream's line: one energy-counter reading, polled or
//! taken from the device's history.
//!
//! Like the demand [`super::Record`], it keeps the EAGLE's raw fields under
//! their own names (`TimeStamp`, `SummationDelivered`, `SummationReceived`,
//! `Multiplier`, `Divisor`) next to the scaled kWh, so a reader can check
//! the scaling years later. It owns the line's shape only; it does not know
//! where lines are written or when meters are read.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::format_time;
use crate::cloud_id::CloudId;
use crate::protocol::SummationReading;

/// The `source` of a line taken from `get_history_data` (backfill) rather
/// than from a scheduled poll.
pub const HISTORY_SOURCE: &str = "history";

/// One summation reading, as written to the spool and the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummationRecord {
    /// The meter's cloud id.
    pub cloud_id: CloudId,
    /// When the request was sent, UTC RFC 3339 with milliseconds.
    pub polled_at: String,
    /// The scheduled instant this reading stands for, UTC RFC 3339 with
    /// milliseconds: the poll's slot, or the device's own reading time for
    /// a history line. Merges dedupe on (cloud_id, slot).
    pub slot: String,
    /// When the meter measured (from `TimeStamp`), UTC RFC 3339; absent for EAGLE-200s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_time: Option<String>,
    /// Energy delivered to the premises, kWh, scaling applied.
    pub delivered_kwh: f64,
    /// Energy received from the premises (export), kWh, scaling applied.
    pub received_kwh: f64,
    /// Round-trip time of the request, in milliseconds.
    pub latency_ms: u64,
    /// `relay`, `local` or `history`.
    pub source: String,
    /// Raw seconds since 2000-01-01.
    #[serde(rename = "TimeStamp", default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u32>,
    /// Raw delivered counter as sent.
    #[serde(
        rename = "SummationDelivered",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub summation_delivered: Option<u32>,
    /// Raw received counter as sent.
    #[serde(
        rename = "SummationReceived",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub summation_received: Option<u32>,
    /// Raw multiplier as sent (0 means 1).
    #[serde(
        rename = "Multiplier",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub multiplier: Option<u32>,
    /// Raw divisor as sent (0 means 1).
    #[serde(rename = "Divisor", default, skip_serializing_if = "Option::is_none")]
    pub divisor: Option<u32>,
    /// The EAGLE's ZigBee MAC as a `0x…` string.
    #[serde(
        rename = "DeviceMacId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_mac_id: Option<String>,
    /// The meter's MAC as a `0x…` string.
    #[serde(
        rename = "MeterMacId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub meter_mac_id: Option<String>,
}

impl SummationRecord {
    /// Builds the line for `reading`, requested at `polled_at` for `slot`
    /// from `source` (`relay`, `local`, or [`HISTORY_SOURCE`]).
    pub fn new(
        cloud_id: CloudId,
        polled_at: DateTime<Utc>,
        slot: DateTime<Utc>,
        latency_ms: u64,
        source: &str,
        reading: &SummationReading,
    ) -> Self {
        let raw = reading.raw.as_ref();
        SummationRecord {
            cloud_id,
            polled_at: format_time(polled_at),
            slot: format_time(slot),
            meter_time: reading
                .meter_time
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            delivered_kwh: reading.delivered_kwh,
            received_kwh: reading.received_kwh,
            latency_ms,
            source: source.to_string(),
            timestamp: raw.map(|r| r.header.timestamp),
            summation_delivered: raw.map(|r| r.delivered),
            summation_received: raw.map(|r| r.received),
            multiplier: raw.map(|r| r.multiplier),
            divisor: raw.map(|r| r.divisor),
            device_mac_id: raw.map(|r| r.header.device_mac_id.clone()),
            meter_mac_id: reading.meter_mac_id.clone(),
        }
    }

    /// The line for one entry of a `get_history_data` answer: its slot is
    /// the device's own reading time, so it lands in that hour's file.
    pub fn from_history(
        cloud_id: CloudId,
        polled_at: DateTime<Utc>,
        latency_ms: u64,
        reading: &SummationReading,
    ) -> Self {
        let slot = reading.meter_time.unwrap_or(polled_at);
        Self::new(
            cloud_id,
            polled_at,
            slot,
            latency_ms,
            HISTORY_SOURCE,
            reading,
        )
    }

    /// The record as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        json_line(self)
    }
}

/// A record as one JSON line, newline included; shared by the kinds' records
/// (the demand record has its own in `record.rs`, which this slice does not
/// edit).
pub(super) fn json_line<T: Serialize>(record: &T) -> String {
    // Serialising plain strings and numbers cannot fail; an empty object
    // would still be a parseable line if it somehow did.
    let mut line = serde_json::to_string(record).unwrap_or_else(|_| "{}".into());
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn polled_line_keeps_the_eagle_names_and_the_slot() {
        let body = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/support/fixtures/eagle/relay-summation.xml"),
        )
        .unwrap();
        let reading = SummationReading::from_relay(parse::summation(&body).unwrap());
        let id = CloudId::parse("00ce69").unwrap();
        let line = SummationRecord::new(
            id,
            at("2025-01-15T10:36:05.123Z"),
            at("2025-01-15T10:36:05Z"),
            80,
            "relay",
            &reading,
        )
        .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["slot"], "2025-01-15T10:36:05.000Z");
        assert_eq!(v["delivered_kwh"], 10005.329);
        assert_eq!(v["received_kwh"], 12.345);
        assert_eq!(v["SummationDelivered"], 0x98ab51);
        assert_eq!(v["SummationReceived"], 0x3039);
        assert_eq!(v["Divisor"], 1000);
        assert_eq!(v["TimeStamp"], 0x2f1a4c10);
        assert_eq!(v["source"], "relay");
        let back: SummationRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back.summation_delivered, Some(0x98ab51));
    }

    #[test]
    fn history_line_is_slotted_at_the_device_time() {
        let body = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/support/fixtures/eagle/relay-history.xml"),
        )
        .unwrap();
        let first = parse::history(&body).unwrap().remove(0);
        let reading = SummationReading::from_relay(first);
        let r = SummationRecord::from_history(
            CloudId::parse("00ce69").unwrap(),
            at("2025-01-15T12:00:00Z"),
            40,
            &reading,
        );
        assert_eq!(r.source, HISTORY_SOURCE);
        assert_eq!(r.slot, "2025-01-15T09:36:00.000Z");
        assert_eq!(r.timestamp, Some(0x2f1a3e00));
    }
}
