//! What an operator watches: the status page (`GET /status`), its data
//! (`GET /api/status`), the statistics snapshot (`GET /api/stats`) and the
//! Prometheus exposition (`GET /metrics`).
//!
//! Everything here reads: the registry through the cached overview, and the
//! live counters of the services through [`crate::stats::Hub`]. Nothing
//! here writes to the registry, the spool or the hub.
//!
//! # Layout
//! - [`overview`]: every active meter with its statistics, read in one
//!   batched pass and cached, and the counts over it.
//! - [`table`]: sorting, filtering and paging the overview into rows.
//! - [`api`]: the JSON handlers, `/api/status` and `/api/stats`.
//! - [`metrics`]: the registry gauges as a prometheus-client collector,
//!   and `/metrics`.
//! - [`page`]: the HTML page (`status.html`, `status.css`, `status.js`)
//!   and its Content-Security-Policy.
//!
//! Who may call what: the page itself needs no token (it holds no data);
//! `/api/status`, `/api/stats` and `/metrics` need scope `read`.

pub mod api;
pub mod metrics;
pub mod overview;
pub mod page;
pub mod table;

pub use self::api::{
    DEFAULT_PER_PAGE, DEFAULT_STATS_LIMIT, MAX_PER_PAGE, MAX_STATS_LIMIT, RegistryCounts,
    StatsAnswer, StatsQuery, StatusPage, StatusQuery, Totals, api_stats, api_status,
};
pub use self::metrics::metrics;
pub(crate) use self::overview::OverviewCache;
pub use self::overview::{METRICS_MAX_AGE, OVERVIEW_TTL, STALE_MINUTES};
pub use self::page::status_page;
pub use self::table::{Direction, MeterRow, SPARK_POINTS, SortKey};
