//! API tokens: who may call the HTTP server, and with which scope.
//!
//! The old server guarded everything with one shared password in the query
//! string. Tokens replace it: each is 256 random bits, shown once when it is
//! created, and stored only as its hash, so a copy of Redis does not let
//! anyone in.
//!
//! Layout: this file holds the [`Scope`]s and the module's error
//! ([`TokenError`]); [`hash`] generates tokens and hashes them;
//! [`store`] keeps them in Redis (schema there); [`auth`] is the bootstrap
//! token from the configuration and the check of a presented bearer token
//! ([`Authenticator::verify`]). Redis is reached only through
//! [`crate::db`].
//!
//! It knows nothing about HTTP: the server turns a [`Principal`] or an
//! [`AuthError`] into a response. It must not touch the user registry's
//! keys.

pub mod auth;
pub mod hash;
pub mod store;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::db::{CHECK_REDIS, DbError};

pub use self::auth::{
    AuthError, Authenticator, BOOTSTRAP_NAME, MIN_BOOTSTRAP_LEN, Principal, bootstrap_token,
};
pub use self::hash::{TOKEN_PREFIX, TokenHash, generate};
pub use self::store::{NewToken, TokenInfo, TokenStore};

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

impl From<DbError> for TokenError {
    /// A Redis failure in the token store's terms; an outage reads as it
    /// does for the registry and the archive lock.
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable { target, reason } => TokenError::Unavailable { target, reason },
            DbError::Refused {
                target,
                op,
                message,
            } => TokenError::Refused {
                target,
                op,
                message,
            },
            DbError::Config { reason } => TokenError::Config { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_lower_ones() {
        assert!(Scope::Admin.allows(Scope::Write));
        assert!(Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
        assert!(!Scope::Write.allows(Scope::Admin));
        assert_eq!("write".parse::<Scope>(), Ok(Scope::Write));
        assert!("root".parse::<Scope>().is_err());
    }
}
