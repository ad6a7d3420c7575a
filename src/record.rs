//! The JSON-lines record: one line per successful poll.
//!
//! This is the archive's schema, read by researchers' scripts for years, so
//! it keeps the old logger's raw field names (`TimeStamp`, `Demand`, …) next
//! to the decoded values. It owns the line's shape and its (de)serialisation;
//! it does not know where lines are written.

pub mod price;
pub mod summation;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::cloud_id::CloudId;
use crate::protocol::Reading;

/// One poll's result, as written to the spool and the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The meter's cloud id.
    pub cloud_id: CloudId,
    /// When the poll was sent, UTC RFC 3339 with milliseconds; decides the hour file.
    pub polled_at: String,
    /// The scheduled instant this reading was taken for, UTC RFC 3339 with
    /// milliseconds: the same for every pinger, so a hand-over duplicate is
    /// recognised by `(cloud_id, slot)`. Absent for on-demand reads, which
    /// have no schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// When the meter measured (from `TimeStamp`), UTC RFC 3339; absent for EAGLE-200s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_time: Option<String>,
    /// Demand in kW, scaling applied; negative is net export.
    pub demand_kw: f64,
    /// Round-trip time of the request, in milliseconds.
    pub latency_ms: u64,
    /// `relay` or `local`.
    pub source: String,
    /// Raw seconds since 2000-01-01 (old logger's name).
    #[serde(rename = "TimeStamp", default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u32>,
    /// Raw demand as the signed 24-bit value (old logger's name).
    #[serde(rename = "Demand", default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<i32>,
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
    /// Display hint.
    #[serde(
        rename = "DigitsRight",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub digits_right: Option<u32>,
    /// Display hint.
    #[serde(
        rename = "DigitsLeft",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub digits_left: Option<u32>,
    /// Display hint, `Y` or `N`.
    #[serde(
        rename = "SuppressLeadingZero",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub suppress_leading_zero: Option<String>,
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

/// Formats a UTC time the way every record field does: RFC 3339, milliseconds, `Z`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Record {
    /// Builds the record for a reading taken at `polled_at`.
    pub fn new(
        cloud_id: CloudId,
        polled_at: DateTime<Utc>,
        latency_ms: u64,
        source: &str,
        reading: &Reading,
    ) -> Self {
        let raw = reading.raw.as_ref();
        Record {
            cloud_id,
            polled_at: format_time(polled_at),
            slot: None,
            meter_time: reading
                .meter_time
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            demand_kw: reading.demand_kw,
            latency_ms,
            source: source.to_string(),
            timestamp: raw.map(|r| r.header.timestamp),
            demand: raw.map(|r| r.demand),
            multiplier: raw.map(|r| r.multiplier),
            divisor: raw.map(|r| r.divisor),
            digits_right: raw.map(|r| r.digits_right),
            digits_left: raw.map(|r| r.digits_left),
            suppress_leading_zero: raw.map(|r| r.suppress_leading_zero.clone()),
            device_mac_id: raw.map(|r| r.header.device_mac_id.clone()),
            meter_mac_id: reading.meter_mac_id.clone(),
        }
    }

    /// The record of a scheduled poll, for the instant `slot`.
    pub fn with_slot(mut self, slot: DateTime<Utc>) -> Self {
        self.slot = Some(format_time(slot));
        self
    }

    /// The record as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        // Serialising plain strings and numbers cannot fail; an empty object
        // would still be a parseable line if it somehow did.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse;

    #[test]
    fn record_keeps_old_raw_names_and_mac_strings() {
        let body = b"<InstantaneousDemand><DeviceMacId>0xd8d5b9000000a1c3</DeviceMacId>\
            <MeterMacId>0x0013500100c4e2f7</MeterMacId><TimeStamp>0x2f1a4c10</TimeStamp>\
            <Demand>0x000a5e</Demand><Multiplier>0x1</Multiplier><Divisor>0x3e8</Divisor>\
            </InstantaneousDemand>";
        let d = parse::demand(body).unwrap();
        let reading = Reading {
            demand_kw: d.kw(),
            meter_time: Some(d.header.meter_time()),
            meter_mac_id: Some(d.header.meter_mac_id.clone()),
            raw: Some(d),
            sent: None,
        };
        let t = DateTime::parse_from_rfc3339("2025-01-15T10:36:05.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let line =
            Record::new(CloudId::parse("00ce69").unwrap(), t, 150, "relay", &reading).to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["polled_at"], "2025-01-15T10:36:05.123Z");
        assert_eq!(v["meter_time"], "2025-01-15T10:36:00Z");
        assert_eq!(v["demand_kw"], 2.654);
        assert_eq!(v["Demand"], 2654);
        assert_eq!(v["MeterMacId"], "0x0013500100c4e2f7");
        assert!(line.ends_with('\n'));
        assert!(v.get("slot").is_none(), "an unscheduled read has no slot");
    }

    #[test]
    fn slot_follows_polled_at_with_milliseconds() {
        let reading = Reading {
            demand_kw: 1.5,
            meter_time: None,
            meter_mac_id: None,
            raw: None,
            sent: None,
        };
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let line = Record::new(
            CloudId::parse("00ce69").unwrap(),
            at("2025-01-15T10:36:05.123Z"),
            150,
            "relay",
            &reading,
        )
        .with_slot(at("2025-01-15T10:36:05.000Z"))
        .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["slot"], "2025-01-15T10:36:05.000Z");
        let keys: Vec<&str> = line
            .trim_start_matches('{')
            .split(",\"")
            .map(|kv| kv.trim_start_matches('"').split('"').next().unwrap_or(""))
            .collect();
        assert_eq!(&keys[..3], ["cloud_id", "polled_at", "slot"]);
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back.slot.as_deref(), Some("2025-01-15T10:36:05.000Z"));
    }
}
