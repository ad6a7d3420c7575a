//! Every Redis key rainforest uses, named in one place.
//!
//! All keys start with a namespace (`rainforest` in production; tests use
//! a unique `t-<random>` each so they can share one Redis). The text of
//! every key is pinned by a test below: existing deployments must keep
//! finding their data, so a key's name never changes. A module that needs
//! a new key family adds a method here, documented in the table.
//!
//! | Key | Type | Owner | Contents |
//! |-----|------|-------|----------|
//! | `<ns>:users` | SET | registry | cloud id of every user, active or not |
//! | `<ns>:user:<id>` | HASH | registry | one user's credentials and settings |
//! | `<ns>:stats:<id>` | HASH | registry | one meter's polling statistics |
//! | `<ns>:tokens` | HASH | tokens | token name -> SHA-256 hex of the token |
//! | `<ns>:token:<sha256 hex>` | HASH | tokens | a token's name, scope and times |
//! | `<ns>:archive-lock:<object key>` | STRING | rotator | the merge lock on one archive object |
//! | `<ns>:services` | ZSET | stats | published service snapshots, scored by unix seconds |
//! | `<ns>:service:<service>:<instance>` | STRING | stats | one service's latest snapshot (expires) |
//! | `<ns>:members` | ZSET | fleet | pinger member ids, scored by unix seconds of their last heartbeat (an index; liveness is the member key) |
//! | `<ns>:member:<instance>` | STRING | fleet | one member's heartbeat record (JSON: `active_from_ms`, `heartbeat_ms`, `meters`, `shard`), expiring after `member_ttl` |
//! | `<ns>:backfill:last` | HASH | backfill | cloud id -> unix ms of the meter's latest summation slot |
//! | `<ns>:backfill:gaps:<id>` | HASH | backfill | one meter's open summation gaps: start unix ms -> end unix ms |
//!
//! One foreign layout is read, never written: the old Python system kept
//! each user as a JSON string under its bare cloud id, with no namespace;
//! [`LEGACY_USER_PATTERN`] finds those keys for `users import
//! --from-legacy-redis`.
//!
//! The fields of each hash are documented by the module that owns it
//! ([`crate::registry::redis`], [`crate::tokens`]).

use crate::cloud_id::CloudId;

use super::DbError;

/// `SCAN MATCH` pattern of the old system's user keys: six characters, the
/// bare cloud id (each candidate is checked as a cloud id after the scan).
pub const LEGACY_USER_PATTERN: &str = "??????";

/// The namespace production uses; every key starts with `rainforest:`.
pub const DEFAULT_NAMESPACE: &str = "rainforest";

/// Key names under one namespace; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    namespace: std::sync::Arc<str>,
}

impl Keys {
    /// Key names under `namespace`, which must be non-empty letters,
    /// digits, `-`, `_`, `.` or `:` since it is spliced into every key.
    pub fn new(namespace: &str) -> Result<Keys, DbError> {
        let ok = !namespace.is_empty()
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(Keys {
                namespace: namespace.into(),
            })
        } else {
            Err(DbError::Config {
                reason: format!(
                    "Redis key namespace {namespace:?} must be non-empty letters, digits, '-', '_', '.' or ':'; check redis_namespace"
                ),
            })
        }
    }

    /// The namespace itself.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The SET indexing every user's cloud id.
    pub fn users(&self) -> String {
        format!("{}:users", self.namespace)
    }

    /// The HASH of one user's credentials and settings.
    pub fn user(&self, id: CloudId) -> String {
        format!("{}:user:{id}", self.namespace)
    }

    /// The HASH of one meter's statistics, apart from its credentials.
    pub fn stats(&self, id: CloudId) -> String {
        format!("{}:stats:{id}", self.namespace)
    }

    /// The HASH indexing tokens: name -> SHA-256 hex.
    pub fn tokens(&self) -> String {
        format!("{}:tokens", self.namespace)
    }

    /// The HASH describing the token whose SHA-256 is `sha256_hex`.
    pub fn token(&self, sha256_hex: &str) -> String {
        format!("{}{sha256_hex}", self.token_prefix())
    }

    /// What every token record's key starts with; the revoke script builds
    /// the record's key from it and the hash it finds in the index.
    pub fn token_prefix(&self) -> String {
        format!("{}:token:", self.namespace)
    }

    /// The STRING locking merges into the archive object `object_key`.
    pub fn archive_lock(&self, object_key: &str) -> String {
        format!("{}:archive-lock:{object_key}", self.namespace)
    }

    /// The ZSET of published service snapshots, scored by unix seconds.
    pub fn services(&self) -> String {
        format!("{}:services", self.namespace)
    }

    /// The STRING holding one running service's latest snapshot.
    pub fn service(&self, service: &str, instance: &str) -> String {
        format!("{}:service:{service}:{instance}", self.namespace)
    }

    /// The HASH of every meter's latest summation slot (unix ms), from
    /// which a restarted or new owner sees the gap since.
    pub fn backfill_last(&self) -> String {
        format!("{}:backfill:last", self.namespace)
    }

    /// The HASH of meter `id`'s summation gaps still to fill from its
    /// history: start unix ms -> end unix ms, both exclusive.
    pub fn backfill_gaps(&self, id: CloudId) -> String {
        format!("{}:backfill:gaps:{id}", self.namespace)
    }

    /// The ZSET indexing fleet members, scored by unix seconds of their
    /// last heartbeat, so members are found without scanning the keyspace.
    pub fn members(&self) -> String {
        format!("{}:members", self.namespace)
    }

    /// The STRING holding one member's heartbeat record, expiring
    /// `member_ttl` after its last heartbeat (see [`crate::fleet::membership`]).
    pub fn member(&self, instance: &str) -> String {
        format!("{}:member:{instance}", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_keeps_its_exact_name() {
        let k = Keys::new(DEFAULT_NAMESPACE).expect("namespace");
        let id = CloudId::parse("00ce69").expect("id");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(k.namespace(), "rainforest");
        assert_eq!(k.users(), "rainforest:users");
        assert_eq!(k.user(id), "rainforest:user:00ce69");
        assert_eq!(k.stats(id), "rainforest:stats:00ce69");
        assert_eq!(k.tokens(), "rainforest:tokens");
        assert_eq!(k.token(hex), format!("rainforest:token:{hex}"));
        assert_eq!(k.token_prefix(), "rainforest:token:");
        assert_eq!(
            k.archive_lock("logs/2025/01/15/13/00ce69.jl"),
            "rainforest:archive-lock:logs/2025/01/15/13/00ce69.jl"
        );
        assert_eq!(k.services(), "rainforest:services");
        assert_eq!(
            k.service("pinger", "host-42"),
            "rainforest:service:pinger:host-42"
        );
        assert_eq!(k.backfill_last(), "rainforest:backfill:last");
        assert_eq!(k.backfill_gaps(id), "rainforest:backfill:gaps:00ce69");
        assert_eq!(k.members(), "rainforest:members");
        assert_eq!(k.member("host-42"), "rainforest:member:host-42");
    }

    #[test]
    fn a_namespace_that_would_break_keys_is_refused() {
        for bad in ["", "a b", "x*", "ns\n", "{x}"] {
            assert!(
                matches!(Keys::new(bad), Err(DbError::Config { .. })),
                "{bad:?}"
            );
        }
        for ok in ["rainforest", "t-0123abcd", "prod.eu:v2", "a_b"] {
            assert!(Keys::new(ok).is_ok(), "{ok}");
        }
    }
}
