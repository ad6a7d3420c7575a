//! `GET /api/openapi.json`: the OpenAPI 3 description, generated from the
//! handlers' annotations and the response types, so it cannot drift from
//! the code the way a hand-written file would.

use axum::Json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::{coverage, event, fleet, health, status, users};
use crate::tokens::Scope;

/// The API description; see each handler for its route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rainforest",
        description = "Users of the EAGLE meter pinger, their statistics, and on-demand reads. \
            Every /api/ route and /metrics need `Authorization: Bearer <token>`; the security \
            requirement of each operation names the scope it needs (read < write < admin). Errors are \
            application/problem+json (RFC 9457)."
    ),
    paths(
        users::list_users,
        users::get_user,
        users::put_user,
        users::delete_user,
        event::read_meter,
        health::healthz,
        health::readyz,
        status::api::api_status,
        status::api::api_stats,
        fleet::api_fleet,
        coverage::api_coverage,
        status::metrics::metrics,
        status::page::status_page,
        openapi_json,
    ),
    // The status query's enums are referenced from its parameters but not
    // reachable from any body, so utoipa does not collect them itself.
    components(schemas(Problem, status::table::SortKey, status::table::Direction)),
    modifiers(&BearerAuth, &CredentialRequired),
    tags(
        (name = "users", description = "Registered meters and their credentials (never returned)"),
        (name = "meters", description = "On-demand reads"),
        (name = "health", description = "Liveness and readiness, no token needed"),
        (name = "status", description = "What an operator watches: the status page and its data, statistics, Prometheus metrics"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer security scheme the operations refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "A token from `rainforest tokens create --name N --scope read|write|admin`, \
             or the bootstrap admin token (api_token / api_token_file)."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// States what a field annotation cannot: the body of
/// `POST /api/users/{cloud_id}` needs either `local` or a non-empty
/// `user_pw` (a relay user has no other credential). Without it, clients
/// (and Schemathesis) read an empty password as valid. The `UserBody`
/// component stays a plain object; the rule is added where it is used.
struct CredentialRequired;

impl Modify for CredentialRequired {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let content = openapi
            .paths
            .paths
            .get_mut("/api/users/{cloud_id}")
            .and_then(|item| item.post.as_mut())
            .and_then(|post| post.request_body.as_mut())
            .and_then(|body| body.content.get_mut("application/json"));
        let Some(content) = content else {
            return;
        };
        let Some(body) = content.schema.take() else {
            return;
        };
        let password = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1));
        let either = AnyOfBuilder::new()
            .description(Some(
                "A relay user needs a non-empty user_pw; an EAGLE-200 user (local) may omit it",
            ))
            .item(
                ObjectBuilder::new()
                    .property("local", ObjectBuilder::new().schema_type(Type::Object))
                    .required("local"),
            )
            .item(
                ObjectBuilder::new()
                    .property("user_pw", password)
                    .required("user_pw"),
            );
        let combined = AllOfBuilder::new().item(body).item(either).build();
        content.schema = Some(RefOr::T(Schema::AllOf(combined)));
    }
}

/// This document.
///
/// Needs scope `read`.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3 document", content_type = "application/json"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn openapi_json(caller: Caller) -> Result<Json<utoipa::openapi::OpenApi>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(ApiDoc::openapi()))
}
