//! Typed EAGLE answers, read from the [`super::xml`] tree.
//!
//! Owns the protocol's arithmetic (signed 24-bit demand, `0 means 1` scaling,
//! the 2000-01-01 epoch) and the classification of relay `<Error>` texts. It
//! does no I/O.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use super::ProtocolError;
use super::xml::{self, Element};

/// Seconds between the Unix epoch and the EAGLE epoch, 2000-01-01T00:00:00Z.
pub const EAGLE_EPOCH_OFFSET: i64 = 946_684_800;

/// Converts an EAGLE `TimeStamp` to UTC.
pub fn eagle_time(ts: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(EAGLE_EPOCH_OFFSET + i64::from(ts), 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Interprets the low 24 bits of `raw` as a two's-complement integer.
pub fn signed_24(raw: u32) -> i32 {
    let v = (raw & 0x00ff_ffff) as i32;
    if v & 0x0080_0000 != 0 {
        v - 0x0100_0000
    } else {
        v
    }
}

/// The protocol's scale rule: a multiplier or divisor of 0 means 1.
fn scale(value: f64, multiplier: u32, divisor: u32) -> f64 {
    let m = if multiplier == 0 { 1 } else { multiplier };
    let d = if divisor == 0 { 1 } else { divisor };
    value * f64::from(m) / f64::from(d)
}

/// Fields shared by every relay notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Header {
    /// The EAGLE's ZigBee MAC, kept as the `0x…` string (64-bit values do not
    /// survive JSON numbers).
    pub device_mac_id: String,
    /// The meter's MAC, as a `0x…` string.
    pub meter_mac_id: String,
    /// Raw seconds since 2000-01-01T00:00:00Z.
    pub timestamp: u32,
}

impl Header {
    /// When the meter reported, in UTC.
    pub fn meter_time(&self) -> DateTime<Utc> {
        eagle_time(self.timestamp)
    }
}

/// An `InstantaneousDemand` notification with its raw fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Demand {
    /// MAC ids and meter time.
    pub header: Header,
    /// Raw demand as the signed 24-bit value.
    pub demand: i32,
    /// Scale numerator as sent (0 is kept; it means 1 when scaling).
    pub multiplier: u32,
    /// Scale denominator as sent (0 is kept; it means 1 when scaling).
    pub divisor: u32,
    /// Display hint.
    pub digits_right: u32,
    /// Display hint.
    pub digits_left: u32,
    /// Display hint, `Y`/`N` as sent (empty when absent).
    pub suppress_leading_zero: String,
}

impl Demand {
    /// Demand in kW, scaling applied.
    pub fn kw(&self) -> f64 {
        scale(f64::from(self.demand), self.multiplier, self.divisor)
    }
}

/// A `CurrentSummation` notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summation {
    /// MAC ids and meter time.
    pub header: Header,
    /// Raw delivered counter.
    pub delivered: u32,
    /// Raw received counter.
    pub received: u32,
    /// Scale numerator as sent.
    pub multiplier: u32,
    /// Scale denominator as sent.
    pub divisor: u32,
}

impl Summation {
    /// Energy delivered to the premises, kWh.
    pub fn delivered_kwh(&self) -> f64 {
        scale(f64::from(self.delivered), self.multiplier, self.divisor)
    }
    /// Energy received from the premises (export), kWh.
    pub fn received_kwh(&self) -> f64 {
        scale(f64::from(self.received), self.multiplier, self.divisor)
    }
}

/// A `PriceCluster` notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Price {
    /// MAC ids and meter time.
    pub header: Header,
    /// Raw price.
    pub price: u32,
    /// ISO 4217 numeric currency code (840 = USD).
    pub currency: u32,
    /// Implied decimal places of `price`.
    pub trailing_digits: u32,
    /// Pricing tier.
    pub tier: u32,
    /// Optional rate label.
    pub rate_label: Option<String>,
    /// Optional tier label.
    pub tier_label: Option<String>,
}

impl Price {
    /// Price per kWh in the currency's units.
    pub fn value(&self) -> f64 {
        f64::from(self.price) / 10f64.powi(self.trailing_digits.min(12) as i32)
    }
}

fn parse_hex(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

fn hex_field(el: &Element, name: &str) -> Result<u32, ProtocolError> {
    let text = el
        .child_text(name)
        .ok_or_else(|| ProtocolError::Malformed {
            reason: format!("<{}> has no <{name}>", el.name),
        })?;
    parse_hex(text).ok_or_else(|| ProtocolError::Malformed {
        reason: format!("<{name}> is not a hex number: {:?}", truncate(text)),
    })
}

fn hex_field_or(el: &Element, name: &str, default: u32) -> Result<u32, ProtocolError> {
    match el.child_text(name) {
        None => Ok(default),
        Some(_) => hex_field(el, name),
    }
}

fn mac_field(el: &Element, name: &str) -> String {
    el.child_text(name).unwrap_or_default().to_ascii_lowercase()
}

fn header(el: &Element) -> Result<Header, ProtocolError> {
    Ok(Header {
        device_mac_id: mac_field(el, "devicemacid"),
        meter_mac_id: mac_field(el, "metermacid"),
        timestamp: hex_field(el, "timestamp")?,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

/// Parses a body into its root element, turning relay `<Error>` fragments and
/// unexpected roots into classified errors.
pub fn root(body: &[u8], expected: &str) -> Result<Element, ProtocolError> {
    let el = xml::parse(body).map_err(|e| ProtocolError::Malformed {
        reason: e.to_string(),
    })?;
    if el.name == "error" {
        let text = el
            .child_text("text")
            .or_else(|| el.child_text("description"))
            .unwrap_or(el.text.as_str())
            .to_string();
        return Err(classify_error_text(&text));
    }
    if el.name != expected {
        return Err(ProtocolError::Malformed {
            reason: format!("expected <{expected}>, got <{}>", el.name),
        });
    }
    Ok(el)
}

/// Sorts a relay `<Error>` text into bad credentials (stop hammering, flag the
/// user) versus everything else (try again later).
pub fn classify_error_text(text: &str) -> ProtocolError {
    let lower = text.to_ascii_lowercase();
    let auth_words = [
        "unauthorized",
        "not authorized",
        "authentication",
        "password",
        "invalid user",
        "login",
        "credential",
    ];
    let message = truncate(text.trim());
    if auth_words.iter().any(|w| lower.contains(w)) {
        ProtocolError::BadCredentials { message }
    } else {
        ProtocolError::Relay { message }
    }
}

/// Parses an `InstantaneousDemand` answer.
pub fn demand(body: &[u8]) -> Result<Demand, ProtocolError> {
    let el = root(body, "instantaneousdemand")?;
    demand_from(&el)
}

fn demand_from(el: &Element) -> Result<Demand, ProtocolError> {
    let raw = hex_field(el, "demand")?;
    if raw > 0x00ff_ffff {
        return Err(ProtocolError::Malformed {
            reason: format!("<Demand> 0x{raw:x} is wider than 24 bits"),
        });
    }
    Ok(Demand {
        header: header(el)?,
        demand: signed_24(raw),
        multiplier: hex_field_or(el, "multiplier", 1)?,
        divisor: hex_field_or(el, "divisor", 1)?,
        digits_right: hex_field_or(el, "digitsright", 0)?,
        digits_left: hex_field_or(el, "digitsleft", 0)?,
        suppress_leading_zero: el
            .child_text("suppressleadingzero")
            .unwrap_or_default()
            .to_string(),
    })
}

fn summation_from(el: &Element) -> Result<Summation, ProtocolError> {
    Ok(Summation {
        header: header(el)?,
        delivered: hex_field(el, "summationdelivered")?,
        received: hex_field_or(el, "summationreceived", 0)?,
        multiplier: hex_field_or(el, "multiplier", 1)?,
        divisor: hex_field_or(el, "divisor", 1)?,
    })
}

/// Parses a `CurrentSummation` answer.
pub fn summation(body: &[u8]) -> Result<Summation, ProtocolError> {
    summation_from(&root(body, "currentsummation")?)
}

/// Parses a `HistoryData` answer: zero or more summations, in document order.
pub fn history(body: &[u8]) -> Result<Vec<Summation>, ProtocolError> {
    let el = root(body, "historydata")?;
    el.children_named("currentsummation")
        .map(summation_from)
        .collect()
}

/// Parses a `PriceCluster` answer.
pub fn price(body: &[u8]) -> Result<Price, ProtocolError> {
    let el = root(body, "pricecluster")?;
    Ok(Price {
        header: header(&el)?,
        price: hex_field(&el, "price")?,
        currency: hex_field_or(&el, "currency", 0)?,
        trailing_digits: hex_field_or(&el, "trailingdigits", 0)?,
        tier: hex_field_or(&el, "tier", 0)?,
        rate_label: el.child_text("ratelabel").map(str::to_string),
        tier_label: el.child_text("tierlabel").map(str::to_string),
    })
}

/// One device from an EAGLE-200 `device_list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalDevice {
    /// `0x…` hardware address used in `device_query`.
    pub hardware_address: String,
    /// `electric_meter` for meters.
    pub model_id: String,
    /// `Connected`, …
    pub connection_status: String,
    /// Display name.
    pub name: String,
}

/// Parses an EAGLE-200 `device_list` answer (one or many `<Device>`).
pub fn device_list(body: &[u8]) -> Result<Vec<LocalDevice>, ProtocolError> {
    let el = root(body, "devicelist")?;
    Ok(el
        .children_named("device")
        .map(|d| LocalDevice {
            hardware_address: mac_field(d, "hardwareaddress"),
            model_id: d.child_text("modelid").unwrap_or_default().to_string(),
            connection_status: d
                .child_text("connectionstatus")
                .unwrap_or_default()
                .to_string(),
            name: d.child_text("name").unwrap_or_default().to_string(),
        })
        .collect())
}

/// Readings from an EAGLE-200 `device_query`; values arrive already scaled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalReading {
    /// The meter's hardware address.
    pub hardware_address: String,
    /// `zigbee:InstantaneousDemand`, kW (None when the meter has not reported).
    pub demand_kw: Option<f64>,
    /// `zigbee:CurrentSummationDelivered`, kWh.
    pub delivered_kwh: Option<f64>,
    /// `zigbee:CurrentSummationReceived`, kWh.
    pub received_kwh: Option<f64>,
    /// `zigbee:Price`, in currency units per kWh.
    pub price: Option<f64>,
    /// `LastContact` as Unix seconds, when present.
    pub last_contact: Option<u32>,
}

/// Parses an EAGLE-200 `device_query` answer.
pub fn device_query(body: &[u8]) -> Result<LocalReading, ProtocolError> {
    let el = root(body, "device")?;
    let details = el.child("devicedetails");
    let mut reading = LocalReading {
        hardware_address: details
            .map(|d| mac_field(d, "hardwareaddress"))
            .unwrap_or_default(),
        demand_kw: None,
        delivered_kwh: None,
        received_kwh: None,
        price: None,
        last_contact: details
            .and_then(|d| d.child_text("lastcontact"))
            .and_then(parse_hex),
    };
    let variables = el
        .children_named("components")
        .flat_map(|c| c.children_named("component"))
        .flat_map(|c| c.children_named("variables"))
        .flat_map(|v| v.children_named("variable"));
    for var in variables {
        let name = var
            .child_text("name")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let value = match var.child_text("value") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| ProtocolError::Malformed {
                        reason: format!(
                            "variable {name} has a non-numeric value {:?}",
                            truncate(v)
                        ),
                    })?,
            ),
        };
        match name.as_str() {
            "zigbee:instantaneousdemand" => reading.demand_kw = value,
            "zigbee:currentsummationdelivered" => reading.delivered_kwh = value,
            "zigbee:currentsummationreceived" => reading.received_kwh = value,
            "zigbee:price" => reading.price = value,
            _ => {}
        }
    }
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_24_bit_demand() {
        assert_eq!(signed_24(0xfffc18), -1000);
        assert_eq!(signed_24(0x7fffff), 8_388_607);
        assert_eq!(signed_24(0x800000), -8_388_608);
    }

    #[test]
    fn eagle_epoch_is_2000() {
        assert_eq!(eagle_time(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
    }

    #[test]
    fn missing_field_is_malformed_not_panic() {
        let err = demand(b"<InstantaneousDemand><Demand>0x1</Demand></InstantaneousDemand>");
        assert!(matches!(err, Err(ProtocolError::Malformed { .. })));
    }

    #[test]
    fn offline_gateway_is_a_relay_error() {
        let err = demand(b"<Error><Text>EAGLE is offline</Text></Error>").unwrap_err();
        assert!(matches!(err, ProtocolError::Relay { .. }));
    }
}
