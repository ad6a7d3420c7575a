//! `GET /api/event/{cloud_id}`: read a meter now.
//!
//! The reading takes the same path as a scheduled poll ([`Poller::poll`]):
//! the record is appended to the spool and the poll's statistics update is
//! written as it comes. That update carries no state, so an on-demand read
//! never ends a backoff or an `auth_failed` pause the pinger decided on.
//! Because each call makes an outbound request with a user's
//! stored credentials, it is rate limited per meter ([`EventLimiter`]), so
//! the API cannot be used to hammer the relay or someone's EAGLE.
//!
//! [`Poller::poll`]: crate::poll::Poller::poll

use std::num::NonZeroU32;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
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
    get,
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
        (status = 502, description = "The relay or EAGLE failed or rejected the credentials", body = Problem, content_type = "application/problem+json"),
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
            tracing::info!(%id, kind = source.kind().as_str(), error = %source, "On-demand read failed.");
            return Err(ApiError::Meter {
                cloud_id: id.to_string(),
                source,
            });
        }
        Err(PollError::Spool(e)) => {
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
