//! The Redis back end of the user registry, and the schema it owns.
//!
//! # Schema
//!
//! All keys start with a namespace, `rainforest` in production (tests use a
//! unique `t-<random>` each, so they can share one Redis). `<id>` is a cloud
//! id: six lower-case hex digits, e.g. `00ce69`.
//!
//! | Key | Type | Contents |
//! |-----|------|----------|
//! | `rainforest:users` | SET | index: the cloud id of every user, active or not |
//! | `rainforest:user:<id>` | HASH | credentials and settings (below) |
//! | `rainforest:stats:<id>` | HASH | polling statistics (below), kept apart from credentials |
//!
//! `rainforest:user:<id>` fields, all strings:
//!
//! - `user_email`: account e-mail (the relay's `User` header);
//! - `user_pw`: account password, in clear (absent for a local user without one);
//! - `active`: `1` to poll the meter, `0` to keep but not poll it;
//! - `source`: `relay` (the vendor's cloud relay) or `local` (an EAGLE-200 on the LAN);
//! - `host`, `install_code`: only when `source` is `local`;
//! - `updated_at`: when the settings last changed, unix seconds (e.g. `1718000000.25`).
//!
//! `rainforest:stats:<id>` fields, all strings; absent until first known:
//!
//! - `total_events_logged`: readings written, an integer only ever raised
//!   with `HINCRBY`;
//! - `first_timestamp`: unix seconds of the first reading, set once with
//!   `HSETNX`;
//! - `last_timestamp`: unix seconds of the latest reading;
//! - `last_error_kind`, `last_error_at`: the latest failure's kind
//!   (`auth`, `timeout`, `connect`, `relay_error`, `http_status`,
//!   `malformed`) and unix seconds;
//! - `consecutive_failures`: failures in a row, `0` after a success;
//! - `state`: `ok`, `backoff` or `auth_failed`.
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
//! The connection is a [`ConnectionManager`]: after an outage it reconnects
//! by itself, and calls made meanwhile fail fast with
//! [`RegistryError::Unavailable`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{FromRedisValue, RedisError, Value};

use super::stats::{MeterState, StatsUpdate, UserStats};
use super::user::{LocalSource, User};
use super::{ProblemLog, PutOutcome, RegistryError};
use crate::cloud_id::CloudId;
use crate::config::redact_url;
use crate::secret::Secret;

/// The namespace production uses; every key starts with `rainforest:`.
pub const DEFAULT_NAMESPACE: &str = "rainforest";

/// Index members asked for per `SSCAN` call.
const SCAN_COUNT: usize = 1000;
/// Most `HGETALL`s sent in one pipelined round trip.
const FETCH_BATCH: usize = 1000;

/// Connection attempts per reconnect before calls fail with `Unavailable`;
/// kept low so an outage is reported in well under a poll interval.
const RECONNECT_RETRIES: usize = 1;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command (or a pipelined batch) may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

const CHECK_REDIS: &str = "check that Redis is running and reachable at that address, and the URL's password and database number";

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

/// The registry's key names under one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    /// Key names under `namespace`, which must be non-empty letters, digits,
    /// `-`, `_`, `.` or `:` (it is spliced into every key).
    pub fn new(namespace: &str) -> Result<Keys, RegistryError> {
        let ok = !namespace.is_empty()
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(Keys {
                namespace: namespace.to_string(),
            })
        } else {
            Err(RegistryError::Config {
                reason: format!(
                    "Redis key namespace {namespace:?} must be non-empty letters, digits, '-', '_', '.' or ':'"
                ),
            })
        }
    }

    /// The namespace itself.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The SET of all cloud ids.
    pub fn index(&self) -> String {
        format!("{}:users", self.namespace)
    }

    /// The HASH of one user's credentials and settings.
    pub fn user(&self, id: CloudId) -> String {
        format!("{}:user:{id}", self.namespace)
    }

    /// The HASH of one meter's statistics.
    pub fn stats(&self, id: CloudId) -> String {
        format!("{}:stats:{id}", self.namespace)
    }
}

/// The user registry in Redis; see the module documentation for the schema.
///
/// Cheap to clone: clones share one self-healing connection.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: ConnectionManager,
    keys: Keys,
    /// The URL with its password redacted, for messages.
    url: Arc<str>,
    put_script: ::redis::Script,
    stats_script: ::redis::Script,
    problems: Arc<ProblemLog>,
}

impl fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("url", &self.url)
            .field("namespace", &self.keys.namespace)
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
        let shown = redact_url(url);
        let client = ::redis::Client::open(url).map_err(|e| RegistryError::Config {
            reason: format!(
                "Redis URL {shown} is not usable: {e}; use redis://[:password@]host[:port][/db]"
            ),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let target = format!("Redis at {shown}");
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| RegistryError::Unavailable {
                target: target.clone(),
                reason: format!("cannot connect: {e}"),
                check: CHECK_REDIS,
            })?;
        let registry = RedisRegistry {
            conn,
            keys,
            url: Arc::from(shown),
            put_script: ::redis::Script::new(PUT_LUA),
            stats_script: ::redis::Script::new(STATS_LUA),
            problems: Arc::default(),
        };
        registry.ping().await?;
        Ok(registry)
    }

    /// The key names this registry uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `Redis at <url>` with the password redacted, for messages.
    pub fn target(&self) -> String {
        format!("Redis at {}", self.url)
    }

    /// Checks Redis answers `PING`.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.send::<()>("PING", Request::Cmd(&::redis::cmd("PING")))
            .await
    }

    /// Every user in the index, sorted by cloud id; invalid entries are
    /// logged once and skipped. See the module documentation for how this
    /// stays cheap for Redis.
    pub async fn load_all(&self) -> Result<Vec<User>, RegistryError> {
        let index = self.keys.index();
        let mut seen: HashSet<CloudId> = HashSet::new();
        let mut users = Vec::new();
        let mut problems: Vec<(String, RegistryError)> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = ::redis::cmd("SSCAN");
            scan.arg(&index).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
            let (next, members): (u64, Vec<Vec<u8>>) = self
                .send(&format!("SSCAN {index}"), Request::Cmd(&scan))
                .await?;
            let mut ids = Vec::with_capacity(members.len());
            for member in members {
                let text = String::from_utf8_lossy(&member);
                match CloudId::parse(&text) {
                    Ok(id) => {
                        if seen.insert(id) {
                            ids.push(id);
                        }
                    }
                    Err(e) => problems.push((
                        format!("{index} member {text:?}"),
                        RegistryError::Invalid {
                            key: index.clone(),
                            field: format!("member {text:?}"),
                            reason: e.to_string(),
                        },
                    )),
                }
            }
            for chunk in ids.chunks(FETCH_BATCH) {
                let mut pipe = ::redis::pipe();
                for id in chunk {
                    pipe.cmd("HGETALL").arg(self.keys.user(*id));
                }
                let hashes: Vec<Value> = self
                    .send("HGETALL (batch of user hashes)", Request::Pipe(&pipe))
                    .await?;
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
                    match user_from_hash(*id, &key, &fields) {
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

    /// One user, or `None`; an invalid stored user is an
    /// [`RegistryError::Invalid`] naming the key and field.
    pub async fn get(&self, id: CloudId) -> Result<Option<User>, RegistryError> {
        let key = self.keys.user(id);
        let fields = self.hgetall(&key).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        user_from_hash(id, &key, &fields).map(Some)
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
            .arg(self.keys.index())
            .arg(user.cloud_id.as_str())
            .arg(format_ts(now_unix()));
        for (field, value) in user_to_hash(user) {
            call.arg(field).arg(value);
        }
        let (code,): (i64,) = self
            .send(&format!("put {key}"), Request::Pipe(&pipe))
            .await?;
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
            .srem(self.keys.index(), id.as_str());
        let (deleted, _, unindexed): (i64, i64, i64) = self
            .send(&format!("remove {key}"), Request::Pipe(&pipe))
            .await?;
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
    /// `HGETALL`s, [`FETCH_BATCH`] per round trip, so an overview of 10,000
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
                .send("HGETALL (batch of statistics hashes)", Request::Pipe(&pipe))
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
        let index = self.keys.index();
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
                .arg(u.state.map(MeterState::as_str).unwrap_or_default())
                .arg(u.last_demand_kw.map(format_ts).unwrap_or_default())
                .arg(u.spark.as_deref().unwrap_or_default());
        }
        pipe.ignore_errors();
        let op = format!("statistics write ({} meters)", updates.len());
        let replies: Vec<Value> = self.send(&op, Request::Pipe(&pipe)).await?;
        let mut refused = None;
        for (u, reply) in updates.iter().zip(replies) {
            if let Value::ServerError(e) = reply {
                let key = self.keys.stats(u.cloud_id);
                match self.error(&format!("statistics write to {key}"), RedisError::from(e)) {
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
        let value: Value = self
            .send(&format!("HGETALL {key}"), Request::Cmd(&cmd))
            .await?;
        hash_fields(key, value)
    }

    /// Sends a command or pipeline. A refused connection is retried once:
    /// nothing was sent, and the first call after Redis comes back can meet
    /// the connection manager's last failed attempt; the retry waits for the
    /// fresh one instead of reporting an outage that is already over.
    async fn send<T: FromRedisValue>(
        &self,
        op: &str,
        request: Request<'_>,
    ) -> Result<T, RegistryError> {
        let mut conn = self.conn.clone();
        let mut retried = false;
        loop {
            let result = match request {
                Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Request::Pipe(pipe) => pipe.query_async(&mut conn).await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if !retried && e.is_connection_refusal() => retried = true,
                Err(e) => return Err(self.error(op, e)),
            }
        }
    }

    /// Sorts a Redis failure into "try later" or "someone must act".
    fn error(&self, op: &str, e: RedisError) -> RegistryError {
        let transient_code = matches!(
            e.code(),
            Some(
                "LOADING"
                    | "MASTERDOWN"
                    | "NOAUTH"
                    | "WRONGPASS"
                    | "READONLY"
                    | "BUSY"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
            )
        );
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.kind() == ::redis::ErrorKind::AuthenticationFailed
            || transient_code
        {
            RegistryError::Unavailable {
                target: self.target(),
                reason: format!("{op} failed: {e}"),
                check: CHECK_REDIS,
            }
        } else {
            RegistryError::Refused {
                target: self.target(),
                op: op.to_string(),
                message: e.to_string(),
            }
        }
    }
}

/// One command or a pipeline, for [`RedisRegistry::send`].
#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a ::redis::Cmd),
    Pipe(&'a ::redis::Pipeline),
}

/// Converts an `HGETALL` reply to field -> value, reporting non-text data
/// against the key.
fn hash_fields(key: &str, value: Value) -> Result<HashMap<String, String>, RegistryError> {
    HashMap::<String, String>::from_redis_value(value).map_err(|e| RegistryError::Invalid {
        key: key.to_string(),
        field: "(hash)".into(),
        reason: format!("not a hash of text fields: {e}"),
    })
}

/// The stored form of a user's settings (without `updated_at`), in a fixed
/// order. Secrets are exposed here because this is a write to the store.
pub fn user_to_hash(user: &User) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("user_email", user.user_email.clone()),
        ("active", if user.active { "1" } else { "0" }.to_string()),
    ];
    if !user.user_pw.is_empty() {
        fields.push(("user_pw", user.user_pw.expose().to_string()));
    }
    match &user.local {
        None => fields.push(("source", "relay".into())),
        Some(local) => {
            fields.push(("source", "local".into()));
            fields.push(("host", local.host.clone()));
            fields.push(("install_code", local.install_code.expose().to_string()));
        }
    }
    fields
}

/// Reads a user back from its hash and validates it; problems name `key`
/// and the field. Fields this version does not know are ignored.
pub fn user_from_hash(
    id: CloudId,
    key: &str,
    fields: &HashMap<String, String>,
) -> Result<User, RegistryError> {
    let invalid = |field: &str, reason: &str| RegistryError::Invalid {
        key: key.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    let user_email = fields
        .get("user_email")
        .cloned()
        .ok_or_else(|| invalid("user_email", "is missing"))?;
    let active = match fields.get("active").map(String::as_str) {
        Some("1") | None => true,
        Some("0") => false,
        Some(_) => return Err(invalid("active", "must be 1 or 0")),
    };
    let user_pw = Secret::new(fields.get("user_pw").cloned().unwrap_or_default());
    let local = match fields.get("source").map(String::as_str) {
        Some("relay") => None,
        Some("local") => Some(LocalSource {
            host: fields
                .get("host")
                .cloned()
                .ok_or_else(|| invalid("host", "is missing (required when source is local)"))?,
            install_code: Secret::new(fields.get("install_code").cloned().ok_or_else(|| {
                invalid("install_code", "is missing (required when source is local)")
            })?),
        }),
        Some(_) => return Err(invalid("source", "must be relay or local")),
        None => return Err(invalid("source", "is missing")),
    };
    let user = User {
        cloud_id: id,
        user_email,
        user_pw,
        active,
        local,
    };
    user.validate().map_err(|e| {
        // The hash stores `local.host` as plain `host`.
        let field = e.field.strip_prefix("local.").unwrap_or(&e.field);
        invalid(field, &e.reason)
    })?;
    Ok(user)
}

/// Reads statistics back from their hash; problems name `key` and the field.
pub fn stats_from_hash(
    key: &str,
    fields: &HashMap<String, String>,
) -> Result<UserStats, RegistryError> {
    let invalid = |field: &str, reason: &str| RegistryError::Invalid {
        key: key.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    let ts = |field: &str| -> Result<Option<f64>, RegistryError> {
        match fields.get(field) {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(t) if t.is_finite() => Ok(Some(t)),
                _ => Err(invalid(field, "must be unix seconds like 1718000000.25")),
            },
        }
    };
    let total_events_logged = match fields.get("total_events_logged") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| invalid("total_events_logged", "must be a whole number"))?,
    };
    let consecutive_failures = match fields.get("consecutive_failures") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| invalid("consecutive_failures", "must be a whole number"))?,
    };
    let state = match fields.get("state") {
        None => MeterState::Ok,
        Some(v) => v
            .parse::<MeterState>()
            .map_err(|e| invalid("state", &e.to_string()))?,
    };
    Ok(UserStats {
        total_events_logged,
        first_timestamp: ts("first_timestamp")?,
        last_timestamp: ts("last_timestamp")?,
        last_error_kind: fields.get("last_error_kind").cloned(),
        last_error_at: ts("last_error_at")?,
        consecutive_failures,
        state,
        last_demand_kw: ts("last_demand_kw")?,
        spark: fields.get("spark").cloned(),
    })
}

/// Unix seconds as Redis stores them (the shortest text that reads back to
/// the same float); non-finite values become "" (not stored).
fn format_ts(t: f64) -> String {
    if t.is_finite() {
        t.to_string()
    } else {
        String::new()
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> CloudId {
        CloudId::parse("00ce69").unwrap()
    }

    fn relay_user() -> User {
        User {
            cloud_id: id(),
            user_email: "a@b.org".into(),
            user_pw: Secret::new("pw"),
            active: true,
            local: None,
        }
    }

    fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, String> {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn keys_follow_the_schema() {
        let k = Keys::new("rainforest").unwrap();
        assert_eq!(k.index(), "rainforest:users");
        assert_eq!(k.user(id()), "rainforest:user:00ce69");
        assert_eq!(k.stats(id()), "rainforest:stats:00ce69");
        for bad in ["", "a b", "x*", "ns\n"] {
            assert!(Keys::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hash_round_trips_relay_and_local_users() {
        let relay = relay_user();
        let key = "rainforest:user:00ce69";
        assert_eq!(
            user_from_hash(id(), key, &as_map(user_to_hash(&relay))).unwrap(),
            relay
        );
        let local = User {
            user_pw: Secret::new(""),
            active: false,
            local: Some(LocalSource {
                host: "10.0.0.2".into(),
                install_code: Secret::new("c0de"),
            }),
            ..relay
        };
        let fields = as_map(user_to_hash(&local));
        assert!(!fields.contains_key("user_pw"));
        assert_eq!(fields["source"], "local");
        assert_eq!(user_from_hash(id(), key, &fields).unwrap(), local);
    }

    #[test]
    fn invalid_hash_names_key_and_field() {
        let mut fields = as_map(user_to_hash(&relay_user()));
        fields.insert("source".into(), "carrier-pigeon".into());
        let e = user_from_hash(id(), "ns:user:00ce69", &fields).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ns:user:00ce69") && text.contains("`source`"),
            "{text}"
        );
        fields.insert("source".into(), "relay".into());
        fields.remove("user_pw");
        let e = user_from_hash(id(), "ns:user:00ce69", &fields).unwrap_err();
        assert!(
            matches!(e, RegistryError::Invalid { ref field, .. } if field == "user_pw"),
            "{e}"
        );
    }

    #[test]
    fn stats_hash_parses_and_rejects_garbage() {
        let fields = as_map(vec![
            ("total_events_logged", "12".into()),
            ("first_timestamp", "1718000000.25".into()),
            ("state", "auth_failed".into()),
        ]);
        let s = stats_from_hash("k", &fields).unwrap();
        assert_eq!(s.total_events_logged, 12);
        assert_eq!(s.first_timestamp, Some(1718000000.25));
        assert_eq!(s.state, MeterState::AuthFailed);
        let bad = as_map(vec![("last_timestamp", "yesterday".into())]);
        let e = stats_from_hash("k", &bad).unwrap_err();
        assert!(matches!(e, RegistryError::Invalid { ref field, .. } if field == "last_timestamp"));
    }

    #[test]
    fn timestamps_are_stored_exactly() {
        let t = 1718000000.123456_f64;
        assert_eq!(format_ts(t).parse::<f64>().unwrap(), t);
        assert_eq!(format_ts(f64::NAN), "");
    }
}
