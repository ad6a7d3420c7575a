//! The columns of an export, per kind: one table that the CSV header, the
//! Parquet schema and the README's schema section all follow.
//!
//! `cloud_id`, `slot` and `polled_at` come from the read-back (a line
//! without `slot` exports its `polled_at` there, see
//! [`crate::readback::lines`]); every other column is the record's field of
//! the same name, empty (CSV) or null (Parquet) when a line lacks it.

use serde_json::{Map, Value};

use crate::stream::Kind;

/// The type of a column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// UTF-8 text.
    Text,
    /// 64-bit float.
    Float,
    /// 64-bit signed integer.
    Int,
    /// An instant, UTC, millisecond precision.
    Time,
}

/// One column: its name (also the record's field) and type.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Column name in the header and schema; the record field it reads.
    pub name: &'static str,
    /// Value type.
    pub ty: Type,
}

const fn col(name: &'static str, ty: Type) -> Column {
    Column { name, ty }
}

/// The first three columns, every kind.
pub const KEYS: [Column; 3] = [
    col("cloud_id", Type::Text),
    col("slot", Type::Time),
    col("polled_at", Type::Time),
];

const DEMAND: &[Column] = &[
    col("demand_kw", Type::Float),
    col("meter_time", Type::Time),
    col("source", Type::Text),
    col("latency_ms", Type::Int),
];

const SUMMATION: &[Column] = &[
    col("delivered_kwh", Type::Float),
    col("received_kwh", Type::Float),
    col("meter_time", Type::Time),
    col("source", Type::Text),
    col("latency_ms", Type::Int),
];

const PRICE: &[Column] = &[
    col("price", Type::Float),
    // The ISO 4217 numeric code and the tier number, under the EAGLE's
    // own names as the price record keeps them.
    col("Currency", Type::Int),
    col("Tier", Type::Int),
    col("rate_label", Type::Text),
    col("tier_label", Type::Text),
    col("source", Type::Text),
    col("latency_ms", Type::Int),
];

/// The columns of `kind` after [`KEYS`].
pub fn values(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::Demand => DEMAND,
        Kind::Summation => SUMMATION,
        Kind::Price => PRICE,
    }
}

/// Every column of `kind`, in order.
pub fn all(kind: Kind) -> Vec<Column> {
    KEYS.iter().chain(values(kind)).copied().collect()
}

/// A value of `column` from a parsed record, `None` when missing or of
/// another type (a number given as a string is read as the number).
pub fn float(record: &Map<String, Value>, name: &str) -> Option<f64> {
    match record.get(name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An integer field; see [`float`].
pub fn int(record: &Map<String, Value>, name: &str) -> Option<i64> {
    match record.get(name)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A text field (numbers and booleans as written).
pub fn text(record: &Map<String, Value>, name: &str) -> Option<String> {
    match record.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A time field in milliseconds since the epoch.
pub fn time(record: &Map<String, Value>, name: &str) -> Option<i64> {
    let s = record.get(name)?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}
