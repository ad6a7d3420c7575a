//! `GET /healthz` and `GET /readyz`: for load balancers and orchestrators.
//!
//! Both are outside `/api/` and need no token, so they reveal nothing but
//! whether the process runs and whether the registry answers: no address,
//! no error text (those go to the log, for the operator).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// The body of a successful health or readiness check.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive), `ready` (dependencies reachable) or `not ready`.
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

/// The user registry answers; 503 `not ready` while it does not. Why it
/// does not is logged, never answered: the caller is unauthenticated.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Redis (or the users file) reachable", body = Health),
        (status = 503, description = "Registry unavailable (the reason is in the server's log)", body = Health),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    match state.registry().ping().await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "Not ready: the user registry does not answer.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "not ready",
                }),
            )
        }
    }
}
