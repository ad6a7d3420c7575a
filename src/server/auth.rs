//! Who may call the API: the credentials-in-URL guard and the bearer-token
//! middleware.
//!
//! [`reject_credentials_in_query`] runs on every route, before anything
//! else, so a client still sending the old `?pw=` gets a 400 saying where
//! credentials go instead of a confusing 401. [`require_token`] runs on every
//! `/api/` route: it resolves the bearer token to a [`Principal`] and stores
//! it in the request's extensions; each handler then states the scope it
//! needs with [`Caller::require`]. Token storage and checks live in
//! [`crate::tokens`].

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::tokens::{BOOTSTRAP_NAME, Principal, Scope};

/// Query parameters that carry credentials: the old server's `pw`, and the
/// usual names people try.
const CREDENTIAL_PARAMS: &[&str] = &[
    "pw",
    "password",
    "user_pw",
    "token",
    "access_token",
    "api_token",
];

/// How the server authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Bearer tokens required on every `/api/` route (the default).
    Required,
    /// `--no-auth`: every request is served as admin, with a warning each
    /// time. For a laptop experiment, never a network.
    Disabled,
}

/// Middleware: 400 for a credential in the query string, whatever the route.
pub async fn reject_credentials_in_query(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query()
        && let Some(param) = credential_param(query)
    {
        return ApiError::CredentialsInQuery { param }.into_response();
    }
    next.run(request).await
}

/// The first query parameter whose (decoded, lower-cased) name carries a
/// credential.
fn credential_param(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, _)| k.to_ascii_lowercase())
        .find(|k| CREDENTIAL_PARAMS.contains(&k.as_str()))
}

/// Middleware for `/api/`: resolves `Authorization: Bearer <token>` to a
/// [`Principal`] (401 when missing or bad, 503 when the token store is
/// down), or, under `--no-auth`, warns and serves the request as admin.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match state.auth() {
        None => {
            tracing::warn!(
                method = %request.method(),
                path = %request.uri().path(),
                "Serving a request without authentication (--no-auth): anyone who can reach this port can read and change users."
            );
            Principal {
                name: "no-auth".into(),
                scope: Scope::Admin,
            }
        }
        Some(auth) => {
            let presented = match bearer(&request) {
                Ok(t) => t,
                Err(e) => return e.into_response(),
            };
            match auth.verify(&presented).await {
                Ok(p) => p,
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    if principal.name != BOOTSTRAP_NAME {
        tracing::debug!(token = %principal.name, scope = %principal.scope, "Request authenticated.");
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The bearer token of a request, or why there is none.
fn bearer(request: &Request) -> Result<String, ApiError> {
    let missing = || {
        ApiError::Unauthorized {
        detail: "send `Authorization: Bearer <token>`; create a token with `rainforest tokens create --name NAME --scope read|write|admin`".into(),
    }
    };
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let text = value.to_str().map_err(|_| ApiError::Unauthorized {
        detail: "the Authorization header is not readable text".into(),
    })?;
    let (scheme, token) = text.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized {
            detail: format!(
                "the Authorization scheme must be Bearer, not {:?}",
                scheme.chars().take(16).collect::<String>()
            ),
        });
    }
    Ok(token.trim().to_string())
}

/// The authenticated caller, for handlers: `caller.require(Scope::Write)?`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// 403 unless the caller's scope includes `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.0.scope.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                needed,
                have: self.0.scope,
                name: self.0.name.clone(),
            })
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Only reachable without a principal if a route was added outside
        // the authenticated router: fail closed.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::Unauthorized {
                detail: "this route requires a bearer token".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_params_are_found_decoded_and_case_insensitively() {
        assert_eq!(credential_param("pw=plaintext123"), Some("pw".into()));
        assert_eq!(credential_param("a=1&PW=x"), Some("pw".into()));
        assert_eq!(credential_param("%70%77=x"), Some("pw".into()));
        assert_eq!(
            credential_param("access_token=x"),
            Some("access_token".into())
        );
        assert_eq!(credential_param("cursor=00ce69&limit=5"), None);
        assert_eq!(credential_param("pwx=1"), None);
    }

    #[test]
    fn scope_checks_name_what_is_needed() {
        let c = Caller(Principal {
            name: "ro".into(),
            scope: Scope::Read,
        });
        assert!(c.require(Scope::Read).is_ok());
        let e = c.require(Scope::Write).unwrap_err();
        assert!(e.to_string().contains("`write`"), "{e}");
    }
}
