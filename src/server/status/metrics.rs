//! `GET /metrics` on the API server: the hub's metrics plus gauges over the
//! registry, in one prometheus-client registry, encoded once.
//!
//! The registry gauges (`rainforest_registry_up`,
//! `rainforest_registry_meters{state}`, `rainforest_registry_meters_inactive`,
//! `rainforest_meters_stale{minutes}`, `rainforest_meters_without_reading`)
//! come from the cached overview, accepted up to
//! [`super::overview::METRICS_MAX_AGE`] old: a scrape reads the registry at
//! most once per that period, and never user credentials. Counts only: no
//! cloud id, e-mail or secret. Read scope, like the rest of the API.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::overview::{Counts, METRICS_MAX_AGE, STALE_MINUTES};
use crate::clock::now_unix;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, Problem};
use crate::stats::prometheus::{self, CONTENT_TYPE, gauge, gauge_family};
use crate::tokens::Scope;

/// The registry gauges of one scrape: `None` when the registry could not
/// be read (then only `rainforest_registry_up 0` is written).
#[derive(Debug, Clone, Copy)]
struct RegistryCollector(Option<Counts>);

impl Collector for RegistryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut enc,
            "registry_up",
            "Whether the server could read the user registry for these gauges",
            i64::from(self.0.is_some()),
        )?;
        let Some(c) = &self.0 else {
            return Ok(());
        };
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge_family(
            &mut enc,
            "registry_meters",
            "Active meters by the state their pinger last recorded",
            "state",
            &[
                ("ok", n(c.ok)),
                ("backoff", n(c.backoff)),
                ("auth_failed", n(c.auth_failed)),
            ],
        )?;
        gauge(
            &mut enc,
            "registry_meters_inactive",
            "Users kept in the registry but not polled",
            n(c.inactive),
        )?;
        let minutes = STALE_MINUTES.map(|m| m.to_string());
        let stale: Vec<(&str, i64)> = minutes
            .iter()
            .zip(c.stale)
            .map(|(m, v)| (m.as_str(), n(v)))
            .collect();
        gauge_family(
            &mut enc,
            "meters_stale",
            "Active meters whose latest reading is older than `minutes`",
            "minutes",
            &stale,
        )?;
        gauge(
            &mut enc,
            "meters_without_reading",
            "Active meters that never reported a reading",
            n(c.without_reading),
        )
    }
}

/// Prometheus metrics.
///
/// Needs scope `read` (Prometheus: `authorization: {type: Bearer,
/// credentials_file: ...}`). The service counters of this process, then
/// gauges over every active meter in the registry
/// (`rainforest_registry_meters{state}`, `rainforest_meters_stale{minutes}`,
/// `rainforest_meters_without_reading`), from a registry read at most 30 s
/// old; `rainforest_registry_up` is 0 when the registry could not be read,
/// and those gauges are then absent. Counts only: no cloud id or secret.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "status",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let counts = match state
        .overview()
        .get_within(state.registry(), METRICS_MAX_AGE)
        .await
    {
        Ok(o) => Some(o.counts(now_unix())),
        Err(e) => {
            // The scrape still answers, so the hub's metrics and
            // `rainforest_registry_up 0` reach the alerting.
            tracing::warn!(error = %e, "Serving /metrics without registry gauges.");
            None
        }
    };
    let mut registry = state.hub().metrics_registry();
    registry.register_collector(Box::new(RegistryCollector(counts)));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        prometheus::encode(&registry),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(counts: Option<Counts>) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("rainforest");
        registry.register_collector(Box::new(RegistryCollector(counts)));
        prometheus::encode(&registry)
    }

    #[test]
    fn registry_gauges_keep_their_names_and_labels() {
        let c = Counts {
            meters: 5,
            ok: 2,
            backoff: 2,
            auth_failed: 1,
            inactive: 1,
            without_reading: 2,
            invalid_stats: 0,
            stale: [3, 2, 0],
        };
        let text = encoded(Some(c));
        for line in [
            "rainforest_registry_up 1",
            "rainforest_registry_meters{state=\"backoff\"} 2",
            "rainforest_registry_meters_inactive 1",
            "rainforest_meters_stale{minutes=\"5\"} 3",
            "rainforest_meters_stale{minutes=\"10\"} 2",
            "rainforest_meters_stale{minutes=\"60\"} 0",
            "rainforest_meters_without_reading 2",
            "# TYPE rainforest_meters_stale gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(
            encoded(None).lines().last(),
            Some("rainforest_registry_up 0")
        );
    }
}
