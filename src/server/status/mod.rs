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
//!   and its Content-Security-Policy; `coverage.js`, inlined beside
//!   `status.js`, is the panel of yesterday's coverage, read from
//!   `/api/coverage` (`crate::server::coverage`).
//!
//! Who may call what: the page itself needs no token (it holds no data);
//! `/api/status`, `/api/stats` and `/metrics` need scope `read`.

pub mod api;
pub mod metrics;
pub mod overview;
pub mod page;
pub mod table;

pub use self::api::{StatsAnswer, StatusPage, api_stats, api_status};
pub use self::metrics::metrics;
pub(crate) use self::overview::OverviewCache;
pub use self::page::status_page;
