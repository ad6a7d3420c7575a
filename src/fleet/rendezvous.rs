//! Rendezvous (highest-random-weight) hashing: which of a set of names owns
//! a meter. Pure functions, no I/O.
//!
//! Each (name, cloud id) pair gets a pseudo-random weight and the name with
//! the highest weight owns the meter. Every process that knows the same
//! names computes the same owner without talking to the others, and when a
//! name joins or leaves only the meters whose highest weight changes move:
//! a joiner takes about `1/n` of the meters (from every other member
//! evenly), a leaver's meters spread over the rest, and no other meter
//! changes hands. The hash is written out here (FNV-1a and a 64-bit
//! finaliser), not taken from `std`, because pingers of different builds
//! must agree on it during a rolling upgrade.

use crate::cloud_id::CloudId;

/// FNV-1a of a member's name; computed once per name, not per meter.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The weight of `id` for the name whose [`name_hash`] is `name`.
pub fn weight(name: u64, id: CloudId) -> u64 {
    mix(name ^ mix(u64::from(id.as_u32()).wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// The murmur3 / splitmix64 finaliser: every input bit flips about half of
/// the output bits, so nearby ids and names get unrelated weights.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Index into `names` (given as [`name_hash`]es) of the owner of `id`;
/// `None` when there are no names. Ties (equal weights) go to the lower
/// hash, so the answer never depends on the order of `names`.
pub fn owner(names: &[u64], id: CloudId) -> Option<usize> {
    names
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| (weight(**n, id), std::cmp::Reverse(**n)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> impl Iterator<Item = CloudId> {
        (0..n).map(|i| CloudId::from_index(0xa00000 + i))
    }

    fn hashes(names: &[&str]) -> Vec<u64> {
        names.iter().map(|n| name_hash(n)).collect()
    }

    #[test]
    fn consecutive_ids_split_evenly_over_three_members() {
        let names = hashes(&["host-a-1-0f3a", "host-b-7-9c21", "host-c-12-0001"]);
        let mut counts = [0u32; 3];
        for id in ids(30_000) {
            counts[owner(&names, id).expect("an owner")] += 1;
        }
        for c in counts {
            // 10,000 each on average; 3 % either way is far outside noise.
            assert!((9_700..=10_300).contains(&c), "uneven split {counts:?}");
        }
    }

    #[test]
    fn a_join_moves_only_the_joiners_share_and_a_leave_only_the_leavers() {
        let before = hashes(&["a-1", "b-2", "c-3"]);
        let after = hashes(&["a-1", "b-2", "c-3", "d-4"]);
        let mut moved = 0;
        for id in ids(20_000) {
            let was = owner(&before, id).expect("owner");
            let now = owner(&after, id).expect("owner");
            if was != now {
                // Only towards the joiner, never between old members.
                assert_eq!(now, 3, "{id} moved between old members");
                moved += 1;
            }
        }
        // About a quarter moves to the fourth member.
        assert!((4_600..=5_400).contains(&moved), "{moved} moved");
        // The reverse is the leave: only the leaver's meters move.
        for id in ids(20_000) {
            let with = owner(&after, id).expect("owner");
            if with != 3 {
                assert_eq!(owner(&before, id), Some(with), "{id} moved on leave");
            }
        }
    }

    #[test]
    fn the_owner_does_not_depend_on_the_order_of_names() {
        let a = hashes(&["x-1", "y-2", "z-3"]);
        let b = hashes(&["z-3", "x-1", "y-2"]);
        for id in ids(2_000) {
            assert_eq!(a[owner(&a, id).unwrap()], b[owner(&b, id).unwrap()]);
        }
        assert_eq!(owner(&[], CloudId::from_index(1)), None);
    }

    #[test]
    fn weights_are_pinned_so_builds_agree() {
        // A change here re-shuffles every fleet during a rolling upgrade.
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(name_hash("shard-0"), 0x8ae4_8b73_fa64_ed46);
        let id = CloudId::parse("00ce69").expect("id");
        assert_eq!(weight(name_hash("shard-0"), id), 0xc763_d0a2_9416_4401);
    }
}
