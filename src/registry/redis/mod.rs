//! The Redis back end of the user registry, and the fields it stores.
//!
//! # Schema
//!
//! The registry owns three key families, named in [`crate::db::keys`] (the
//! one table of every key): the SET `<ns>:users` indexing every cloud id,
//! active or not; the HASH `<ns>:user:<id>` of one user's credentials and
//! settings; and the HASH `<ns>:stats:<id>` of one meter's statistics, kept
//! apart from credentials. `<ns>` is `rainforest` in production; `<id>` is
//! a cloud id, six lower-case hex digits such as `00ce69`.
//!
//! The fields of each hash, and their conversion to and from [`User`] and
//! [`UserStats`], are in [`fields`]. Passwords and install codes are sealed
//! with the registry's [`Vault`] before they are sent (see [`fields`] for
//! the stored form); [`rekey`] moves them to a new key.
//!
//! # Operations
//!
//! - Listing never uses `KEYS`: it walks the index with `SSCAN … COUNT 1000`
//!   and fetches each page's hashes with one pipelined batch of `HGETALL`s,
//!   so 100,000 users load in a few hundred short commands that never block
//!   Redis for long.
//! - `put` is one Lua script (one round trip): it compares the stored hash
//!   with the new settings (ignoring `updated_at`), and only when something
//!   differs replaces the hash and adds the id to the index, atomically.
//!   Statistics are not touched.
//! - `remove` is one `MULTI`/`EXEC`: `DEL` the user hash, `DEL` the stats
//!   hash, `SREM` the id from the index.
//! - Statistics for a whole batch of meters go in one pipelined round trip
//!   of small Lua calls that touch only `rainforest:stats:<id>`, and only
//!   while the id is still in the index (so the pinger cannot resurrect a
//!   removed user's statistics). They never write the credentials hash, so a
//!   password changed while the pinger runs is never undone. Delivery is
//!   at-least-once: a batch retried after a connection broke mid-reply can
//!   count some events twice.
//!
//! The connection is the shared [`crate::db::Redis`]: after an outage it
//! reconnects by itself, and calls made meanwhile fail fast with
//! [`RegistryError::Unavailable`].

pub mod fields;
pub mod rekey;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use ::redis::{FromRedisValue, RedisError, Value};

use super::stats::{StatsUpdate, UserStats};
use super::user::User;
use super::{Census, IdPage, ProblemLog, PutOutcome, RegistryError};
use crate::clock::now_unix;
use crate::cloud_id::CloudId;
use crate::db::{Keys, Redis, Request};
use crate::vault::Vault;

pub use self::fields::{stats_from_hash, user_from_hash, user_to_hash};
pub use crate::db::DEFAULT_NAMESPACE;

use self::fields::{format_ts, hash_fields};

/// Index members asked for per `SSCAN` call.
const SCAN_COUNT: usize = 1000;
/// Most `HGETALL`s sent in one pipelined round trip.
const FETCH_BATCH: usize = 1000;

/// Compares the stored user with the new settings and writes only when they
/// differ. Returns 0 unchanged, 1 updated, 2 created.
/// KEYS: user hash, index. ARGV: id, updated_at, then field/value pairs.
const PUT_LUA: &str = r"
local current = redis.call('HGETALL', KEYS[1])
local existed = #current > 0
if existed then
  local old = {}
  local old_count = 0
  for i = 1, #current, 2 do
    if current[i] ~= 'updated_at' then
      old[current[i]] = current[i + 1]
      old_count = old_count + 1
    end
  end
  local same = (old_count * 2 == #ARGV - 2)
  if same then
    for i = 3, #ARGV, 2 do
      if old[ARGV[i]] ~= ARGV[i + 1] then
        same = false
        break
      end
    end
  end
  if same then
    if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
      return 1
    end
    return 0
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
if existed then
  return 1
end
return 2
";

/// Applies one statistics update, only if the user is still indexed.
/// KEYS: index, stats hash. ARGV: id, events delta, first_timestamp,
/// last_timestamp, last_error_kind, last_error_at, consecutive_failures,
/// state, last_demand_kw, spark; an empty string means "not in this update".
const STATS_LUA: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if ARGV[2] ~= '0' then
  redis.call('HINCRBY', KEYS[2], 'total_events_logged', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('HSETNX', KEYS[2], 'first_timestamp', ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'last_timestamp', ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'last_error_kind', ARGV[5], 'last_error_at', ARGV[6])
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[2], 'consecutive_failures', ARGV[7])
end
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[2], 'state', ARGV[8])
end
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[2], 'last_demand_kw', ARGV[9])
end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[2], 'spark', ARGV[10])
end
return 1
";

/// The user registry in Redis; see the module documentation for the schema.
///
/// Cheap to clone: clones share one self-healing connection.
#[derive(Clone)]
pub struct RedisRegistry {
    db: Redis,
    keys: Keys,
    put_script: ::redis::Script,
    stats_script: ::redis::Script,
    problems: Arc<ProblemLog>,
    /// Seals and opens credentials; `None` stores them in clear.
    vault: Option<Arc<Vault>>,
}

impl fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("target", &self.db.target())
            .field("namespace", &self.keys.namespace())
            .field(
                "credentials_key_id",
                &self.vault.as_ref().map(|v| v.current_id().to_string()),
            )
            .finish()
    }
}

impl RedisRegistry {
    /// Connects to `url` (`redis://[:password@]host[:port][/db]`) and checks
    /// that Redis answers. `namespace` prefixes every key: use
    /// [`DEFAULT_NAMESPACE`] in production.
    ///
    /// Fails with [`RegistryError::Unavailable`] when Redis cannot be reached
    /// now; once connected, later outages are survived (calls fail until
    /// Redis is back, then work again on the same value).
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisRegistry, RegistryError> {
        let keys = Keys::new(namespace)?;
        let db = Redis::connect(url).await?;
        Ok(RedisRegistry::new(db, keys))
    }

    /// The registry over an existing connection, so a process that also
    /// keeps tokens or locks in the same Redis opens one connection.
    pub fn new(db: Redis, keys: Keys) -> RedisRegistry {
        RedisRegistry {
            db,
            keys,
            put_script: ::redis::Script::new(PUT_LUA),
            stats_script: ::redis::Script::new(STATS_LUA),
            problems: Arc::default(),
            vault: None,
        }
    }

    /// This registry sealing credentials with `vault` before they reach
    /// Redis, and opening them with it. Without one (the default, for tests
    /// and `allow_plaintext_credentials`), credentials are stored in clear.
    pub fn with_vault(mut self, vault: Vault) -> RedisRegistry {
        self.vault = Some(Arc::new(vault));
        self
    }

    /// The keys credentials are sealed and opened with, if any.
    pub fn vault(&self) -> Option<&Vault> {
        self.vault.as_deref()
    }

    /// The key names this registry uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The connection, to share with the token store.
    pub fn db(&self) -> &Redis {
        &self.db
    }

    /// `Redis at <url>` with the password redacted, for messages.
    pub fn target(&self) -> String {
        self.db.target().to_string()
    }

    /// Checks Redis answers `PING`.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        Ok(self.db.ping().await?)
    }

    /// Every user in the index, sorted by cloud id; invalid entries are
    /// logged once and skipped. See the module documentation for how this
    /// stays cheap for Redis.
    pub async fn load_all(&self) -> Result<Vec<User>, RegistryError> {
        let index = self.keys.users();
        let mut seen: HashSet<CloudId> = HashSet::new();
        let mut users = Vec::new();
        let mut problems: Vec<(String, RegistryError)> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let step = self.scan_index(cursor).await?;
            for (text, reason) in step.invalid {
                problems.push((
                    format!("{index} member {text:?}"),
                    RegistryError::Invalid {
                        key: index.clone(),
                        field: format!("member {text:?}"),
                        reason,
                    },
                ));
            }
            let ids: Vec<CloudId> = step.ids.into_iter().filter(|id| seen.insert(*id)).collect();
            let next = step.next;
            for chunk in ids.chunks(FETCH_BATCH) {
                let mut pipe = ::redis::pipe();
                for id in chunk {
                    pipe.cmd("HGETALL").arg(self.keys.user(*id));
                }
                let hashes: Vec<Value> = self.send("HGETALL (batch of user hashes)", &pipe).await?;
                for (id, value) in chunk.iter().zip(hashes) {
                    let key = self.keys.user(*id);
                    let fields = match hash_fields(&key, value) {
                        Ok(f) => f,
                        Err(e) => {
                            problems.push((key, e));
                            continue;
                        }
                    };
                    if fields.is_empty() {
                        // Removed between SSCAN and HGETALL, or a dangling
                        // index entry; either way there is no user.
                        tracing::debug!(
                            %key,
                            "Index lists a user whose hash does not exist; skipping."
                        );
                        continue;
                    }
                    match user_from_hash(*id, &key, &fields, self.vault()) {
                        Ok(u) => users.push(u),
                        Err(e) => problems.push((key, e)),
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let texts: Vec<String> = problems.iter().map(|(_, e)| e.to_string()).collect();
        for i in self.problems.fresh(&texts) {
            let (key, e) = &problems[i];
            tracing::warn!(%key, error = %e, "Skipping an invalid user in Redis.");
        }
        users.sort_by_key(|u| u.cloud_id);
        Ok(users)
    }

    /// The ids of one listing page: up to `limit` ids after `after`,
    /// ascending, and whether more follow.
    ///
    /// Walks the whole index with `SSCAN` and keeps only the `limit + 1`
    /// smallest ids after the cursor: a page costs one pass over the ids
    /// (about 100 short commands for 100,000 users, never `KEYS` or
    /// `SMEMBERS`) and memory bounded by the page size. Members that are
    /// not cloud ids are left to [`load_all`](Self::load_all) to report.
    pub async fn page_ids(
        &self,
        after: Option<CloudId>,
        limit: usize,
    ) -> Result<IdPage, RegistryError> {
        let mut smallest = Smallest::new(limit.saturating_add(1));
        let mut cursor: u64 = 0;
        loop {
            let step = self.scan_index(cursor).await?;
            for id in step.ids {
                if after.is_none_or(|a| id > a) {
                    smallest.offer(id);
                }
            }
            if step.next == 0 {
                break;
            }
            cursor = step.next;
        }
        Ok(IdPage::from_candidates(smallest.into_vec(), limit))
    }

    /// Active ids and the number of users, without reading credentials:
    /// the index walked with `SSCAN`, then per batch one pipelined round
    /// trip of `HMGET <user> active source user_email host` and `HEXISTS
    /// <user> install_code` (never `user_pw` or the install code itself).
    ///
    /// It counts what the pinger would poll: a hash that is gone, lacks its
    /// e-mail or a known `source` (and, for a local user, its host or
    /// install code), or has an `active` other than `1`/`0`, is no user
    /// here either ([`load_all`](Self::load_all) skips and reports it). An
    /// absent `active` means active, as [`user_from_hash`] reads it.
    pub async fn census(&self) -> Result<Census, RegistryError> {
        let mut seen: HashSet<CloudId> = HashSet::new();
        let mut active = Vec::new();
        let mut users = 0;
        let mut cursor: u64 = 0;
        loop {
            let step = self.scan_index(cursor).await?;
            let ids: Vec<CloudId> = step.ids.into_iter().filter(|id| seen.insert(*id)).collect();
            for chunk in ids.chunks(FETCH_BATCH) {
                let mut pipe = ::redis::pipe();
                for id in chunk {
                    let key = self.keys.user(*id);
                    pipe.cmd("HMGET")
                        .arg(&key)
                        .arg(&["active", "source", "user_email", "host"]);
                    pipe.cmd("HEXISTS").arg(&key).arg("install_code");
                }
                type Fields = (
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                );
                let replies: Vec<(Fields, bool)> = self
                    .send("HMGET/HEXISTS (batch of user hashes)", &pipe)
                    .await?;
                for (id, ((flag, source, email, host), has_code)) in chunk.iter().zip(replies) {
                    let source_ok = match source.as_deref() {
                        Some("relay") => true,
                        Some("local") => host.is_some() && has_code,
                        _ => false,
                    };
                    let flag_ok = matches!(flag.as_deref(), None | Some("1") | Some("0"));
                    if email.is_none() || !source_ok || !flag_ok {
                        continue;
                    }
                    users += 1;
                    if flag.as_deref() != Some("0") {
                        active.push(*id);
                    }
                }
            }
            if step.next == 0 {
                break;
            }
            cursor = step.next;
        }
        active.sort();
        Ok(Census { active, users })
    }

    /// One user, or `None`; an invalid stored user is an
    /// [`RegistryError::Invalid`] naming the key and field.
    pub async fn get(&self, id: CloudId) -> Result<Option<User>, RegistryError> {
        let key = self.keys.user(id);
        let fields = self.hgetall(&key).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        user_from_hash(id, &key, &fields, self.vault()).map(Some)
    }

    /// Stores a user atomically unless it is stored exactly so already; the
    /// caller ([`super::Registry::put`]) has validated it. One round trip:
    /// the script is loaded in the same pipeline that runs it.
    pub async fn put(&self, user: &User) -> Result<PutOutcome, RegistryError> {
        let key = self.keys.user(user.cloud_id);
        let mut pipe = ::redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(PUT_LUA).ignore();
        let call = pipe
            .cmd("EVALSHA")
            .arg(self.put_script.get_hash())
            .arg(2)
            .arg(&key)
            .arg(self.keys.users())
            .arg(user.cloud_id.as_str())
            .arg(format_ts(now_unix()));
        for (field, value) in user_to_hash(user, self.vault()) {
            call.arg(field).arg(value);
        }
        let (code,): (i64,) = self.send(&format!("put {key}"), &pipe).await?;
        match code {
            0 => Ok(PutOutcome::Unchanged),
            1 => Ok(PutOutcome::Updated),
            _ => Ok(PutOutcome::Created),
        }
    }

    /// Deletes a user's hash, its statistics and its index entry in one
    /// transaction; `false` if none of them existed.
    pub async fn remove(&self, id: CloudId) -> Result<bool, RegistryError> {
        let key = self.keys.user(id);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .del(&key)
            .del(self.keys.stats(id))
            .srem(self.keys.users(), id.as_str());
        let (deleted, _, unindexed): (i64, i64, i64) =
            self.send(&format!("remove {key}"), &pipe).await?;
        Ok(deleted > 0 || unindexed > 0)
    }

    /// A meter's statistics, or `None` if none were written yet.
    pub async fn stats(&self, id: CloudId) -> Result<Option<UserStats>, RegistryError> {
        let key = self.keys.stats(id);
        let fields = self.hgetall(&key).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        stats_from_hash(&key, &fields).map(Some)
    }

    /// The statistics of many meters, in the order of `ids`: pipelined
    /// `HGETALL`s, 1000 per round trip, so an overview of 10,000
    /// meters costs ten round trips instead of 10,000.
    ///
    /// The outer error is Redis being unreachable or refusing; an entry's
    /// own error is that one hash being invalid, so one bad record does not
    /// hide every other meter.
    pub async fn stats_many(
        &self,
        ids: &[CloudId],
    ) -> Result<Vec<Result<Option<UserStats>, RegistryError>>, RegistryError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(FETCH_BATCH) {
            let mut pipe = ::redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL").arg(self.keys.stats(*id));
            }
            let hashes: Vec<Value> = self
                .send("HGETALL (batch of statistics hashes)", &pipe)
                .await?;
            for (id, value) in chunk.iter().zip(hashes) {
                let key = self.keys.stats(*id);
                out.push(hash_fields(&key, value).and_then(|fields| {
                    if fields.is_empty() {
                        Ok(None)
                    } else {
                        stats_from_hash(&key, &fields).map(Some)
                    }
                }));
            }
        }
        Ok(out)
    }

    /// Writes a batch of statistics in one pipelined round trip (the script
    /// is loaded in the same pipeline, so a restarted Redis needs no extra
    /// trip). Touches only `…:stats:<id>` hashes.
    ///
    /// [`RegistryError::Unavailable`] means the batch may not have been
    /// applied: retry it. If the connection broke after Redis applied it, the
    /// retry adds the event counts again; statistics are at-least-once.
    ///
    /// A meter whose key Redis refuses (say, a stats key of the wrong type)
    /// does not hold up the others: the rest of the batch is applied and the
    /// first refusal is returned as [`RegistryError::Refused`], naming the
    /// key; retrying that batch would count the others twice.
    pub async fn write_stats(&self, updates: &[StatsUpdate]) -> Result<(), RegistryError> {
        if updates.is_empty() {
            return Ok(());
        }
        let index = self.keys.users();
        let sha = self.stats_script.get_hash();
        let mut pipe = ::redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(STATS_LUA).ignore();
        for u in updates {
            let (kind, at) = match &u.last_error {
                Some((kind, at)) => (kind.as_str(), format_ts(*at)),
                None => ("", String::new()),
            };
            pipe.cmd("EVALSHA")
                .arg(sha)
                .arg(2)
                .arg(&index)
                .arg(self.keys.stats(u.cloud_id))
                .arg(u.cloud_id.as_str())
                .arg(u.events_logged.min(i64::MAX as u64))
                .arg(u.first_timestamp.map(format_ts).unwrap_or_default())
                .arg(u.last_timestamp.map(format_ts).unwrap_or_default())
                .arg(kind)
                .arg(at)
                .arg(
                    u.consecutive_failures
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                )
                .arg(u.state.map(super::MeterState::as_str).unwrap_or_default())
                .arg(u.last_demand_kw.map(format_ts).unwrap_or_default())
                .arg(
                    u.spark
                        .as_ref()
                        .map(crate::stats::Sparkline::encode)
                        .unwrap_or_default(),
                );
        }
        pipe.ignore_errors();
        let op = format!("statistics write ({} meters)", updates.len());
        let replies: Vec<Value> = self.send(&op, &pipe).await?;
        let mut refused = None;
        for (u, reply) in updates.iter().zip(replies) {
            if let Value::ServerError(e) = reply {
                let key = self.keys.stats(u.cloud_id);
                let e = self
                    .db
                    .error(&format!("statistics write to {key}"), &RedisError::from(e));
                match RegistryError::from(e) {
                    unavailable @ RegistryError::Unavailable { .. } => return Err(unavailable),
                    other => {
                        refused.get_or_insert(other);
                    }
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, RegistryError> {
        let mut cmd = ::redis::cmd("HGETALL");
        cmd.arg(key);
        let value: Value = self.send(&format!("HGETALL {key}"), &cmd).await?;
        hash_fields(key, value)
    }

    /// Sends a command or pipeline through the shared connection (see
    /// [`Redis::send`]), in the registry's error terms.
    async fn send<'a, T: FromRedisValue>(
        &self,
        op: &str,
        request: impl Into<Request<'a>>,
    ) -> Result<T, RegistryError> {
        Ok(self.db.send(op, request).await?)
    }

    /// One `SSCAN` step over the index from `cursor`: the next cursor (0
    /// when done), the members that are cloud ids, and those that are not.
    async fn scan_index(&self, cursor: u64) -> Result<IndexStep, RegistryError> {
        let index = self.keys.users();
        let mut scan = ::redis::cmd("SSCAN");
        scan.arg(&index).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
        let (next, members): (u64, Vec<Vec<u8>>) =
            self.send(&format!("SSCAN {index}"), &scan).await?;
        let mut step = IndexStep {
            next,
            ids: Vec::with_capacity(members.len()),
            invalid: Vec::new(),
        };
        for member in members {
            let text = String::from_utf8_lossy(&member);
            match CloudId::parse(&text) {
                Ok(id) => step.ids.push(id),
                Err(e) => step.invalid.push((text.into_owned(), e.to_string())),
            }
        }
        Ok(step)
    }
}

/// One step of a walk over the index, for [`RedisRegistry::scan_index`].
struct IndexStep {
    next: u64,
    ids: Vec<CloudId>,
    /// Members that are not cloud ids, and why.
    invalid: Vec<(String, String)>,
}

/// The `keep` smallest distinct ids offered, in bounded memory: `SSCAN` may
/// return an id twice (while Redis rehashes), and a duplicate must not take
/// the place of another id, or a listing would end a page early.
struct Smallest {
    keep: usize,
    // A max-heap of the smallest ids seen: the top is the one to drop.
    heap: BinaryHeap<CloudId>,
    members: HashSet<CloudId>,
}

impl Smallest {
    fn new(keep: usize) -> Smallest {
        Smallest {
            keep,
            heap: BinaryHeap::with_capacity(keep.min(SCAN_COUNT) + 1),
            members: HashSet::new(),
        }
    }

    fn offer(&mut self, id: CloudId) {
        if !self.members.insert(id) {
            return;
        }
        self.heap.push(id);
        if self.heap.len() > self.keep
            && let Some(dropped) = self.heap.pop()
        {
            self.members.remove(&dropped);
        }
    }

    fn into_vec(self) -> Vec<CloudId> {
        self.heap.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_id_does_not_push_another_out_of_the_page() {
        let ids: Vec<CloudId> = (1..=4).map(CloudId::from_index).collect();
        let mut s = Smallest::new(3);
        for id in [ids[0], ids[1], ids[0], ids[1], ids[2], ids[3], ids[0]] {
            s.offer(id);
        }
        let mut got = s.into_vec();
        got.sort();
        assert_eq!(got, ids[..3]);
    }
}
