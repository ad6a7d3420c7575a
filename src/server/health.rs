//! `GET /healthz` and `GET /readyz`: for load balancers and orchestrators.
//!
//! Both are outside `/api/` and need no token: they reveal nothing but
//! whether the process runs and whether Redis answers.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Problem};

/// The body of a successful health or readiness check.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (dependencies reachable).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is alive and serving HTTP; checks nothing else, so a Redis
/// outage does not get the server restarted (it recovers by itself).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The user registry answers; 503 while it does not.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Redis (or the users file) reachable", body = Health),
        (status = 503, description = "Registry unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.registry().ping().await?;
    Ok(Json(Health { status: "ready" }))
}
