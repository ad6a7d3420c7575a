//! The checked, typed configuration, built once at start-up.
//!
//! Layers, lowest first: built-in defaults, a TOML file, `RAINFOREST_*`
//! environment variables, command-line flags. Every value remembers where it
//! came from so that a bad one is reported as "key X from Y". All problems
//! are collected before failing, so an operator fixes them in one go. Nothing
//! outside this module reads the environment for settings.

pub mod keys;
mod redact;
mod render;

pub use self::redact::redact_url;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use crate::secret::Secret;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A TOML file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

/// Everything wrong with the configuration, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    /// Each problem names the key and where its value came from.
    pub problems: Vec<String>,
}

/// The raw layers before typing: key -> (text, origin).
#[derive(Debug, Clone, Default)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Origin)>,
    problems: Vec<String>,
}

impl Layers {
    /// Starts from the built-in defaults.
    pub fn defaults() -> Self {
        let mut l = Layers::default();
        for k in keys::KEYS {
            l.values
                .insert(k.name, (k.default.to_string(), Origin::Default));
        }
        l
    }

    fn set(&mut self, name: &str, value: String, origin: Origin) {
        match keys::find(name) {
            Some(k) => {
                self.values.insert(k.name, (value, origin));
            }
            None => self.problems.push(format!(
                "unknown key `{name}` (from {origin}); `rainforest config` lists the valid keys"
            )),
        }
    }

    /// Overlays a TOML document read from `path`.
    pub fn file(mut self, path: &Path, text: &str) -> Self {
        let origin = Origin::File(path.to_path_buf());
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                self.problems
                    .push(format!("cannot parse {}: {e}", path.display()));
                return self;
            }
        };
        for (name, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    self.problems.push(format!(
                        "key `{name}` (from {origin}) must be a string, number or boolean, got {}",
                        other.type_str()
                    ));
                    continue;
                }
            };
            self.set(&name, text, origin.clone());
        }
        self
    }

    /// Overlays `RAINFOREST_*` variables from an environment snapshot.
    pub fn env<I: IntoIterator<Item = (String, String)>>(mut self, vars: I) -> Self {
        for (var, value) in vars {
            let Some(rest) = var.strip_prefix("RAINFOREST_") else {
                continue;
            };
            // Read by clap itself, not a configuration key.
            if rest == "CONFIG" {
                continue;
            }
            self.set(&rest.to_ascii_lowercase(), value, Origin::Env(var.clone()));
        }
        self
    }

    /// Overlays one command-line flag.
    pub fn flag(mut self, name: &str, value: impl Into<String>, flag: &str) -> Self {
        self.set(name, value.into(), Origin::Flag(flag.to_string()));
        self
    }

    /// Overlays `--set key=value` pairs.
    pub fn sets(mut self, pairs: &[String]) -> Self {
        for pair in pairs {
            match pair.split_once('=') {
                Some((k, v)) => {
                    self.set(k.trim(), v.to_string(), Origin::Flag(format!("--set {k}")))
                }
                None => self
                    .problems
                    .push(format!("--set {pair:?} must look like key=value")),
            }
        }
        self
    }

    /// Types and checks every value; all problems are reported together.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut problems = self.problems.clone();
        let mut p = Parser {
            layers: &self,
            problems: &mut problems,
        };
        let cfg = Config {
            redis_url: p.opt_url("redis_url", &["redis", "rediss", "redis+unix", "unix"]),
            users_file: p.opt_path("users_file"),
            data_dir: p.path("data_dir"),
            log_dir: p.opt_path("log_dir"),
            log_max_files: p.number("log_max_files"),
            relay_url: p.url("relay_url", &["http", "https"]),
            relay_insecure_tls: p.bool("relay_insecure_tls"),
            local_networks: p.networks("local_networks"),
            poll_interval: p.duration("poll_interval"),
            summation_interval: p.cadence("summation_interval"),
            price_interval: p.cadence("price_interval"),
            backfill_after: p.duration("backfill_after"),
            backfill_frequency: p.duration("backfill_frequency"),
            request_timeout: p.duration("request_timeout"),
            user_reload_interval: p.duration("user_reload_interval"),
            max_backoff: p.duration("max_backoff"),
            auth_backoff: p.duration("auth_backoff"),
            redis_namespace: p.file_prefix("redis_namespace"),
            credentials_key: p.opt_string("credentials_key").map(Secret::new),
            credentials_key_file: p.opt_path("credentials_key_file"),
            credentials_old_key: p.opt_string("credentials_old_key").map(Secret::new),
            credentials_old_key_file: p.opt_path("credentials_old_key_file"),
            allow_plaintext_credentials: p.bool("allow_plaintext_credentials"),
            max_start_lag: p.start_lag("max_start_lag", "poll_interval"),
            member_heartbeat: p.duration("member_heartbeat"),
            member_ttl: p.member_ttl("member_ttl", "member_heartbeat"),
            shard: p.shard("shard"),
            max_concurrent_requests: p.number("max_concurrent_requests"),
            max_requests_per_second: p.number("max_requests_per_second"),
            file_prefix: p.file_prefix("file_prefix"),
            open_files: p.number("open_files"),
            s3_bucket: p.opt_string("s3_bucket"),
            s3_prefix: p.string("s3_prefix"),
            s3_endpoint: p.opt_url("s3_endpoint", &["http", "https"]),
            s3_region: p.opt_string("s3_region"),
            archive: p.archive("archive"),
            rotate_grace: p.duration("rotate_grace"),
            rotate_every: p.duration("rotate_every"),
            upload_concurrency: p.number("upload_concurrency"),
            listen: p.socket("listen"),
            metrics_listen: p.opt_socket("metrics_listen"),
            api_token: p.opt_string("api_token").map(Secret::new),
            api_token_file: p.opt_path("api_token_file"),
            request_body_limit: p.number("request_body_limit"),
            api_timeout: p.duration("api_timeout"),
            max_connections: p.number("max_connections"),
            header_read_timeout: p.duration("header_read_timeout"),
            idle_timeout: p.duration("idle_timeout"),
            tls: p.tls("tls_cert", "tls_key"),
            origins: self
                .values
                .iter()
                .map(|(k, (_, o))| (*k, o.clone()))
                .collect(),
        };
        let grace_parsed = !p.problems.iter().any(|m| m.starts_with("`rotate_grace`"));
        if grace_parsed && cfg.rotate_grace < crate::spool::MIN_ROTATE_GRACE {
            let msg = crate::spool::grace_too_short(cfg.rotate_grace);
            p.fail::<()>("rotate_grace", msg);
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError { problems })
        }
    }
}

struct Parser<'a> {
    layers: &'a Layers,
    problems: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn raw(&self, key: &str) -> (&str, &Origin) {
        match self.layers.values.get(key) {
            Some((v, o)) => (v.trim(), o),
            None => ("", &Origin::Default),
        }
    }

    fn fail<T: Default>(&mut self, key: &str, msg: impl fmt::Display) -> T {
        let (_, origin) = self.raw(key);
        let origin = origin.clone();
        self.problems
            .push(format!("`{key}` (from {origin}): {msg}"));
        T::default()
    }

    fn string(&mut self, key: &str) -> String {
        self.raw(key).0.to_string()
    }

    fn opt_string(&mut self, key: &str) -> Option<String> {
        Some(self.string(key)).filter(|s| !s.is_empty())
    }

    fn path(&mut self, key: &str) -> PathBuf {
        match self.opt_path(key) {
            Some(p) => p,
            None => self.fail(key, "must not be empty"),
        }
    }

    fn opt_path(&mut self, key: &str) -> Option<PathBuf> {
        self.opt_string(key).map(PathBuf::from)
    }

    fn file_prefix(&mut self, key: &str) -> String {
        let v = self.string(key);
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !v.starts_with('.');
        if ok {
            v
        } else {
            self.fail(
                key,
                format!("{v:?} must be letters, digits, '-', '_' or '.'"),
            )
        }
    }

    fn duration(&mut self, key: &str) -> Duration {
        let v = self.string(key);
        match humantime::parse_duration(&v) {
            Ok(d) if d.is_zero() => self.fail(key, "must be longer than zero"),
            Ok(d) => d,
            Err(e) => self.fail(
                key,
                format!("{v:?} is not a duration ({e}); use forms like 6s, 500ms, 2m"),
            ),
        }
    }

    /// A stream's cadence: a duration, where zero turns the stream off.
    fn cadence(&mut self, key: &str) -> Duration {
        let v = self.string(key);
        match humantime::parse_duration(&v) {
            Ok(d) => d,
            Err(_) if v.trim() == "0" => Duration::ZERO,
            Err(e) => self.fail(
                key,
                format!("{v:?} is not a duration ({e}); use forms like 60s, 15m, or 0 to turn the stream off"),
            ),
        }
    }

    /// `max_start_lag`: empty means a quarter of the interval (so the
    /// default follows `poll_interval`); set, it must be shorter than the
    /// interval, or a late poll would run into the meter's next slot.
    fn start_lag(&mut self, key: &str, interval_key: &str) -> Duration {
        let interval = humantime::parse_duration(self.raw(interval_key).0).unwrap_or_default();
        if self.string(key).is_empty() {
            return interval / 4;
        }
        let lag = self.duration(key);
        if !interval.is_zero() && lag >= interval {
            return self.fail(
                key,
                format!(
                    "{} must be shorter than poll_interval ({}); a quarter of it is the default",
                    humantime::format_duration(lag),
                    humantime::format_duration(interval)
                ),
            );
        }
        lag
    }

    /// `member_ttl`: at least twice `member_heartbeat`, so one late or
    /// failed heartbeat does not hand a live pinger's meters to the others.
    fn member_ttl(&mut self, key: &str, heartbeat_key: &str) -> Duration {
        let heartbeat = humantime::parse_duration(self.raw(heartbeat_key).0).unwrap_or_default();
        let ttl = self.duration(key);
        if !ttl.is_zero() && ttl < heartbeat * 2 {
            return self.fail(
                key,
                format!(
                    "{} must be at least twice member_heartbeat ({}), or one late heartbeat hands a live pinger's meters to the others",
                    humantime::format_duration(ttl),
                    humantime::format_duration(heartbeat)
                ),
            );
        }
        ttl
    }

    /// `shard`: empty, or `I/N` (see [`crate::fleet::Shard`]).
    fn shard(&mut self, key: &str) -> Option<crate::fleet::Shard> {
        let v = self.string(key);
        if v.is_empty() {
            return None;
        }
        match v.parse() {
            Ok(s) => Some(s),
            Err(e) => self.fail(key, e),
        }
    }

    fn bool(&mut self, key: &str) -> bool {
        match self.string(key).to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            v => self.fail(key, format!("{v:?} is not true or false")),
        }
    }

    fn number<T: std::str::FromStr + Default + PartialEq>(&mut self, key: &str) -> T {
        let v = self.string(key);
        match v.parse::<T>() {
            Ok(n) if n != T::default() => n,
            _ => self.fail(key, format!("{v:?} is not a positive whole number")),
        }
    }

    fn url(&mut self, key: &str, schemes: &[&str]) -> Url {
        match self.opt_url(key, schemes) {
            Some(u) => u,
            None => {
                if self.string(key).is_empty() {
                    self.fail::<()>(key, "must not be empty");
                }
                Url::parse("http://invalid.invalid/").unwrap_or_else(|_| unreachable_url())
            }
        }
    }

    fn opt_url(&mut self, key: &str, schemes: &[&str]) -> Option<Url> {
        let v = self.opt_string(key)?;
        match Url::parse(&v) {
            Ok(u) if schemes.contains(&u.scheme()) => Some(u),
            Ok(u) => {
                self.fail::<()>(
                    key,
                    format!(
                        "scheme {:?} is not one of {}",
                        u.scheme(),
                        schemes.join(", ")
                    ),
                );
                None
            }
            Err(e) => {
                self.fail::<()>(key, format!("{:?} is not a URL ({e})", redact_url(&v)));
                None
            }
        }
    }

    fn archive(&mut self, key: &str) -> ArchiveSetting {
        let v = self.string(key);
        match v.as_str() {
            "" => ArchiveSetting::Auto,
            "s3" => ArchiveSetting::S3,
            _ => match v.strip_prefix("dir:") {
                Some(dir) if !dir.trim().is_empty() => {
                    ArchiveSetting::Dir(PathBuf::from(dir.trim()))
                }
                _ => self.fail(
                    key,
                    format!("{v:?} must be empty, s3, or dir:/path (a local directory)"),
                ),
            },
        }
    }

    /// CIDRs separated by commas or spaces; a bare address is one host.
    fn networks(&mut self, key: &str) -> Vec<IpNet> {
        let v = self.string(key);
        let mut out = Vec::new();
        for item in v.split([',', ' ']).filter(|s| !s.is_empty()) {
            let parsed = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.fail::<()>(
                    key,
                    format!("{item:?} is not a network like 192.168.1.0/24 or fd00::/8"),
                ),
            }
        }
        out
    }

    /// Both PEM files or neither: one alone is a half-configured HTTPS.
    fn tls(&mut self, cert: &str, key: &str) -> Option<TlsFiles> {
        match (self.opt_path(cert), self.opt_path(key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => self.fail(key, "must be set when tls_cert is"),
            (None, Some(_)) => self.fail(cert, "must be set when tls_key is"),
        }
    }

    fn opt_socket(&mut self, key: &str) -> Option<SocketAddr> {
        if self.string(key).is_empty() {
            None
        } else {
            Some(self.socket(key))
        }
    }

    fn socket(&mut self, key: &str) -> SocketAddr {
        let v = self.string(key);
        match v.parse() {
            Ok(a) => a,
            Err(_) => {
                self.fail::<()>(key, format!("{v:?} is not an address like 0.0.0.0:8000"));
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        }
    }
}

#[allow(clippy::unwrap_used)]
fn unreachable_url() -> Url {
    // Only reached when the constant above stops parsing, which it cannot.
    Url::parse("http://localhost/").expect("constant URL parses")
}

/// Where the rotator archives completed hours (key `archive`).
///
/// Kept as the operator's choice rather than resolved here, because only the
/// rotator needs a bucket: the pinger must start without one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ArchiveSetting {
    /// Empty: S3 when `s3_bucket` is set, otherwise none configured.
    #[default]
    Auto,
    /// `s3`: S3 (or an S3-compatible store), `s3_bucket` required.
    S3,
    /// `dir:/path`: a local directory with the same key layout as the bucket.
    Dir(PathBuf),
}

impl fmt::Display for ArchiveSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveSetting::Auto => Ok(()),
            ArchiveSetting::S3 => write!(f, "s3"),
            ArchiveSetting::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

/// The server's certificate and key (`tls_cert`, `tls_key`), both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// The program's settings, typed and checked. `Debug` (in [`render`])
/// shows URLs and secrets redacted.
#[derive(Clone)]
pub struct Config {
    /// Redis with users and statistics; `None` selects the users file.
    pub redis_url: Option<Url>,
    /// JSON-lines users file (embedded registry).
    pub users_file: Option<PathBuf>,
    /// Spool directory.
    pub data_dir: PathBuf,
    /// Optional directory for per-service log files.
    pub log_dir: Option<PathBuf>,
    /// Daily log files kept per service, so `log_dir` does not grow forever.
    pub log_max_files: usize,
    /// The relay's URL.
    pub relay_url: Url,
    /// Skip TLS verification for the relay.
    pub relay_insecure_tls: bool,
    /// Networks EAGLE-200s may be in (private ranges are refused otherwise;
    /// see [`crate::protocol::address`]).
    pub local_networks: Vec<IpNet>,
    /// Poll cadence per meter.
    pub poll_interval: Duration,
    /// Summation cadence per meter; zero: off (users may override).
    pub summation_interval: Duration,
    /// Price cadence per meter; zero: off (users may override).
    pub price_interval: Duration,
    /// Shortest summation gap filled from the meter's history.
    pub backfill_after: Duration,
    /// Spacing asked of `get_history_data` when backfilling.
    pub backfill_frequency: Duration,
    /// Timeout per EAGLE request.
    pub request_timeout: Duration,
    /// How often the user list is reloaded.
    pub user_reload_interval: Duration,
    /// Longest backoff of a failing meter.
    pub max_backoff: Duration,
    /// Pause after rejected credentials.
    pub auth_backoff: Duration,
    /// Prefix of every Redis key.
    pub redis_namespace: String,
    /// The key sealing credentials in Redis, 64 hex characters (see
    /// [`crate::vault`]).
    pub credentials_key: Option<Secret>,
    /// File whose first line is that key.
    pub credentials_key_file: Option<PathBuf>,
    /// The previous key, still accepted for reading while a rekey runs.
    pub credentials_old_key: Option<Secret>,
    /// File whose first line is the previous key.
    pub credentials_old_key_file: Option<PathBuf>,
    /// Let a Redis registry keep credentials in clear (no key needed).
    pub allow_plaintext_credentials: bool,
    /// Latest start of a poll after its slot before it is skipped; a
    /// quarter of `poll_interval` unless set, always shorter than it.
    pub max_start_lag: Duration,
    /// How often a pinger renews its fleet membership (see [`crate::fleet`]).
    pub member_heartbeat: Duration,
    /// How long a membership outlives its last renewal; at least twice
    /// `member_heartbeat`.
    pub member_ttl: Duration,
    /// A static `--shard I/N` split instead of membership.
    pub shard: Option<crate::fleet::Shard>,
    /// Global cap on requests in flight.
    pub max_concurrent_requests: usize,
    /// Global cap on requests started per second.
    pub max_requests_per_second: u32,
    /// Spool/archive file name prefix.
    pub file_prefix: String,
    /// Most spool files open at once.
    pub open_files: usize,
    /// Archive bucket.
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket.
    pub s3_prefix: String,
    /// S3-compatible endpoint.
    pub s3_endpoint: Option<Url>,
    /// S3 region; `None` lets the AWS environment, profile or IMDS decide.
    pub s3_region: Option<String>,
    /// Where the rotator archives completed hours.
    pub archive: ArchiveSetting,
    /// Wait after an hour ends before its files count as completed.
    pub rotate_grace: Duration,
    /// How often the rotator looks for completed hours.
    pub rotate_every: Duration,
    /// Most uploads in flight at once.
    pub upload_concurrency: usize,
    /// Server listen address.
    pub listen: SocketAddr,
    /// Metrics address of a standalone pinger or rotator.
    pub metrics_listen: Option<SocketAddr>,
    /// Bootstrap admin token.
    pub api_token: Option<Secret>,
    /// File holding the bootstrap admin token (first line).
    pub api_token_file: Option<PathBuf>,
    /// Largest HTTP request body the server reads, in bytes.
    pub request_body_limit: usize,
    /// Longest time the HTTP server spends on one request.
    pub api_timeout: Duration,
    /// Most HTTP connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a request head.
    pub header_read_timeout: Duration,
    /// Time without traffic after which a connection is closed.
    pub idle_timeout: Duration,
    /// HTTPS certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    origins: BTreeMap<&'static str, Origin>,
}

impl Config {
    /// Loads the layers: defaults, then `path` (or `config/rainforest.toml`
    /// when present), then the given environment, then `flags`.
    pub fn load<I: IntoIterator<Item = (String, String)>>(
        path: Option<&Path>,
        env: I,
        flags: impl FnOnce(Layers) -> Layers,
    ) -> Result<Config, ConfigError> {
        let mut layers = Layers::defaults();
        let default_path = Path::new("config/rainforest.toml");
        let chosen = path.or(default_path.exists().then_some(default_path));
        if let Some(p) = chosen {
            match std::fs::read_to_string(p) {
                Ok(text) => layers = layers.file(p, &text),
                Err(e) => {
                    return Err(ConfigError {
                        problems: vec![format!("cannot read config file {}: {e}", p.display())],
                    });
                }
            }
        }
        flags(layers.env(env)).build()
    }

    /// Built-in defaults only (for tests and embedded use).
    pub fn defaults() -> Result<Config, ConfigError> {
        Layers::defaults().build()
    }

    /// Where a key's value came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stream_cadences_default_accept_zero_and_refuse_garbage() {
        let c = Config::defaults().unwrap();
        assert_eq!(c.summation_interval, Duration::from_secs(60));
        assert_eq!(c.price_interval, Duration::from_secs(900));
        assert_eq!(c.backfill_after, Duration::from_secs(300));
        let c = Layers::defaults()
            .env(env(&[
                ("RAINFOREST_SUMMATION_INTERVAL", "0"),
                ("RAINFOREST_PRICE_INTERVAL", "0s"),
            ]))
            .build()
            .unwrap();
        assert_eq!(c.summation_interval, Duration::ZERO);
        assert_eq!(c.price_interval, Duration::ZERO);
        let err = Layers::defaults()
            .env(env(&[
                ("RAINFOREST_SUMMATION_INTERVAL", "often"),
                ("RAINFOREST_BACKFILL_AFTER", "0s"),
            ]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`summation_interval`") && err.contains("`backfill_after`"),
            "{err}"
        );
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let layers = Layers::defaults()
            .file(
                Path::new("x.toml"),
                "poll_interval = \"2s\"\nrequest_timeout = \"1s\"\nfile_prefix = \"f\"",
            )
            .env(env(&[
                ("RAINFOREST_REQUEST_TIMEOUT", "500ms"),
                ("RAINFOREST_FILE_PREFIX", "e"),
            ]))
            .flag("file_prefix", "flag", "--file-prefix");
        let c = layers.build().unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert_eq!(c.file_prefix, "flag");
        assert_eq!(c.user_reload_interval, Duration::from_secs(60));
        assert_eq!(
            c.origin("request_timeout"),
            Origin::Env("RAINFOREST_REQUEST_TIMEOUT".into())
        );
    }

    #[test]
    fn every_problem_is_reported_with_key_and_origin() {
        let err = Layers::defaults()
            .env(env(&[
                ("RAINFOREST_POLL_INTERVAL", "six"),
                ("RAINFOREST_RELAY_URL", "not a url"),
                ("RAINFOREST_BOGUS", "1"),
            ]))
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`poll_interval` (from environment variable RAINFOREST_POLL_INTERVAL)"),
            "{text}"
        );
        assert!(text.contains("`relay_url`"), "{text}");
        assert!(text.contains("unknown key `bogus`"), "{text}");
        assert_eq!(err.problems.len(), 3);
    }

    #[test]
    fn a_rotate_grace_not_clear_of_the_spool_close_delay_is_refused() {
        let grace = |v: &str| {
            Layers::defaults()
                .env(env(&[("RAINFOREST_ROTATE_GRACE", v)]))
                .build()
        };
        let err = grace("10s").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`rotate_grace` (from environment variable RAINFOREST_ROTATE_GRACE): 10s is too short"),
            "{text}"
        );
        assert!(text.contains("at least 30s"), "{text}");
        assert_eq!(grace("soon").unwrap_err().problems.len(), 1);
        assert_eq!(grace("30s").unwrap().rotate_grace, Duration::from_secs(30));
    }

    #[test]
    fn archive_accepts_empty_s3_or_a_directory() {
        let parse = |v: &str| {
            Layers::defaults()
                .env(env(&[("RAINFOREST_ARCHIVE", v)]))
                .build()
                .map(|c| c.archive)
        };
        assert_eq!(parse("").unwrap(), ArchiveSetting::Auto);
        assert_eq!(parse("s3").unwrap(), ArchiveSetting::S3);
        assert_eq!(
            parse("dir:/srv/archive").unwrap(),
            ArchiveSetting::Dir(PathBuf::from("/srv/archive"))
        );
        let err = parse("ftp://x").unwrap_err().to_string();
        assert!(
            err.contains("`archive` (from environment variable RAINFOREST_ARCHIVE)"),
            "{err}"
        );
        assert!(parse("dir:").is_err());
    }

    #[test]
    fn render_redacts_secrets() {
        let c = Layers::defaults()
            .env(env(&[
                ("RAINFOREST_API_TOKEN", "tok-123"),
                ("RAINFOREST_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0"),
            ]))
            .build()
            .unwrap();
        let out = c.render();
        assert!(
            !out.contains("tok-123") && !out.contains("hunter2"),
            "{out}"
        );
        assert!(out.contains("api_token = \"[redacted]\""), "{out}");
    }

    #[test]
    fn local_networks_parse_as_cidrs_and_bad_ones_are_named() {
        let c = Layers::defaults()
            .env(env(&[(
                "RAINFOREST_LOCAL_NETWORKS",
                "192.168.1.7/24, fd00::/8 10.0.0.5",
            )]))
            .build()
            .unwrap();
        let shown: Vec<String> = c.local_networks.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["192.168.1.0/24", "fd00::/8", "10.0.0.5/32"]);
        assert!(Config::defaults().unwrap().local_networks.is_empty());
        let err = Layers::defaults()
            .env(env(&[("RAINFOREST_LOCAL_NETWORKS", "10.0.0.0/8,lan")]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`local_networks`") && err.contains("\"lan\""),
            "{err}"
        );
    }

    #[test]
    fn start_lag_defaults_to_a_quarter_interval_and_must_be_shorter() {
        let c = Layers::defaults()
            .env(env(&[("RAINFOREST_POLL_INTERVAL", "10s")]))
            .build()
            .unwrap();
        assert_eq!(c.max_start_lag, Duration::from_millis(2500));
        let c = Layers::defaults()
            .env(env(&[("RAINFOREST_MAX_START_LAG", "500ms")]))
            .build()
            .unwrap();
        assert_eq!(c.max_start_lag, Duration::from_millis(500));
        let err = Layers::defaults()
            .env(env(&[("RAINFOREST_MAX_START_LAG", "6s")]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`max_start_lag`") && err.contains("shorter than poll_interval"),
            "{err}"
        );
    }

    #[test]
    fn readme_table_names_every_key() {
        let readme = include_str!("../../README.md");
        let missing: Vec<&str> = keys::KEYS
            .iter()
            .map(|k| k.name)
            .filter(|name| !readme.contains(&format!("`{name}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md does not describe {missing:?}"
        );
    }

    #[test]
    fn shipped_toml_lists_every_key_with_its_default() {
        let shipped = include_str!("../../config/rainforest.toml");
        assert_eq!(
            shipped,
            keys::default_toml(),
            "regenerate config/rainforest.toml"
        );
        // Shipped as it is, the file sets nothing: every value keeps its
        // built-in origin, so `run --demo` from a checkout still listens on
        // loopback only.
        let c = Layers::defaults()
            .file(Path::new("s"), shipped)
            .build()
            .unwrap();
        for k in keys::KEYS {
            assert_eq!(c.origin(k.name), Origin::Default, "{} is set", k.name);
        }
        // Uncommented, every line is a valid setting of its default.
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(setting)
                    if keys::KEYS
                        .iter()
                        .any(|k| setting.starts_with(&format!("{} = ", k.name))) =>
                {
                    setting
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Layers::defaults()
            .file(Path::new("s"), &uncommented)
            .build()
            .unwrap();
        assert_eq!(c.origin("listen"), Origin::File("s".into()));
        assert_eq!(c.poll_interval, Duration::from_secs(6));
        assert_eq!(c.listen, Config::defaults().unwrap().listen);
    }
}
