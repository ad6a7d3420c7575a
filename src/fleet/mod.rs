//! The fleet: which pinger polls which meter when several share the work.
//!
//! Three modes, chosen once at start ([`Fleet::from_config`]):
//! - **membership** (a Redis registry, no `shard`): every pinger announces
//!   itself with a heartbeat key that expires ([`membership`]), reads the
//!   live members back, and computes each meter's owner alone by
//!   rendezvous hashing ([`rendezvous`]) of the cloud id over them. A
//!   joiner names an instant, `active_from`, two heartbeats ahead (at once
//!   when it is alone): the others see it at their next heartbeat and all
//!   hand its share over at that same wall-clock instant, so slots are
//!   neither doubled nor dropped except for clock skew. A clean stop
//!   deletes the key, and the others take over at their next heartbeat; a
//!   killed pinger's key expires after `member_ttl`.
//! - **shard** (`--shard I/N`): a static split over `shard-0..shard-N-1`
//!   ([`shard`]), nothing announced.
//! - **single**: a users file and no shard; this process owns everything.
//!
//! The state is a [`View`] published on a watch channel; the pinger
//! filters its user list through [`View::owns`] whenever the list or the
//! view changes. While Redis cannot be reached, the last view stays: a
//! pinger keeps polling what it owned and never grabs everything.
//!
//! What it must not touch: it never reads users, schedules polls or writes
//! files; it knows cloud ids only as hash inputs. Its Redis keys go through
//! [`crate::db`] (`<ns>:members`, `<ns>:member:<id>`).

pub mod membership;
pub mod rendezvous;
pub mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::membership::{Member, MembershipOptions, read_members};
pub use self::shard::{Shard, ShardError};

use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::registry::Registry;

/// How the meters are split, as `/api/fleet` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Pingers sharing a Redis split the meters by heartbeat and rendezvous.
    Membership,
    /// A static `--shard I/N` split.
    Shard,
    /// One pinger polls every meter.
    Single,
}

impl Mode {
    /// The name used in logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Membership => "membership",
            Mode::Shard => "shard",
            Mode::Single => "single",
        }
    }
}

/// Who owns what, as one process sees it now.
#[derive(Debug, Clone)]
pub struct View {
    /// How the meters are split.
    pub mode: Mode,
    /// This process's name among `members`: its member id, `shard-I`, or
    /// its id alone in single mode.
    pub me: String,
    /// The live members, sorted by id; empty until a member's first
    /// heartbeat succeeded (then it owns nothing yet).
    pub members: Vec<Member>,
    hashes: Vec<u64>,
}

impl View {
    /// A view of `members` as `me` sees them.
    pub fn new(mode: Mode, me: String, mut members: Vec<Member>) -> View {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let hashes = members
            .iter()
            .map(|m| rendezvous::name_hash(&m.id))
            .collect();
        View {
            mode,
            me,
            members,
            hashes,
        }
    }

    /// One process owning every meter.
    pub fn single(me: String) -> View {
        let member = Member::active(me.clone());
        View::new(Mode::Single, me, vec![member])
    }

    /// Shard `shard`'s static view.
    pub fn shard(shard: Shard) -> View {
        let names = shard.names();
        let me = names[shard.index() as usize].clone();
        View::new(
            Mode::Shard,
            me,
            names.into_iter().map(Member::active).collect(),
        )
    }

    /// The member that polls `id` at `now_ms` (unix milliseconds): the
    /// highest rendezvous weight among members active by then.
    pub fn owner(&self, id: CloudId, now_ms: u64) -> Option<&Member> {
        self.owner_at(now_ms).owner(id)
    }

    /// A filter answering [`View::owns`] for many meters at `now_ms`
    /// without rebuilding the active list per meter.
    pub fn owner_at(&self, now_ms: u64) -> Owners<'_> {
        let (index, hashes) = self
            .hashes
            .iter()
            .enumerate()
            .filter(|(i, _)| self.members[*i].active_from_ms <= now_ms)
            .map(|(i, h)| (i, *h))
            .unzip();
        Owners {
            view: self,
            index,
            hashes,
        }
    }

    /// Whether this process polls `id` at `now_ms`.
    pub fn owns(&self, id: CloudId, now_ms: u64) -> bool {
        self.owner(id, now_ms).is_some_and(|m| m.id == self.me)
    }

    /// The next instant after `now_ms` at which a member becomes active,
    /// when ownership changes without anything new from Redis.
    pub fn next_activation(&self, now_ms: u64) -> Option<u64> {
        self.members
            .iter()
            .map(|m| m.active_from_ms)
            .filter(|a| *a > now_ms)
            .min()
    }

    /// Whether ownership differs from `other`'s: the same members with the
    /// same activation instants own the same meters (heartbeat times and
    /// counts are for display only).
    pub fn same_split(&self, other: &View) -> bool {
        self.members.len() == other.members.len()
            && self
                .members
                .iter()
                .zip(&other.members)
                .all(|(a, b)| a.id == b.id && a.active_from_ms == b.active_from_ms)
    }
}

/// Ownership at one instant, for filtering a whole user list
/// ([`View::owner_at`]).
pub struct Owners<'a> {
    view: &'a View,
    index: Vec<usize>,
    hashes: Vec<u64>,
}

impl<'a> Owners<'a> {
    /// The member polling `id`.
    pub fn owner(&self, id: CloudId) -> Option<&'a Member> {
        rendezvous::owner(&self.hashes, id).map(|j| &self.view.members[self.index[j]])
    }

    /// Whether this process polls `id`.
    pub fn mine(&self, id: CloudId) -> bool {
        self.owner(id).is_some_and(|m| m.id == self.view.me)
    }
}

/// This process's membership: the current [`View`] and, in membership
/// mode, the heartbeat task that keeps it.
pub struct Fleet {
    view: watch::Receiver<View>,
    /// Meters this process polls, written into its heartbeat record for
    /// `/api/fleet`.
    owned: Arc<AtomicU64>,
    /// Kept so the static modes' channel never closes.
    _static: Option<watch::Sender<View>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// The mode the configuration asks for: `shard` when set, membership
    /// over a Redis registry, else single. The heartbeat task (membership)
    /// runs until `shutdown`, then deletes this member's key.
    pub fn from_config(config: &Config, registry: &Registry, shutdown: CancellationToken) -> Fleet {
        let opts = MembershipOptions {
            heartbeat: config.member_heartbeat,
            ttl: config.member_ttl,
        };
        match (config.shard, registry) {
            (Some(shard), Registry::Redis(r)) => {
                tracing::info!(%shard, "Fleet: static shard; polling only this shard's meters (announced in Redis for /api/fleet only).");
                Fleet::spawn(
                    r.db().clone(),
                    r.keys().clone(),
                    format!("shard-{}", shard.index()),
                    opts,
                    Some(shard),
                    shutdown,
                )
            }
            (Some(shard), _) => {
                tracing::info!(%shard, "Fleet: static shard; polling only this shard's meters.");
                Fleet::fixed(View::shard(shard))
            }
            (None, Registry::Redis(r)) => {
                Fleet::membership(r.db().clone(), r.keys().clone(), opts, shutdown)
            }
            (None, _) => Fleet::fixed(View::single(member_id())),
        }
    }

    /// A fleet whose view never changes (single or shard).
    pub fn fixed(view: View) -> Fleet {
        let (tx, rx) = watch::channel(view);
        Fleet {
            view: rx,
            owned: Arc::default(),
            _static: Some(tx),
            task: None,
        }
    }

    /// Joins the members under `keys` as a new member with a fresh id.
    pub fn membership(
        db: crate::db::Redis,
        keys: crate::db::Keys,
        opts: MembershipOptions,
        shutdown: CancellationToken,
    ) -> Fleet {
        let id = member_id();
        tracing::info!(member = %id, heartbeat_ms = opts.heartbeat.as_millis() as u64, ttl_ms = opts.ttl.as_millis() as u64, "Fleet: joining the pingers sharing this Redis namespace.");
        Fleet::spawn(db, keys, id, opts, None, shutdown)
    }

    fn spawn(
        db: crate::db::Redis,
        keys: crate::db::Keys,
        id: String,
        opts: MembershipOptions,
        shard: Option<Shard>,
        shutdown: CancellationToken,
    ) -> Fleet {
        let owned = Arc::new(AtomicU64::new(0));
        let (rx, task) = membership::spawn(db, keys, id, opts, owned.clone(), shard, shutdown);
        Fleet {
            view: rx,
            owned,
            _static: None,
            task: Some(task),
        }
    }

    /// The view, updated when ownership changes.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Records how many meters this process polls (shown by `/api/fleet`).
    pub fn set_owned(&self, n: usize) {
        self.owned.store(n as u64, Ordering::Relaxed);
    }

    /// Waits for the heartbeat task to have left the fleet (after the
    /// shutdown token fired).
    pub async fn stopped(self) {
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// A name unique to this process: `<host>-<pid>-<4 hex digits>`. The
/// random part keeps a restarted process with a recycled pid (as in
/// containers, where the pinger is often pid 1) from reusing the name of
/// its predecessor, whose key may not have expired yet.
pub fn member_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, active_from_ms: u64) -> Member {
        Member {
            active_from_ms,
            ..Member::active(id.into())
        }
    }

    #[test]
    fn each_meter_has_exactly_one_owner_among_the_views_of_all_members() {
        let members = vec![
            member("a-1-0001", 0),
            member("b-2-0002", 0),
            member("c-3-0003", 0),
        ];
        let views: Vec<View> = members
            .iter()
            .map(|m| View::new(Mode::Membership, m.id.clone(), members.clone()))
            .collect();
        for n in 0..3_000 {
            let id = CloudId::from_index(n);
            let owners = views.iter().filter(|v| v.owns(id, 1)).count();
            assert_eq!(owners, 1, "{id}");
            assert_eq!(views[0].owner_at(1).mine(id), views[0].owns(id, 1));
        }
    }

    #[test]
    fn a_joiner_owns_nothing_before_its_instant_and_its_share_after() {
        let old = member("a-1-0001", 0);
        let joiner = member("b-2-0002", 10_000);
        let seen_by_old = View::new(
            Mode::Membership,
            old.id.clone(),
            vec![old.clone(), joiner.clone()],
        );
        let seen_by_joiner = View::new(Mode::Membership, joiner.id.clone(), vec![old, joiner]);
        assert_eq!(seen_by_old.next_activation(5_000), Some(10_000));
        assert_eq!(seen_by_old.next_activation(10_000), None);
        let mut taken = 0;
        for n in 0..2_000 {
            let id = CloudId::from_index(n);
            assert!(seen_by_old.owns(id, 9_999) && !seen_by_joiner.owns(id, 9_999));
            assert_ne!(
                seen_by_old.owns(id, 10_000),
                seen_by_joiner.owns(id, 10_000)
            );
            taken += usize::from(seen_by_joiner.owns(id, 10_000));
        }
        assert!((800..=1_200).contains(&taken), "{taken}");
    }

    #[test]
    fn a_single_process_owns_everything_and_no_members_own_nothing() {
        let v = View::single("me".into());
        assert!(v.owns(CloudId::from_index(7), 0));
        let joining = View::new(Mode::Membership, "me".into(), Vec::new());
        assert!(!joining.owns(CloudId::from_index(7), u64::MAX));
    }

    #[test]
    fn shards_split_disjointly_and_cover_every_meter() {
        let views: Vec<View> = (0..3)
            .map(|i| View::shard(Shard::new(i, 3).unwrap()))
            .collect();
        let mut counts = [0u32; 3];
        for n in 0..9_000 {
            let id = CloudId::from_index(n);
            let owners: Vec<usize> = (0..3).filter(|i| views[*i].owns(id, 0)).collect();
            assert_eq!(owners.len(), 1, "{id} owned by {owners:?}");
            counts[owners[0]] += 1;
        }
        assert!(
            counts.iter().all(|c| (2_800..=3_200).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn member_ids_differ_between_calls_and_are_safe_in_keys() {
        let (a, b) = (member_id(), member_id());
        assert_ne!(a, b);
        assert!(crate::db::Keys::new(&format!("ns:{a}")).is_ok(), "{a}");
    }
}
