//! Heartbeats in Redis: announcing this pinger and reading the live ones.
//!
//! The protocol, per heartbeat (every `member_heartbeat`):
//! 1. `SET <ns>:member:<id> <record> PX member_ttl` and
//!    `ZADD <ns>:members <unix s> <id>`, in one pipeline. The record (JSON)
//!    carries `active_from_ms` (when this member starts polling its
//!    share), `heartbeat_ms` and `meters` (how many it polls).
//! 2. `ZRANGE <ns>:members 0 -1`, then `MGET` of every listed member's
//!    key: a listed member whose key has expired is dead and is removed
//!    with `ZREM`. Liveness is the key's expiry in Redis, never a
//!    comparison of the hosts' clocks; the index spares a `SCAN`/`KEYS`.
//!
//! A joiner reads the members before its first `SET`. Alone, it is active
//! at once; otherwise `active_from_ms` is two heartbeats ahead, so every
//! other member has seen it (even after one failed heartbeat) and hands
//! its share over at that instant, which all of them compute alike. On a
//! clean stop the key and the index entry are deleted before anything
//! else, so the others take over at their next heartbeat. While Redis
//! cannot be reached the last view stays (logged once per outage): a
//! pinger keeps what it owned and grabs nothing; it keeps its
//! `active_from_ms` when it comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Mode, Shard, View};
use crate::clock::now_unix;
use crate::db::{DbError, Keys, Redis};

/// How often a pinger beats and how long its key outlives the last beat.
#[derive(Debug, Clone, Copy)]
pub struct MembershipOptions {
    /// `member_heartbeat`: also how long others may take to see a change.
    pub heartbeat: Duration,
    /// `member_ttl`: a killed member is dead for the others after this.
    pub ttl: Duration,
}

/// How long leaving the fleet may take at shutdown (Redis down: the key
/// expires by itself after `member_ttl`).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// One live member as its heartbeat record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Unique per process: `<host>-<pid>-<random>`.
    pub id: String,
    /// When it starts polling its share (unix milliseconds).
    pub active_from_ms: u64,
    /// Its last heartbeat (unix milliseconds, its own clock).
    pub heartbeat_ms: u64,
    /// How many meters it polled at that heartbeat.
    pub meters: u64,
    /// `I/N` for a static shard announcing itself for display; such a
    /// member takes no part in the membership split.
    pub shard: Option<String>,
}

impl Member {
    /// A member active since forever (static views).
    pub fn active(id: String) -> Member {
        Member {
            id,
            active_from_ms: 0,
            heartbeat_ms: 0,
            meters: 0,
            shard: None,
        }
    }
}

/// The value of `<ns>:member:<id>`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    active_from_ms: u64,
    heartbeat_ms: u64,
    #[serde(default)]
    meters: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
}

/// Now in unix milliseconds.
pub fn now_ms() -> u64 {
    (now_unix() * 1000.0) as u64
}

/// The live members under `keys`, sorted by id; members whose key expired
/// are dropped from the index on the way. Records that do not parse are
/// skipped (a newer build's format is still a live member, but this
/// process cannot place it).
pub async fn read_members(db: &Redis, keys: &Keys) -> Result<Vec<Member>, DbError> {
    let index = keys.members();
    let mut range = redis::cmd("ZRANGE");
    range.arg(&index).arg(0).arg(-1);
    let ids: Vec<String> = db.send(&format!("ZRANGE {index}"), &range).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut mget = redis::cmd("MGET");
    for id in &ids {
        mget.arg(keys.member(id));
    }
    let values: Vec<Option<String>> = db.send("MGET (fleet members)", &mget).await?;
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for (id, value) in ids.into_iter().zip(values) {
        let Some(value) = value else {
            expired.push(id);
            continue;
        };
        match serde_json::from_str::<Record>(&value) {
            Ok(r) => live.push(Member {
                id,
                active_from_ms: r.active_from_ms,
                heartbeat_ms: r.heartbeat_ms,
                meters: r.meters,
                shard: r.shard,
            }),
            Err(e) => {
                tracing::debug!(member = %id, error = %e, "Skipping a member record that does not parse.");
            }
        }
    }
    if !expired.is_empty() {
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(&index).arg(&expired);
        db.send::<()>(&format!("ZREM {index}"), &zrem).await?;
        tracing::debug!(?expired, "Dropped members whose heartbeat expired.");
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(live)
}

struct Heart {
    db: Redis,
    keys: Keys,
    id: String,
    opts: MembershipOptions,
    active_from_ms: Option<u64>,
    owned: Arc<AtomicU64>,
    /// Set for a static shard: it announces itself, but its view is fixed.
    shard: Option<Shard>,
}

impl Heart {
    /// One heartbeat: announce, then read who is alive.
    async fn beat(&mut self) -> Result<Vec<Member>, DbError> {
        let now = now_ms();
        let active_from_ms = match self.active_from_ms {
            Some(a) => a,
            None if self.shard.is_some() => now,
            None => {
                let others = splitting(read_members(&self.db, &self.keys).await?);
                if others.is_empty() {
                    now
                } else {
                    now + 2 * self.opts.heartbeat.as_millis() as u64
                }
            }
        };
        let record = Record {
            active_from_ms,
            heartbeat_ms: now,
            meters: self.owned.load(Ordering::Relaxed),
            shard: self.shard.map(|s| s.to_string()),
        };
        let body = serde_json::to_string(&record).unwrap_or_default();
        let key = self.keys.member(&self.id);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(body)
            .arg("PX")
            .arg(self.opts.ttl.as_millis() as u64)
            .ignore()
            .zadd(self.keys.members(), &self.id, now / 1000)
            .ignore();
        self.db
            .send::<()>(&format!("heartbeat {key}"), &pipe)
            .await?;
        if self.active_from_ms.is_none() && self.shard.is_none() {
            let wait_ms = active_from_ms.saturating_sub(now);
            tracing::info!(member = %self.id, starts_in_ms = wait_ms, "Fleet: joined; polling this member's share once the others have seen it.");
        }
        self.active_from_ms = Some(active_from_ms);
        read_members(&self.db, &self.keys).await
    }

    /// Deletes this member's key and index entry.
    async fn leave(&self) {
        let key = self.keys.member(&self.id);
        let mut pipe = redis::pipe();
        pipe.del(&key)
            .ignore()
            .zrem(self.keys.members(), &self.id)
            .ignore();
        let op = format!("leave {key}");
        match tokio::time::timeout(LEAVE_TIMEOUT, self.db.send::<()>(&op, &pipe)).await {
            Ok(Ok(())) => {
                tracing::info!(member = %self.id, "Fleet: left; the others take over this member's meters at their next heartbeat.");
            }
            Ok(Err(e)) => {
                tracing::warn!(member = %self.id, error = %e, "Fleet: cannot leave cleanly; the others take over when the key expires (member_ttl).");
            }
            Err(_) => {
                tracing::warn!(member = %self.id, "Fleet: Redis did not answer while leaving; the others take over when the key expires (member_ttl).");
            }
        }
    }
}

/// The members that split the meters by membership: static shards that
/// announce themselves for display take no part.
pub fn splitting(members: Vec<Member>) -> Vec<Member> {
    members.into_iter().filter(|m| m.shard.is_none()).collect()
}

/// Beats until `shutdown`, publishing the view; then leaves the fleet. A
/// static shard (`shard`) beats for display only: its view stays `fixed`.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    db: Redis,
    keys: Keys,
    id: String,
    opts: MembershipOptions,
    owned: Arc<AtomicU64>,
    shard: Option<Shard>,
    shutdown: CancellationToken,
) -> (watch::Receiver<View>, tokio::task::JoinHandle<()>) {
    let first = match shard {
        Some(s) => View::shard(s),
        None => View::new(Mode::Membership, id.clone(), Vec::new()),
    };
    let (tx, rx) = watch::channel(first);
    let mut heart = Heart {
        db,
        keys,
        id,
        opts,
        active_from_ms: None,
        owned,
        shard,
    };
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(opts.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut recovered: Option<tokio::time::Instant> = None;
        // Activation instants up to here have been told to the pinger.
        let mut told_ms = now_ms();
        loop {
            let activation = tx.borrow().next_activation(now_ms());
            let wake = async {
                match activation {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            let beat = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => true,
                _ = wake => false,
            };
            // The split changes at a member's instant with nothing new from
            // Redis; the pinger re-filters on this notification. Checked
            // whichever branch woke us: a joiner's instant is two heartbeats
            // after its first, so the heartbeat tick is due at the same
            // moment and may win the race, and the instant must not pass
            // unannounced (the joiner would poll nothing until its next
            // user reload while the others have let its share go).
            let now = now_ms();
            if tx
                .borrow()
                .members
                .iter()
                .any(|m| m.active_from_ms > told_ms && m.active_from_ms <= now)
            {
                tx.send_modify(|_| {});
            }
            told_ms = now;
            if !beat {
                continue;
            }
            match heart.beat().await {
                Ok(_) if shard.is_some() => failing = false,
                Ok(members) => {
                    let mut members = splitting(members);
                    if failing {
                        failing = false;
                        recovered = Some(tokio::time::Instant::now());
                        tracing::info!(member = %heart.id, "Fleet: Redis reachable again; members known before the outage stay for member_ttl while they announce themselves again.");
                    }
                    // The others' keys may have expired during the outage
                    // and come back only when their own connections do: a
                    // list read now could show this member alone, and it
                    // would grab everything. Members of the last view keep
                    // their place for one ttl after the outage, the time
                    // any live one has to announce itself again.
                    if recovered.is_some_and(|at| at.elapsed() < opts.ttl) {
                        let old = tx.borrow().members.clone();
                        for m in old {
                            if !members.iter().any(|n| n.id == m.id) {
                                members.push(m);
                            }
                        }
                    }
                    let view = View::new(Mode::Membership, heart.id.clone(), members);
                    tx.send_if_modified(|old| {
                        let changed = !old.same_split(&view);
                        if changed {
                            tracing::info!(member = %heart.id, members = ?view.members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), "Fleet: membership changed.");
                        }
                        *old = view;
                        changed
                    });
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        if heart.active_from_ms.is_none() {
                            // Polling everything unannounced could double
                            // every slot of a running fleet.
                            tracing::error!(member = %heart.id, error = %e, "Fleet: cannot join; polling nothing until the first heartbeat succeeds. Check that Redis is reachable and the user may write the member keys.");
                        } else {
                            tracing::warn!(member = %heart.id, error = %e, "Fleet: heartbeat failed; keeping the last known membership (polling what this member owned) until Redis answers.");
                        }
                    }
                }
            }
        }
        if heart.active_from_ms.is_some() {
            heart.leave().await;
        }
    });
    (rx, task)
}
