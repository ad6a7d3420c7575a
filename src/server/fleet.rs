//! `GET /api/fleet` (scope `read`): which pingers share the meters, their
//! heartbeats and meter counts, and who polls which meter.
//!
//! Reads the members the pingers announce in Redis through
//! [`crate::fleet::read_members`] (the registry's connection; no second
//! one) and computes each meter's owner the way the pingers do, by
//! rendezvous hashing over the live members ([`crate::fleet::View`]).
//! Owners come a page at a time (sorted by cloud id, 100 by default) or for
//! one meter (`?meter=ID`), so 100,000 meters never make one giant answer.
//! It writes nothing.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::status::api::{paging, query_error};
use crate::cloud_id::CloudId;
use crate::fleet::membership::{now_ms, splitting};
use crate::fleet::{Member, Mode, Shard, View, read_members};
use crate::record::format_time;
use crate::registry::{Registry, RegistryError};
use crate::tokens::Scope;

/// Owners per page when `per_page` is not given.
pub const DEFAULT_PER_PAGE: usize = 100;
/// Largest `per_page`.
pub const MAX_PER_PAGE: usize = 1000;

/// One pinger as its heartbeat describes it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetMember {
    /// Unique per process (`<host>-<pid>-<random>`), as in its logs; a
    /// static shard is `shard-<I>`.
    pub id: String,
    /// Its last heartbeat, UTC RFC 3339 (its own clock).
    pub last_heartbeat: Option<String>,
    /// When it started (or starts) polling its share, UTC RFC 3339.
    pub active_from: Option<String>,
    /// Meters it polled at its last heartbeat.
    pub meters: u64,
    /// `I/N` for a static shard, else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// One meter and the pinger polling it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MeterOwner {
    /// Six lower-case hex digits.
    #[schema(value_type = String, example = "00ce69")]
    pub cloud_id: CloudId,
    /// The owning member's id; `null` when no pinger is live (or in
    /// single mode, where the one pinger has no announced id).
    pub owner: Option<String>,
}

/// The answer of `GET /api/fleet`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetAnswer {
    /// How the meters are split: `membership` (pingers sharing Redis),
    /// `shard` (static `--shard I/N`) or `single` (a users file: one
    /// pinger polls everything).
    pub mode: Mode,
    /// When this answer was made, UTC RFC 3339.
    pub generated_at: String,
    /// The live members, sorted by id.
    pub members: Vec<FleetMember>,
    /// Active meters in the registry.
    pub meters_total: usize,
    /// This page of owners, from 1 (1 with `meter`).
    pub page: usize,
    /// Owners per page.
    pub per_page: usize,
    /// Pages of owners (at least 1).
    pub pages: usize,
    /// This page's meters and their owners, by cloud id; only the asked
    /// meter with `meter`.
    pub owners: Vec<MeterOwner>,
}

/// Query of `GET /api/fleet`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FleetQuery {
    /// Only this meter's owner (it need not be registered).
    #[param(example = "00ce69", pattern = r"^\s*[0-9a-fA-F]{6}\s*$")]
    pub meter: Option<String>,
    /// Page of owners from 1 (default 1); past the last page gives none.
    #[param(minimum = 1, maximum = 18446744073709551615_u64)]
    pub page: Option<usize>,
    /// Owners per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub per_page: Option<usize>,
}

/// The fleet as the server sees it: the mode, every announced member, and
/// the view owners are computed with.
pub(crate) struct Seen {
    /// How the meters are split.
    pub mode: Mode,
    /// Every live member, shards included.
    pub members: Vec<Member>,
    view: Option<View>,
}

impl Seen {
    /// Reads the announced members: membership unless every live member
    /// is a static shard; single with a users file.
    pub(crate) async fn read(registry: &Registry) -> Result<Seen, RegistryError> {
        let Registry::Redis(r) = registry else {
            return Ok(Seen {
                mode: Mode::Single,
                members: Vec::new(),
                view: None,
            });
        };
        let members = read_members(r.db(), r.keys()).await?;
        let shard = members
            .iter()
            .find_map(|m| m.shard.as_deref().and_then(|s| s.parse::<Shard>().ok()));
        let split = splitting(members.clone());
        let (mode, view) = match shard {
            Some(s) if split.is_empty() => (Mode::Shard, Some(View::shard(s))),
            _ => (
                Mode::Membership,
                Some(View::new(Mode::Membership, String::new(), split)),
            ),
        };
        Ok(Seen {
            mode,
            members,
            view,
        })
    }

    /// Who polls `ids` now; `None` each without live members.
    pub(crate) fn owners(&self, ids: impl Iterator<Item = CloudId>) -> Vec<MeterOwner> {
        let owners = self.view.as_ref().map(|v| v.owner_at(now_ms()));
        ids.map(|cloud_id| MeterOwner {
            cloud_id,
            owner: owners
                .as_ref()
                .and_then(|o| o.owner(cloud_id))
                .map(|m| m.id.clone()),
        })
        .collect()
    }
}

fn time(ms: u64) -> Option<String> {
    (ms > 0)
        .then(|| Utc.timestamp_millis_opt(ms as i64).single())
        .flatten()
        .map(format_time)
}

/// The pingers sharing the meters and who polls which meter.
///
/// Needs scope `read`. Members come from their heartbeats in Redis (none
/// with a users file: mode `single`); owners are computed as the pingers
/// compute them, one page (by cloud id) or one `meter` at a time.
#[utoipa::path(
    get,
    path = "/api/fleet",
    tag = "status",
    params(FleetQuery),
    responses(
        (status = 200, description = "The members and a page of meter owners", body = FleetAnswer),
        (status = 400, description = "Bad meter, page or per_page", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Registry unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn api_fleet(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<FleetQuery>, QueryRejection>,
) -> Result<Json<FleetAnswer>, ApiError> {
    caller.require(Scope::Read)?;
    let Query(query) = query.map_err(query_error)?;
    let meter = match query.meter.as_deref().map(str::trim) {
        None => None,
        Some(m) => Some(
            CloudId::parse(&m.to_ascii_lowercase())
                .map_err(|e| ApiError::bad_request("invalid-meter", format!("`meter` {e}")))?,
        ),
    };
    let (page, per_page) = paging(query.page, query.per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
    let seen = Seen::read(state.registry()).await?;
    let overview = state.overview().get(state.registry()).await?;
    let mut ids = overview.ids();
    let meters_total = ids.len();
    let (owners, page, pages) = match meter {
        Some(id) => (seen.owners(std::iter::once(id)), 1, 1),
        None => {
            ids.sort_unstable();
            let skip = (page - 1).saturating_mul(per_page);
            let owners = seen.owners(ids.into_iter().skip(skip).take(per_page));
            (owners, page, meters_total.div_ceil(per_page).max(1))
        }
    };
    Ok(Json(FleetAnswer {
        mode: seen.mode,
        generated_at: format_time(Utc::now()),
        members: seen
            .members
            .iter()
            .map(|m| FleetMember {
                id: m.id.clone(),
                last_heartbeat: time(m.heartbeat_ms),
                active_from: time(m.active_from_ms),
                meters: m.meters,
                shard: m.shard.clone(),
            })
            .collect(),
        meters_total,
        page,
        per_page,
        pages,
        owners,
    }))
}
