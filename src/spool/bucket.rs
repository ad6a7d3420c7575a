//! Hour buckets and the spool's file names: pure path arithmetic, no I/O.
//!
//! Shared by the writer (which appends) and the rotator (which finds
//! completed hours), so both agree on one layout:
//! `<data_dir>/YYYY-MM-DD-HH/<prefix>[-<kind>]-<cloud_id>-YYYY-MM-DD-HH[.<writer>].jl`
//! (demand files carry no kind, so their names stay the old logger's).
//! A line that arrives for an hour its writer has already sealed goes to a
//! late segment of its own, `….<writer>.late<n>.jl` ([`Segment::Late`]),
//! which [`parse_file_name`] reads as the same [`SpoolName`].

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

    /// A new id for one writing process (one [`crate::spool::Spool`]):
    /// the host name (the container's, so replicas on one volume differ),
    /// the process id and a random suffix, so neither a restart nor a
    /// second spool in the same process ever reuses a live writer's name.
    pub fn unique() -> WriterId {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        WriterId::from_parts(&host, std::process::id(), rand::random::<u32>())
    }

    /// The id [`unique`](Self::unique) builds: `<host>-<pid>-<random>`,
    /// the host reduced to the allowed alphabet and at most 40 characters.
    fn from_parts(host: &str, pid: u32, random: u32) -> WriterId {
        let mut h: String = host
            .trim()
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '-',
            })
            .take(40)
            .collect();
        h = h.trim_matches('-').to_string();
        if h.is_empty() {
            h.push_str("host");
        }
        WriterId(format!("{h}-{pid}-{random:08x}"))
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

    /// The name of late segment `n` of this file: where a writer puts lines
    /// for an hour it has already sealed (see [`Segment::Late`]). Only a
    /// named writer seals, so `None` for a file of the old layout.
    pub fn late_file_name(&self, prefix: &str, n: u32) -> Option<String> {
        let w = self.writer.as_ref()?;
        let base = self.kind.file_prefix(prefix);
        Some(format!(
            "{base}-{}-{}.{w}.late{n}.jl",
            self.cloud_id, self.hour
        ))
    }
}

/// Which of a writer's files for one hour a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// The file the writer appends to until it seals the hour.
    Main,
    /// Lines that came after the writer sealed the hour. The writer writes
    /// the whole segment under a hidden name and renames it into place, so
    /// a late segment is complete as soon as it can be seen.
    Late(u32),
}

/// Recognises a spool file name and tells a late segment from the main
/// file; `None` for anything else.
pub fn parse_segment(prefix: &str, name: &str) -> Option<(SpoolName, Segment)> {
    let rest = name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_suffix(".jl")?;
    let (kind, rest) = Kind::split_marker(rest);
    let (rest, writer, segment) = match rest.split_once('.') {
        Some((rest, tail)) => {
            let (w, segment) = match tail.split_once('.') {
                Some((w, late)) => {
                    let n = late.strip_prefix("late")?;
                    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    (w, Segment::Late(n.parse().ok()?))
                }
                None => (tail, Segment::Main),
            };
            (rest, Some(WriterId::parse(w)?), segment)
        }
        None => (rest, None, Segment::Main),
    };
    let (id, hour) = rest.split_once('-')?;
    let name = SpoolName {
        kind,
        cloud_id: CloudId::parse(id).ok()?,
        hour: HourBucket::parse(hour)?,
        writer,
    };
    Some((name, segment))
}

/// Recognises a spool file name (a late segment reads as its main file's
/// name); `None` for anything else in the directory (temporary files,
/// other prefixes, names a person left there).
pub fn parse_file_name(prefix: &str, name: &str) -> Option<SpoolName> {
    parse_segment(prefix, name).map(|(name, _)| name)
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
    fn a_late_segment_parses_as_its_file_and_says_which_it_is() {
        let name = SpoolName {
            kind: Kind::Price,
            cloud_id: CloudId::parse("00ce69").unwrap(),
            hour: HourBucket(480_000),
            writer: WriterId::parse("host-12-0000beef"),
        };
        let late = name.late_file_name("pre", 3).unwrap();
        assert_eq!(
            late,
            "pre-price-00ce69-2024-10-04-00.host-12-0000beef.late3.jl"
        );
        assert_eq!(
            parse_segment("pre", &late),
            Some((name.clone(), Segment::Late(3)))
        );
        assert_eq!(parse_file_name("pre", &late), Some(name.clone()));
        assert_eq!(
            parse_segment("pre", &name.file_name("pre")),
            Some((name.clone(), Segment::Main))
        );
        assert_eq!(
            SpoolName {
                writer: None,
                ..name
            }
            .late_file_name("pre", 1),
            None
        );
        for bad in [
            "pre-00ce69-2024-10-04-00.w.late.jl",
            "pre-00ce69-2024-10-04-00.w.late1x.jl",
            "pre-00ce69-2024-10-04-00.w.other1.jl",
            ".pre-00ce69-2024-10-04-00.w.late1.jl.tmp",
        ] {
            assert_eq!(parse_segment("pre", bad), None, "{bad}");
        }
    }

    #[test]
    fn a_unique_writer_id_is_a_valid_name_whatever_the_host() {
        let id = WriterId::from_parts("Pinger_7.example.ORG\n", 42, 0xbeef);
        assert_eq!(id.as_str(), "pinger-7-example-org-42-0000beef");
        assert_eq!(WriterId::parse(id.as_str()), Some(id));
        let id = WriterId::from_parts(&"é".repeat(100), 1, 2);
        assert_eq!(id.as_str(), "host-1-00000002");
        assert_ne!(WriterId::unique(), WriterId::unique());
    }

    #[test]
    fn hour_round_trips_through_its_name() {
        let h = HourBucket(480_000);
        assert_eq!(HourBucket::parse(&h.to_string()), Some(h));
        assert_eq!(HourBucket::parse("2025-13-01-00"), None);
    }
}
