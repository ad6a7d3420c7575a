//! Rotator fixtures shared by the rotator tests: quick options for a spool
//! directory, an archive at any S3 endpoint (moto, Garage, or the
//! fault-injecting proxy in front of either), and the spool files left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rainforest::archive::{Archive, S3Archive, S3Settings, StaticCredentials};
use rainforest::backoff::Backoff;
use rainforest::cloud_id::CloudId;
use rainforest::rotator::{PassReport, Rotator, RotatorOptions};
use rainforest::secret::Secret;
use tokio_util::sync::CancellationToken;

use super::s3_proxy::S3Proxy;
use super::spool::{KEY_PREFIX, PREFIX, canonical, hours_ago, key, line, write_spool};

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

/// [`options`] shipping one file at a time, so two racing rotators both
/// start with the oldest key and meet on it.
pub fn one_at_a_time(data_dir: &Path) -> RotatorOptions {
    RotatorOptions {
        concurrency: 1,
        ..options(data_dir)
    }
}

/// Two hosts' spool files for the same 40 (meter, hour) keys: even seconds
/// on one, odd on the other, seconds 100..110 on both (a hand-over).
/// Returns every key with the union of lines it must end up holding.
pub fn two_hosts_same_keys(d1: &Path, d2: &Path) -> Vec<(String, Vec<String>)> {
    let mut expected = Vec::new();
    for n in 0..40u32 {
        let m = CloudId::from_index(n % 5);
        let h = hours_ago(2 + i64::from(n / 5));
        let one: Vec<String> = (0..60)
            .filter(|s| s % 2 == 0)
            .chain(100..110)
            .map(|s| line(m, h, s))
            .collect();
        let two: Vec<String> = (0..60)
            .filter(|s| s % 2 == 1)
            .chain(100..110)
            .map(|s| line(m, h, s))
            .collect();
        write_spool(d1, m, h, &one, "");
        write_spool(d2, m, h, &two, "");
        let mut all = one;
        all.extend(two);
        expected.push((key(m, h), canonical(&all)));
    }
    expected
}

/// One pass of each rotator at the same time, with `proxy` (armed by the
/// caller to hold the first two PUTs) letting both held uploads go at once
/// when both have arrived (waiting up to `limit`): the two rotators have
/// then both read the key and both write it, the race the tests force.
pub async fn race_two_passes(
    r1: &Rotator,
    r2: &Rotator,
    proxy: &S3Proxy,
    limit: Duration,
) -> (PassReport, PassReport) {
    let none = CancellationToken::new();
    let race = async {
        proxy.wait_held(2, limit).await;
        proxy.release(2);
    };
    let (a, b, ()) = tokio::join!(r1.run_once(&none), r2.run_once(&none), race);
    (a, b)
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
