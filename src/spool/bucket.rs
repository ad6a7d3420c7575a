//! Hour buckets and the spool's file names: pure path arithmetic, no I/O.
//!
//! Shared by the writer (which appends) and the rotator (which finds
//! completed hours), so both agree on one layout:
//! `<data_dir>/YYYY-MM-DD-HH/<prefix>[-<kind>]-<cloud_id>-YYYY-MM-DD-HH[.<writer>].jl`
//! (demand files carry no kind, so their names stay the old logger's).

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};

use crate::cloud_id::CloudId;
use crate::stream::Kind;

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

/// The spool file of one meter's demand for one hour, written by an
/// unnamed writer (the layout before writers had ids).
pub fn hour_file(data_dir: &Path, prefix: &str, cloud_id: CloudId, hour: HourBucket) -> PathBuf {
    SpoolName::demand(cloud_id, hour).path(data_dir, prefix)
}

/// The id of the process that writes a spool file, part of the file's name
/// so that several writers (pingers, a server's on-demand reads) sharing one
/// volume never append to each other's files. Lower-case letters, digits
/// and `-`, at most 64 characters, so it can never form a path or a `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterId(String);

impl WriterId {
    /// Checks `s` against the allowed alphabet; `None` for anything else.
    pub fn parse(s: &str) -> Option<WriterId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then(|| WriterId(s.to_string()))
    }

    /// The id as it appears in file names.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WriterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a spool file's name says: whose readings of which kind, for
/// which hour, written by whom. The one place that builds and parses the
/// layout `<data_dir>/YYYY-MM-DD-HH/<prefix>[-<kind>]-<cloud_id>-YYYY-MM-DD-HH[.<writer>].jl`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpoolName {
    /// The stream the file belongs to.
    pub kind: Kind,
    /// The meter.
    pub cloud_id: CloudId,
    /// The hour its lines were read in.
    pub hour: HourBucket,
    /// The process writing it; `None` for files of the old layout.
    pub writer: Option<WriterId>,
}

impl SpoolName {
    /// A demand file of the old layout (no writer id).
    pub fn demand(cloud_id: CloudId, hour: HourBucket) -> SpoolName {
        SpoolName {
            kind: Kind::Demand,
            cloud_id,
            hour,
            writer: None,
        }
    }

    /// The file's name inside its hour directory.
    pub fn file_name(&self, prefix: &str) -> String {
        let SpoolName {
            kind,
            cloud_id,
            hour,
            writer,
        } = self;
        let base = kind.file_prefix(prefix);
        match writer {
            Some(w) => format!("{base}-{cloud_id}-{hour}.{w}.jl"),
            None => format!("{base}-{cloud_id}-{hour}.jl"),
        }
    }

    /// The file's full path under `data_dir`.
    pub fn path(&self, data_dir: &Path, prefix: &str) -> PathBuf {
        data_dir
            .join(self.hour.to_string())
            .join(self.file_name(prefix))
    }
}

/// Recognises a spool file name; `None` for anything else in the directory
/// (temporary files, other prefixes, names a person left there).
pub fn parse_file_name(prefix: &str, name: &str) -> Option<SpoolName> {
    let rest = name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_suffix(".jl")?;
    let (kind, rest) = Kind::split_marker(rest);
    let (rest, writer) = match rest.split_once('.') {
        Some((rest, w)) => (rest, Some(WriterId::parse(w)?)),
        None => (rest, None),
    };
    let (id, hour) = rest.split_once('-')?;
    Some(SpoolName {
        kind,
        cloud_id: CloudId::parse(id).ok()?,
        hour: HourBucket::parse(hour)?,
        writer,
    })
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
            Some(SpoolName::demand(id, HourBucket::of(t)))
        );
        assert_eq!(
            parse_file_name("iseif-rainforest", "other-00ce69-2025-01-15-10.jl"),
            None
        );
    }

    #[test]
    fn kind_and_writer_round_trip_through_the_name() {
        let name = SpoolName {
            kind: Kind::Summation,
            cloud_id: CloudId::parse("00ce69").unwrap(),
            hour: HourBucket(480_000),
            writer: WriterId::parse("pinger-a1-4f2c"),
        };
        let file = name.file_name("iseif-rainforest");
        assert_eq!(
            file,
            "iseif-rainforest-summation-00ce69-2024-10-04-00.pinger-a1-4f2c.jl"
        );
        assert_eq!(parse_file_name("iseif-rainforest", &file), Some(name));
        for bad in ["", "Upper", "a.b", "a/b", "..", &"x".repeat(65)] {
            assert_eq!(WriterId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_file_name(
                "iseif-rainforest",
                "iseif-rainforest-00ce69-2024-10-04-00.a/b.jl"
            ),
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
