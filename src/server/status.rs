//! What an operator watches: the status page (`GET /status`), its data
//! (`GET /api/status`), the statistics snapshot (`GET /api/stats`) and the
//! Prometheus exposition (`GET /metrics`).
//!
//! Owns the *overview*: every active meter with its statistics, read from
//! the registry in one batched pass ([`Registry::stats_many`]) and cached
//! for [`OVERVIEW_TTL`], so a dozen open status pages and a Prometheus
//! scraper cost one registry read every couple of seconds, not one each.
//! Requests sort, filter and page that snapshot in memory; with 10,000
//! meters that is a few milliseconds. The live counters of the services
//! (polls per second, upload backlog) come from [`crate::stats::Hub`],
//! which this module only reads.
//!
//! The page is one self-contained HTML document (style and script inlined,
//! no external assets) served without a token: it holds no data. Its script
//! asks `GET /api/status` for everything with a bearer token the operator
//! typed into its login form or passed as `#token=...` (a fragment never
//! reaches the server or its logs). A Content-Security-Policy allows only
//! that inlined script and style, and requests to this origin.
//!
//! `/metrics` is unauthenticated on purpose: Prometheus scrapers rarely
//! send bearer tokens, and it exposes only counts and durations (no cloud
//! id, e-mail or secret), like `/healthz`.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::users::StateView;
use crate::cloud_id::CloudId;
use crate::registry::{MeterState, Registry, RegistryError, UserStats};
use crate::tokens::{Scope, now_unix};

/// How long one registry read serves every status page and scrape.
pub const OVERVIEW_TTL: Duration = Duration::from_secs(2);
/// Rows per status page when `per_page` is not given.
pub const DEFAULT_PER_PAGE: usize = 100;
/// Largest `per_page`.
pub const MAX_PER_PAGE: usize = 1000;
/// Per-meter records in `/api/stats` when `limit` is not given.
pub const DEFAULT_STATS_LIMIT: usize = 100;
/// Largest `limit` of `/api/stats`: every meter of a large deployment.
pub const MAX_STATS_LIMIT: usize = 10_000;
/// The thresholds of `rainforest_meters_stale{minutes=...}`: how long
/// without a reading counts as "not reporting".
pub const STALE_MINUTES: [u32; 3] = [5, 10, 60];
/// The threshold the status page's totals use.
const PAGE_STALE_MINUTES: u32 = 10;
/// The media type of the Prometheus text format this route serves.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The active meters and their statistics at one moment, sorted failing
/// first; what the cache holds.
#[derive(Debug)]
pub(crate) struct Overview {
    taken_at: Instant,
    meters: Vec<Meter>,
    inactive: usize,
    /// Meters whose stored statistics do not parse (shown with none).
    invalid_stats: usize,
}

/// One active meter in the [`Overview`].
#[derive(Debug, Clone)]
struct Meter {
    cloud_id: CloudId,
    stats: UserStats,
}

/// Counts over an [`Overview`], for the totals and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    ok: usize,
    backoff: usize,
    auth_failed: usize,
    without_reading: usize,
}

impl Overview {
    /// Reads every user and, in batches, their statistics.
    async fn load(registry: &Registry) -> Result<Overview, RegistryError> {
        let users = registry.load_all().await?;
        let total = users.len();
        let ids: Vec<CloudId> = users
            .iter()
            .filter(|u| u.active)
            .map(|u| u.cloud_id)
            .collect();
        let stats = registry.stats_many(&ids).await?;
        let mut invalid_stats = 0;
        let mut meters: Vec<Meter> = ids
            .iter()
            .zip(stats)
            .map(|(id, s)| {
                let stats = match s {
                    Ok(s) => s.unwrap_or_default(),
                    Err(e) => {
                        // Reported where it is stored; here it only must not
                        // hide the other meters.
                        tracing::debug!(cloud_id = %id, error = %e, "Showing a meter without its invalid statistics.");
                        invalid_stats += 1;
                        UserStats::default()
                    }
                };
                Meter {
                    cloud_id: *id,
                    stats,
                }
            })
            .collect();
        meters.sort_by(|a, b| compare(a, b, SortKey::State, Direction::Asc));
        Ok(Overview {
            taken_at: Instant::now(),
            inactive: total - meters.len(),
            meters,
            invalid_stats,
        })
    }

    fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for m in &self.meters {
            match m.stats.state {
                MeterState::Ok => c.ok += 1,
                MeterState::Backoff => c.backoff += 1,
                MeterState::AuthFailed => c.auth_failed += 1,
            }
            if m.stats.last_timestamp.is_none() {
                c.without_reading += 1;
            }
        }
        c
    }

    /// Active meters whose latest reading is more than `minutes` old at
    /// `now` (meters that never reported are counted apart).
    fn stale(&self, minutes: u32, now: f64) -> usize {
        let limit = f64::from(minutes) * 60.0;
        self.meters
            .iter()
            .filter(|m| m.stats.last_timestamp.is_some_and(|t| now - t > limit))
            .count()
    }
}

/// The cached [`Overview`]; one per server.
#[derive(Debug, Default)]
pub(crate) struct OverviewCache {
    // A tokio mutex held across the registry read: concurrent requests on
    // an expired cache wait for the one read instead of each starting one.
    slot: tokio::sync::Mutex<Option<Arc<Overview>>>,
}

impl OverviewCache {
    /// The overview, read afresh when the cached one is older than
    /// [`OVERVIEW_TTL`].
    async fn get(&self, registry: &Registry) -> Result<Arc<Overview>, RegistryError> {
        let mut slot = self.slot.lock().await;
        if let Some(o) = slot.as_ref()
            && o.taken_at.elapsed() < OVERVIEW_TTL
        {
            return Ok(Arc::clone(o));
        }
        let fresh = Arc::new(Overview::load(registry).await?);
        *slot = Some(Arc::clone(&fresh));
        Ok(fresh)
    }
}

/// A column the status table sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Failing first: auth_failed, backoff, ok; then the longest error
    /// streak, the oldest reading, the cloud id.
    State,
    /// The cloud id.
    CloudId,
    /// The latest demand (kW); meters without one last.
    Demand,
    /// Time since the latest reading; meters that never reported count as
    /// the oldest.
    Age,
    /// Failures in a row.
    Streak,
    /// Readings logged.
    Events,
}

impl SortKey {
    fn as_str(self) -> &'static str {
        match self {
            SortKey::State => "state",
            SortKey::CloudId => "cloud_id",
            SortKey::Demand => "demand",
            SortKey::Age => "age",
            SortKey::Streak => "streak",
            SortKey::Events => "events",
        }
    }

    /// The order a click on the column header starts with: the one that
    /// puts what needs attention (or the largest value) on top.
    fn natural(self) -> Direction {
        match self {
            SortKey::State | SortKey::CloudId => Direction::Asc,
            SortKey::Demand | SortKey::Age | SortKey::Streak | SortKey::Events => Direction::Desc,
        }
    }
}

/// Ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smallest first (for `state`: failing first).
    Asc,
    /// Largest first.
    Desc,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Asc => "asc",
            Direction::Desc => "desc",
        }
    }

    fn apply(self, o: Ordering) -> Ordering {
        match self {
            Direction::Asc => o,
            Direction::Desc => o.reverse(),
        }
    }
}

/// How urgent a state is: lower sorts first.
fn rank(s: MeterState) -> u8 {
    match s {
        MeterState::AuthFailed => 0,
        MeterState::Backoff => 1,
        MeterState::Ok => 2,
    }
}

/// Compares two optional numbers in direction `dir`, with `None` last
/// either way (a meter without a value is never the "top" one).
fn by_option(a: Option<f64>, b: Option<f64>, dir: Direction) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => dir.apply(a.total_cmp(&b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// The table order; ties always fall back to the cloud id so pages are
/// stable between refreshes.
fn compare(a: &Meter, b: &Meter, key: SortKey, dir: Direction) -> Ordering {
    let (x, y) = (&a.stats, &b.stats);
    // Older readings first; never is older than any reading.
    let oldest_first = || {
        x.last_timestamp
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&y.last_timestamp.unwrap_or(f64::NEG_INFINITY))
    };
    let primary = match key {
        SortKey::State => dir.apply(
            rank(x.state)
                .cmp(&rank(y.state))
                .then(y.consecutive_failures.cmp(&x.consecutive_failures))
                .then_with(oldest_first),
        ),
        SortKey::CloudId => Ordering::Equal,
        SortKey::Demand => by_option(x.last_demand_kw, y.last_demand_kw, dir),
        // Descending age is ascending timestamp.
        SortKey::Age => dir.apply(oldest_first().reverse()),
        SortKey::Streak => dir.apply(x.consecutive_failures.cmp(&y.consecutive_failures)),
        SortKey::Events => dir.apply(x.total_events_logged.cmp(&y.total_events_logged)),
    };
    let tie = a.cloud_id.cmp(&b.cloud_id);
    primary.then(match key {
        SortKey::CloudId => dir.apply(tie),
        _ => tie,
    })
}

/// Points of a sparkline: the last hour by minute plus the current one.
pub const SPARK_POINTS: usize = 61;

/// The last hour of demand for a sparkline, one point per minute ending
/// with the current minute at `now`: the stored per-minute averages (oldest
/// first, `None` for minutes without a reading), then the latest reading in
/// its own minute, so a meter shows a line from its first reading on
/// instead of after its first complete minute. The stored minutes end where
/// the meter last answered, so a meter silent since then gets empty minutes
/// up to now rather than an old hour drawn as if it were this one.
fn spark_points(stats: &UserStats, now: f64) -> Vec<Option<f64>> {
    let mut points: Vec<Option<f64>> = match stats.spark.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|v| v.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect(),
    };
    if let Some(kw) = stats.last_demand_kw.filter(|v| v.is_finite()) {
        points.push(Some(kw));
    }
    if let Some(last) = stats.last_timestamp {
        let silent = ((now / 60.0).floor() - (last / 60.0).floor()).max(0.0);
        // Capped: an hour of empty minutes already hides everything.
        let silent = (silent as usize).min(SPARK_POINTS);
        points.extend(std::iter::repeat_n(None, silent));
    }
    if points.len() > SPARK_POINTS {
        points.drain(..points.len() - SPARK_POINTS);
    }
    points
}

/// One meter as the status page shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MeterRow {
    /// Six lower-case hex digits.
    #[schema(value_type = String, example = "00ce69")]
    pub cloud_id: CloudId,
    /// How the pinger treats the meter (failing ones sort first).
    pub state: StateView,
    /// The latest reading's demand in kW (negative: export).
    pub last_demand_kw: Option<f64>,
    /// Unix seconds of the latest reading.
    pub last_reading_at: Option<f64>,
    /// Seconds since the latest reading, when the answer was made.
    pub last_reading_age_s: Option<f64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Readings logged since the user was added.
    pub total_events_logged: u64,
    /// The latest failure's kind (`auth`, `timeout`, ...).
    pub last_error_kind: Option<String>,
    /// Unix seconds of the latest failure.
    pub last_error_at: Option<f64>,
    /// The last hour of demand in kW, one point per minute oldest first,
    /// up to 61 (`null` for a minute without a reading); the minute of the
    /// latest reading holds that reading, and minutes since are `null`.
    pub spark: Vec<Option<f64>>,
}

impl MeterRow {
    fn new(m: &Meter, now: f64) -> MeterRow {
        let s = &m.stats;
        MeterRow {
            cloud_id: m.cloud_id,
            state: s.state.into(),
            last_demand_kw: s.last_demand_kw,
            last_reading_at: s.last_timestamp,
            last_reading_age_s: s.last_timestamp.map(|t| (now - t).max(0.0)),
            consecutive_failures: s.consecutive_failures,
            total_events_logged: s.total_events_logged,
            last_error_kind: s.last_error_kind.clone(),
            last_error_at: s.last_error_at,
            spark: spark_points(s, now),
        }
    }
}

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
    fn new(overview: &Overview, hub: &Value, now: f64) -> Totals {
        let c = overview.counts();
        let pinger = &hub["pinger"];
        let rotator = &hub["rotator"];
        Totals {
            meters: overview.meters.len(),
            ok: c.ok,
            backoff: c.backoff,
            auth_failed: c.auth_failed,
            inactive: overview.inactive,
            without_reading: c.without_reading,
            stale_10m: overview.stale(PAGE_STALE_MINUTES, now),
            polls_per_s: pinger["polls_per_s"].as_f64(),
            lines_per_s: pinger["lines_per_s"].as_f64(),
            upload_backlog: rotator["files_pending"].as_u64(),
            oldest_pending_age_s: rotator["oldest_pending_age_s"].as_f64(),
            last_upload_at: rotator["last_upload_at"].as_str().map(str::to_string),
            uptime_s: hub["uptime_s"].as_f64(),
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
    pub page: Option<usize>,
    /// Rows per page, 1-1000 (default 100).
    pub per_page: Option<usize>,
    /// Sort column (default `state`: failing meters first).
    pub sort: Option<SortKey>,
    /// `asc` or `desc`; default depends on the column (largest or most urgent first).
    pub order: Option<Direction>,
    /// Only meters in this state.
    #[param(value_type = Option<String>, example = "backoff")]
    pub state: Option<String>,
    /// Only cloud ids containing these hex digits.
    #[param(example = "00ce")]
    pub q: Option<String>,
}

/// Query of `GET /api/stats`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Per-meter records to include, failing first: 0-10000 (default 100).
    pub limit: Option<usize>,
}

/// Which meters a request wants, in which order.
#[derive(Debug, Clone)]
struct View {
    key: SortKey,
    dir: Direction,
    state: Option<MeterState>,
    /// Lower-case hex digits the cloud id must contain.
    q: Option<String>,
}

impl View {
    /// Every meter, failing first.
    const DEFAULT: View = View {
        key: SortKey::State,
        dir: Direction::Asc,
        state: None,
        q: None,
    };
}

/// A filtered, sorted page over the overview.
struct Selection {
    rows: Vec<MeterRow>,
    matching: usize,
}

fn select(overview: &Overview, view: &View, skip: usize, take: usize, now: f64) -> Selection {
    let mut chosen: Vec<&Meter> = overview
        .meters
        .iter()
        .filter(|m| view.state.is_none_or(|s| m.stats.state == s))
        .filter(|m| {
            view.q
                .as_deref()
                .is_none_or(|q| m.cloud_id.as_str().contains(q))
        })
        .collect();
    // The overview is kept in the default order; any other needs a sort.
    if (view.key, view.dir) != (SortKey::State, Direction::Asc) {
        chosen.sort_by(|a, b| compare(a, b, view.key, view.dir));
    }
    Selection {
        matching: chosen.len(),
        rows: chosen
            .into_iter()
            .skip(skip)
            .take(take)
            .map(|m| MeterRow::new(m, now))
            .collect(),
    }
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid-query", e.body_text())
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
    let page = query.page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::bad_request(
            "invalid-page",
            "`page` counts from 1",
        ));
    }
    let per_page = query.per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(ApiError::bad_request(
            "invalid-per-page",
            format!("`per_page` must be between 1 and {MAX_PER_PAGE}"),
        ));
    }
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
    let hub = state.hub().snapshot();
    let skip = (page - 1).saturating_mul(per_page);
    let view = View {
        key,
        dir,
        state: filter_state,
        q,
    };
    let sel = select(&overview, &view, skip, per_page, now);
    Ok(Json(StatusPage {
        generated_at: now,
        totals: Totals::new(&overview, &hub, now),
        page,
        per_page,
        pages: sel.matching.div_ceil(per_page).max(1),
        matching: sel.matching,
        sort: key.as_str(),
        order: dir.as_str(),
        meters: sel.rows,
    }))
}

/// A statistics snapshot, organised by namespace.
///
/// Needs scope `read`. `uptime_s`, then one object per service the hub
/// sees (`pinger`, `rotator`; absent when none reports) with
/// rates computed when the snapshot is taken; `registry` counts every
/// active meter whichever pinger polls it; `meters` holds per-meter
/// records, failing first, up to `limit`.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "status",
    params(StatsQuery),
    responses(
        (status = 200, description = "The snapshot: {uptime_s, pinger?, rotator?, registry, meters: [MeterRow]}", content_type = "application/json"),
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
) -> Result<Json<Value>, ApiError> {
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
    let mut snapshot = match state.hub().snapshot() {
        Value::Object(map) => map,
        // The hub promises an object; anything else is kept, not lost.
        other => {
            let mut map = serde_json::Map::new();
            map.insert("hub".into(), other);
            map
        }
    };
    let c = overview.counts();
    let mut registry = json!({
        "meters": overview.meters.len(),
        "ok": c.ok,
        "backoff": c.backoff,
        "auth_failed": c.auth_failed,
        "inactive": overview.inactive,
        "without_reading": c.without_reading,
        "invalid_stats": overview.invalid_stats,
        "snapshot_age_s": overview.taken_at.elapsed().as_secs_f64(),
    });
    for minutes in STALE_MINUTES {
        registry[format!("stale_{minutes}m")] = json!(overview.stale(minutes, now));
    }
    snapshot.insert("registry".into(), registry);
    let rows = select(&overview, &View::DEFAULT, 0, limit, now).rows;
    snapshot.insert(
        "meters".into(),
        serde_json::to_value(rows).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(Json(Value::Object(snapshot)))
}

/// Prometheus metrics.
///
/// No token: scrapers rarely send one, and nothing here identifies a meter
/// or a person (counts and durations only). The service counters of this
/// process, then gauges over every active meter in the registry
/// (`rainforest_registry_meters{state}`, `rainforest_meters_stale{minutes}`,
/// `rainforest_meters_without_reading`); `rainforest_registry_up` is 0
/// when the registry could not be read, and those gauges are then absent.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "status",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain"),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let overview = match state.overview().get(state.registry()).await {
        Ok(o) => Some(o),
        Err(e) => {
            // The scrape still answers, so the hub's metrics and
            // `rainforest_registry_up 0` reach the alerting.
            tracing::warn!(error = %e, "Serving /metrics without registry gauges.");
            None
        }
    };
    let mut text = strip_eof(state.hub().prometheus());
    registry_metrics(&mut text, overview.as_deref(), now_unix());
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_TEXT),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        text,
    )
        .into_response()
}

/// Drops a trailing OpenMetrics `# EOF` so more families can follow (the
/// 0.0.4 text format served here has no end marker).
fn strip_eof(mut text: String) -> String {
    while text.ends_with('\n') {
        text.pop();
    }
    if text.ends_with("# EOF") {
        text.truncate(text.len() - "# EOF".len());
    }
    while text.ends_with('\n') {
        text.pop();
    }
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// Appends the registry-derived gauges in the Prometheus text format.
fn registry_metrics(out: &mut String, overview: Option<&Overview>, now: f64) {
    let up = u8::from(overview.is_some());
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP rainforest_registry_up Whether the server could read the user registry for these gauges.\n\
         # TYPE rainforest_registry_up gauge\n\
         rainforest_registry_up {up}"
    );
    let Some(o) = overview else {
        return;
    };
    let c = o.counts();
    let _ = writeln!(
        out,
        "# HELP rainforest_registry_meters Active meters by the state their pinger last recorded.\n\
         # TYPE rainforest_registry_meters gauge\n\
         rainforest_registry_meters{{state=\"ok\"}} {}\n\
         rainforest_registry_meters{{state=\"backoff\"}} {}\n\
         rainforest_registry_meters{{state=\"auth_failed\"}} {}",
        c.ok, c.backoff, c.auth_failed
    );
    let _ = writeln!(
        out,
        "# HELP rainforest_registry_meters_inactive Users kept in the registry but not polled.\n\
         # TYPE rainforest_registry_meters_inactive gauge\n\
         rainforest_registry_meters_inactive {}",
        o.inactive
    );
    let _ = writeln!(
        out,
        "# HELP rainforest_meters_stale Active meters whose latest reading is older than `minutes`.\n\
         # TYPE rainforest_meters_stale gauge"
    );
    for minutes in STALE_MINUTES {
        let _ = writeln!(
            out,
            "rainforest_meters_stale{{minutes=\"{minutes}\"}} {}",
            o.stale(minutes, now)
        );
    }
    let _ = writeln!(
        out,
        "# HELP rainforest_meters_without_reading Active meters that never reported a reading.\n\
         # TYPE rainforest_meters_without_reading gauge\n\
         rainforest_meters_without_reading {}",
        c.without_reading
    );
}

/// The page with its inlined style and script, and the policy that allows
/// exactly those; built once.
struct Page {
    html: String,
    csp: HeaderValue,
}

const PAGE_HTML: &str = include_str!("status.html");
const PAGE_CSS: &str = include_str!("status.css");
const PAGE_JS: &str = include_str!("status.js");

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text));
    let html = PAGE_HTML
        .replace("/*STYLE*/", PAGE_CSS)
        .replace("/*SCRIPT*/", PAGE_JS);
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; img-src data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(PAGE_JS),
        hash(PAGE_CSS)
    );
    Page {
        html,
        // Built from base64 and fixed text only, so it is a valid header;
        // the fallback keeps the page loadable (without a policy) anyway.
        csp: HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'self'")),
    }
});

/// The status page: an HTML shell that loads its data from `/api/status`.
///
/// No token needed for the page itself: it contains no data. It asks for a
/// read token (stored in the browser), or takes one from `#token=...`.
#[utoipa::path(
    get,
    path = "/status",
    tag = "status",
    responses(
        (status = 200, description = "The status page (HTML)", content_type = "text/html"),
    )
)]
pub async fn status_page() -> Response {
    let page = &*PAGE;
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, page.csp.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        page.html.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(id: &str, state: MeterState, failures: u32, last: Option<f64>) -> Meter {
        Meter {
            cloud_id: CloudId::parse(id).unwrap(),
            stats: UserStats {
                state,
                consecutive_failures: failures,
                last_timestamp: last,
                last_demand_kw: last.map(|t| t / 1000.0),
                total_events_logged: u64::from(failures) * 10,
                ..UserStats::default()
            },
        }
    }

    fn overview(mut meters: Vec<Meter>) -> Overview {
        meters.sort_by(|a, b| compare(a, b, SortKey::State, Direction::Asc));
        Overview {
            taken_at: Instant::now(),
            meters,
            inactive: 1,
            invalid_stats: 0,
        }
    }

    fn view(key: SortKey, dir: Direction) -> View {
        View {
            key,
            dir,
            ..View::DEFAULT
        }
    }

    fn ids(sel: &Selection) -> Vec<&str> {
        sel.rows.iter().map(|r| r.cloud_id.as_str()).collect()
    }

    fn sample() -> Overview {
        overview(vec![
            meter("000001", MeterState::Ok, 0, Some(1000.0)),
            meter("000002", MeterState::Backoff, 3, Some(900.0)),
            meter("000003", MeterState::AuthFailed, 1, None),
            meter("000004", MeterState::Backoff, 7, Some(950.0)),
            meter("000005", MeterState::Ok, 0, None),
        ])
    }

    #[test]
    fn failing_meters_come_first_longest_streak_then_oldest_reading() {
        let o = sample();
        let sel = select(&o, &View::DEFAULT, 0, 10, 0.0);
        assert_eq!(
            ids(&sel),
            ["000003", "000004", "000002", "000005", "000001"]
        );
        let sel = select(&o, &view(SortKey::State, Direction::Desc), 0, 10, 0.0);
        assert_eq!(ids(&sel)[0], "000001");
    }

    #[test]
    fn other_columns_sort_with_missing_values_last_and_ties_by_id() {
        let o = sample();
        let by = |key, dir| ids(&select(&o, &view(key, dir), 0, 10, 0.0)).join(" ");
        assert_eq!(
            by(SortKey::Demand, Direction::Desc),
            "000001 000004 000002 000003 000005"
        );
        assert_eq!(
            by(SortKey::Demand, Direction::Asc),
            "000002 000004 000001 000003 000005"
        );
        // Never reported counts as the oldest.
        assert_eq!(
            by(SortKey::Age, Direction::Desc),
            "000003 000005 000002 000004 000001"
        );
        assert_eq!(
            by(SortKey::Streak, Direction::Desc),
            "000004 000002 000003 000001 000005"
        );
        assert_eq!(
            by(SortKey::CloudId, Direction::Desc),
            "000005 000004 000003 000002 000001"
        );
    }

    #[test]
    fn pages_filters_and_counts_are_over_the_whole_overview() {
        let o = sample();
        let sel = select(&o, &view(SortKey::CloudId, Direction::Asc), 2, 2, 0.0);
        assert_eq!((ids(&sel), sel.matching), (vec!["000003", "000004"], 5));
        let backoff = View {
            state: Some(MeterState::Backoff),
            ..View::DEFAULT
        };
        let sel = select(&o, &backoff, 0, 10, 0.0);
        assert_eq!(ids(&sel), ["000004", "000002"]);
        let sel = select(
            &o,
            &View {
                q: Some("05".into()),
                ..View::DEFAULT
            },
            0,
            10,
            0.0,
        );
        assert_eq!(ids(&sel), ["000005"]);
        let sel = select(&o, &View::DEFAULT, 10, 10, 0.0);
        assert!(sel.rows.is_empty());
        let c = o.counts();
        assert_eq!(
            (c.ok, c.backoff, c.auth_failed, c.without_reading),
            (2, 2, 1, 2)
        );
        // At t=1599 only the reading at 1000 is within 10 minutes.
        assert_eq!(o.stale(10, 1599.0), 2);
    }

    #[test]
    fn sparkline_is_the_stored_minutes_then_the_latest_reading() {
        let s = UserStats {
            spark: Some("1.5,,2.25, x".into()),
            last_demand_kw: Some(3.0),
            last_timestamp: Some(6000.0),
            ..UserStats::default()
        };
        assert_eq!(
            spark_points(&s, 6059.0),
            [Some(1.5), None, Some(2.25), None, Some(3.0)]
        );
        let fresh = UserStats {
            last_demand_kw: Some(0.4),
            last_timestamp: Some(6000.0),
            ..UserStats::default()
        };
        assert_eq!(spark_points(&fresh, 6001.0), [Some(0.4)]);
        assert!(spark_points(&UserStats::default(), 6001.0).is_empty());
    }

    #[test]
    fn sparkline_of_a_silent_meter_runs_empty_up_to_now() {
        let s = UserStats {
            spark: Some(vec!["1"; 60].join(",")),
            last_demand_kw: Some(2.0),
            last_timestamp: Some(6000.0),
            ..UserStats::default()
        };
        // Two minutes later: the hour shifts left by two.
        let p = spark_points(&s, 6000.0 + 120.0);
        assert_eq!(p.len(), SPARK_POINTS);
        assert_eq!(&p[56..], [Some(1.0), Some(1.0), Some(2.0), None, None]);
        // Silent for over an hour: nothing left to draw.
        let p = spark_points(&s, 6000.0 + 4000.0);
        assert_eq!(p.len(), SPARK_POINTS);
        assert!(p.iter().all(Option::is_none));
    }

    #[test]
    fn metrics_text_appends_registry_gauges_after_the_hubs_without_eof() {
        let mut text = strip_eof("# TYPE a counter\na_total 1\n# EOF\n".into());
        registry_metrics(&mut text, Some(&sample()), 1599.0);
        assert!(text.starts_with("# TYPE a counter\na_total 1\n# HELP rainforest_registry_up"));
        assert!(text.contains("rainforest_registry_meters{state=\"backoff\"} 2\n"));
        assert!(text.contains("rainforest_meters_stale{minutes=\"10\"} 2\n"));
        assert!(text.contains("rainforest_meters_without_reading 2\n"));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("00000"), "no cloud id in metrics");
        let mut down = strip_eof(String::new());
        registry_metrics(&mut down, None, 0.0);
        assert_eq!(
            down.lines().last(),
            Some("rainforest_registry_up 0"),
            "{down}"
        );
    }

    #[test]
    fn page_inlines_its_assets_and_the_policy_allows_exactly_them() {
        let page = &*PAGE;
        assert!(!page.html.contains("/*STYLE*/") && !page.html.contains("/*SCRIPT*/"));
        assert!(!page.html.contains("src=\"http") && !page.html.contains("href=\"http"));
        let csp = page.csp.to_str().unwrap();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
    }
}
