//! `POST /api/event/{cloud_id}`: read a meter now.
//!
//! The reading takes the same path as a scheduled poll ([`Poller::poll`]):
//! the record is appended to the spool and the poll's statistics update is
//! written as it comes. That update carries no state, so an on-demand read
//! never ends a backoff or an `auth_failed` pause the pinger decided on.
//! Because each call makes an outbound request with a user's
//! stored credentials, it is rate limited per meter ([`EventLimiter`]), so
//! the API cannot be used to hammer the relay or someone's EAGLE, and it
//! goes through the EAGLE client's global caps like every scheduled poll
//! (in `run` the very caps the pinger uses; a standalone server's client
//! has its own, from the same settings). A failure is answered with its
//! kind only ([`ProtocolError::for_client`]): what a remote host sent back
//! is never quoted to the caller. It is a POST because it changes data (a
//! spool line, statistics); a GET is answered 405 naming POST.
//!
//! [`ProtocolError::for_client`]: crate::protocol::ProtocolError::for_client
//!
//! [`Poller::poll`]: crate::poll::Poller::poll

use std::num::NonZeroU32;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem, problem_response};
use super::users::CloudIdPath;
use crate::cloud_id::CloudId;
use crate::poll::PollError;
use crate::record::Record;
use crate::tokens::Scope;

/// Keys kept by the limiter before idle ones are dropped; bounds its memory
/// (only existing users ever get a key).
const LIMITER_TRIM_AT: usize = 10_000;

/// At most one on-demand read per meter per second.
pub struct EventLimiter {
    limiter: DefaultKeyedRateLimiter<CloudId>,
    clock: DefaultClock,
}

impl std::fmt::Debug for EventLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLimiter")
            .field("meters", &self.limiter.len())
            .finish()
    }
}

impl Default for EventLimiter {
    fn default() -> Self {
        EventLimiter::new()
    }
}

impl EventLimiter {
    /// One read per meter per second, no burst.
    pub fn new() -> Self {
        let quota = Quota::per_second(NonZeroU32::MIN);
        EventLimiter {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Takes a read for `id`, or says how long until one is allowed.
    pub fn check(&self, id: CloudId) -> Result<(), Duration> {
        if self.limiter.len() > LIMITER_TRIM_AT {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&id)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// A record line as written to the spool (see `record.rs`); the raw relay
/// fields (`TimeStamp`, `Demand`, …) follow when the relay sent them.
#[derive(Serialize, ToSchema)]
pub struct RecordDoc {
    /// The meter's cloud id.
    #[schema(example = "00ce69")]
    pub cloud_id: String,
    /// When the poll was sent, UTC RFC 3339 with milliseconds.
    pub polled_at: String,
    /// When the meter measured, UTC RFC 3339 (absent for EAGLE-200s).
    pub meter_time: Option<String>,
    /// Demand in kW; negative is net export.
    pub demand_kw: f64,
    /// Round trip of the request in milliseconds.
    pub latency_ms: u64,
    /// `relay` or `local`.
    pub source: String,
}

/// Read a meter now.
///
/// Needs scope `write`: it calls out with the user's stored credentials and
/// appends the record to the spool, exactly like a scheduled poll. At most
/// one call per meter per second (429 with `Retry-After` otherwise).
#[utoipa::path(
    post,
    path = "/api/event/{cloud_id}",
    tag = "meters",
    params(("cloud_id" = String, Path, description = "The meter's cloud id: 6 hex digits", pattern = "^[0-9a-fA-F]{6}$")),
    responses(
        (status = 200, description = "The record appended to the spool", body = RecordDoc),
        (status = 400, description = "Malformed cloud id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Token scope below write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This meter was read less than a second ago", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The relay or EAGLE failed, redirected, sent too much, has a refused address or rejected the credentials; the detail names the kind, never what the remote host sent", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or the spool unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The meter did not answer in time", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn read_meter(
    State(state): State<AppState>,
    caller: Caller,
    CloudIdPath(id): CloudIdPath,
) -> Result<Json<Record>, ApiError> {
    caller.require(Scope::Write)?;
    let user = state
        .registry()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            detail: format!("no user with cloud id {id}; create it with POST /api/users/{id}"),
        })?;
    // After the lookup, so unknown ids never take a limiter slot.
    state
        .limiter()
        .check(id)
        .map_err(|retry_after| ApiError::TooManyRequests {
            cloud_id: id.to_string(),
            retry_after,
        })?;
    let polled = match state.poller().poll(&user).await {
        Ok(p) => p,
        Err(PollError::Protocol(source)) => {
            tracing::info!(%id, kind = source.kind().as_str(), "On-demand read failed.");
            tracing::debug!(%id, error = %source, "On-demand read failure in detail.");
            return Err(ApiError::Meter {
                cloud_id: id.to_string(),
                source: source.for_client(),
            });
        }
        // `poll` sets no start deadline, so `Late` cannot happen here.
        Err(e @ (PollError::Spool(_) | PollError::Late(_))) => {
            return Err(ApiError::Unavailable {
                detail: e.to_string(),
            });
        }
    };
    // The poll's own update: the event, its time and demand, but no state,
    // so a meter the pinger has paused stays paused. The line is already in
    // the spool, so a failure here is logged, not returned.
    if let Err(e) = state.registry().write_stats(&[polled.stats]).await {
        tracing::warn!(%id, error = %e, "On-demand read not counted in the statistics.");
    }
    tracing::info!(%id, token = %caller.0.name, "On-demand read written to the spool.");
    Ok(Json(polled.record))
}

/// Any method but POST on `/api/event/{cloud_id}`: 405, naming the method
/// that reads a meter (and `Allow: POST` only).
/// Reading calls out and writes the spool, which a GET must not do (links,
/// prefetchers and crawlers follow GETs). A malformed id is still a 400,
/// as for every other method.
pub async fn use_post(CloudIdPath(_): CloudIdPath) -> Response {
    let problem = Problem {
        kind: "urn:rainforest:problem:method-not-allowed".into(),
        title: "Method Not Allowed".into(),
        status: StatusCode::METHOD_NOT_ALLOWED.as_u16(),
        detail: "an on-demand read changes data; use POST /api/event/{cloud_id} \
                 (scope write, no body)"
            .into(),
        field: None,
    };
    let mut response = problem_response(&problem);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_read_within_a_second_is_refused_per_meter() {
        let l = EventLimiter::new();
        let a = CloudId::parse("00ce69").unwrap();
        let b = CloudId::parse("00ce6a").unwrap();
        assert!(l.check(a).is_ok());
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check(b).is_ok());
    }
}
