//! One hour's lines turned into readings: parsing, the slot, the merge of
//! archive and spool, dedupe and order. Pure functions, no I/O.
//!
//! The slot is the instant a reading was scheduled for (`slot` in lines
//! written since the field exists). Older lines have none: their
//! `polled_at` stands in for the slot. Guessing a grid for them would need
//! the meter's phase and interval at the time they were written, which the
//! archive does not record, and a wrong guess would merge two real readings
//! into one; with `polled_at` as the slot an old line is only ever a
//! duplicate of a line with the very same poll time, which is the same
//! reading written twice.

use std::collections::HashMap;

use chrono::DateTime;
use serde::Deserialize;

use crate::cloud_id::CloudId;

/// One reading read back: where it sits in time and its line as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The meter.
    pub cloud_id: CloudId,
    /// The scheduled instant, milliseconds since the Unix epoch (see the
    /// module documentation for lines without a `slot`).
    pub slot_ms: i64,
    /// When the poll went out, milliseconds since the Unix epoch.
    pub polled_ms: i64,
    /// The JSON line exactly as archived, without its newline.
    pub line: String,
}

/// The fields read-back orders and dedupes by; every other field is kept
/// in [`Reading::line`] untouched.
#[derive(Deserialize)]
struct Stamps<'a> {
    #[serde(borrow)]
    cloud_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    polled_at: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    slot: Option<std::borrow::Cow<'a, str>>,
}

/// Why one line could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not a JSON object with `cloud_id` and `polled_at` strings.
    #[error("not a record (a JSON object with cloud_id and polled_at): {0}")]
    NotARecord(String),
    /// A time that is not RFC 3339.
    #[error("{field} is not an RFC 3339 time: {value:?}")]
    BadTime {
        /// `polled_at` or `slot`.
        field: &'static str,
        /// The value, cut to 40 characters.
        value: String,
    },
    /// A cloud id that is not six hex digits.
    #[error("bad cloud_id: {0}")]
    BadCloudId(String),
}

/// Parses one line into a reading.
pub fn parse_line(line: &str) -> Result<Reading, LineError> {
    let s: Stamps<'_> =
        serde_json::from_str(line).map_err(|e| LineError::NotARecord(e.to_string()))?;
    let cloud_id = CloudId::parse(&s.cloud_id).map_err(|e| LineError::BadCloudId(e.to_string()))?;
    let polled_ms = millis("polled_at", &s.polled_at)?;
    let slot_ms = match &s.slot {
        Some(slot) => millis("slot", slot)?,
        None => polled_ms,
    };
    Ok(Reading {
        cloud_id,
        slot_ms,
        polled_ms,
        line: line.to_string(),
    })
}

fn millis(field: &'static str, value: &str) -> Result<i64, LineError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| LineError::BadTime {
            field,
            value: value.chars().take(40).collect(),
        })
}

/// Splits text into its non-blank lines, each parsed; the failures come
/// back with their 1-based line numbers.
pub fn parse_text(text: &str) -> (Vec<Reading>, Vec<(usize, LineError)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(r) => good.push(r),
            Err(e) => bad.push((i + 1, e)),
        }
    }
    (good, bad)
}

/// Orders readings by slot, then meter, and keeps one per (meter, slot):
/// the first polled (ties broken by the line's text, so every run picks the
/// same one).
pub fn dedupe_and_order(readings: Vec<Reading>) -> Vec<Reading> {
    let mut best: HashMap<(CloudId, i64), Reading> = HashMap::with_capacity(readings.len());
    for r in readings {
        let key = (r.cloud_id, r.slot_ms);
        match best.get(&key) {
            Some(kept) if (kept.polled_ms, &kept.line) <= (r.polled_ms, &r.line) => {}
            _ => {
                best.insert(key, r);
            }
        }
    }
    let mut out: Vec<Reading> = best.into_values().collect();
    out.sort_unstable_by_key(|r| (r.slot_ms, r.cloud_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(slot: Option<&str>, polled: &str, kw: u32) -> String {
        match slot {
            Some(s) => format!(
                r#"{{"cloud_id":"00ce69","slot":"2025-01-15T10:{s}Z","polled_at":"2025-01-15T10:{polled}Z","demand_kw":{kw}}}"#
            ),
            None => format!(
                r#"{{"cloud_id":"00ce69","polled_at":"2025-01-15T10:{polled}Z","demand_kw":{kw}}}"#
            ),
        }
    }

    #[test]
    fn duplicates_by_slot_keep_the_first_polled_and_old_lines_use_polled_at() {
        let lines = [
            line(Some("00:06.000"), "00:06.300", 2),
            line(Some("00:06.000"), "00:06.100", 1),
            line(None, "00:00.100", 0),
            line(None, "00:00.100", 0),
            line(None, "00:12.200", 3),
        ];
        let rs: Vec<Reading> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        let out = dedupe_and_order(rs);
        let kws: Vec<&str> = out
            .iter()
            .map(|r| &r.line[r.line.len() - 2..r.line.len() - 1])
            .collect();
        assert_eq!(kws, ["0", "1", "3"]);
    }

    #[test]
    fn bad_lines_are_reported_with_their_numbers() {
        let text = format!(
            "{}\nnot json\n\n{{\"cloud_id\":\"00ce69\",\"polled_at\":\"yesterday\"}}\n",
            line(None, "00:00.000", 1)
        );
        let (good, bad) = parse_text(&text);
        assert_eq!(good.len(), 1);
        assert_eq!(bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 4]);
        assert!(matches!(
            bad[1].1,
            LineError::BadTime {
                field: "polled_at",
                ..
            }
        ));
    }
}
