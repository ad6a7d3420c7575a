//! Every configuration key, its default and its one-line meaning.
//!
//! This table is the single source for the TOML file we ship, the
//! environment variable names (`RAINFOREST_<KEY>`), `rainforest config` and
//! the README's table; a test checks the shipped file against it.

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Name in the TOML file; the env var is `RAINFOREST_` + upper case.
    pub name: &'static str,
    /// Default as text (empty: unset).
    pub default: &'static str,
    /// One line for the TOML file and README.
    pub help: &'static str,
    /// Printed redacted by `rainforest config`.
    pub secret: bool,
}

const fn key(name: &'static str, default: &'static str, help: &'static str) -> Key {
    Key {
        name,
        default,
        help,
        secret: false,
    }
}

/// All keys, in the order they are printed.
pub const KEYS: &[Key] = &[
    key(
        "redis_url",
        "",
        "Redis holding users and statistics, e.g. redis://127.0.0.1:6379/0 (empty: use users_file)",
    ),
    key(
        "users_file",
        "",
        "JSON-lines users file, the embedded registry used when redis_url is empty",
    ),
    key(
        "data_dir",
        "./data/logs",
        "Spool directory for hour-bucketed JSON-lines files (containers use /data/logs)",
    ),
    key(
        "log_dir",
        "",
        "When set, each service also logs to <log_dir>/<service>/<service>.<YYYY-MM-DD>.log, a new file each day (UTC)",
    ),
    key(
        "log_max_files",
        "14",
        "Daily log files kept per service in log_dir, today's included; older ones are deleted at start and at each day's rotation",
    ),
    key(
        "relay_url",
        "https://rainforestcloud.com:9445/cgi-bin/post_manager",
        "The EAGLE cloud relay's post_manager URL",
    ),
    key(
        "relay_insecure_tls",
        "false",
        "Skip TLS certificate checks on the relay (dangerous; logged as a warning)",
    ),
    key(
        "local_networks",
        "",
        "CIDRs EAGLE-200s may be in, comma-separated, e.g. 192.168.1.0/24 (empty: public addresses only)",
    ),
    key("poll_interval", "6s", "How often each meter is read"),
    key(
        "summation_interval",
        "60s",
        "How often each meter's energy counters (summation) are read; 0 turns the stream off (a user's own summation_interval overrides it)",
    ),
    key(
        "price_interval",
        "15m",
        "How often each meter's price is read; 0 turns the stream off (a user's own price_interval overrides it)",
    ),
    key(
        "backfill_after",
        "5m",
        "A gap in a meter's summation stream longer than this is filled from the meter's history (get_history_data)",
    ),
    key(
        "backfill_frequency",
        "60s",
        "Spacing asked of get_history_data when backfilling (the device may answer coarser)",
    ),
    key(
        "request_timeout",
        "5s",
        "Timeout for one EAGLE request (connect + answer)",
    ),
    key(
        "user_reload_interval",
        "60s",
        "How often the user list is reloaded from Redis or the users file",
    ),
    key(
        "max_backoff",
        "5m",
        "Longest pause of a failing meter (backoff doubles from poll_interval, +-20% jitter)",
    ),
    key(
        "auth_backoff",
        "15m",
        "Pause of a meter whose credentials were rejected (it is flagged auth_failed)",
    ),
    key(
        "redis_namespace",
        "rainforest",
        "Prefix of every Redis key, so several deployments can share one Redis",
    ),
    Key {
        name: "credentials_key",
        default: "",
        help: "Key sealing meter passwords and install codes in Redis: 64 hex characters, from openssl rand -hex 32 (prefer credentials_key_file)",
        secret: true,
    },
    key(
        "credentials_key_file",
        "",
        "File whose first line is credentials_key; instead of credentials_key",
    ),
    Key {
        name: "credentials_old_key",
        default: "",
        help: "The previous credentials key, still accepted for reading while `rainforest users rekey` moves values to the new one",
        secret: true,
    },
    key(
        "credentials_old_key_file",
        "",
        "File whose first line is credentials_old_key; instead of credentials_old_key",
    ),
    key(
        "allow_plaintext_credentials",
        "false",
        "Let a Redis registry keep passwords in clear when no credentials key is set (not for production)",
    ),
    key(
        "max_start_lag",
        "",
        "Latest start of a poll after its slot; a poll that cannot go out by then (the caps are full) is skipped and counted, never run late (empty: a quarter of poll_interval)",
    ),
    key(
        "member_heartbeat",
        "2s",
        "How often a pinger sharing a Redis registry renews its fleet membership; others see a join or a clean stop within this",
    ),
    key(
        "member_ttl",
        "6s",
        "A pinger whose membership was not renewed for this long is dead and its meters go to the others (at least twice member_heartbeat; kill -9 is covered within member_ttl + member_heartbeat + poll_interval)",
    ),
    key(
        "shard",
        "",
        "Static split instead of membership: I/N polls the N-th share numbered I from 0, e.g. 0/3 (also --shard; empty: membership with Redis, else every meter)",
    ),
    key(
        "max_concurrent_requests",
        "4096",
        "Global cap on EAGLE requests in flight",
    ),
    key(
        "max_requests_per_second",
        "20000",
        "Global cap on EAGLE requests started per second",
    ),
    key(
        "file_prefix",
        "iseif-rainforest",
        "Prefix of spool and archive file names",
    ),
    key(
        "open_files",
        "16384",
        "Most spool files kept open at once (least recently used are closed)",
    ),
    key(
        "s3_bucket",
        "",
        "S3 bucket of the archive (empty: no S3 archive)",
    ),
    key(
        "s3_prefix",
        "rainforest-logs",
        "Key prefix inside the bucket",
    ),
    key(
        "s3_endpoint",
        "",
        "S3-compatible endpoint URL (MinIO, Garage, Ceph); empty means AWS",
    ),
    key(
        "s3_region",
        "us-east-1",
        "S3 region (empty: from the AWS environment, profile or instance metadata)",
    ),
    key(
        "archive",
        "",
        "Where completed hours go: empty (S3 when s3_bucket is set), s3, or dir:/path (a local directory, same key layout)",
    ),
    key(
        "rotate_grace",
        "2m",
        "How long a spool writer may stay silent before the rotator takes it for gone and ships its unsealed files (also the wait after an hour ends for files without a writer id); at least 30s",
    ),
    key(
        "rotate_every",
        "60s",
        "How often the rotator looks for completed hours",
    ),
    key(
        "upload_concurrency",
        "8",
        "Most hour files the rotator uploads at once",
    ),
    key(
        "listen",
        "0.0.0.0:8000",
        "Address the HTTP server listens on",
    ),
    key(
        "metrics_listen",
        "",
        "Where a standalone pinger or rotator serves /metrics and /healthz, e.g. 0.0.0.0:9100 (empty: off)",
    ),
    Key {
        name: "api_token",
        default: "",
        help: "Bootstrap admin token for the HTTP API",
        secret: true,
    },
    key(
        "api_token_file",
        "",
        "File whose first line is the bootstrap admin token (Docker/Kubernetes secrets); instead of api_token",
    ),
    key(
        "request_body_limit",
        "65536",
        "Largest HTTP request body the server reads, in bytes (413 beyond)",
    ),
    key(
        "api_timeout",
        "30s",
        "Longest time the HTTP server spends on one request (503 beyond)",
    ),
    key(
        "max_connections",
        "1024",
        "Most HTTP connections the server holds open; beyond, new ones wait in the accept backlog",
    ),
    key(
        "header_read_timeout",
        "10s",
        "Time a client has to send a request's headers (after connecting or its previous answer)",
    ),
    key(
        "idle_timeout",
        "60s",
        "An HTTP connection moving no bytes this long is closed (after its request in flight)",
    ),
    key(
        "tls_cert",
        "",
        "PEM certificate chain; with tls_key the server speaks HTTPS itself (empty: plain HTTP)",
    ),
    key("tls_key", "", "PEM private key of tls_cert"),
];

/// Looks a key up by name.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The environment variable for a key.
pub fn env_name(key: &str) -> String {
    format!("RAINFOREST_{}", key.to_ascii_uppercase())
}

/// Renders the TOML file we ship: every key, its default and its comment.
pub fn default_toml() -> String {
    let mut out = String::from(
        "# rainforest configuration. Every key, commented out, with its default:\n\
         # uncomment a line to set it. A key left commented keeps its built-in default\n\
         # (and `run --demo` its own, such as listening on loopback only).\n\
         # Precedence: built-in defaults < this file < RAINFOREST_* environment variables < flags.\n\
         # Durations accept 6s, 500ms, 2m. Empty strings mean unset.\n\n",
    );
    for k in KEYS {
        out.push_str(&format!("# {} (env {})\n", k.help, env_name(k.name)));
        let value = match k.default {
            "true" | "false" => k.default.to_string(),
            d if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => d.to_string(),
            d => format!("{d:?}"),
        };
        out.push_str(&format!("# {} = {value}\n\n", k.name));
    }
    out
}
