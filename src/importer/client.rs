//! The HTTP client the importer uses to send users to a running server.
//!
//! Owns one request per user (`POST /api/users/{cloud_id}` with a bearer
//! token) and the sorting of the server's answers into what the import
//! does next ([`Failure`]). It does not retry; the caller's loop does.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::{Failure, ImportError};
use crate::cloud_id::CloudId;
use crate::registry::{PutOutcome, User};
use crate::secret::Secret;
use crate::server::UserBody;

/// Timeout of one API request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A minimal client of the server's user API.
#[derive(Debug)]
pub struct ServerClient {
    http: reqwest::Client,
    base: Url,
    token: Secret,
}

impl ServerClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8000`),
    /// presenting `token`.
    pub fn new(base: Url, token: Secret) -> Result<ServerClient, ImportError> {
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ImportError::Setup(format!(
                "--server {base} must be an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| ImportError::Setup(format!("cannot set up the HTTP client: {e}")))?;
        Ok(ServerClient { http, base, token })
    }

    fn user_url(&self, id: CloudId) -> Result<Url, ImportError> {
        self.base
            .join(&format!("/api/users/{id}"))
            .map_err(|e| ImportError::Setup(format!("bad --server URL {}: {e}", self.base)))
    }

    /// One attempt to store `user`.
    pub(super) async fn put_once(&self, user: &User) -> Result<PutOutcome, Failure> {
        let url = self.user_url(user.cloud_id).map_err(Failure::Fatal)?;
        let response = self
            .http
            .post(url)
            .bearer_auth(self.token.expose())
            .json(&UserBody::from_user(user))
            .send()
            .await
            .map_err(|e| self.unavailable(format!("request failed: {e}")))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let detail = body
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("no explanation")
            .to_string();
        match status.as_u16() {
            200 | 201 => match body.get("outcome").and_then(Value::as_str) {
                Some("created") => Ok(PutOutcome::Created),
                Some("updated") => Ok(PutOutcome::Updated),
                Some("unchanged") => Ok(PutOutcome::Unchanged),
                _ => Err(Failure::Line(format!(
                    "the server answered {status} without an outcome; is {} a rainforest server?",
                    self.base
                ))),
            },
            s @ (401 | 403) => Err(Failure::Fatal(ImportError::Refused {
                server: self.base.to_string(),
                status: s,
                detail,
            })),
            429 | 502 | 503 | 504 => Err(self.unavailable(format!("HTTP {status}: {detail}"))),
            _ => Err(Failure::Line(format!(
                "rejected by the server ({status}): {detail}"
            ))),
        }
    }

    /// A transient failure: retried, and what stops the import if it lasts.
    fn unavailable(&self, reason: String) -> Failure {
        Failure::Retry(ImportError::ServerUnavailable {
            server: self.base.to_string(),
            reason,
        })
    }
}
