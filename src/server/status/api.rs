//! The JSON the operator's tools read: `GET /api/status` (the status
//! page's totals and one page of meters) and `GET /api/stats` (the
//! statistics snapshot by namespace), both with scope `read`.
//!
//! Checks the query, takes the cached [`super::overview`] and the hub's
//! [`HubSnapshot`], and shapes the answer; typed end to end, so the OpenAPI
//! document describes exactly what is sent.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::overview::Counts;
use super::table::{Direction, MeterRow, SortKey, View, select};
use crate::clock::now_unix;
use crate::registry::MeterState;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, Problem};
use crate::server::fleet::Seen;
use crate::stats::HubSnapshot;
use crate::tokens::Scope;

/// Rows per status page when `per_page` is not given.
pub const DEFAULT_PER_PAGE: usize = 100;
/// Largest `per_page`.
pub const MAX_PER_PAGE: usize = 1000;
/// Per-meter records in `/api/stats` when `limit` is not given.
pub const DEFAULT_STATS_LIMIT: usize = 100;
/// Largest `limit` of `/api/stats`: every meter of a large deployment.
pub const MAX_STATS_LIMIT: usize = 10_000;
/// The threshold the status page's totals use.
const PAGE_STALE_MINUTES: u32 = 10;

/// The totals at the top of the status page.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Totals {
    /// Active (polled) meters.
    pub meters: usize,
    /// Active meters whose last poll went fine.
    pub ok: usize,
    /// Active meters failing repeatedly, polled less often.
    pub backoff: usize,
    /// Active meters whose credentials were rejected.
    pub auth_failed: usize,
    /// Users kept but not polled.
    pub inactive: usize,
    /// Active meters that never reported a reading.
    pub without_reading: usize,
    /// Active meters whose latest reading is more than 10 minutes old.
    pub stale_10m: usize,
    /// Polls per second of the pinger(s) the hub sees (this process, or those
    /// publishing to Redis); `null` when none reports.
    pub polls_per_s: Option<f64>,
    /// Lines written per second by the pinger in this process.
    pub lines_per_s: Option<f64>,
    /// Summation readings filled in from meters' history; `null` when no
    /// pinger reports.
    pub backfilled_readings: Option<u64>,
    /// Gaps in meters' summation streams still to fill from their history.
    pub gaps_open: Option<i64>,
    /// Completed files waiting for upload, from the rotator the hub sees; `null` when none reports.
    pub upload_backlog: Option<u64>,
    /// Age in seconds of the oldest file waiting for upload.
    pub oldest_pending_age_s: Option<f64>,
    /// When the last upload succeeded (RFC 3339), if the rotator runs here and uploaded.
    pub last_upload_at: Option<String>,
    /// Seconds since this process started.
    pub uptime_s: Option<f64>,
}

impl Totals {
    fn new(c: &Counts, hub: HubSnapshot) -> Totals {
        let pinger = hub.pinger.as_ref();
        let rotator = hub.rotator;
        Totals {
            meters: c.meters,
            ok: c.ok,
            backoff: c.backoff,
            auth_failed: c.auth_failed,
            inactive: c.inactive,
            without_reading: c.without_reading,
            stale_10m: c.stale(PAGE_STALE_MINUTES).unwrap_or_default(),
            polls_per_s: pinger.map(|p| p.polls_per_s),
            lines_per_s: pinger.map(|p| p.lines_per_s),
            backfilled_readings: pinger.map(|p| p.backfilled_readings_total),
            gaps_open: pinger.map(|p| p.gaps_open),
            upload_backlog: rotator.as_ref().map(|r| r.files_pending),
            oldest_pending_age_s: rotator.as_ref().map(|r| r.oldest_pending_age_s as f64),
            last_upload_at: rotator.and_then(|r| r.last_upload_at),
            uptime_s: Some(hub.uptime_s as f64),
        }
    }
}

/// The answer of `GET /api/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusPage {
    /// Unix seconds when this answer was made (the page computes ages from it).
    pub generated_at: f64,
    /// Counts over all active meters, whatever the filter.
    pub totals: Totals,
    /// This page, from 1.
    pub page: usize,
    /// Rows per page.
    pub per_page: usize,
    /// Pages for the current filter (at least 1).
    pub pages: usize,
    /// Meters matching the filter.
    pub matching: usize,
    /// The sort column.
    #[schema(example = "state")]
    pub sort: &'static str,
    /// `asc` or `desc`.
    #[schema(example = "asc")]
    pub order: &'static str,
    /// This page's meters.
    pub meters: Vec<MeterRow>,
}

/// Query of `GET /api/status`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Page number from 1 (default 1); past the last page gives no rows.
    #[param(minimum = 1, maximum = 18446744073709551615_u64)]
    pub page: Option<usize>,
    /// Rows per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub per_page: Option<usize>,
    /// Sort column (default `state`: failing meters first).
    pub sort: Option<SortKey>,
    /// `asc` or `desc`; default depends on the column (largest or most urgent first).
    pub order: Option<Direction>,
    /// Only meters in this state.
    #[param(value_type = Option<String>, example = "backoff", pattern = "^(ok|backoff|auth_failed)?$")]
    pub state: Option<String>,
    /// Only cloud ids containing these hex digits.
    #[param(example = "00ce", pattern = r"^\s*[0-9a-fA-F]{0,6}\s*$")]
    pub q: Option<String>,
}

/// Query of `GET /api/stats`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Per-meter records to include, failing first: 0-10000 (default 100).
    #[param(minimum = 0, maximum = 10000)]
    pub limit: Option<usize>,
}

/// A query that does not parse, as a 400.
pub(crate) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid-query", e.body_text())
}

/// Checks a paged query: `page` from 1 (default 1), `per_page` from 1 to
/// `max` (default `default`).
pub(crate) fn paging(
    page: Option<usize>,
    per_page: Option<usize>,
    default: usize,
    max: usize,
) -> Result<(usize, usize), ApiError> {
    let page = page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::bad_request(
            "invalid-page",
            "`page` counts from 1",
        ));
    }
    let per_page = per_page.unwrap_or(default);
    if !(1..=max).contains(&per_page) {
        return Err(ApiError::bad_request(
            "invalid-per-page",
            format!("`per_page` must be between 1 and {max}"),
        ));
    }
    Ok((page, per_page))
}

/// The status page's data: totals and one page of meters.
///
/// Needs scope `read`. Computed from a registry snapshot at most
/// two seconds old plus the live counters of the services in this
/// process or reporting through Redis (`null` for a service none reports).
#[utoipa::path(
    get,
    path = "/api/status",
    tag = "status",
    params(StatusQuery),
    responses(
        (status = 200, description = "Totals and a page of meters, failing first by default", body = StatusPage),
        (status = 400, description = "Bad page, per_page, sort, order, state or q", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Registry unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn api_status(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusPage>, ApiError> {
    caller.require(Scope::Read)?;
    let Query(query) = query.map_err(query_error)?;
    let (page, per_page) = paging(query.page, query.per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
    let filter_state = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<MeterState>()
                .map_err(|e| ApiError::bad_request("invalid-state", format!("`state` {e}")))?,
        ),
    };
    let q = match query.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(q) if q.len() <= 6 && q.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(q.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid-q",
                "`q` must be up to 6 hex digits of a cloud id",
            ));
        }
    };
    let key = query.sort.unwrap_or(SortKey::State);
    let dir = query.order.unwrap_or(key.natural());
    let overview = state.overview().get(state.registry()).await?;
    let now = now_unix();
    let skip = (page - 1).saturating_mul(per_page);
    let view = View {
        key,
        dir,
        state: filter_state,
        q,
    };
    let mut sel = select(&overview, &view, skip, per_page, now);
    // The owner column is a convenience: a fleet that cannot be read now
    // leaves it empty rather than failing the whole page.
    if let Ok(seen) = Seen::read(state.registry()).await {
        let owners = seen.owners(sel.rows.iter().map(|r| r.cloud_id));
        for (row, o) in sel.rows.iter_mut().zip(owners) {
            row.owner = o.owner;
        }
    }
    Ok(Json(StatusPage {
        generated_at: now,
        totals: Totals::new(&overview.counts(now), state.hub().snapshot()),
        page,
        per_page,
        pages: sel.matching.div_ceil(per_page).max(1),
        matching: sel.matching,
        sort: key.as_str(),
        order: dir.as_str(),
        meters: sel.rows,
    }))
}

/// The answer of `GET /api/stats`: the hub's snapshot (`uptime_s`,
/// `version`, `instances`, `pinger`, `rotator`) with the registry counts
/// and per-meter records.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsAnswer {
    /// The services' live statistics.
    #[serde(flatten)]
    pub hub: HubSnapshot,
    /// Counts over every active meter, whichever pinger polls it.
    pub registry: RegistryCounts,
    /// Per-meter records, failing first, up to `limit`.
    pub meters: Vec<MeterRow>,
}

/// Counts over the registry's meters, from the cached overview.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegistryCounts {
    /// Active (polled) meters.
    pub meters: usize,
    /// Active meters whose last poll went fine.
    pub ok: usize,
    /// Active meters failing repeatedly, polled less often.
    pub backoff: usize,
    /// Active meters whose credentials were rejected.
    pub auth_failed: usize,
    /// Users kept but not polled.
    pub inactive: usize,
    /// Active meters that never reported a reading.
    pub without_reading: usize,
    /// Active meters whose stored statistics do not parse (counted as
    /// without statistics).
    pub invalid_stats: usize,
    /// Age in seconds of the registry read these counts come from.
    pub snapshot_age_s: f64,
    /// Active meters whose latest reading is more than 5 minutes old.
    pub stale_5m: usize,
    /// More than 10 minutes old.
    pub stale_10m: usize,
    /// More than 60 minutes old.
    pub stale_60m: usize,
}

impl RegistryCounts {
    fn new(c: &Counts, snapshot_age_s: f64) -> RegistryCounts {
        let stale = |minutes| c.stale(minutes).unwrap_or_default();
        RegistryCounts {
            meters: c.meters,
            ok: c.ok,
            backoff: c.backoff,
            auth_failed: c.auth_failed,
            inactive: c.inactive,
            without_reading: c.without_reading,
            invalid_stats: c.invalid_stats,
            snapshot_age_s,
            stale_5m: stale(5),
            stale_10m: stale(10),
            stale_60m: stale(60),
        }
    }
}

/// A statistics snapshot, organised by namespace.
///
/// Needs scope `read`. `uptime_s` and `version`, then one object per
/// service the hub sees (`pinger`, `rotator`; absent when none reports)
/// with rates computed when the snapshot is taken, and `instances` when
/// some come from other processes through Redis; `registry` counts every
/// active meter whichever pinger polls it; `meters` holds per-meter
/// records, failing first, up to `limit`.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "status",
    params(StatsQuery),
    responses(
        (status = 200, description = "The snapshot by namespace", body = StatsAnswer),
        (status = 400, description = "Bad limit or unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Registry unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn api_stats(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<StatsAnswer>, ApiError> {
    caller.require(Scope::Read)?;
    let Query(query) = query.map_err(query_error)?;
    let limit = query.limit.unwrap_or(DEFAULT_STATS_LIMIT);
    if limit > MAX_STATS_LIMIT {
        return Err(ApiError::bad_request(
            "invalid-limit",
            format!("`limit` must be between 0 and {MAX_STATS_LIMIT}"),
        ));
    }
    let overview = state.overview().get(state.registry()).await?;
    let now = now_unix();
    Ok(Json(StatsAnswer {
        hub: state.hub().snapshot(),
        registry: RegistryCounts::new(
            &overview.counts(now),
            overview.taken_at.elapsed().as_secs_f64(),
        ),
        meters: select(&overview, &View::DEFAULT, 0, limit, now).rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::overview::STALE_MINUTES;

    #[test]
    fn the_stale_fields_of_api_stats_are_the_thresholds_metrics_use() {
        // `RegistryCounts` names one field per threshold; a threshold added
        // or changed without its field would silently report 0.
        assert_eq!(STALE_MINUTES, [5, 10, 60]);
    }
}
