//! Showing a [`Config`]: `rainforest config` and `Debug`.
//!
//! Owns the one list of displayed values, so both views redact the same way:
//! every URL goes through [`redact_url`] and every secret prints as
//! `[redacted]`. It must not read anything beyond the `Config` itself.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use url::Url;

use super::{Config, redact_url};
use crate::secret::Secret;

impl Config {
    /// Every key and its value as text, secrets and URL credentials
    /// redacted, in the order of [`super::keys::KEYS`].
    fn shown(&self) -> Vec<(&'static str, String)> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let url = |u: Option<&Url>| u.map(|u| redact_url(u.as_str())).unwrap_or_default();
        let path = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
        let secret = |s: Option<&Secret>| s.map(Secret::to_string).unwrap_or_default();
        let opt = |v: Option<&String>| v.cloned().unwrap_or_default();
        vec![
            ("redis_url", url(self.redis_url.as_ref())),
            ("users_file", path(self.users_file.as_deref())),
            ("data_dir", self.data_dir.display().to_string()),
            ("log_dir", path(self.log_dir.as_deref())),
            ("log_max_files", self.log_max_files.to_string()),
            ("relay_url", url(Some(&self.relay_url))),
            ("relay_insecure_tls", self.relay_insecure_tls.to_string()),
            (
                "local_networks",
                self.local_networks
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("poll_interval", d(self.poll_interval)),
            ("summation_interval", d(self.summation_interval)),
            ("price_interval", d(self.price_interval)),
            ("backfill_after", d(self.backfill_after)),
            ("backfill_frequency", d(self.backfill_frequency)),
            ("request_timeout", d(self.request_timeout)),
            ("user_reload_interval", d(self.user_reload_interval)),
            ("max_backoff", d(self.max_backoff)),
            ("auth_backoff", d(self.auth_backoff)),
            ("redis_namespace", self.redis_namespace.clone()),
            ("credentials_key", secret(self.credentials_key.as_ref())),
            (
                "credentials_key_file",
                path(self.credentials_key_file.as_deref()),
            ),
            (
                "credentials_old_key",
                secret(self.credentials_old_key.as_ref()),
            ),
            (
                "credentials_old_key_file",
                path(self.credentials_old_key_file.as_deref()),
            ),
            (
                "allow_plaintext_credentials",
                self.allow_plaintext_credentials.to_string(),
            ),
            ("max_start_lag", d(self.max_start_lag)),
            ("member_heartbeat", d(self.member_heartbeat)),
            ("member_ttl", d(self.member_ttl)),
            (
                "shard",
                self.shard.map(|s| s.to_string()).unwrap_or_default(),
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests.to_string(),
            ),
            (
                "max_requests_per_second",
                self.max_requests_per_second.to_string(),
            ),
            ("file_prefix", self.file_prefix.clone()),
            ("open_files", self.open_files.to_string()),
            ("s3_bucket", opt(self.s3_bucket.as_ref())),
            ("s3_prefix", self.s3_prefix.clone()),
            ("s3_endpoint", url(self.s3_endpoint.as_ref())),
            ("s3_region", opt(self.s3_region.as_ref())),
            ("archive", self.archive.to_string()),
            ("rotate_grace", d(self.rotate_grace)),
            ("rotate_every", d(self.rotate_every)),
            ("upload_concurrency", self.upload_concurrency.to_string()),
            ("listen", self.listen.to_string()),
            (
                "metrics_listen",
                self.metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
            ("api_token", secret(self.api_token.as_ref())),
            ("api_token_file", path(self.api_token_file.as_deref())),
            ("request_body_limit", self.request_body_limit.to_string()),
            ("api_timeout", d(self.api_timeout)),
            ("max_connections", self.max_connections.to_string()),
            ("header_read_timeout", d(self.header_read_timeout)),
            ("idle_timeout", d(self.idle_timeout)),
            (
                "tls_cert",
                path(self.tls.as_ref().map(|t| t.cert.as_path())),
            ),
            ("tls_key", path(self.tls.as_ref().map(|t| t.key.as_path()))),
        ]
    }

    /// The effective configuration as TOML-like text, secrets redacted, each
    /// line annotated with its origin.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.shown() {
            out.push_str(&format!("{k} = {v:?}  # {}\n", self.origin(k)));
        }
        out
    }
}

impl fmt::Debug for Config {
    /// The same redacted values as [`Config::render`]: a `?config` in a log
    /// line or a panic message must not carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.shown() {
            map.entry(&k, &v);
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Layers, keys};

    #[test]
    fn every_key_is_shown_once_in_table_order() {
        let c = Layers::defaults().build().unwrap();
        let names: Vec<&str> = c.shown().into_iter().map(|(k, _)| k).collect();
        let table: Vec<&str> = keys::KEYS.iter().map(|k| k.name).collect();
        assert_eq!(names, table);
    }

    #[test]
    fn debug_and_render_hide_url_credentials_and_secrets() {
        let c = Layers::defaults()
            .env([
                (
                    "RAINFOREST_REDIS_URL".to_string(),
                    "redis://:hunter2@h/0".to_string(),
                ),
                (
                    "RAINFOREST_S3_ENDPOINT".to_string(),
                    "http://ak:sk-secret@minio:9000".to_string(),
                ),
                ("RAINFOREST_CREDENTIALS_KEY".to_string(), "ab".repeat(32)),
            ])
            .build()
            .unwrap();
        for text in [format!("{c:?}"), c.render()] {
            assert!(
                !text.contains("hunter2") && !text.contains("sk-secret") && !text.contains("abab"),
                "{text}"
            );
            assert!(text.contains("[redacted]@h"), "{text}");
        }
    }
}
