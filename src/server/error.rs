//! Every error the API answers with, as `application/problem+json`
//! (RFC 9457).
//!
//! Handlers return [`ApiError`]; its variants are the statuses a client can
//! act on. Client errors are not logged (a scanner must not fill the logs);
//! internal ones get a generic body and are logged here with the detail.
//! [`problem_for_bare_errors`] turns the few errors produced outside our
//! handlers (a timeout, an early body-size rejection) into the same shape,
//! so a client only ever parses one error format.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::cloud_id::CloudIdError;
use crate::protocol::{ErrorKind, ProtocolError};
use crate::registry::{RegistryError, ValidationError};
use crate::tokens::{AuthError, Scope};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document, as sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:rainforest:problem:invalid-cloud-id`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong with this request and what to do about it.
    pub detail: String,
    /// For 422: the offending field of the body (dotted for nested ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An API failure: the status and message a client gets.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: bad JSON, bad query string, bad path.
    #[error("{detail}")]
    BadRequest {
        /// Machine-readable kind (the `type` URN's last part).
        slug: &'static str,
        /// Message for the client.
        detail: String,
    },
    /// The path's cloud id is not six hex digits.
    #[error("invalid cloud id in the path: {0}")]
    InvalidCloudId(#[from] CloudIdError),
    /// A credential in the query string; they end up in logs.
    #[error(
        "credentials do not go in the URL (`?{param}=`): URLs end up in logs and browser history. \
         Send `Authorization: Bearer <token>` instead; a meter's password goes in the JSON body of \
         POST /api/users/{{cloud_id}}"
    )]
    CredentialsInQuery {
        /// The parameter's name.
        param: String,
    },
    /// No usable token.
    #[error("{detail}")]
    Unauthorized {
        /// Why, and how to get a token.
        detail: String,
    },
    /// A valid token whose scope is too small.
    #[error(
        "this needs a token with scope `{needed}`; token {name:?} has `{have}` (create one with `rainforest tokens create --scope {needed}`)"
    )]
    Forbidden {
        /// The scope the route needs.
        needed: Scope,
        /// The token's scope.
        have: Scope,
        /// The token's name.
        name: String,
    },
    /// No such user, route or resource.
    #[error("{detail}")]
    NotFound {
        /// What was not found.
        detail: String,
    },
    /// The route exists, the method does not.
    #[error("method not allowed on this path; see GET /api/openapi.json")]
    MethodNotAllowed,
    /// The body exceeds the limit.
    #[error("the request body is larger than {limit} bytes; a user record is a few hundred bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not JSON.
    #[error("send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// Well-formed JSON whose fields do not make a valid user.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// Too many on-demand reads of one meter.
    #[error(
        "meter {cloud_id} was read less than a second ago; at most one on-demand read per meter per second"
    )]
    TooManyRequests {
        /// The meter.
        cloud_id: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The meter or relay failed (the request itself was fine).
    #[error("reading meter {cloud_id} failed: {source}")]
    Meter {
        /// The meter.
        cloud_id: String,
        /// The classified failure.
        #[source]
        source: ProtocolError,
    },
    /// A dependency is down (Redis, the spool); retry later.
    #[error("{detail}")]
    Unavailable {
        /// What is down (passwords in URLs redacted).
        detail: String,
    },
    /// A bug or an operator problem; the client gets a generic message.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with a kind and message.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            slug,
            detail: detail.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::InvalidCloudId(_)
            | ApiError::CredentialsInQuery { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Meter { source, .. } => match source.kind() {
                ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest { slug, .. } => slug,
            ApiError::InvalidCloudId(_) => "invalid-cloud-id",
            ApiError::CredentialsInQuery { .. } => "credentials-in-url",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden { .. } => "insufficient-scope",
            ApiError::NotFound { .. } => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::PayloadTooLarge { .. } => "body-too-large",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::Invalid(_) => "invalid-field",
            ApiError::TooManyRequests { .. } => "rate-limited",
            ApiError::Meter { source, .. } => match source.kind() {
                ErrorKind::Auth => "meter-auth-failed",
                ErrorKind::Timeout => "meter-timeout",
                _ => "meter-unreachable",
            },
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            ApiError::Internal(_) => "internal error; the server log has the details".to_string(),
            other => other.to_string(),
        };
        Problem {
            kind: format!("urn:rainforest:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            field: match self {
                ApiError::Invalid(v) => Some(v.field.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "Internal error answering a request.");
            }
            ApiError::Unavailable { detail } => {
                tracing::warn!(%detail, "Answering 503: a dependency is unavailable.");
            }
            _ => {}
        }
        let mut response = problem_response(&self.problem());
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized { .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"rainforest\""),
                );
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::Unavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            }
            _ => {}
        }
        debug_assert_eq!(response.status(), status);
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unavailable { .. } => ApiError::Unavailable {
                detail: format!("the user registry is unavailable; retry shortly ({e})"),
            },
            // `put` validates first, and the handlers validate before it, so
            // this only happens if the rules drift apart; the client's field
            // is still the one named.
            RegistryError::Rejected { source, .. } => ApiError::Invalid(source),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(e) => ApiError::Unavailable {
                detail: format!("the token store is unavailable; retry shortly ({e})"),
            },
            other => ApiError::Unauthorized {
                detail: other.to_string(),
            },
        }
    }
}

/// Serialises a problem with its status and media type.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body,
    )
        .into_response()
}

/// Middleware: any error response that is not already a problem document
/// (from the timeout layer, the body-limit layer, axum's own rejections) is
/// replaced by one with the same status.
pub async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            "the request took too long and was cancelled; retry shortly".to_string()
        }
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_string(),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let problem = Problem {
        kind: format!("urn:rainforest:problem:http-{}", status.as_u16()),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
        field: None,
    };
    let mut out = problem_response(&problem);
    // Keep headers such as Retry-After or Allow that the layer set.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_problem_with_its_status() {
        let e = ApiError::Invalid(ValidationError::new("user_email", "must not be empty"));
        let p = e.problem();
        assert_eq!(p.status, 422);
        assert_eq!(p.field.as_deref(), Some("user_email"));
        assert_eq!(p.kind, "urn:rainforest:problem:invalid-field");
        let p = ApiError::Internal("secret detail".into()).problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("secret detail"));
    }

    #[test]
    fn meter_timeouts_are_504_other_meter_failures_502() {
        let t = ApiError::Meter {
            cloud_id: "00ce69".into(),
            source: ProtocolError::Timeout { after_ms: 5 },
        };
        assert_eq!(t.status(), StatusCode::GATEWAY_TIMEOUT);
        let a = ApiError::Meter {
            cloud_id: "00ce69".into(),
            source: ProtocolError::BadCredentials {
                message: "no".into(),
            },
        };
        assert_eq!(a.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(a.problem().kind, "urn:rainforest:problem:meter-auth-failed");
    }
}
