//! Hour buckets and the spool's file names: pure path arithmetic, no I/O.
//!
//! Shared by the writer (which appends) and the rotator (which finds
//! completed hours), so both agree on one layout:
//! `<data_dir>/YYYY-MM-DD-HH/<prefix>-<cloud_id>-YYYY-MM-DD-HH.jl`.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};

use crate::cloud_id::CloudId;

/// A UTC hour, counted in hours since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HourBucket(pub i64);

impl HourBucket {
    /// The hour containing `t`.
    pub fn of(t: DateTime<Utc>) -> Self {
        HourBucket(t.timestamp().div_euclid(3600))
    }

    /// The first instant of the hour.
    pub fn start(self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.0 * 3600, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }

    /// The first instant after the hour.
    pub fn end(self) -> DateTime<Utc> {
        HourBucket(self.0 + 1).start()
    }

    /// Parses `YYYY-MM-DD-HH` (the directory name and file suffix).
    pub fn parse(s: &str) -> Option<Self> {
        let t = chrono::NaiveDateTime::parse_from_str(&format!("{s}:00:00"), "%Y-%m-%d-%H:%M:%S")
            .ok()?;
        if s.len() != 13 {
            return None;
        }
        Some(HourBucket::of(t.and_utc()))
    }
}

impl fmt::Display for HourBucket {
    /// `YYYY-MM-DD-HH`, the form used in directory and file names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.start().format("%Y-%m-%d-%H"))
    }
}

/// The spool file of one meter for one hour.
pub fn hour_file(data_dir: &Path, prefix: &str, cloud_id: CloudId, hour: HourBucket) -> PathBuf {
    data_dir
        .join(hour.to_string())
        .join(format!("{prefix}-{cloud_id}-{hour}.jl"))
}

/// Recognises a spool file name, returning its meter and hour.
pub fn parse_file_name(prefix: &str, name: &str) -> Option<(CloudId, HourBucket)> {
    let rest = name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_suffix(".jl")?;
    let (id, hour) = rest.split_once('-')?;
    Some((CloudId::parse(id).ok()?, HourBucket::parse(hour)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_layout_matches_the_old_logger() {
        let t = DateTime::parse_from_rfc3339("2025-01-15T10:59:59.999Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = CloudId::parse("00ce69").unwrap();
        let p = hour_file(
            Path::new("/data/logs"),
            "iseif-rainforest",
            id,
            HourBucket::of(t),
        );
        assert_eq!(
            p,
            Path::new("/data/logs/2025-01-15-10/iseif-rainforest-00ce69-2025-01-15-10.jl")
        );
        assert_eq!(
            parse_file_name(
                "iseif-rainforest",
                "iseif-rainforest-00ce69-2025-01-15-10.jl"
            ),
            Some((id, HourBucket::of(t)))
        );
        assert_eq!(
            parse_file_name("iseif-rainforest", "other-00ce69-2025-01-15-10.jl"),
            None
        );
    }

    #[test]
    fn hour_round_trips_through_its_name() {
        let h = HourBucket(480_000);
        assert_eq!(HourBucket::parse(&h.to_string()), Some(h));
        assert_eq!(HourBucket::parse("2025-13-01-00"), None);
    }
}
