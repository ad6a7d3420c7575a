//! The archive's key layout: pure string arithmetic, no I/O.
//!
//! One hour file of one meter becomes one object,
//! `<prefix>/<cloud_id>/YYYY/MM/DD/<file_prefix>-<cloud_id>-YYYY-MM-DD-HH.jl.gz`,
//! in S3 and in a local-directory archive alike, so a directory archive can
//! be copied into a bucket as it is and researchers' scripts find the same
//! names in both.

use std::fmt;

use crate::cloud_id::CloudId;
use crate::spool::HourBucket;
use crate::stream::Kind;

/// A key inside the archive, built only by [`ObjectKey::for_hour`], so every
/// key has the documented layout and no `..` or empty segment (which would
/// escape a directory archive or make S3 keys with `//`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The key of `cloud_id`'s file for `hour`. `prefix` is the configured
    /// `s3_prefix`; slashes around it and empty, `.` and `..` segments in it
    /// are dropped, and an empty prefix puts the meter directory at the top.
    pub fn for_hour(
        prefix: &str,
        file_prefix: &str,
        cloud_id: CloudId,
        hour: HourBucket,
    ) -> ObjectKey {
        ObjectKey::for_stream(prefix, file_prefix, Kind::Demand, cloud_id, hour)
    }

    /// The key of `cloud_id`'s `kind` file for `hour`: the same tree as
    /// demand, with the kind in the file name
    /// (`…/<file_prefix>-summation-<cloud_id>-YYYY-MM-DD-HH.jl.gz`).
    pub fn for_stream(
        prefix: &str,
        file_prefix: &str,
        kind: Kind,
        cloud_id: CloudId,
        hour: HourBucket,
    ) -> ObjectKey {
        let file_prefix = kind.file_prefix(file_prefix);
        let mut key = clean_prefix(prefix);
        let start = hour.start();
        key.push_str(&format!(
            "{cloud_id}/{}/{file_prefix}-{cloud_id}-{hour}.jl.gz",
            start.format("%Y/%m/%d")
        ));
        ObjectKey(key)
    }

    /// The small object [`crate::archive::Archive::preflight`] writes to
    /// find out whether the store enforces conditional writes. It sits
    /// *next to* the data prefix, not under it (`rainforest-logs` gives
    /// `rainforest-logs.rainforest-conditional-write-probe`), so a crawler
    /// or an Athena table over `rainforest-logs/` never reads it as data,
    /// while an IAM policy on `rainforest-logs*` still covers it. With an
    /// empty prefix the data is the whole bucket; the probe is then a
    /// hidden name at the top, which Athena and Hive skip.
    pub fn probe(prefix: &str) -> ObjectKey {
        let mut key = clean_prefix(prefix);
        // The prefix's trailing `/` goes: the probe is its sibling.
        key.pop();
        key.push_str(".rainforest-conditional-write-probe");
        ObjectKey(key)
    }

    /// The part of every key before the meter's directory (`s3_prefix`
    /// cleaned, with a trailing `/`, or empty): where a listing of the
    /// archive's meters starts.
    pub fn meters_root(prefix: &str) -> String {
        clean_prefix(prefix)
    }

    /// Whether this key lies under `prefix` (what a listing of the data
    /// prefix returns).
    pub fn is_under(&self, prefix: &str) -> bool {
        self.0.starts_with(&clean_prefix(prefix))
    }

    /// The key as S3 sees it (no leading slash).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `prefix` as leading key segments, each followed by `/`.
fn clean_prefix(prefix: &str) -> String {
    let mut key = String::new();
    for segment in prefix.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            continue;
        }
        key.push_str(segment);
        key.push('/');
    }
    key
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(s: &str) -> HourBucket {
        HourBucket::parse(s).unwrap()
    }

    #[test]
    fn key_layout_matches_the_documented_one() {
        let id = CloudId::parse("00CE69").unwrap();
        let k = ObjectKey::for_hour(
            "rainforest-logs",
            "iseif-rainforest",
            id,
            hour("2025-01-05-07"),
        );
        assert_eq!(
            k.as_str(),
            "rainforest-logs/00ce69/2025/01/05/iseif-rainforest-00ce69-2025-01-05-07.jl.gz"
        );
        let s = ObjectKey::for_stream(
            "rainforest-logs",
            "iseif-rainforest",
            Kind::Summation,
            id,
            hour("2025-01-05-07"),
        );
        assert_eq!(
            s.as_str(),
            "rainforest-logs/00ce69/2025/01/05/iseif-rainforest-summation-00ce69-2025-01-05-07.jl.gz"
        );
    }

    #[test]
    fn the_probe_sits_next_to_the_data_prefix_not_under_it() {
        let p = ObjectKey::probe("rainforest-logs");
        assert_eq!(
            p.as_str(),
            "rainforest-logs.rainforest-conditional-write-probe"
        );
        assert!(!p.is_under("rainforest-logs"));
        let nested = ObjectKey::probe("/data/rainforest-logs/");
        assert_eq!(
            nested.as_str(),
            "data/rainforest-logs.rainforest-conditional-write-probe"
        );
        assert!(!nested.is_under("data/rainforest-logs"));
        assert_eq!(
            ObjectKey::probe("").as_str(),
            ".rainforest-conditional-write-probe"
        );
        let data = ObjectKey::for_hour(
            "rainforest-logs",
            "p",
            CloudId::parse("abcdef").unwrap(),
            hour("2024-12-31-23"),
        );
        assert!(data.is_under("rainforest-logs"));
    }

    #[test]
    fn prefix_slashes_and_dot_segments_are_dropped() {
        let id = CloudId::parse("abcdef").unwrap();
        let h = hour("2024-12-31-23");
        assert_eq!(
            ObjectKey::for_hour("/a//b/../", "p", id, h).as_str(),
            "a/b/abcdef/2024/12/31/p-abcdef-2024-12-31-23.jl.gz"
        );
        assert_eq!(
            ObjectKey::for_hour("", "p", id, h).as_str(),
            "abcdef/2024/12/31/p-abcdef-2024-12-31-23.jl.gz"
        );
    }
}
