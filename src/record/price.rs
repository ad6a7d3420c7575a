//! The price stream's line: one price reading.
//!
//! Keeps the EAGLE's raw fields under their own names (`Price`,
//! `TrailingDigits`, `Currency`, `Tier`) next to the price in currency
//! units, as the demand record keeps `Demand`. It owns the line's shape
//! only; it does not know where lines are written or when meters are read.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::format_time;
use crate::cloud_id::CloudId;
use crate::protocol::PriceReading;

/// One price reading, as written to the spool and the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceRecord {
    /// The meter's cloud id.
    pub cloud_id: CloudId,
    /// When the request was sent, UTC RFC 3339 with milliseconds.
    pub polled_at: String,
    /// The scheduled instant this reading stands for, UTC RFC 3339 with
    /// milliseconds. Merges dedupe on (cloud_id, slot).
    pub slot: String,
    /// When the meter reported it (from `TimeStamp`), UTC RFC 3339; absent for EAGLE-200s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_time: Option<String>,
    /// Price per kWh in currency units (`Price` / 10^`TrailingDigits`).
    pub price: f64,
    /// The rate's label (e.g. `Peak`), when the meter sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_label: Option<String>,
    /// The tier's label, when the meter sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_label: Option<String>,
    /// Round-trip time of the request, in milliseconds.
    pub latency_ms: u64,
    /// `relay` or `local`.
    pub source: String,
    /// Raw seconds since 2000-01-01.
    #[serde(rename = "TimeStamp", default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u32>,
    /// Raw price as sent.
    #[serde(rename = "Price", default, skip_serializing_if = "Option::is_none")]
    pub raw_price: Option<u32>,
    /// Implied decimal places of `Price`.
    #[serde(
        rename = "TrailingDigits",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub trailing_digits: Option<u32>,
    /// ISO 4217 numeric currency code (840 = USD).
    #[serde(rename = "Currency", default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<u32>,
    /// Pricing tier.
    #[serde(rename = "Tier", default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
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

impl PriceRecord {
    /// Builds the line for `reading`, requested at `polled_at` for `slot`.
    pub fn new(
        cloud_id: CloudId,
        polled_at: DateTime<Utc>,
        slot: DateTime<Utc>,
        latency_ms: u64,
        source: &str,
        reading: &PriceReading,
    ) -> Self {
        let raw = reading.raw.as_ref();
        PriceRecord {
            cloud_id,
            polled_at: format_time(polled_at),
            slot: format_time(slot),
            meter_time: reading
                .meter_time
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            price: reading.price,
            rate_label: raw.and_then(|r| r.rate_label.clone()),
            tier_label: raw.and_then(|r| r.tier_label.clone()),
            latency_ms,
            source: source.to_string(),
            timestamp: raw.map(|r| r.header.timestamp),
            raw_price: raw.map(|r| r.price),
            trailing_digits: raw.map(|r| r.trailing_digits),
            currency: raw.map(|r| r.currency),
            tier: raw.map(|r| r.tier),
            device_mac_id: raw.map(|r| r.header.device_mac_id.clone()),
            meter_mac_id: reading.meter_mac_id.clone(),
        }
    }

    /// The record as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        super::summation::json_line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse;

    #[test]
    fn price_line_keeps_the_eagle_names() {
        let body = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/support/fixtures/eagle/relay-price.xml"),
        )
        .unwrap();
        let reading = PriceReading::from_relay(parse::price(&body).unwrap());
        let t = DateTime::parse_from_rfc3339("2025-01-15T10:45:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let line = PriceRecord::new(
            CloudId::parse("00ce69").unwrap(),
            t,
            t,
            12,
            "relay",
            &reading,
        )
        .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["price"], 0.28);
        assert_eq!(v["rate_label"], "Peak");
        assert_eq!(v["Price"], 0xaf0);
        assert_eq!(v["TrailingDigits"], 4);
        assert_eq!(v["Currency"], 840);
        assert_eq!(v["Tier"], 2);
        assert_eq!(v["slot"], "2025-01-15T10:45:00.250Z");
        assert!(v.get("tier_label").is_none());
    }
}
