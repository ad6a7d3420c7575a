//! API tokens: who may call the HTTP server, and with which scope.
//!
//! Owns token generation, hashing, the token store in Redis, the bootstrap
//! admin token from the configuration, and the check of a presented bearer
//! token ([`Authenticator::verify`]). It knows nothing about HTTP: the
//! server turns a [`Principal`] or an [`AuthError`] into a response. It must
//! not touch the user registry's keys.
//!
//! The old server guarded everything with one shared password in the query
//! string. Tokens replace it: each is 256 random bits, shown once when it is
//! created, and stored only as its SHA-256 hash, so a copy of Redis does not
//! let anyone in. A fast hash is enough here (unlike for human passwords):
//! nobody can brute-force 256 random bits, and a slow hash would slow down
//! every request.
//!
//! # Redis schema
//!
//! Under the same namespace as the registry (`rainforest` in production):
//!
//! | Key | Type | Contents |
//! |-----|------|----------|
//! | `rainforest:tokens` | HASH | token name -> SHA-256 of the token, 64 hex digits; the index |
//! | `rainforest:token:<sha256 hex>` | HASH | `name`, `scope` (`read`, `write`, `admin`), `created_at` and, when it expires, `expires_at` (unix seconds) |
//!
//! A presented token is checked by hashing it and reading
//! `rainforest:token:<hash>`: the lookup is by the hash of a 256-bit secret,
//! so its timing tells an attacker nothing useful. The bootstrap token is
//! compared hash to hash in constant time ([`subtle`]).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, Value};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, redact_url};
use crate::registry::redis::Keys;
use crate::secret::Secret;

/// Prefix of generated tokens, so secret scanners and people recognise them.
pub const TOKEN_PREFIX: &str = "rft_";
/// Random bytes per generated token (256 bits).
const TOKEN_BYTES: usize = 32;
/// Shortest bootstrap token accepted; shorter ones are guessable.
pub const MIN_BOOTSTRAP_LEN: usize = 16;
/// Longest bearer value even looked at; real tokens are 68 characters.
const MAX_PRESENTED_LEN: usize = 512;
/// Longest token name.
const MAX_NAME_LEN: usize = 64;
/// The principal name of the bootstrap token in logs (reserved).
pub const BOOTSTRAP_NAME: &str = "bootstrap";

const CHECK_REDIS: &str = "check that Redis is running and reachable at that address, and the URL's password and database number";

/// Creates a token unless its name is taken. KEYS: index, token hash key.
/// ARGV: name, hash, then field/value pairs. Returns 1 created, 0 taken.
const CREATE_LUA: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
return 1
";

/// Revokes a token by name. KEYS: index. ARGV: name, token key prefix.
/// Returns 1 revoked, 0 no such name.
const REVOKE_LUA: &str = r"
local hash = redis.call('HGET', KEYS[1], ARGV[1])
if not hash then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', ARGV[2] .. hash)
return 1
";

/// What a token may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read users, statistics and the API description.
    Read,
    /// Also create, change and delete users, and read meters on demand
    /// (which calls out with a user's credentials and writes the spool).
    Write,
    /// Everything; reserved for operators (the bootstrap token is admin).
    Admin,
}

impl Scope {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!("{s:?} is not a scope; use read, write or admin")),
        }
    }
}

/// The SHA-256 of a token: what is stored and compared, never the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented or generated token.
    pub fn of(token: &str) -> TokenHash {
        let digest = Sha256::digest(token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        TokenHash(out)
    }

    /// 64 lower-case hex digits, as stored in Redis.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time equality, so response times do not reveal how much of
    /// a guess matched.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    /// Redacted: a hash in a log is one step closer to an offline attack.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash([redacted])")
    }
}

/// A fresh random token: [`TOKEN_PREFIX`] and 64 hex digits (256 bits from
/// the operating system-seeded CSPRNG).
pub fn generate() -> Secret {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::fill(&mut bytes[..]);
    Secret::new(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// A token's description: safe to list and log, holds no secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    /// Unique name chosen at creation; how it is revoked.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was created (unix seconds).
    pub created_at: f64,
    /// When it stops working (unix seconds); `None`: never.
    pub expires_at: Option<f64>,
}

impl TokenInfo {
    /// Whether the token has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: f64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A token just created: the secret (shown once, never stored) and its info.
#[derive(Debug)]
pub struct NewToken {
    /// The bearer token to hand to the client.
    pub token: Secret,
    /// What was stored about it.
    pub info: TokenInfo,
}

/// A token store or bootstrap-token operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Redis could not be reached; retry later.
    #[error("{target} is unavailable: {reason} ({CHECK_REDIS})")]
    Unavailable {
        /// `Redis at <url, password redacted>`.
        target: String,
        /// What failed.
        reason: String,
    },
    /// Redis answered but refused the command; someone must act.
    #[error(
        "{target} refused {op}: {message} (check Redis' logs and that nothing else writes the token keys)"
    )]
    Refused {
        /// As in [`Unavailable`](TokenError::Unavailable).
        target: String,
        /// The operation and key.
        op: String,
        /// Redis' message.
        message: String,
    },
    /// `tokens create` with a name already in use.
    #[error(
        "a token named {0:?} already exists; pick another name, or revoke it first with `rainforest tokens revoke {0}`"
    )]
    NameTaken(String),
    /// A name that is empty, too long, reserved or has odd characters.
    #[error(
        "invalid token name {0:?}: use 1-64 letters, digits, '.', '_' or '-' (and not \"bootstrap\")"
    )]
    BadName(String),
    /// A stored token record that does not parse.
    #[error("invalid data in {key}: {reason} (revoke that token or delete the key)")]
    Invalid {
        /// The Redis key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The settings do not make a usable token set-up.
    #[error("{reason}")]
    Config {
        /// What is wrong and which setting to change.
        reason: String,
    },
}

impl TokenError {
    /// Whether retrying later may succeed (Redis was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::Unavailable { .. })
    }
}

/// Tokens in Redis; see the module documentation for the schema.
///
/// Cheap to clone: clones share one self-healing connection.
#[derive(Clone)]
pub struct TokenStore {
    conn: ConnectionManager,
    keys: Keys,
    target: Arc<str>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("target", &self.target)
            .field("namespace", &self.keys.namespace())
            .finish()
    }
}

impl TokenStore {
    /// Connects to the Redis at `url` and checks it answers; `namespace` is
    /// the registry's (`redis_namespace`).
    pub async fn connect(url: &str, namespace: &str) -> Result<TokenStore, TokenError> {
        let keys = Keys::new(namespace).map_err(|e| TokenError::Config {
            reason: e.to_string(),
        })?;
        let target: Arc<str> = Arc::from(format!("Redis at {}", redact_url(url)));
        let conn = redis_connection(url)
            .await
            .map_err(|reason| TokenError::Unavailable {
                target: target.to_string(),
                reason,
            })?;
        Ok(TokenStore { conn, keys, target })
    }

    /// The index key: `<ns>:tokens`.
    pub fn index_key(&self) -> String {
        format!("{}:tokens", self.keys.namespace())
    }

    /// The record key of a token: `<ns>:token:<sha256 hex>`.
    pub fn token_key(&self, hash: &TokenHash) -> String {
        format!("{}{}", self.token_key_prefix(), hash.to_hex())
    }

    fn token_key_prefix(&self) -> String {
        format!("{}:token:", self.keys.namespace())
    }

    /// Creates a token named `name` with `scope`, expiring after `ttl` if
    /// given. The returned secret exists nowhere else: show it once.
    pub async fn create(
        &self,
        name: &str,
        scope: Scope,
        ttl: Option<Duration>,
    ) -> Result<NewToken, TokenError> {
        check_name(name)?;
        let token = generate();
        let hash = TokenHash::of(token.expose());
        let created_at = now_unix();
        let expires_at = ttl.map(|d| created_at + d.as_secs_f64());
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CREATE_LUA)
            .arg(2)
            .arg(self.index_key())
            .arg(self.token_key(&hash))
            .arg(name)
            .arg(hash.to_hex())
            .arg("name")
            .arg(name)
            .arg("scope")
            .arg(scope.as_str())
            .arg("created_at")
            .arg(created_at.to_string());
        if let Some(at) = expires_at {
            cmd.arg("expires_at").arg(at.to_string());
        }
        let created: i64 = self.query(&format!("create token {name}"), &cmd).await?;
        if created == 0 {
            return Err(TokenError::NameTaken(name.to_string()));
        }
        Ok(NewToken {
            token,
            info: TokenInfo {
                name: name.to_string(),
                scope,
                created_at,
                expires_at,
            },
        })
    }

    /// Every token's description (never a secret or hash), sorted by name.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let index = self.index_key();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&index);
        let names: HashMap<String, String> = self.query(&format!("HGETALL {index}"), &cmd).await?;
        let mut names: Vec<(String, String)> = names.into_iter().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(500) {
            let mut pipe = redis::pipe();
            for (_, hash) in chunk {
                pipe.cmd("HGETALL")
                    .arg(format!("{}{hash}", self.token_key_prefix()));
            }
            let replies: Vec<Value> = self.query_pipe("HGETALL (token records)", &pipe).await?;
            for ((name, hash), reply) in chunk.iter().zip(replies) {
                let key = format!("{}{hash}", self.token_key_prefix());
                let fields = HashMap::<String, String>::from_redis_value(reply).map_err(|e| {
                    TokenError::Invalid {
                        key: key.clone(),
                        reason: format!("not a hash of text fields: {e}"),
                    }
                })?;
                if fields.is_empty() {
                    // Indexed but gone: revoked concurrently, or deleted by hand.
                    tracing::debug!(%key, token = %name, "Token index entry without a record; skipping.");
                    continue;
                }
                out.push(info_from_hash(&key, &fields)?);
            }
        }
        Ok(out)
    }

    /// Revokes the token named `name`; `false` if there was none.
    pub async fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REVOKE_LUA)
            .arg(1)
            .arg(self.index_key())
            .arg(name)
            .arg(self.token_key_prefix());
        let revoked: i64 = self.query(&format!("revoke token {name}"), &cmd).await?;
        Ok(revoked == 1)
    }

    /// The token with this hash, or `None` (never existed or revoked).
    pub async fn lookup(&self, hash: &TokenHash) -> Result<Option<TokenInfo>, TokenError> {
        let key = self.token_key(hash);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&key);
        let fields: HashMap<String, String> = self.query("token lookup", &cmd).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        info_from_hash(&key, &fields).map(Some)
    }

    /// Whether at least one token is usable now (exists, not expired); the
    /// server refuses to start otherwise, unless a bootstrap token is set.
    pub async fn has_usable_token(&self) -> Result<bool, TokenError> {
        let now = now_unix();
        Ok(self.list().await?.iter().any(|t| !t.is_expired(now)))
    }

    async fn query<T: FromRedisValue>(&self, op: &str, cmd: &redis::Cmd) -> Result<T, TokenError> {
        query_cmd(&self.conn, cmd)
            .await
            .map_err(|e| self.error(op, e))
    }

    async fn query_pipe<T: FromRedisValue>(
        &self,
        op: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, TokenError> {
        let mut conn = self.conn.clone();
        let mut retried = false;
        loop {
            match pipe.query_async(&mut conn).await {
                Ok(v) => return Ok(v),
                // As in `query_cmd`.
                Err(e) if !retried && e.is_connection_refusal() => retried = true,
                Err(e) => return Err(self.error(op, e)),
            }
        }
    }

    fn error(&self, op: &str, e: RedisError) -> TokenError {
        if is_transient(&e) {
            TokenError::Unavailable {
                target: self.target.to_string(),
                reason: format!("{op} failed: {e}"),
            }
        } else {
            TokenError::Refused {
                target: self.target.to_string(),
                op: op.to_string(),
                message: e.to_string(),
            }
        }
    }
}

/// Opens a self-healing Redis connection with the registry's timeouts, so
/// an outage is reported in seconds and survived without a restart.
pub(crate) async fn redis_connection(url: &str) -> Result<ConnectionManager, String> {
    let shown = redact_url(url);
    let client = redis::Client::open(url).map_err(|e| {
        format!("Redis URL {shown} is not usable: {e}; use redis://[:password@]host[:port][/db]")
    })?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// Sends a command. A refused connection is retried once: nothing was
/// sent, and the first call after Redis comes back can meet the connection
/// manager's last failed attempt; the retry waits for the fresh connection
/// instead of reporting an outage that is already over.
pub(crate) async fn query_cmd<T: FromRedisValue>(
    conn: &ConnectionManager,
    cmd: &redis::Cmd,
) -> Result<T, RedisError> {
    let mut conn = conn.clone();
    let mut retried = false;
    loop {
        match cmd.query_async(&mut conn).await {
            Ok(v) => return Ok(v),
            Err(e) if !retried && e.is_connection_refusal() => retried = true,
            Err(e) => return Err(e),
        }
    }
}

/// Whether a Redis failure is an outage (retry later) rather than a refusal.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(
            e.code(),
            Some("LOADING" | "MASTERDOWN" | "NOAUTH" | "WRONGPASS" | "READONLY" | "BUSY")
        )
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != BOOTSTRAP_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadName(name.to_string()))
    }
}

fn info_from_hash(key: &str, fields: &HashMap<String, String>) -> Result<TokenInfo, TokenError> {
    let invalid = |reason: &str| TokenError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let name = fields
        .get("name")
        .cloned()
        .ok_or_else(|| invalid("field `name` is missing"))?;
    let scope = fields
        .get("scope")
        .ok_or_else(|| invalid("field `scope` is missing"))?
        .parse::<Scope>()
        .map_err(|e| invalid(&format!("field `scope`: {e}")))?;
    let ts = |field: &str| -> Result<Option<f64>, TokenError> {
        match fields.get(field) {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(t) if t.is_finite() => Ok(Some(t)),
                _ => Err(invalid(&format!("field `{field}` must be unix seconds"))),
            },
        }
    };
    Ok(TokenInfo {
        name,
        scope,
        created_at: ts("created_at")?.unwrap_or(0.0),
        expires_at: ts("expires_at")?,
    })
}

/// The bootstrap admin token from the configuration: `api_token`
/// (`RAINFOREST_API_TOKEN`), or the first line of the file named by
/// `api_token_file` (for Docker and Kubernetes secrets). Setting both is an
/// error, so nobody wonders which one applies. Also the token the importer
/// presents to the server.
pub fn bootstrap_token(config: &Config) -> Result<Option<Secret>, TokenError> {
    match (&config.api_token, &config.api_token_file) {
        (Some(_), Some(path)) => Err(TokenError::Config {
            reason: format!(
                "both api_token (RAINFOREST_API_TOKEN) and api_token_file ({}) are set; keep one",
                path.display()
            ),
        }),
        (Some(token), None) => Ok(Some(token.clone())),
        (None, Some(path)) => read_token_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

fn read_token_file(path: &Path) -> Result<Secret, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Config {
        reason: format!(
            "cannot read api_token_file {}: {e}; check the path and its permissions",
            path.display()
        ),
    })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(TokenError::Config {
            reason: format!(
                "api_token_file {} is empty; write the token on its first line",
                path.display()
            ),
        });
    }
    Ok(Secret::new(token))
}

/// Who made a request: a token's name and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name ([`BOOTSTRAP_NAME`] for the bootstrap token).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Unknown, revoked or malformed.
    #[error("the bearer token is not valid (unknown or revoked)")]
    Invalid,
    /// Known but past its expiry.
    #[error(
        "the bearer token {name:?} has expired; create a new one with `rainforest tokens create`"
    )]
    Expired {
        /// The token's name.
        name: String,
    },
    /// The token store could not be asked.
    #[error(transparent)]
    Unavailable(TokenError),
}

/// Checks presented bearer tokens against the bootstrap token and the store.
#[derive(Clone, Debug)]
pub struct Authenticator {
    bootstrap: Option<TokenHash>,
    store: Option<TokenStore>,
}

impl Authenticator {
    /// An authenticator over an optional bootstrap admin token and an
    /// optional store (no store: only the bootstrap token works).
    pub fn new(bootstrap: Option<&Secret>, store: Option<TokenStore>) -> Self {
        Authenticator {
            bootstrap: bootstrap.map(|t| TokenHash::of(t.expose())),
            store,
        }
    }

    /// The token store, if any.
    pub fn store(&self) -> Option<&TokenStore> {
        self.store.as_ref()
    }

    /// Whether a bootstrap token is configured.
    pub fn has_bootstrap(&self) -> bool {
        self.bootstrap.is_some()
    }

    /// Who `presented` belongs to at `now` (unix seconds). The bootstrap
    /// token is checked first, so it keeps working while Redis is down.
    pub async fn verify(&self, presented: &str, now: f64) -> Result<Principal, AuthError> {
        if presented.is_empty() || presented.len() > MAX_PRESENTED_LEN {
            return Err(AuthError::Invalid);
        }
        let hash = TokenHash::of(presented);
        if let Some(b) = &self.bootstrap
            && b.ct_eq(&hash)
        {
            return Ok(Principal {
                name: BOOTSTRAP_NAME.to_string(),
                scope: Scope::Admin,
            });
        }
        let Some(store) = &self.store else {
            return Err(AuthError::Invalid);
        };
        match store.lookup(&hash).await {
            Ok(Some(info)) if info.is_expired(now) => Err(AuthError::Expired { name: info.name }),
            Ok(Some(info)) => Ok(Principal {
                name: info.name,
                scope: info.scope,
            }),
            Ok(None) => Err(AuthError::Invalid),
            Err(e) if e.is_unavailable() => Err(AuthError::Unavailable(e)),
            Err(e) => {
                // A corrupt record must not lock everyone out silently.
                tracing::warn!(error = %e, "Cannot read a token record; rejecting the token.");
                Err(AuthError::Invalid)
            }
        }
    }
}

/// Wall-clock unix seconds (token times are absolute, not monotonic).
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_random_and_prefixed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        assert_eq!(format!("{a:?}"), "[redacted]");
    }

    #[test]
    fn hash_is_sha256_hex_and_compares_in_constant_time() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(h.ct_eq(&TokenHash::of("abc")));
        assert!(!h.ct_eq(&TokenHash::of("abd")));
        assert_eq!(format!("{h:?}"), "TokenHash([redacted])");
    }

    #[test]
    fn scopes_include_the_lower_ones() {
        assert!(Scope::Admin.allows(Scope::Write));
        assert!(Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
        assert!(!Scope::Write.allows(Scope::Admin));
        assert_eq!("write".parse::<Scope>(), Ok(Scope::Write));
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn names_are_checked() {
        for ok in ["importer", "ci-2025.01", "a_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "bootstrap", "a b", "x:y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiry_is_inclusive() {
        let t = TokenInfo {
            name: "t".into(),
            scope: Scope::Read,
            created_at: 0.0,
            expires_at: Some(10.0),
        };
        assert!(!t.is_expired(9.9));
        assert!(t.is_expired(10.0));
    }

    #[tokio::test]
    async fn bootstrap_token_is_admin_and_nothing_else_passes_without_a_store() {
        let auth = Authenticator::new(Some(&Secret::new("bootstrap-token-123456")), None);
        let p = auth.verify("bootstrap-token-123456", 0.0).await.unwrap();
        assert_eq!(p.scope, Scope::Admin);
        assert!(matches!(
            auth.verify("bootstrap-token-12345", 0.0).await,
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            auth.verify("", 0.0).await,
            Err(AuthError::Invalid)
        ));
    }

    #[test]
    fn bootstrap_from_file_takes_the_first_line_and_rejects_both_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token-value  \nignored\n").unwrap();
        let mut c = Config::defaults().unwrap();
        c.api_token_file = Some(path.clone());
        assert_eq!(
            bootstrap_token(&c).unwrap().unwrap().expose(),
            "s3cret-token-value"
        );
        c.api_token = Some(Secret::new("x"));
        assert!(bootstrap_token(&c).is_err());
        c.api_token = None;
        std::fs::write(&path, "\n").unwrap();
        let e = bootstrap_token(&c).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
    }
}
