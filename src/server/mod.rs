//! The HTTP server: users, on-demand reads, health, and the API description.
//!
//! Owns the routes, their authentication and scopes, request limits, and
//! the error format. It reads and writes users only through the
//! [`Registry`], and reads meters only through [`Poller::poll`], so an
//! on-demand reading takes the same path into the spool as a scheduled one.
//! It does not schedule polls, rotate files or manage tokens (see
//! [`crate::tokens`] and `rainforest tokens`).
//!
//! [`app`] builds the [`Router`] apart from any socket, and [`run`] serves
//! it on a listener the caller bound, until a [`CancellationToken`] fires:
//! tests bind `127.0.0.1:0`, and an all-in-one runner can embed the server
//! next to the pinger, sharing one registry and one spool.
//!
//! # Routes and scopes
//!
//! | Route | Scope |
//! |-------|-------|
//! | `GET /api/users`, `GET /api/users/{cloud_id}`, `GET /api/openapi.json` | read |
//! | `GET /api/status`, `GET /api/stats` (what the status page shows) | read |
//! | `GET /api/fleet` (the pingers sharing the meters, and each meter's owner) | read |
//! | `GET /api/coverage` (share of a day's slots read, per meter) | read |
//! | `POST /api/users/{cloud_id}`, `DELETE /api/users/{cloud_id}` | write |
//! | `POST /api/event/{cloud_id}` (calls out with stored credentials, writes the spool; GET is 405) | write |
//! | `GET /healthz`, `GET /readyz` | none |
//! | `GET /status` (a page without data; its script needs a read token) | none |
//! | `GET /metrics` (Prometheus; counts only, no cloud id or secret) | read |
//!
//! Scopes include the lower ones; `admin` can do everything and is what the
//! bootstrap token has.
//!
//! Layout: [`error`] is the problem+json format, `auth` the token
//! middleware, `users`, `event` and `health` the handlers, [`status`] the
//! status page, `/api/status`, `/api/stats` and `/metrics`, [`fleet`] the
//! pingers sharing the meters (`/api/fleet`), [`openapi`] the
//! generated description, [`listen`] the accept loop (connection cap,
//! header-read and idle timeouts, HTTPS).

mod auth;
pub mod coverage;
pub mod error;
mod event;
pub mod fleet;
mod health;
pub mod listen;
pub mod openapi;
pub mod status;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::middleware;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use self::auth::AuthMode;
pub use self::error::{ApiError, Problem};
pub use self::event::EventLimiter;
pub use self::listen::{Limits, TlsError};
pub use self::users::{LocalBody, PutResponse, UserBody, UserPage, UserView, user_from_body};

use crate::config::Config;
use crate::poll::Poller;
use crate::registry::{Registry, RegistryError};
use crate::stats::Hub;
use crate::tokens::{self, Authenticator, MIN_BOOTSTRAP_LEN, TokenError, TokenStore};

/// How long [`run`] lets open requests finish after shutdown is requested.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Authentication is on and nobody could ever authenticate.
    #[error(
        "no API token is configured, and the server does not start without one (anyone who \
         can reach it could read and change every user). Either:\n  \
         - create a token in Redis (shown once): rainforest tokens create --name admin --scope admin\n  \
         - or set a bootstrap admin token: RAINFOREST_API_TOKEN=$(openssl rand -hex 32), or \
         api_token_file = \"/run/secrets/rainforest-api-token\" in the configuration\n  \
         - or, for a local experiment only: rainforest server --no-auth"
    )]
    NoToken,
    /// A bootstrap token short enough to guess.
    #[error(
        "the bootstrap token (api_token / api_token_file) has {len} characters; use at least \
         {MIN_BOOTSTRAP_LEN}, e.g. RAINFOREST_API_TOKEN=$(openssl rand -hex 32)"
    )]
    WeakBootstrapToken {
        /// Its length.
        len: usize,
    },
    /// The token settings or store failed.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// The registry is set up inconsistently with the configuration.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// `tls_cert` / `tls_key` cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Everything the handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    /// Apart from `inner` so [`AppState::with_hub`] can swap it after
    /// construction; a `Hub` is itself a cheap shared handle.
    hub: Hub,
}

struct Inner {
    registry: Registry,
    poller: Poller,
    auth: Option<Authenticator>,
    limiter: EventLimiter,
    body_limit: usize,
    timeout: Duration,
    overview: status::OverviewCache,
    coverage: Arc<coverage::CoverageService>,
    limits: Limits,
    /// Set when the server speaks HTTPS itself.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("registry", &self.inner.registry.describe())
            .field("auth", &self.inner.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The server's state from the configuration, over a registry and a
    /// poller the caller owns (and may share with a pinger).
    ///
    /// With a Redis registry, tokens live in the same Redis and share the
    /// registry's connection; users are reached only through the registry.
    /// With [`AuthMode::Required`] it refuses ([`ServerError::NoToken`])
    /// when no bootstrap token is configured and Redis holds no usable
    /// token; with [`AuthMode::Disabled`] it warns.
    pub async fn from_config(
        config: &Config,
        registry: Registry,
        poller: Poller,
        mode: AuthMode,
    ) -> Result<AppState, ServerError> {
        // Checked before anything else, so a bad certificate fails the
        // start instead of the first client's handshake.
        let tls = match &config.tls {
            Some(files) => Some(listen::tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let store = match &registry {
            Registry::Redis(r) => Some(TokenStore::new(r.db().clone(), r.keys().clone())),
            Registry::File(_) => None,
        };
        let auth = match mode {
            AuthMode::Disabled => {
                tracing::warn!(
                    "Authentication is DISABLED (--no-auth): anyone who can reach this port can \
                     read and change users. Never use this on a network."
                );
                None
            }
            AuthMode::Required => {
                let bootstrap = tokens::bootstrap_token(config)?;
                if let Some(t) = &bootstrap
                    && t.expose().chars().count() < MIN_BOOTSTRAP_LEN
                {
                    return Err(ServerError::WeakBootstrapToken {
                        len: t.expose().chars().count(),
                    });
                }
                let usable_in_store = match &store {
                    Some(s) if bootstrap.is_none() => s.has_usable_token().await?,
                    _ => false,
                };
                if bootstrap.is_none() && !usable_in_store {
                    return Err(ServerError::NoToken);
                }
                Some(Authenticator::new(bootstrap.as_ref(), store))
            }
        };
        Ok(AppState {
            inner: Arc::new(Inner {
                registry,
                poller,
                auth,
                limiter: EventLimiter::new(),
                body_limit: config.request_body_limit,
                timeout: config.api_timeout,
                overview: status::OverviewCache::default(),
                coverage: coverage::CoverageService::start(config).await,
                limits: Limits::from_config(config),
                tls,
            }),
            hub: Hub::default(),
        })
    }

    /// This state reporting the live counters of `hub`: the one the pinger
    /// and rotator of this process update, so `/api/status`, `/api/stats`
    /// and `/metrics` show them. Without it those show an empty hub (the
    /// server alone, e.g. when the services run in other containers).
    pub fn with_hub(mut self, hub: Hub) -> AppState {
        self.hub = hub;
        self
    }

    /// The live counters this server reports.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The user registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The poller on-demand reads go through.
    pub fn poller(&self) -> &Poller {
        &self.inner.poller
    }

    /// The token checker; `None` under `--no-auth`.
    pub fn auth(&self) -> Option<&Authenticator> {
        self.inner.auth.as_ref()
    }

    fn limiter(&self) -> &EventLimiter {
        &self.inner.limiter
    }

    fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    pub(crate) fn overview(&self) -> &status::OverviewCache {
        &self.inner.overview
    }

    fn coverage(&self) -> &coverage::CoverageService {
        &self.inner.coverage
    }
}

/// The whole application as a [`Router`], with its limits and middleware.
pub fn app(state: AppState) -> Router {
    let limit = state.body_limit();
    let timeout = state.inner.timeout;
    let api = Router::new()
        .route("/users", get(users::list_users))
        .route(
            "/users/{cloud_id}",
            get(users::get_user)
                .post(users::put_user)
                .delete(users::delete_user),
        )
        // A slash inside the id (`00/ce69`, `../x`) is a bad id, not an
        // unknown route.
        .route("/users/{cloud_id}/", any(users::id_with_slash))
        .route("/users/{cloud_id}/{*rest}", any(users::id_with_slash))
        .route(
            "/event/{cloud_id}",
            post(event::read_meter).fallback(event::use_post),
        )
        .route("/event/{cloud_id}/", any(users::id_with_slash))
        .route("/event/{cloud_id}/{*rest}", any(users::id_with_slash))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/status", get(status::api_status))
        .route("/stats", get(status::api_stats))
        .route("/fleet", get(fleet::api_fleet))
        .route("/coverage", get(coverage::api_coverage))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // After the routes and fallback, so unknown /api/ paths need a
        // token too and reveal nothing.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/status", get(status::status_page))
        // Outside /api/ where Prometheus expects it, behind the same token
        // check (scope `read`, checked by the handler).
        .route(
            "/metrics",
            get(status::metrics).route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::require_token,
            )),
        )
        .nest("/api", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(middleware::from_fn(auth::reject_credentials_in_query))
        .layer(middleware::from_fn(error::problem_for_bare_errors))
        .layer(
            TraceLayer::new_for_http()
                // The path only: a query string may hold what a client
                // should not have sent (`?pw=`), and logs outlive requests.
                .make_span_with(|req: &Request<_>| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                })
                // Errors are logged where they are understood (ApiError).
                .on_failure(()),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound {
        detail: "no such route; see GET /api/openapi.json".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Serves [`app`] on `listener` until `shutdown` is cancelled, within the
/// connection [`Limits`] and over TLS when configured, then lets open
/// requests finish for up to [`DRAIN_GRACE`].
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let limits = state.inner.limits;
    let tls = state.inner.tls.clone();
    tracing::info!(
        %addr,
        https = tls.is_some(),
        auth = state.auth().is_some(),
        registry = %state.registry().describe(),
        max_connections = limits.max_connections,
        "Server listening."
    );
    listen::serve(listener, app(state), limits, tls, shutdown, DRAIN_GRACE).await;
    tracing::info!("Server stopped.");
    Ok(())
}
