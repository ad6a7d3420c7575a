//! A user's own cadences for the streams beside demand: how often their
//! meter's summation and price are read, overriding `summation_interval`
//! and `price_interval`, with 0 turning a stream off for this meter.
//!
//! Owns the two fields' names, their validation and their one text form
//! (whole seconds), shared by the users file, the Redis hash and the users
//! API, so every way a user enters the program checks them the same way.
//! It does no I/O and decides nothing about scheduling.

use std::time::Duration;

use serde_json::{Map, Value};

use super::user::ValidationError;

/// The users-file, API and Redis field of the summation cadence.
pub const SUMMATION_FIELD: &str = "summation_interval";
/// The users-file, API and Redis field of the price cadence.
pub const PRICE_FIELD: &str = "price_interval";
/// Longest cadence accepted, one day: a stream read less often than daily
/// is better turned off (0).
pub const MAX_CADENCE_S: u64 = 86_400;

/// Per-user cadences, in whole seconds; `None` follows the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cadence {
    /// Seconds between summation reads; `Some(0)` turns them off.
    pub summation_s: Option<u32>,
    /// Seconds between price reads; `Some(0)` turns them off.
    pub price_s: Option<u32>,
}

impl Cadence {
    /// The summation cadence for this user: its own, else `default`. Zero
    /// means off.
    pub fn summation(&self, default: Duration) -> Duration {
        self.summation_s
            .map_or(default, |s| Duration::from_secs(s.into()))
    }

    /// The price cadence for this user: its own, else `default`. Zero
    /// means off.
    pub fn price(&self, default: Duration) -> Duration {
        self.price_s
            .map_or(default, |s| Duration::from_secs(s.into()))
    }

    /// Reads both fields from a user's JSON object (users file, API body);
    /// absent or `null` leaves the configuration's cadence.
    pub fn from_json_map(map: &Map<String, Value>) -> Result<Cadence, ValidationError> {
        Ok(Cadence {
            summation_s: json_field(map, SUMMATION_FIELD)?,
            price_s: json_field(map, PRICE_FIELD)?,
        })
    }

    /// Reads both fields from their stored text (the Redis hash); absent
    /// leaves the configuration's cadence.
    pub fn from_text(
        summation: Option<&str>,
        price: Option<&str>,
    ) -> Result<Cadence, ValidationError> {
        let parse = |field: &str, text: Option<&str>| {
            text.map(|t| {
                t.trim()
                    .parse::<u64>()
                    .map_err(|_| invalid(field))
                    .and_then(|s| check(field, s))
            })
            .transpose()
        };
        Ok(Cadence {
            summation_s: parse(SUMMATION_FIELD, summation)?,
            price_s: parse(PRICE_FIELD, price)?,
        })
    }

    /// The fields that are set, as (name, whole seconds), for writing.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, u32)> {
        [
            (SUMMATION_FIELD, self.summation_s),
            (PRICE_FIELD, self.price_s),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
    }
}

fn invalid(field: &str) -> ValidationError {
    ValidationError::new(
        field,
        format!(
            "must be a whole number of seconds from 0 (off) to {MAX_CADENCE_S}, e.g. 60, or null to follow the configuration"
        ),
    )
}

fn check(field: &str, seconds: u64) -> Result<u32, ValidationError> {
    if seconds > MAX_CADENCE_S {
        return Err(invalid(field));
    }
    Ok(seconds as u32)
}

fn json_field(map: &Map<String, Value>, field: &str) -> Result<Option<u32>, ValidationError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        // JSON has one number type: `60.0` is the whole number 60 (the API
        // schema says integer, and JSON Schema counts 60.0 as one).
        Some(Value::Number(n)) => match n.as_u64().or_else(|| whole(n.as_f64()?)) {
            Some(s) => check(field, s).map(Some),
            None => Err(invalid(field)),
        },
        Some(_) => Err(invalid(field)),
    }
}

/// `x` as a whole, non-negative number of seconds, if it is one.
fn whole(x: f64) -> Option<u64> {
    (x.fract() == 0.0 && (0.0..=MAX_CADENCE_S as f64).contains(&x)).then_some(x as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn absent_follows_the_configuration_and_zero_is_off() {
        let c = Cadence::from_json_map(&map(r#"{"price_interval": 0}"#)).unwrap();
        assert_eq!(
            c.summation(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(c.price(Duration::from_secs(900)), Duration::ZERO);
        assert_eq!(c.fields().collect::<Vec<_>>(), vec![(PRICE_FIELD, 0)]);
    }

    #[test]
    fn a_whole_number_written_with_a_fraction_is_that_number() {
        let c = Cadence::from_json_map(&map(r#"{"summation_interval": 60.0}"#)).unwrap();
        assert_eq!(c.summation(Duration::ZERO), Duration::from_secs(60));
        assert!(Cadence::from_json_map(&map(r#"{"price_interval": 86401.0}"#)).is_err());
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            (r#"{"summation_interval": -5}"#, SUMMATION_FIELD),
            (r#"{"summation_interval": 1.5}"#, SUMMATION_FIELD),
            (r#"{"summation_interval": "60s"}"#, SUMMATION_FIELD),
            (r#"{"price_interval": 86401}"#, PRICE_FIELD),
        ] {
            let e = Cadence::from_json_map(&map(text)).unwrap_err();
            assert_eq!(e.field, field, "{text}");
            assert!(e.reason.contains("whole number of seconds"), "{e}");
        }
        assert_eq!(
            Cadence::from_text(Some("x"), None).unwrap_err().field,
            SUMMATION_FIELD
        );
        assert_eq!(
            Cadence::from_text(Some("30"), Some("0")).unwrap(),
            Cadence {
                summation_s: Some(30),
                price_s: Some(0)
            }
        );
    }
}
