//! `GET /api/coverage`: per meter, the share of one day's expected slots
//! that hold a reading, the longest gap and the gaps, worst first (scope
//! `read`), and the background computation of yesterday's report that the
//! status page shows.
//!
//! Owns the server's read access to the archive (the rotator's keys:
//! `archive`, `s3_bucket`, `s3_prefix`, …) for this purpose only; it never
//! writes to it. Yesterday's report for every meter is computed in a
//! background task and cached, so a big fleet never makes a request wait
//! for it; other days and filtered questions are computed on the request.
//! Without an archive every answer is a 503 saying so.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::coverage::{self, Report, Request};
use crate::readback::Source;
use crate::stream::Kind;
use crate::tokens::Scope;

/// How often yesterday's report is computed again: late uploads change
/// it, and each run reads every meter's 24 objects (on S3, one GET each),
/// so not more often.
const REFRESH_EVERY: Duration = Duration::from_secs(60 * 60);
/// Most meters one request may name.
const MAX_METERS: usize = 1000;

/// The archive reader and yesterday's cached report.
pub struct CoverageService {
    source: Result<Arc<Source>, String>,
    demand_cadence: Duration,
    summation_cadence: Duration,
    price_cadence: Duration,
    yesterday: RwLock<Option<Cached>>,
}

#[derive(Clone)]
struct Cached {
    day: NaiveDate,
    computed_at: String,
    report: Arc<Report>,
}

impl CoverageService {
    /// Opens the configured archive (no request yet) and, when there is
    /// one, starts the background task that keeps yesterday's report; the
    /// task ends when the service is dropped.
    pub async fn start(config: &Config) -> Arc<CoverageService> {
        let source = match Source::from_config(config).await {
            Ok(s) if s.has_archive() => Ok(Arc::new(s)),
            Ok(_) => Err(
                "no archive is configured: coverage needs read access to the archive \
                 the rotator writes (archive = \"dir:/path\", or s3_bucket with s3_prefix, \
                 s3_endpoint, s3_region, as for the rotator)"
                    .to_string(),
            ),
            Err(e) => Err(format!("the archive cannot be opened: {e}")),
        };
        let service = Arc::new(CoverageService {
            source,
            demand_cadence: coverage::cadence(config, Kind::Demand),
            summation_cadence: coverage::cadence(config, Kind::Summation),
            price_cadence: coverage::cadence(config, Kind::Price),
            yesterday: RwLock::new(None),
        });
        if service.source.is_ok() {
            tokio::spawn(refresh(Arc::downgrade(&service)));
        }
        service
    }

    fn cadence(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Demand => self.demand_cadence,
            Kind::Summation => self.summation_cadence,
            Kind::Price => self.price_cadence,
        }
    }

    fn cached(&self, day: NaiveDate) -> Option<Cached> {
        let guard = self.yesterday.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().filter(|c| c.day == day)
    }

    async fn compute(
        &self,
        day: NaiveDate,
        meters: Option<Vec<CloudId>>,
        kind: Kind,
    ) -> Result<Report, ApiError> {
        let source = self
            .source
            .clone()
            .map_err(|detail| ApiError::Unavailable { detail })?;
        let request = Request {
            meters,
            kind,
            from: day,
            to: day,
            cadence: self.cadence(kind),
        };
        coverage::report(source, &request, Utc::now())
            .await
            .map_err(|e| ApiError::Unavailable {
                detail: format!("coverage of {day} could not be computed: {e}"),
            })
    }
}

/// Computes yesterday's demand report now and every [`REFRESH_EVERY`].
async fn refresh(service: Weak<CoverageService>) {
    loop {
        let Some(s) = service.upgrade() else { return };
        let day = yesterday();
        match s.compute(day, None, Kind::Demand).await {
            Ok(mut report) => {
                worst_first(&mut report);
                let mut guard = s.yesterday.write().unwrap_or_else(|p| p.into_inner());
                *guard = Some(Cached {
                    day,
                    computed_at: crate::record::format_time(Utc::now()),
                    report: Arc::new(report),
                });
            }
            Err(e) => tracing::warn!(%day, "Coverage of yesterday not computed: {e}"),
        }
        drop(s);
        tokio::time::sleep(REFRESH_EVERY).await;
    }
}

fn yesterday() -> NaiveDate {
    let today = Utc::now().date_naive();
    today.pred_opt().unwrap_or(today)
}

fn worst_first(report: &mut Report) {
    report.days.sort_by(|a, b| {
        a.share
            .total_cmp(&b.share)
            .then(b.longest_gap_s.cmp(&a.longest_gap_s))
            .then(a.cloud_id.cmp(&b.cloud_id))
    });
}

/// Query of `GET /api/coverage`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CoverageQuery {
    /// The UTC day, `YYYY-MM-DD` (default: yesterday).
    #[param(example = "2025-01-15", format = Date)]
    pub day: Option<String>,
    /// Cloud ids, comma-separated (default: every meter in the archive).
    #[param(
        example = "00ce69,00ce6a",
        pattern = r"^[0-9a-fA-F]{6}(,[0-9a-fA-F]{6})*$",
        max_length = 6999
    )]
    pub meter: Option<String>,
    /// `demand` (default), `summation` or `price`.
    #[param(example = "demand", pattern = "^(demand|summation|price)$")]
    pub kind: Option<String>,
}

/// The answer of `GET /api/coverage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CoverageAnswer {
    /// The day reported, `YYYY-MM-DD`.
    pub day: String,
    /// The stream.
    pub kind: String,
    /// The archive read (`dir:/path` or `s3://bucket (…)`).
    pub archive: String,
    /// When the report was computed (RFC 3339): earlier than now when it
    /// comes from the background cache of yesterday's report.
    pub computed_at: String,
    /// One entry per meter, worst first (lowest share, then longest gap),
    /// and what could not be read.
    pub report: Report,
}

/// Coverage of one day per meter, worst first.
///
/// Needs scope `read`. Yesterday's report for all meters is served from a
/// cache refreshed in the background every hour; other days and
/// filtered questions are read from the archive on the request.
#[utoipa::path(
    get,
    path = "/api/coverage",
    tag = "status",
    params(CoverageQuery),
    responses(
        (status = 200, description = "Coverage per meter, worst first", body = CoverageAnswer),
        (status = 400, description = "Bad day, meter or kind", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No archive configured, the archive cannot be read, or yesterday's report is still being computed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn api_coverage(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<CoverageQuery>, QueryRejection>,
) -> Result<Json<CoverageAnswer>, ApiError> {
    caller.require(Scope::Read)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))?;
    let service = state.coverage();
    // A parameter named but left empty is a mistake, not the default (leave
    // it out for that): the OpenAPI document's patterns say the same.
    for (name, value) in [("day", &query.day), ("kind", &query.kind)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(ApiError::bad_request(
                "empty-parameter",
                format!("`{name}` is empty: give a value or leave it out for the default"),
            ));
        }
    }
    let day = match query.day.as_deref().map(str::trim) {
        None | Some("") => yesterday(),
        Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .ok()
            .filter(|_| d.len() == 10)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-day",
                    format!("`day` must be a UTC day as YYYY-MM-DD, e.g. 2025-01-15; got {d:?}"),
                )
            })?,
    };
    let kind = match query.kind.as_deref().map(str::trim) {
        None | Some("") => Kind::Demand,
        Some(k) => k
            .parse::<Kind>()
            .map_err(|e| ApiError::bad_request("invalid-kind", format!("`kind`: {e}")))?,
    };
    let meters = match query.meter.as_deref().map(str::trim) {
        None => None,
        // Named but empty: a mistake, not "every meter" (leave it out for that).
        Some("") => {
            return Err(ApiError::bad_request(
                "invalid-meter",
                "`meter` is empty: name cloud ids separated by commas, or leave it out for every meter",
            ));
        }
        Some(list) => {
            let ids = list
                .split(',')
                .map(|s| CloudId::parse(s.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::bad_request("invalid-meter", format!("`meter`: {e}")))?;
            if ids.len() > MAX_METERS {
                return Err(ApiError::bad_request(
                    "too-many-meters",
                    format!("at most {MAX_METERS} meters per request; leave `meter` out for all"),
                ));
            }
            Some(ids)
        }
    };
    let archive = match &service.source {
        Ok(s) => s.describe(),
        Err(detail) => {
            return Err(ApiError::Unavailable {
                detail: detail.clone(),
            });
        }
    };
    let from_cache = meters.is_none() && kind == Kind::Demand && day == yesterday();
    let (computed_at, report) = if from_cache {
        let cached = service.cached(day).ok_or_else(|| ApiError::Unavailable {
            detail: format!(
                "yesterday's coverage ({day}) is still being computed in the background; \
                 try again in a minute"
            ),
        })?;
        (cached.computed_at, (*cached.report).clone())
    } else {
        let mut report = service.compute(day, meters, kind).await?;
        worst_first(&mut report);
        (crate::record::format_time(Utc::now()), report)
    };
    Ok(Json(CoverageAnswer {
        day: day.to_string(),
        kind: kind.as_str().to_string(),
        archive,
        computed_at,
        report,
    }))
}
