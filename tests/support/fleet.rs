//! Fleets of real `rainforest pinger` processes over one Redis namespace,
//! each with its own data directory, and what their spooled lines say
//! about who polled which meter's slots.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::DateTime;

use super::pinger::Pinger;
use super::spool::spool_lines;

/// The pinger's cadence in [`Pinger::spawn`].
pub const INTERVAL: Duration = Duration::from_millis(300);
/// Short fleet timings for tests: a join or clean stop is seen within
/// `HEARTBEAT`, a killed member is dead after `TTL`.
pub const HEARTBEAT: Duration = Duration::from_millis(300);
pub const TTL: Duration = Duration::from_millis(1500);
/// Slack for a loaded two-core machine running other tests.
pub const SLACK: Duration = Duration::from_millis(1500);

/// The `--set` flags giving [`HEARTBEAT`] and [`TTL`].
pub fn fleet_args() -> Vec<String> {
    vec![
        "--set".into(),
        format!("member_heartbeat={}ms", HEARTBEAT.as_millis()),
        "--set".into(),
        format!("member_ttl={}ms", TTL.as_millis()),
    ]
}

/// A pinger of the fleet with its own data directory.
pub struct Member {
    /// Its spool directory.
    pub data: PathBuf,
    /// The process; `None` once stopped or killed.
    pub pinger: Option<Pinger>,
}

impl Member {
    /// Starts member `name` over the users in Redis under `ns`, its spool
    /// under `root/<name>`.
    pub fn start(
        redis_url: &str,
        ns: &str,
        relay: &str,
        root: &Path,
        name: &str,
        extra: &[&str],
    ) -> Member {
        let data = root.join(name).join("logs");
        std::fs::create_dir_all(&data).expect("member data dir");
        let mut args: Vec<String> = fleet_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pinger = Pinger::start(redis_url, ns, relay, &data, &args);
        Member {
            data,
            pinger: Some(pinger),
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(p) = self.pinger.take() {
            p.kill9();
        }
    }

    /// SIGTERM, waiting for the exit.
    pub fn terminate(&mut self) {
        if let Some(p) = self.pinger.take() {
            assert!(p.terminate().success(), "pinger exits cleanly");
        }
    }

    /// Meter -> slots (unix ms) this member polled in `[from_ms, to_ms)`.
    pub fn slots(&self, from_ms: i64, to_ms: i64) -> BTreeMap<String, Vec<i64>> {
        slots_between(&self.data, from_ms, to_ms)
    }

    /// Meters this member polled a slot of in `[from_ms, to_ms)`.
    pub fn meters(&self, from_ms: i64, to_ms: i64) -> BTreeSet<String> {
        self.slots(from_ms, to_ms).into_keys().collect()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Meter -> sorted slots (unix ms) of the lines under `dir` whose `slot` is
/// in `[from_ms, to_ms)`; panics on a scheduled line without a slot.
pub fn slots_between(dir: &Path, from_ms: i64, to_ms: i64) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (p, v) in spool_lines(dir) {
        let slot = v["slot"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: a scheduled line without slot: {v}", p.display()));
        let ms = DateTime::parse_from_rfc3339(slot)
            .unwrap_or_else(|e| panic!("{}: bad slot {slot:?}: {e}", p.display()))
            .timestamp_millis();
        if (from_ms..to_ms).contains(&ms) {
            let id = v["cloud_id"].as_str().unwrap_or_default().to_string();
            out.entry(id).or_default().push(ms);
        }
    }
    for slots in out.values_mut() {
        slots.sort_unstable();
    }
    out
}

/// Whether the members together polled every meter of `all` in
/// `[from_ms, to_ms)` (what to wait for before [`assert_split`]).
pub fn covered(members: &[&Member], from_ms: i64, to_ms: i64, all: &BTreeSet<String>) -> bool {
    let union: BTreeSet<String> = members
        .iter()
        .flat_map(|m| m.meters(from_ms, to_ms))
        .collect();
    &union == all
}

/// Panics unless the members' meter sets (slots in `[from_ms, to_ms)`)
/// are pairwise disjoint and together are exactly `all`; returns each
/// member's set.
pub fn assert_split(
    members: &[&Member],
    from_ms: i64,
    to_ms: i64,
    all: &BTreeSet<String>,
) -> Vec<BTreeSet<String>> {
    let sets: Vec<BTreeSet<String>> = members.iter().map(|m| m.meters(from_ms, to_ms)).collect();
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            let both: Vec<_> = a.intersection(b).collect();
            assert!(
                both.is_empty(),
                "members {i} and {j} both polled {both:?} in [{from_ms}, {to_ms})"
            );
        }
    }
    let union: BTreeSet<String> = sets.iter().flatten().cloned().collect();
    assert_eq!(&union, all, "the members together poll every meter exactly");
    sets
}

/// How long after the kill (or stop) at `at_ms` the members polled the
/// last of `orphans` again: the latest first slot after `at_ms`; `None`
/// while one of them has not been polled again.
pub fn handover_ms(members: &[&Member], orphans: &BTreeSet<String>, at_ms: i64) -> Option<i64> {
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    for m in members {
        for (id, slots) in m.slots(at_ms, i64::MAX) {
            let s = slots[0];
            first
                .entry(id)
                .and_modify(|f| *f = (*f).min(s))
                .or_insert(s);
        }
    }
    orphans
        .iter()
        .map(|id| first.get(id).map(|s| s - at_ms))
        .collect::<Option<Vec<i64>>>()
        .map(|v| v.into_iter().max().unwrap_or(0))
}
