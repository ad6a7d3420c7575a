//! The S3 archive: AWS S3 or an S3-compatible store through `aws-sdk-s3`.
//!
//! Credentials come from `aws-config`'s default chain (environment, shared
//! profile, container and EC2 instance roles), so an EC2 host needs no keys
//! configured; tests and embedders may pass [`StaticCredentials`] instead.
//! With an endpoint (`s3_endpoint`) requests use path-style addressing, which
//! MinIO, Garage and Ceph expect.

use std::sync::RwLock;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, ProvideCredentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, SharedCredentialsProvider,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use md5::{Digest, Md5};

use super::{ArchiveError, Condition, ObjectKey, Stored};
use crate::secret::Secret;

/// Attempts per request, the first included. The SDK spaces them with
/// exponential backoff and full jitter between the two bounds below; after
/// the last one the rotator's own, slower backoff takes over.
const MAX_ATTEMPTS: u32 = 4;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A store that does not accept a connection in this long is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt at one request; an hour file's object is well under a
/// megabyte, so this is generous even on a slow uplink.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long start-up waits for the credentials chain (IMDS may be slow).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(15);

/// An access key pair given directly instead of the default chain.
#[derive(Debug, Clone)]
pub struct StaticCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
}

/// What the S3 archive needs to know, taken from the configuration.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The bucket (`s3_bucket`).
    pub bucket: String,
    /// An S3-compatible endpoint (`s3_endpoint`); `None` means AWS.
    pub endpoint: Option<String>,
    /// Region (`s3_region`); `None` leaves it to the AWS environment.
    pub region: Option<String>,
    /// Fixed credentials; `None` uses the default chain.
    pub credentials: Option<StaticCredentials>,
}

/// An S3 bucket as an archive.
pub struct S3Archive {
    settings: S3Settings,
    /// A provider given by the embedder instead of the default chain (see
    /// [`S3Archive::connect_with_provider`]); asked again on every refresh.
    provider: Option<SharedCredentialsProvider>,
    /// Replaced whole by [`S3Archive::refresh_credentials`]; never held
    /// across an await (requests clone the cheap handles first).
    conn: RwLock<Conn>,
}

/// A client and the credentials chain it signs with.
#[derive(Clone)]
struct Conn {
    client: Client,
    credentials: Option<SharedCredentialsProvider>,
}

impl S3Archive {
    /// Loads the AWS configuration and builds the client; no request yet.
    pub async fn connect(settings: S3Settings) -> Result<S3Archive, ArchiveError> {
        if settings.bucket.trim().is_empty() {
            return Err(ArchiveError::NotConfigured);
        }
        let conn = connect(&settings, None).await;
        Ok(S3Archive {
            settings,
            provider: None,
            conn: RwLock::new(conn),
        })
    }

    /// Like [`connect`](Self::connect), with credentials from `provider`
    /// (`settings.credentials` is ignored). [`refresh_credentials`](Self::refresh_credentials)
    /// asks it again, which is how an embedder with its own rotation (and
    /// the expired-token test) gets fresh keys used.
    pub async fn connect_with_provider(
        settings: S3Settings,
        provider: SharedCredentialsProvider,
    ) -> Result<S3Archive, ArchiveError> {
        if settings.bucket.trim().is_empty() {
            return Err(ArchiveError::NotConfigured);
        }
        let conn = connect(&settings, Some(&provider)).await;
        Ok(S3Archive {
            settings,
            provider: Some(provider),
            conn: RwLock::new(conn),
        })
    }

    fn conn(&self) -> Conn {
        match self.conn.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn client(&self) -> Client {
        self.conn().client
    }

    fn endpoint(&self) -> String {
        self.settings
            .endpoint
            .as_deref()
            .map_or_else(|| "AWS".into(), crate::config::redact_url)
    }

    /// `s3://bucket (endpoint …, region …)`.
    pub fn describe(&self) -> String {
        format!(
            "s3://{} (endpoint {}, region {})",
            self.settings.bucket,
            self.endpoint(),
            self.settings
                .region
                .as_deref()
                .unwrap_or("from the AWS environment")
        )
    }

    fn target(&self) -> String {
        format!("s3://{} at {}", self.settings.bucket, self.endpoint())
    }

    /// `s3://bucket/key`.
    pub fn location(&self, key: &ObjectKey) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    /// The name of the credentials provider that answered, or why none did.
    pub async fn credentials_source(&self) -> String {
        let Some(provider) = self.conn().credentials else {
            return "none configured".into();
        };
        match tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials()).await {
            Ok(Ok(creds)) => provider_name(&creds),
            Ok(Err(e)) => format!(
                "none found ({}); uploads will fail until credentials are available",
                crate::error_text::chain(&e)
            ),
            Err(_) => format!(
                "none found within {CREDENTIALS_TIMEOUT:?} (is the instance metadata service reachable?)"
            ),
        }
    }

    /// `HeadBucket` (which needs `s3:ListBucket`), then the conditional-write
    /// probe.
    pub(super) async fn head_bucket(&self) -> Result<(), ArchiveError> {
        let result = self
            .client()
            .head_bucket()
            .bucket(&self.settings.bucket)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(ArchiveError::NoSuchBucket {
                bucket: self.settings.bucket.clone(),
                endpoint: self.endpoint(),
            }),
            Err(e) => Err(self.classify(e, None)),
        }
    }

    /// Reads an object; `None` when the key does not exist.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<Stored>, ArchiveError> {
        let result = self
            .client()
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key.as_str())
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) if e.code() == Some("NoSuchKey") => return Ok(None),
            // A HEAD-like 404 without a body carries no code.
            Err(e) if status_of(&e) == Some(404) && e.code() != Some("NoSuchBucket") => {
                return Ok(None);
            }
            Err(e) => return Err(self.classify(e, Some(key))),
        };
        let etag = out.e_tag().unwrap_or_default().to_string();
        if etag.is_empty() {
            return Err(ArchiveError::Rejected {
                target: self.target(),
                key: key.clone(),
                detail: "the store returned no ETag, so the object cannot be replaced safely"
                    .into(),
            });
        }
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ArchiveError::Unavailable {
                target: self.target(),
                detail: format!("reading {key}: {}", crate::error_text::chain(&e)),
            })?
            .into_bytes()
            .to_vec();
        Ok(Some(Stored { body, etag }))
    }

    /// The "directories" right under `under` (`ListObjectsV2` with a `/`
    /// delimiter, every page), as names without `under` or the slash.
    pub(super) async fn list_dirs(&self, under: &str) -> Result<Vec<String>, ArchiveError> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client()
                .list_objects_v2()
                .bucket(&self.settings.bucket)
                .prefix(under)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.classify(e, None))?;
            for p in out.common_prefixes() {
                if let Some(name) = p
                    .prefix()
                    .and_then(|p| p.strip_prefix(under))
                    .map(|p| p.trim_end_matches('/'))
                {
                    names.push(name.to_string());
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
    }

    /// A conditional `PutObject` with `Content-MD5`, so S3 rejects a body
    /// damaged in transit instead of storing it.
    pub async fn put(
        &self,
        key: &ObjectKey,
        body: Vec<u8>,
        condition: Condition,
    ) -> Result<(), ArchiveError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        let mut request = self
            .client()
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key.as_str())
            // No Content-Encoding: clients would then unpack on download and
            // researchers' `gzip -d` would see plain text.
            .content_type("application/gzip")
            .content_md5(md5)
            .body(ByteStream::from(body));
        request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = status_of(&e);
                // 412: the precondition failed. 409: S3's answer when two
                // conditional writes to one key overlap. 404: If-Match on a
                // key that vanished (moto; S3 says 412). All mean "re-read".
                if status == Some(412)
                    || (status == Some(409) && e.code() == Some("ConditionalRequestConflict"))
                    || (status == Some(404) && e.code() != Some("NoSuchBucket"))
                {
                    Err(ArchiveError::Conflict { key: key.clone() })
                } else {
                    Err(self.classify(e, Some(key)))
                }
            }
        }
    }

    /// Rebuilds the client, so the next request loads credentials from the
    /// chain again instead of using the cached, expired ones.
    pub async fn refresh_credentials(&self) {
        let fresh = connect(&self.settings, self.provider.as_ref()).await;
        match self.conn.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// Turns an SDK error into what the rotator acts on.
    fn classify<E>(&self, err: SdkError<E>, key: Option<&ObjectKey>) -> ArchiveError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = status_of(&err);
        let code = err.code().unwrap_or("").to_string();
        let detail = match (&err, err.message()) {
            (SdkError::ServiceError(_), Some(m)) => {
                format!("HTTP {} {code}: {m}", status.unwrap_or(0))
            }
            (SdkError::ServiceError(_), None) => format!("HTTP {} {code}", status.unwrap_or(0)),
            _ => crate::error_text::chain(&err),
        };
        let target = self.target();
        if !matches!(err, SdkError::ServiceError(_)) {
            // No answer from the store: connection refused, DNS, timeouts,
            // a truncated response. Also reached when no credentials could
            // be loaded, which the message says.
            if detail.contains("credentials") {
                return ArchiveError::Denied { target, detail };
            }
            return ArchiveError::Unavailable { target, detail };
        }
        match (status.unwrap_or(0), code.as_str()) {
            (_, "ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired") => {
                ArchiveError::ExpiredCredentials { target, detail }
            }
            (_, "NoSuchBucket") => ArchiveError::NoSuchBucket {
                bucket: self.settings.bucket.clone(),
                endpoint: self.endpoint(),
            },
            (301, _) | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") => {
                ArchiveError::Misconfigured(format!(
                    "{target} answered {detail}; the bucket is probably in another region: check s3_region"
                ))
            }
            (401 | 403, _) => ArchiveError::Denied { target, detail },
            (s, c) if s >= 500 || s == 429 || c == "SlowDown" || c == "RequestTimeout" => {
                ArchiveError::Unavailable { target, detail }
            }
            _ => match key {
                Some(key) => ArchiveError::Rejected {
                    target,
                    key: key.clone(),
                    detail,
                },
                None => ArchiveError::Misconfigured(format!("{target} answered {detail}")),
            },
        }
    }
}

fn status_of<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The provider's name from `Credentials`' `Debug` output, the only place
/// the SDK exposes it (the secret key is redacted there). Start-up logs it
/// so an operator sees whether the environment, a profile or the instance
/// role supplied the keys.
fn provider_name(creds: &Credentials) -> String {
    let debug = format!("{creds:?}");
    debug
        .split_once("provider_name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| "unknown provider".into())
}

/// A client with a fresh credentials cache: `provider`, else the static
/// keys of `settings`, else the default chain.
async fn connect(settings: &S3Settings, provider: Option<&SharedCredentialsProvider>) -> Conn {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF)
                .with_max_backoff(MAX_BACKOFF),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(p) = provider {
        loader = loader.credentials_provider(p.clone());
    } else if let Some(c) = &settings.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().to_string(),
            None,
            None,
            "rainforest-static",
        ));
    }
    let sdk = loader.load().await;
    let mut s3 = aws_sdk_s3::config::Builder::from(&sdk)
        // We send Content-MD5 ourselves: every S3-compatible store verifies
        // it, while the SDK's newer default (a CRC32 header or trailer) is
        // not understood by all of them.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenSupported);
    if let Some(endpoint) = &settings.endpoint {
        s3 = s3
            .endpoint_url(endpoint.trim_end_matches('/'))
            .force_path_style(true);
    }
    Conn {
        client: Client::from_conf(s3.build()),
        credentials: sdk.credentials_provider(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_name_is_read_from_the_credentials() {
        let c = Credentials::new("AKIA", "secret", None, None, "Environment");
        assert_eq!(provider_name(&c), "Environment");
    }
}
