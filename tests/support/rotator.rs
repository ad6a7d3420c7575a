//! Rotator fixtures shared by the rotator tests: quick options for a spool
//! directory, an archive at any S3 endpoint (moto, Garage, or the
//! fault-injecting proxy in front of either), and the spool files left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rainforest::archive::{Archive, S3Archive, S3Settings, StaticCredentials};
use rainforest::backoff::Backoff;
use rainforest::rotator::RotatorOptions;
use rainforest::secret::Secret;

use super::spool::{KEY_PREFIX, PREFIX};

/// Options for tests: the default prefixes, a 1 ms grace (files written
/// for past hours are completed at once), and backoffs and pauses of a few
/// hundred milliseconds so retries happen within a test.
pub fn options(data_dir: &Path) -> RotatorOptions {
    let quick = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_millis(300),
    };
    RotatorOptions {
        data_dir: data_dir.to_path_buf(),
        file_prefix: PREFIX.into(),
        key_prefix: KEY_PREFIX.into(),
        grace: Duration::from_millis(1),
        every: Duration::from_millis(100),
        concurrency: 4,
        file_backoff: quick,
        outage_backoff: quick,
        operator_pause: Duration::from_millis(300),
        shutdown_grace: Duration::from_secs(5),
    }
}

/// Where an S3 archive lives and the keys it signs with.
pub struct Endpoint {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// The bucket.
    pub bucket: String,
    /// The region to sign for.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
}

impl Endpoint {
    /// The settings of an archive at this endpoint, without credentials.
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            bucket: self.bucket.clone(),
            endpoint: Some(self.url.clone()),
            region: Some(self.region.clone()),
            credentials: None,
        }
    }

    /// The same store reached through another URL (a proxy in front).
    pub fn via(&self, url: &str) -> Endpoint {
        Endpoint {
            url: url.to_string(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }

    /// An archive with its own client, as a second host would have.
    pub async fn archive(&self) -> Archive {
        let settings = S3Settings {
            credentials: Some(StaticCredentials {
                access_key_id: self.access_key.clone(),
                secret_access_key: Secret::new(self.secret_key.clone()),
            }),
            ..self.settings()
        };
        match S3Archive::connect(settings).await {
            Ok(a) => Archive::S3(a),
            Err(e) => panic!("cannot build the archive at {}: {e}", self.url),
        }
    }
}

/// Every spool file left under `data_dir`, claimed ones included
/// (quarantine and the writers' heartbeat files excluded), sorted.
pub fn unshipped_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(data_dir) else {
        return out;
    };
    for d in rd.flatten() {
        let skip = ["quarantine", rainforest::spool::heartbeat::WRITERS_DIR];
        if skip.iter().any(|s| d.file_name() == *s) || !d.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

/// Whether the spool file at `path` is still in the spool: under its own
/// name or claimed by a rotator (`<name>.shipping-<tag>`), whose upload
/// failed or has not finished.
pub fn still_in_spool(path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let claim = format!("{}.shipping-", name.to_string_lossy());
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&claim))
}
