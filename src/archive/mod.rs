//! The archive: where completed hours live for good (S3, an S3-compatible
//! store, or a local directory with the same key layout).
//!
//! Owns reading and writing whole objects by [`ObjectKey`], conditional
//! writes, credentials and endpoints, and turning store errors into
//! [`ArchiveError`] variants a caller can act on. It does not know about
//! spool files, lines, gzip or merging (that is the rotator's business), and
//! it never deletes an object.
//!
//! Every write is conditional, which is what makes the rotator's
//! read-merge-write safe against a second rotator: a new object is created
//! with `If-None-Match: *` ([`Condition::Absent`]) and an existing one is
//! replaced with `If-Match: <etag>` ([`Condition::Matches`]); a lost race
//! surfaces as [`ArchiveError::Conflict`] and the caller re-reads and merges
//! again. AWS S3 and moto enforce both headers; some S3-compatible stores
//! (Garage 2.5) silently ignore them, which [`Archive::preflight`] detects
//! and reports, because on such a store two rotators writing the same key
//! can clobber each other.

mod dir;
pub mod key;
mod s3;

use std::path::PathBuf;

pub use dir::DirArchive;
pub use key::ObjectKey;
pub use s3::{S3Archive, S3Settings, StaticCredentials};

use crate::cloud_id::CloudId;
use crate::config::{ArchiveSetting, Config};

/// A stored object: its bytes and the version tag a conditional replace
/// must name.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object's content.
    pub body: Vec<u8>,
    /// S3's ETag (quotes included), or the MD5 of the content in a directory
    /// archive; passed back in [`Condition::Matches`].
    pub etag: String,
}

/// The precondition of a write; there is deliberately no unconditional
/// write, so nothing can overwrite lines it has not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Create only: fail with [`ArchiveError::Conflict`] if the key exists.
    Absent,
    /// Replace only the version read earlier: fail with
    /// [`ArchiveError::Conflict`] if the object changed or vanished since.
    Matches(String),
}

/// Why an archive operation failed, grouped by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// No archive is configured (the rotator cannot start).
    #[error(
        "no archive configured: set s3_bucket (and s3_region, s3_endpoint for S3-compatible stores) \
         or archive = \"dir:/path\""
    )]
    NotConfigured,
    /// The configuration names an archive that cannot be built.
    #[error("archive misconfigured: {0}")]
    Misconfigured(String),
    /// A conditional write lost a race: someone else wrote the key since we
    /// read it. Re-read, merge, write again.
    #[error("{key} changed while it was being merged (another rotator?); re-reading it")]
    Conflict {
        /// The contested key.
        key: ObjectKey,
    },
    /// The store did not answer, or failed, after the fast retries: network
    /// down, timeouts, 5xx, throttling. Wait and retry; nothing is wrong
    /// with the data.
    #[error("{target} is unavailable: {detail}; the files stay in the spool and are retried")]
    Unavailable {
        /// The store (`s3://bucket at endpoint` or the directory).
        target: String,
        /// What failed, from the SDK or the OS.
        detail: String,
    },
    /// The credentials expired (e.g. a rotated instance-role session). The
    /// caller refreshes them ([`Archive::refresh_credentials`]) and retries.
    #[error("credentials for {target} expired ({detail}); refreshing them and retrying")]
    ExpiredCredentials {
        /// The store.
        target: String,
        /// The store's error code and message.
        detail: String,
    },
    /// The store refused the credentials or the permission. An operator
    /// must fix this; retried at a slow pace meanwhile.
    #[error(
        "{target} refused access ({detail}); check the AWS credentials (environment, profile, \
         instance role) and that they allow s3:GetObject, s3:PutObject and s3:ListBucket on this bucket"
    )]
    Denied {
        /// The store.
        target: String,
        /// The store's error code and message.
        detail: String,
    },
    /// The bucket does not exist (or is in another region).
    #[error(
        "bucket {bucket} does not exist at {endpoint}; check s3_bucket, s3_region and s3_endpoint"
    )]
    NoSuchBucket {
        /// The configured bucket.
        bucket: String,
        /// The endpoint asked (`AWS` when none is configured).
        endpoint: String,
    },
    /// The store rejected a request about one key for a reason of its own
    /// (e.g. `BadDigest` when the upload was damaged in transit). The file
    /// waits and is retried; other keys go on.
    #[error("{target} rejected {key}: {detail}")]
    Rejected {
        /// The store.
        target: String,
        /// The key.
        key: ObjectKey,
        /// The store's error code and message.
        detail: String,
    },
    /// A local-directory archive failed on disk (full, permissions).
    #[error("archive directory: cannot {action} {}: {source}; check free space and permissions", path.display())]
    Io {
        /// What was being done (`read`, `write`, `lock`...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ArchiveError {
    /// Whether the failure concerns the whole store rather than one key: the
    /// rotator then stops starting uploads and waits, instead of trying every
    /// file of a backlog against a store that is down.
    pub fn is_store_wide(&self) -> bool {
        matches!(
            self,
            ArchiveError::NotConfigured
                | ArchiveError::Misconfigured(_)
                | ArchiveError::Unavailable { .. }
                | ArchiveError::ExpiredCredentials { .. }
                | ArchiveError::Denied { .. }
                | ArchiveError::NoSuchBucket { .. }
                | ArchiveError::Io { .. }
        )
    }

    /// Whether an operator must act (credentials, permissions, bucket),
    /// which the rotator logs at ERROR and retries only at a slow pace.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            ArchiveError::NotConfigured
                | ArchiveError::Misconfigured(_)
                | ArchiveError::Denied { .. }
                | ArchiveError::NoSuchBucket { .. }
        )
    }
}

/// Where objects live. An enum rather than a trait object: there are two
/// kinds, both known here, and the rotator needs nothing else.
pub enum Archive {
    /// S3 or an S3-compatible store.
    S3(S3Archive),
    /// A local directory with the bucket's key layout.
    Dir(DirArchive),
}

impl Archive {
    /// Builds the archive the configuration selects: `archive = "dir:/path"`,
    /// or S3 when `archive` is `s3` or empty and `s3_bucket` is set. Loads the
    /// AWS configuration (environment, profile, container and instance roles)
    /// but makes no request.
    pub async fn from_config(config: &Config) -> Result<Archive, ArchiveError> {
        match (&config.archive, &config.s3_bucket) {
            (ArchiveSetting::Dir(path), _) => Ok(Archive::Dir(DirArchive::new(path.clone()))),
            (ArchiveSetting::S3 | ArchiveSetting::Auto, Some(bucket)) => {
                let settings = S3Settings {
                    bucket: bucket.clone(),
                    endpoint: config.s3_endpoint.as_ref().map(|u| u.to_string()),
                    region: config.s3_region.clone(),
                    credentials: None,
                };
                Ok(Archive::S3(S3Archive::connect(settings).await?))
            }
            (ArchiveSetting::S3, None) => Err(ArchiveError::Misconfigured(
                "archive = \"s3\" needs s3_bucket (RAINFOREST_S3_BUCKET)".into(),
            )),
            (ArchiveSetting::Auto, None) => Err(ArchiveError::NotConfigured),
        }
    }

    /// The store for log lines: `s3://bucket (endpoint …, region …)` or
    /// `dir:/path`.
    pub fn describe(&self) -> String {
        match self {
            Archive::S3(s) => s.describe(),
            Archive::Dir(d) => d.describe(),
        }
    }

    /// Where `key` lives, as an operator would type it: `s3://bucket/key`
    /// or the file's path.
    pub fn location(&self, key: &ObjectKey) -> String {
        match self {
            Archive::S3(s) => s.location(key),
            Archive::Dir(d) => d.path_of(key).display().to_string(),
        }
    }

    /// Which credentials were found (the AWS provider's name, e.g.
    /// `EnvironmentVariable`, `ProfileFile`, `Ec2InstanceMetadata`), or why
    /// none were; logged at start-up. Asks the provider chain, which may
    /// contact the instance metadata service.
    pub async fn credentials_source(&self) -> String {
        match self {
            Archive::S3(s) => s.credentials_source().await,
            Archive::Dir(_) => "none needed (local directory)".into(),
        }
    }

    /// Checks the store is usable (bucket exists and credentials are
    /// accepted; for a directory, that it can be created), then writes the
    /// small `probe` object to find out whether the store enforces
    /// conditional writes. Returns that answer; `false` is logged as a
    /// warning by the caller, because then only one rotator may write to
    /// this prefix.
    pub async fn preflight(&self, probe: &ObjectKey) -> Result<bool, ArchiveError> {
        match self {
            Archive::S3(s) => s.head_bucket().await?,
            Archive::Dir(d) => d.prepare().await?,
        }
        let body = || b"written by the rainforest rotator to check conditional writes\n".to_vec();
        match self.put(probe, body(), Condition::Absent).await {
            Ok(()) | Err(ArchiveError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        // The probe exists now, so both of these must be refused.
        let refused = |r: Result<(), ArchiveError>| match r {
            Ok(()) => Ok(false),
            Err(ArchiveError::Conflict { .. }) => Ok(true),
            Err(e) => Err(e),
        };
        let none_match = refused(self.put(probe, body(), Condition::Absent).await)?;
        let if_match = refused(
            self.put(probe, body(), Condition::Matches("\"0\"".into()))
                .await,
        )?;
        Ok(none_match && if_match)
    }

    /// Reads an object; `None` when the key does not exist.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<Stored>, ArchiveError> {
        match self {
            Archive::S3(s) => s.get(key).await,
            Archive::Dir(d) => d.get(key).await,
        }
    }

    /// The meters that have a directory under `prefix` (read-back without a
    /// meter list: coverage and export over the whole archive). Names that
    /// are not cloud ids are ignored.
    pub async fn meters(&self, prefix: &str) -> Result<Vec<CloudId>, ArchiveError> {
        let root = ObjectKey::meters_root(prefix);
        let names = match self {
            Archive::S3(s) => s.list_dirs(&root).await?,
            Archive::Dir(d) => d.list_dirs(&root).await?,
        };
        let mut ids: Vec<CloudId> = names
            .iter()
            .filter_map(|n| CloudId::parse(n).ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Writes an object if `condition` holds. Returns only after the store
    /// has acknowledged it durably (S3's 200 after verifying Content-MD5;
    /// a directory's fsync and rename).
    pub async fn put(
        &self,
        key: &ObjectKey,
        body: Vec<u8>,
        condition: Condition,
    ) -> Result<(), ArchiveError> {
        match self {
            Archive::S3(s) => s.put(key, body, condition).await,
            Archive::Dir(d) => d.put(key, body, condition).await,
        }
    }

    /// Drops cached credentials and loads them afresh from the provider
    /// chain, after the store said they expired.
    pub async fn refresh_credentials(&self) {
        if let Archive::S3(s) = self {
            s.refresh_credentials().await;
        }
    }
}
