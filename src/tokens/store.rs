//! The token store in Redis: create, list, revoke and look up tokens.
//!
//! # Redis schema
//!
//! Two key families under the registry's namespace, named in
//! [`crate::db::keys`]:
//!
//! | Key | Type | Contents |
//! |-----|------|----------|
//! | `<ns>:tokens` | HASH | token name -> SHA-256 of the token, 64 hex digits; the index |
//! | `<ns>:token:<sha256 hex>` | HASH | `name`, `scope` (`read`, `write`, `admin`), `created_at` and, when it expires, `expires_at` (unix seconds) |
//!
//! A presented token is checked by hashing it and reading
//! `<ns>:token:<hash>`: the lookup is by the hash of a 256-bit secret, so
//! its timing tells an attacker nothing useful. It must not touch the user
//! registry's keys.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use redis::{FromRedisValue, Value};
use serde::Serialize;

use super::hash::{TokenHash, generate};
use super::{BOOTSTRAP_NAME, Scope, TokenError};
use crate::clock::Clock;
use crate::db::{Keys, Redis, Request};
use crate::secret::Secret;

/// Longest token name.
const MAX_NAME_LEN: usize = 64;
/// Token records fetched per pipelined round trip while listing.
const LIST_BATCH: usize = 500;

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

/// Tokens in Redis; see the module documentation for the schema.
///
/// Cheap to clone: clones share one self-healing connection.
#[derive(Clone)]
pub struct TokenStore {
    db: Redis,
    keys: Keys,
    /// Stamps creation and decides expiry; tests set it.
    clock: Clock,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("target", &self.db.target())
            .field("namespace", &self.keys.namespace())
            .finish()
    }
}

impl TokenStore {
    /// Connects to the Redis at `url` and checks it answers; `namespace` is
    /// the registry's (`redis_namespace`).
    pub async fn connect(url: &str, namespace: &str) -> Result<TokenStore, TokenError> {
        let keys = Keys::new(namespace)?;
        let db = Redis::connect(url).await?;
        Ok(TokenStore::new(db, keys))
    }

    /// The store over an existing connection (the server shares the
    /// registry's), on the system clock.
    pub fn new(db: Redis, keys: Keys) -> TokenStore {
        TokenStore {
            db,
            keys,
            clock: Clock::system(),
        }
    }

    /// Now by this store's clock, in unix seconds: the time token expiry is
    /// judged by.
    pub fn now(&self) -> f64 {
        self.clock.unix()
    }

    /// This store telling time by `clock` (tests step it past an expiry).
    pub fn with_clock(mut self, clock: Clock) -> TokenStore {
        self.clock = clock;
        self
    }

    /// The index key: `<ns>:tokens`.
    pub fn index_key(&self) -> String {
        self.keys.tokens()
    }

    /// The record key of a token: `<ns>:token:<sha256 hex>`.
    pub fn token_key(&self, hash: &TokenHash) -> String {
        self.keys.token(&hash.to_hex())
    }

    /// Creates a token named `name` with `scope`, expiring `ttl` after now
    /// (by the store's clock) if given. The returned secret exists nowhere
    /// else: show it once.
    pub async fn create(
        &self,
        name: &str,
        scope: Scope,
        ttl: Option<Duration>,
    ) -> Result<NewToken, TokenError> {
        check_name(name)?;
        let token = generate();
        let hash = TokenHash::of(token.expose());
        let created_at = self.clock.unix();
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
        let created: i64 = self.send(&format!("create token {name}"), &cmd).await?;
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
        let names: HashMap<String, String> = self.send(&format!("HGETALL {index}"), &cmd).await?;
        let mut names: Vec<(String, String)> = names.into_iter().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(LIST_BATCH) {
            let mut pipe = redis::pipe();
            for (_, hash) in chunk {
                pipe.cmd("HGETALL").arg(self.keys.token(hash));
            }
            let replies: Vec<Value> = self.send("HGETALL (token records)", &pipe).await?;
            for ((name, hash), reply) in chunk.iter().zip(replies) {
                let key = self.keys.token(hash);
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
            .arg(self.keys.token_prefix());
        let revoked: i64 = self.send(&format!("revoke token {name}"), &cmd).await?;
        Ok(revoked == 1)
    }

    /// The token with this hash, or `None` (never existed or revoked).
    pub async fn lookup(&self, hash: &TokenHash) -> Result<Option<TokenInfo>, TokenError> {
        let key = self.token_key(hash);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&key);
        let fields: HashMap<String, String> = self.send("token lookup", &cmd).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        info_from_hash(&key, &fields).map(Some)
    }

    /// Whether at least one token is usable now (exists, not expired by the
    /// store's clock); the server refuses to start otherwise, unless a
    /// bootstrap token is set.
    pub async fn has_usable_token(&self) -> Result<bool, TokenError> {
        let now = self.clock.unix();
        Ok(self.list().await?.iter().any(|t| !t.is_expired(now)))
    }

    async fn send<'a, T: FromRedisValue>(
        &self,
        op: &str,
        request: impl Into<Request<'a>>,
    ) -> Result<T, TokenError> {
        Ok(self.db.send(op, request).await?)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_record_that_does_not_parse_names_its_key() {
        let fields: HashMap<String, String> = [("name", "ci"), ("scope", "root")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = info_from_hash("ns:token:ab", &fields).expect_err("bad scope");
        let text = e.to_string();
        assert!(
            text.contains("ns:token:ab") && text.contains("scope"),
            "{text}"
        );
    }
}
