//! Stream kinds: which reading a line holds (demand, summation, price).
//!
//! Each kind is its own stream with its own record schema and its own spool
//! files and archive objects, told apart by the kind in the file name
//! ([`Kind::file_prefix`]). Demand keeps the old logger's names exactly, so
//! readers of demand files never see another kind. This module owns the
//! kinds and their names only; it does not poll, write or ship.

use std::fmt;
use std::str::FromStr;

/// One stream of readings. History answers (backfill) are summation
/// readings, so they go to the summation stream with `source: "history"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Instantaneous demand (`get_instantaneous_demand`), the original stream.
    Demand,
    /// Energy delivered and received (`get_current_summation`).
    Summation,
    /// Price, tier and rate label (`get_price`).
    Price,
}

impl Kind {
    /// Every kind, in the order reports list them.
    pub const ALL: [Kind; 3] = [Kind::Demand, Kind::Summation, Kind::Price];

    /// The name used in flags, file names, JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Demand => "demand",
            Kind::Summation => "summation",
            Kind::Price => "price",
        }
    }

    /// The file name prefix of this kind's files: `base` for demand (the
    /// names researchers' scripts already match), `base-<kind>` otherwise.
    pub fn file_prefix(self, base: &str) -> String {
        match self {
            Kind::Demand => base.to_string(),
            other => format!("{base}-{}", other.as_str()),
        }
    }

    /// Splits a kind's marker off the front of a name that follows
    /// `<base>-`: `summation-00ce69-…` gives (Summation, `00ce69-…`), and a
    /// name without a marker is demand.
    pub fn split_marker(rest: &str) -> (Kind, &str) {
        for kind in [Kind::Summation, Kind::Price] {
            if let Some(tail) = rest
                .strip_prefix(kind.as_str())
                .and_then(|t| t.strip_prefix('-'))
            {
                return (kind, tail);
            }
        }
        (Kind::Demand, rest)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that is not one of [`Kind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reading kind {0:?}: expected demand, summation or price")]
pub struct UnknownKind(String);

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_keeps_the_old_names_and_others_carry_their_kind() {
        assert_eq!(
            Kind::Demand.file_prefix("iseif-rainforest"),
            "iseif-rainforest"
        );
        assert_eq!(
            Kind::Summation.file_prefix("iseif-rainforest"),
            "iseif-rainforest-summation"
        );
        assert_eq!(
            Kind::split_marker("price-00ce69-x"),
            (Kind::Price, "00ce69-x")
        );
        assert_eq!(Kind::split_marker("00ce69-x"), (Kind::Demand, "00ce69-x"));
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
        }
        assert!("energy".parse::<Kind>().is_err());
    }
}
