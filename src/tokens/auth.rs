//! Who a presented bearer token belongs to: the bootstrap admin token from
//! the configuration, or a token in the store.
//!
//! Knows nothing about HTTP: the server turns a [`Principal`] or an
//! [`AuthError`] into a response. The bootstrap token is compared hash to
//! hash in constant time ([`subtle`]), and checked before the store, so it
//! keeps working while Redis is down.

use std::path::Path;

use super::hash::TokenHash;
use super::store::TokenStore;
use super::{Scope, TokenError};
use crate::config::Config;
use crate::secret::Secret;

/// Shortest bootstrap token accepted; shorter ones are guessable.
pub const MIN_BOOTSTRAP_LEN: usize = 16;
/// Longest bearer value even looked at; real tokens are 68 characters.
const MAX_PRESENTED_LEN: usize = 512;
/// The principal name of the bootstrap token in logs (reserved).
pub const BOOTSTRAP_NAME: &str = "bootstrap";

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

    /// Who `presented` belongs to now, by the store's clock (the one that
    /// stamped the token's expiry). The bootstrap token is checked first,
    /// so it keeps working while Redis is down.
    pub async fn verify(&self, presented: &str) -> Result<Principal, AuthError> {
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
            Ok(Some(info)) if info.is_expired(store.now()) => {
                Err(AuthError::Expired { name: info.name })
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bootstrap_token_is_admin_and_nothing_else_passes_without_a_store() {
        let auth = Authenticator::new(Some(&Secret::new("bootstrap-token-123456")), None);
        let p = auth.verify("bootstrap-token-123456").await.unwrap();
        assert_eq!(p.scope, Scope::Admin);
        assert!(matches!(
            auth.verify("bootstrap-token-12345").await,
            Err(AuthError::Invalid)
        ));
        assert!(matches!(auth.verify("").await, Err(AuthError::Invalid)));
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
