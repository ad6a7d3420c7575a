//! `/api/users`: create, read, list and delete users.
//!
//! Owns the API's view of a user ([`UserView`]: settings and statistics,
//! never a secret), the request body's rules (delegated to
//! [`User::from_json_map`], the one place user fields are validated) and the
//! cursor-paginated listing (ids from [`Registry::page_ids`]). Storage, and
//! how the ids of a page are found, are the registry's job.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use crate::cloud_id::CloudId;
use crate::registry::user::LEGACY_STAT_FIELDS;
use crate::registry::{
    IdPage, MeterState, PutOutcome, Registry, RegistryError, User, UserStats, ValidationError,
};
use crate::tokens::Scope;

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page a client may ask for.
pub const MAX_PAGE: usize = 1000;
/// Users fetched from the registry at once while building a page.
const FETCH_CONCURRENCY: usize = 16;

/// The cloud id from the path, validated before it reaches a key or a file
/// name: anything but six hex digits is a 400.
#[derive(Debug, Clone, Copy)]
pub struct CloudIdPath(pub CloudId);

impl<S: Send + Sync> FromRequestParts<S> for CloudIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid-cloud-id",
                    "the cloud id in the path is not valid UTF-8 text; it must be 6 hex digits (e.g. 00ce69)",
                )
            })?;
        Ok(CloudIdPath(CloudId::parse(&raw)?))
    }
}

/// Handler for paths with more segments than a cloud id (`/api/users/00/ce69`,
/// `/api/users/../x`): a 400 like any other malformed id, not a 404.
pub async fn id_with_slash() -> ApiError {
    ApiError::bad_request(
        "invalid-cloud-id",
        "invalid cloud id in the path: it must be exactly 6 hex digits (e.g. 00ce69), without '/'",
    )
}

/// The body of `POST /api/users/{cloud_id}`. Unknown fields are rejected
/// (422), since a typo like `actve` would otherwise silently not apply.
///
/// The server parses bodies with [`user_from_body`] (whose messages never
/// quote a value); this type is the documented shape and what the importer
/// sends. No `Debug`: it holds a password in clear.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// The EAGLE account's e-mail (the relay's `User` header).
    #[schema(
        example = "alice@example.org",
        min_length = 3,
        max_length = 254,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]+@[^\s\x00-\x1f\x7f-\x9f@]+$"
    )]
    pub user_email: String,
    /// The EAGLE account's password. Required for relay users; stored, never returned.
    #[schema(format = Password, write_only, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_pw: Option<String>,
    /// Whether the pinger polls this meter (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Read an EAGLE-200 on the customer's LAN instead of through the relay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalBody>,
    /// This meter's own summation cadence, whole seconds; 0 turns the
    /// stream off, absent or null follows `summation_interval`.
    #[schema(example = 60, maximum = 86400)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summation_interval: Option<u32>,
    /// This meter's own price cadence, whole seconds; 0 turns the stream
    /// off, absent or null follows `price_interval`.
    #[schema(example = 900, maximum = 86400)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_interval: Option<u32>,
    /// Optional; must equal the path's id when given.
    // No example: one fixed id would differ from most paths it is sent to.
    #[schema(pattern = "^[0-9a-fA-F]{6}$", nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_id: Option<String>,
}

/// A local EAGLE-200 in a request body (no `Debug`: it holds a secret).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalBody {
    /// `host` or `host:port`: a DNS name or an IP address in its canonical
    /// spelling (IPv6 in brackets); no scheme, path or user name.
    #[schema(
        example = "192.168.1.20",
        min_length = 1,
        max_length = 261,
        pattern = r"^[A-Za-z0-9._:\[\]-]+$"
    )]
    pub host: String,
    /// The device's install code; stored, never returned.
    #[schema(
        format = Password,
        write_only,
        min_length = 1,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub install_code: String,
}

impl UserBody {
    /// The body that stores `user` as it is; exposes its secrets, since it
    /// is about to be sent to the server.
    pub fn from_user(user: &User) -> UserBody {
        UserBody {
            user_email: user.user_email.clone(),
            user_pw: (!user.user_pw.is_empty()).then(|| user.user_pw.expose().to_string()),
            active: Some(user.active),
            local: user.local.as_ref().map(|l| LocalBody {
                host: l.host.clone(),
                install_code: l.install_code.expose().to_string(),
            }),
            summation_interval: user.cadence.summation_s,
            price_interval: user.cadence.price_s,
            cloud_id: None,
        }
    }
}

/// How the scheduler currently treats a meter.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateView {
    /// Polled on schedule.
    Ok,
    /// Failing repeatedly; polled less often.
    Backoff,
    /// Credentials rejected; polled rarely until they change.
    AuthFailed,
}

impl From<MeterState> for StateView {
    fn from(s: MeterState) -> Self {
        match s {
            MeterState::Ok => StateView::Ok,
            MeterState::Backoff => StateView::Backoff,
            MeterState::AuthFailed => StateView::AuthFailed,
        }
    }
}

/// A user as the API shows it: settings and statistics, no secrets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    /// Six lower-case hex digits.
    #[schema(value_type = String, example = "00ce69")]
    pub cloud_id: CloudId,
    /// The EAGLE account's e-mail; masked (`s*****e@example.org`) for a
    /// `read` token, whole for `write` and `admin`.
    pub user_email: String,
    /// Whether the pinger polls this meter.
    pub active: bool,
    /// Whether a relay password is stored; the password itself is never returned.
    pub has_password: bool,
    /// `relay` or `local`.
    #[schema(example = "relay")]
    pub source: &'static str,
    /// The local EAGLE-200, when `source` is `local`.
    pub local: Option<LocalView>,
    /// The meter's own summation cadence in seconds (0: off); absent when
    /// it follows `summation_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summation_interval: Option<u32>,
    /// The meter's own price cadence in seconds (0: off); absent when it
    /// follows `price_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_interval: Option<u32>,
    /// Polling statistics.
    pub statistics: StatisticsView,
    /// How the scheduler treats the meter.
    pub state: StateView,
    /// The latest failure, if any.
    pub last_error: Option<LastErrorView>,
}

/// A local EAGLE-200 as shown: the host, not the install code.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LocalView {
    /// Where the device is reached.
    pub host: String,
    /// Always true: an install code is required and never returned.
    pub has_install_code: bool,
}

/// A meter's polling statistics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatisticsView {
    /// Readings written since the user was added (carried over from the old system).
    pub total_events_logged: u64,
    /// Unix seconds of the first reading.
    pub first_timestamp: Option<f64>,
    /// Unix seconds of the latest reading.
    pub last_timestamp: Option<f64>,
    /// Failures in a row at the last write.
    pub consecutive_failures: u32,
}

/// The latest failure of a meter.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastErrorView {
    /// `auth`, `timeout`, `connect`, `relay_error`, `http_status` or `malformed`.
    pub kind: String,
    /// Unix seconds.
    pub at: Option<f64>,
}

/// A `read` token is for dashboards and monitoring: it sees enough of an
/// e-mail to tell users apart, not enough to contact or phish them. `write`
/// tokens set e-mails, so they see them whole, as `admin` does.
fn email_for(email: &str, scope: Scope) -> String {
    if scope.allows(Scope::Write) {
        email.to_string()
    } else {
        mask_email(email)
    }
}

/// `someone@example.org` -> `s*****e@example.org`: the first and last
/// character of the local part and a fixed run of stars, so the length is
/// not revealed either. Text without `@` is masked whole.
pub fn mask_email(email: &str) -> String {
    const STARS: &str = "*****";
    let (local, domain) = email.rsplit_once('@').unwrap_or((email, ""));
    let mut chars = local.chars();
    let shown = match (chars.next(), chars.next_back()) {
        (Some(first), Some(last)) if local.chars().count() > 2 => format!("{first}{STARS}{last}"),
        (Some(first), _) => format!("{first}{STARS}"),
        (None, _) => STARS.to_string(),
    };
    if domain.is_empty() {
        shown
    } else {
        format!("{shown}@{domain}")
    }
}

impl UserView {
    /// The view of `user` with `stats` (none yet: zeros, state ok) for a
    /// caller of `scope` (which decides how much of the e-mail it sees).
    pub fn new(user: &User, stats: Option<UserStats>, scope: Scope) -> UserView {
        let stats = stats.unwrap_or_default();
        UserView {
            cloud_id: user.cloud_id,
            user_email: email_for(&user.user_email, scope),
            active: user.active,
            has_password: !user.user_pw.is_empty(),
            source: if user.local.is_some() {
                "local"
            } else {
                "relay"
            },
            local: user.local.as_ref().map(|l| LocalView {
                host: l.host.clone(),
                has_install_code: !l.install_code.is_empty(),
            }),
            summation_interval: user.cadence.summation_s,
            price_interval: user.cadence.price_s,
            statistics: StatisticsView {
                total_events_logged: stats.total_events_logged,
                first_timestamp: stats.first_timestamp,
                last_timestamp: stats.last_timestamp,
                consecutive_failures: stats.consecutive_failures,
            },
            state: stats.state.into(),
            last_error: stats.last_error_kind.map(|kind| LastErrorView {
                kind,
                at: stats.last_error_at,
            }),
        }
    }
}

/// The answer to a create or update.
#[derive(Debug, Serialize, ToSchema)]
pub struct PutResponse {
    /// `created` (201), `updated` or `unchanged` (200).
    #[schema(example = "created")]
    pub outcome: &'static str,
    /// The user as stored.
    pub user: UserView,
}

/// One page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    /// Users sorted by cloud id.
    pub users: Vec<UserView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(example = "00ce69")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /api/users`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `next_cursor` of the previous page (a cloud id); omit for the first page.
    #[param(pattern = "^[0-9a-fA-F]{6}$")]
    pub cursor: Option<String>,
    /// Users per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Create or update a user.
///
/// Needs scope `write`. 201 when the user is new, 200 when it existed
/// (`outcome` tells `updated` from `unchanged`, so imports can be re-run).
/// Statistics are kept by the server and cannot be set.
#[utoipa::path(
    post,
    path = "/api/users/{cloud_id}",
    tag = "users",
    params(("cloud_id" = String, Path, description = "The meter's cloud id: 6 hex digits", pattern = "^[0-9a-fA-F]{6}$")),
    request_body(content = UserBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = PutResponse),
        (status = 200, description = "Updated or unchanged", body = PutResponse),
        (status = 400, description = "Malformed cloud id or JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token scope below write", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over request_body_limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown field (named in `field`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn put_user(
    State(state): State<AppState>,
    caller: Caller,
    CloudIdPath(id): CloudIdPath,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Write)?;
    let body = body.map_err(|e| body_error(e, state.body_limit()))?;
    require_json(&headers)?;
    let user = user_from_body(id, &body)?;
    let outcome = state.registry().put(&user).await?;
    let stats = stats_or_default(state.registry(), id).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    tracing::info!(%id, outcome = %outcome, token = %caller.0.name, "User stored through the API.");
    let response = PutResponse {
        outcome: outcome.as_str(),
        user: UserView::new(&user, stats, caller.0.scope),
    };
    Ok((status, Json(response)).into_response())
}

/// One user with its statistics.
///
/// Needs scope `read`. Never returns the password: `has_password` says
/// whether one is stored.
#[utoipa::path(
    get,
    path = "/api/users/{cloud_id}",
    tag = "users",
    params(("cloud_id" = String, Path, description = "The meter's cloud id: 6 hex digits", pattern = "^[0-9a-fA-F]{6}$")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "Malformed cloud id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    CloudIdPath(id): CloudIdPath,
) -> Result<Json<UserView>, ApiError> {
    caller.require(Scope::Read)?;
    let user = state
        .registry()
        .get(id)
        .await?
        .ok_or_else(|| no_such_user(id))?;
    let stats = stats_or_default(state.registry(), id).await?;
    Ok(Json(UserView::new(&user, stats, caller.0.scope)))
}

/// Delete a user and its statistics.
///
/// Needs scope `write`. The pinger stops polling it at its next reload.
#[utoipa::path(
    delete,
    path = "/api/users/{cloud_id}",
    tag = "users",
    params(("cloud_id" = String, Path, description = "The meter's cloud id: 6 hex digits", pattern = "^[0-9a-fA-F]{6}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed cloud id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token scope below write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    CloudIdPath(id): CloudIdPath,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Write)?;
    if state.registry().remove(id).await? {
        tracing::info!(%id, token = %caller.0.name, "User deleted through the API.");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_user(id))
    }
}

/// The users, sorted by cloud id, one page at a time.
///
/// Needs scope `read`. Follow `next_cursor` until it is `null`. Pages are
/// cut by cloud id, so users added or removed meanwhile never shift a page.
#[utoipa::path(
    get,
    path = "/api/users",
    tag = "users",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "Bad cursor, limit or unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    caller.require(Scope::Read)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))?;
    let after = match &query.cursor {
        None => None,
        Some(c) => Some(CloudId::parse(c).map_err(|_| {
            ApiError::bad_request(
                "invalid-cursor",
                "`cursor` must be the `next_cursor` of a previous page (a cloud id)",
            )
        })?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid-limit",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        ));
    }
    let registry = state.registry().clone();
    let scope = caller.0.scope;
    // The registry keeps listing cheap (Redis: a pass over the index only,
    // memory bounded by the page); the users shown are fetched below.
    let IdPage { ids, more } = registry.page_ids(after, limit).await?;
    // The cursor is the page's last id, not its last listed user: a page
    // whose users were all removed meanwhile must not end the listing.
    let next_cursor = if more {
        ids.last().map(|id| id.to_string())
    } else {
        None
    };
    let views: Vec<Result<Option<UserView>, ApiError>> = futures::stream::iter(ids)
        .map(|id| {
            let registry = registry.clone();
            async move {
                let user = match registry.get(id).await {
                    Ok(Some(u)) => u,
                    // Removed since the index was read.
                    Ok(None) => return Ok(None),
                    Err(e @ RegistryError::Invalid { .. }) => {
                        tracing::warn!(%id, error = %e, "Leaving an invalid stored user out of the list.");
                        return Ok(None);
                    }
                    Err(e) => return Err(ApiError::from(e)),
                };
                let stats = stats_or_default(&registry, id).await?;
                Ok(Some(UserView::new(&user, stats, scope)))
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    let mut users = Vec::with_capacity(views.len());
    for v in views {
        if let Some(view) = v? {
            users.push(view);
        }
    }
    Ok(Json(UserPage { users, next_cursor }))
}

/// Statistics of `id`; unreadable stored statistics are logged and shown as
/// none rather than hiding the user.
async fn stats_or_default(registry: &Registry, id: CloudId) -> Result<Option<UserStats>, ApiError> {
    match registry.stats(id).await {
        Ok(s) => Ok(s),
        Err(e @ RegistryError::Unavailable { .. }) => Err(e.into()),
        Err(e) => {
            tracing::warn!(%id, error = %e, "Cannot read a meter's statistics; showing none.");
            Ok(None)
        }
    }
}

fn no_such_user(id: CloudId) -> ApiError {
    ApiError::NotFound {
        detail: format!("no user with cloud id {id}; create it with POST /api/users/{id}"),
    }
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::bad_request(
            "unreadable-body",
            format!("cannot read the request body: {}", e.body_text()),
        )
    }
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false);
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Turns a request body into a validated user for the path's `id`: 400 for
/// malformed JSON, 422 naming the field for anything else. Messages never
/// quote values, so a password cannot end up in an error or a log.
pub fn user_from_body(id: CloudId, body: &[u8]) -> Result<User, ApiError> {
    // Parsing to a `Value` first keeps serde's syntax errors (which quote
    // nothing) apart from field errors (which could quote a password).
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("malformed-json", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::Invalid(ValidationError::new(
            "(body)",
            "must be a JSON object like {\"user_email\": ..., \"user_pw\": ...}",
        )));
    };
    if let Some(field) = map
        .keys()
        .find(|k| LEGACY_STAT_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::Invalid(ValidationError::new(
            field.clone(),
            "statistics are kept by the server and cannot be set through the API",
        )));
    }
    match map.get("cloud_id") {
        None => {
            map.insert("cloud_id".into(), Value::String(id.to_string()));
        }
        Some(Value::String(s)) if CloudId::parse(s).ok() == Some(id) => {}
        Some(_) => {
            return Err(ApiError::Invalid(ValidationError::new(
                "cloud_id",
                format!("must equal the id in the path ({id}), or be left out"),
            )));
        }
    }
    User::from_json_map(&map).map_err(ApiError::Invalid)
}

#[cfg(test)]
mod tests;
