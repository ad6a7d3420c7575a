//! A meter's last hour of demand as a value: one average (kW) per minute,
//! oldest first, `None` for a minute without a reading.
//!
//! Owns the one encoding of that hour in the meter's statistics hash (field
//! `spark`): comma-separated kW with three decimals, an empty entry for a
//! minute without a reading (`1.250,,2.000`). The pinger encodes it once a
//! minute and the server decodes it for the status page; nothing else
//! splits or joins that text. The format is the one stored since the
//! sparkline was introduced, so existing hashes read back unchanged. Pure;
//! the registry does the storing.

use serde::{Deserialize, Serialize};

/// Per-minute demand averages, oldest first.
///
/// Serialises (JSON) as an array of numbers and `null`s; Redis holds the
/// text of [`Sparkline::encode`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sparkline(Vec<Option<f64>>);

impl Sparkline {
    /// A sparkline of `minutes`, oldest first (what the pinger's per-minute
    /// averages become once a minute completes).
    pub fn new(minutes: Vec<Option<f64>>) -> Sparkline {
        Sparkline(minutes)
    }

    /// The minutes, oldest first.
    pub fn minutes(&self) -> &[Option<f64>] {
        &self.0
    }

    /// The minutes, for a caller that extends them (the status page adds the
    /// current minute and the silent ones).
    pub fn into_minutes(self) -> Vec<Option<f64>> {
        self.0
    }

    /// The stored text: kW with three decimals, comma-separated, an empty
    /// entry for a minute without a reading; `""` for no minutes.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 7);
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if let Some(v) = v.filter(|v| v.is_finite()) {
                out.push_str(&format!("{v:.3}"));
            }
        }
        out
    }

    /// Reads the stored text back. Never fails: an entry that is not a
    /// finite number (a hand-edited or truncated hash) becomes a minute
    /// without a reading, since a sparkline is a picture, not a record.
    pub fn decode(text: &str) -> Sparkline {
        if text.is_empty() {
            return Sparkline::default();
        }
        Sparkline(
            text.split(',')
                .map(|v| v.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_stored_before_and_reads_back() {
        // What the pinger wrote before the type existed: f32 averages with
        // three decimals. The same minutes encode to the same bytes.
        let stored = format!("{:.3},,{:.3}", 1.25f32, 2.0f32 / 3.0);
        let s = Sparkline::decode(&stored);
        assert_eq!(s.encode(), stored);
        assert_eq!(
            Sparkline::new(vec![Some(f64::from(2.0f32 / 3.0)), None, Some(5.0)]).encode(),
            format!("{:.3},,5.000", 2.0f32 / 3.0)
        );
        assert_eq!(Sparkline::decode("").encode(), "");
        assert_eq!(Sparkline::decode(",").minutes(), [None, None]);
    }

    #[test]
    fn unreadable_entries_become_empty_minutes() {
        assert_eq!(
            Sparkline::decode("1.5,,2.25, x,NaN,inf").minutes(),
            [Some(1.5), None, Some(2.25), None, None, None]
        );
        assert!(Sparkline::decode("").minutes().is_empty());
    }

    #[test]
    fn json_is_an_array_with_nulls() {
        let s = Sparkline::decode("1.5,,2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "[1.5,null,2.0]");
    }
}
