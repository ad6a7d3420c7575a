//! Static sharding, `--shard I/N`: the fleet with no membership.
//!
//! For fixed fleets (a Kubernetes StatefulSet, where pod `pinger-2` of
//! three runs `--shard 2/3`) and for pingers without Redis. Shard `I` owns
//! the meters that rendezvous hashing over the names `shard-0` ..
//! `shard-<N-1>` gives to `shard-I`, so every shard computes the same split
//! alone, and growing from `N` to `N+1` shards moves only the new shard's
//! share. Nothing is announced or watched: a shard that dies leaves its
//! meters unpolled until it is back (its supervisor restarts it).

use std::fmt;
use std::str::FromStr;

/// One shard of a static split: 0-based index `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// Why a `--shard` value is refused; the message says what is expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "shard {value:?} {why}; use I/N with 0 <= I < N, e.g. --shard 0/3 for the first of three pingers (RAINFOREST_SHARD)"
)]
pub struct ShardError {
    value: String,
    why: &'static str,
}

impl Shard {
    /// Shard `index` of `count`, checked as the parser does.
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        format!("{index}/{count}").parse()
    }

    /// This shard's 0-based index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many shards there are.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The names the split is computed over, `shard-0` .. `shard-<N-1>`;
    /// this shard's is at [`Shard::index`].
    pub fn names(&self) -> Vec<String> {
        (0..self.count).map(|i| format!("shard-{i}")).collect()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let fail = |why| ShardError {
            value: s.to_string(),
            why,
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(|| fail("has no '/'"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| fail("has an index that is not a whole number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| fail("has a count that is not a whole number"))?;
        if count == 0 {
            return Err(fail("has a count of zero"));
        }
        if index >= count {
            return Err(fail(
                "has an index not below the count (indexes start at 0)",
            ));
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_shards_parse_and_bad_ones_say_why() {
        assert_eq!("2/3".parse::<Shard>(), Shard::new(2, 3));
        assert_eq!(
            " 0/1 ".parse::<Shard>().map(|s| s.to_string()),
            Ok("0/1".into())
        );
        for (bad, why) in [
            ("3/3", "not below"),
            ("0/0", "count of zero"),
            ("x/2", "index that is not"),
            ("1/y", "count that is not"),
            ("-1/2", "index that is not"),
            ("2", "no '/'"),
            ("", "no '/'"),
        ] {
            let e = bad.parse::<Shard>().expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains("I/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_pinned_because_every_shard_must_compute_the_same_split() {
        let s = Shard::new(1, 3).unwrap();
        assert_eq!(s.names(), ["shard-0", "shard-1", "shard-2"]);
        assert_eq!(s.names()[s.index() as usize], "shard-1");
    }
}
