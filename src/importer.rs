//! Bulk loading of users: `rainforest users import` and `scripts/add_users`.
//!
//! Owns reading the old system's users (JSON lines, or its Redis layout),
//! sending each user to a [`Target`] (a running server's API, or the
//! registry directly), and reporting: one message per bad line with its
//! number and reason, progress, and a [`Summary`]. Loading is idempotent:
//! the registry reports [`PutOutcome::Unchanged`] for a user stored exactly
//! so already, so a second run of the same file changes nothing.
//!
//! A bad line never stops the others. What does stop an import is what
//! would fail every remaining line the same way: a token the server
//! rejects, or a server or Redis that stays unreachable through retries.
//!
//! It does not validate users itself ([`User::from_json_line`] and the
//! server do) and never prints a password.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use crate::cloud_id::CloudId;
use crate::config::redact_url;
use crate::registry::user::LEGACY_STAT_FIELDS;
use crate::registry::{PutOutcome, Registry, RegistryError, StatsUpdate, User};
use crate::secret::Secret;
use crate::server::UserBody;

/// Users sent at once; enough to hide round trips, few enough not to crowd
/// a server that is also answering the pinger's operators.
const CONCURRENCY: usize = 8;
/// Attempts per user while the server or Redis is unreachable.
const ATTEMPTS: u32 = 4;
/// First pause between attempts; doubles each time (1 s, 2 s, 4 s).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Timeout of one API request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Without a terminal, a progress line every this many users...
const PLAIN_EVERY: u64 = 1000;
/// ...or this often, whichever comes first.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);
/// Keys read from the legacy Redis per `SCAN` call.
const LEGACY_SCAN_COUNT: usize = 1000;

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Users that did not exist.
    pub created: u64,
    /// Users that existed with different settings.
    pub updated: u64,
    /// Users already stored exactly so.
    pub unchanged: u64,
    /// Lines (or legacy keys) that were not loaded.
    pub failed: u64,
    /// Legacy imports: users whose old statistics were carried over.
    pub statistics_carried: u64,
}

impl Summary {
    fn count(&mut self, outcome: PutOutcome) {
        match outcome {
            PutOutcome::Created => self.created += 1,
            PutOutcome::Updated => self.updated += 1,
            PutOutcome::Unchanged => self.unchanged += 1,
        }
    }

    /// Lines or keys handled so far.
    pub fn done(&self) -> u64 {
        self.created + self.updated + self.unchanged + self.failed
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "created {}, updated {}, unchanged {}, failed {}",
            self.created, self.updated, self.unchanged, self.failed
        )?;
        if self.statistics_carried > 0 {
            write!(
                f,
                " (statistics carried over for {})",
                self.statistics_carried
            )?;
        }
        Ok(())
    }
}

/// Why a whole import stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The server refused the token (401) or its scope (403).
    #[error(
        "the server at {server} refused the token ({status}): {detail}. Set RAINFOREST_API_TOKEN to a token with scope write (rainforest tokens create --name importer --scope write)"
    )]
    Refused {
        /// The server's base URL.
        server: String,
        /// 401 or 403.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The server could not be reached or stayed unavailable.
    #[error(
        "the server at {server} is unreachable or unavailable: {reason} (is `rainforest server` running there, and Redis behind it?)"
    )]
    ServerUnavailable {
        /// The server's base URL.
        server: String,
        /// The last failure.
        reason: String,
    },
    /// The registry stayed unavailable.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The legacy Redis could not be read.
    #[error("cannot read the old system's Redis at {url}: {reason}")]
    Legacy {
        /// Its URL, password redacted.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The import could not be set up (bad URL, HTTP client).
    #[error("{0}")]
    Setup(String),
}

/// The result of an import: what was done, and why it stopped early if it did.
#[derive(Debug)]
pub struct Report {
    /// What was done (up to the stop, if any).
    pub summary: Summary,
    /// Set when the import stopped before the end.
    pub aborted: Option<ImportError>,
}

impl Report {
    /// Whether every line loaded and nothing stopped the import.
    pub fn is_success(&self) -> bool {
        self.summary.failed == 0 && self.aborted.is_none()
    }
}

/// Where imported users go.
#[derive(Debug)]
pub enum Target {
    /// A running server's API.
    Server(ServerClient),
    /// The registry itself (Redis or the users file).
    Direct(Registry),
}

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
    async fn put_once(&self, user: &User) -> Result<PutOutcome, Failure> {
        let url = self.user_url(user.cloud_id).map_err(Failure::Fatal)?;
        let response = self
            .http
            .post(url)
            .bearer_auth(self.token.expose())
            .json(&UserBody::from_user(user))
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("request failed: {e}")))?;
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
            429 | 502 | 503 | 504 => Err(Failure::Retry(format!("HTTP {status}: {detail}"))),
            _ => Err(Failure::Line(format!(
                "rejected by the server ({status}): {detail}"
            ))),
        }
    }
}

/// How one user failed.
enum Failure {
    /// This user is bad; go on with the others.
    Line(String),
    /// Transient; try this user again after a pause.
    Retry(String),
    /// Every remaining user would fail the same way; stop.
    Fatal(ImportError),
}

impl Target {
    /// Stores `user`, retrying while the server or Redis is unavailable.
    async fn put(&self, user: &User) -> Result<PutOutcome, Failure> {
        let mut pause = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            let result = match self {
                Target::Server(client) => client.put_once(user).await,
                Target::Direct(registry) => match registry.put(user).await {
                    Ok(o) => Ok(o),
                    Err(e) if e.is_unavailable() => Err(Failure::Retry(e.to_string())),
                    Err(e) => Err(Failure::Line(e.to_string())),
                },
            };
            match result {
                Err(Failure::Retry(reason)) if attempt >= ATTEMPTS => {
                    return Err(Failure::Fatal(self.unavailable(reason)));
                }
                Err(Failure::Retry(reason)) => {
                    tracing::debug!(cloud_id = %user.cloud_id, attempt, %reason, "Retrying a user.");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn unavailable(&self, reason: String) -> ImportError {
        match self {
            Target::Server(c) => ImportError::ServerUnavailable {
                server: c.base.to_string(),
                reason,
            },
            Target::Direct(r) => ImportError::Registry(RegistryError::Unavailable {
                target: r.describe(),
                reason,
                check: "check that Redis is running and reachable at redis_url",
            }),
        }
    }
}

/// Progress and failure messages: a progress bar on a terminal, plain
/// lines otherwise (logs, CI, pipes).
pub struct Reporter {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    last_plain: Mutex<(u64, Instant)>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("interactive", &self.bar.is_some())
            .field("total", &self.total)
            .finish()
    }
}

impl Reporter {
    /// A reporter for `total` items (unknown: `None`); `interactive` draws a
    /// progress bar on standard error.
    pub fn new(total: Option<u64>, interactive: bool) -> Reporter {
        let bar = interactive.then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{bar:40} {pos}/{len} users, {per_sec}, eta {eta} {msg}"
            } else {
                "{spinner} {pos} keys {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Reporter {
            bar,
            total,
            last_plain: Mutex::new((0, Instant::now())),
        }
    }

    /// Reports one item that was not loaded.
    pub fn failure(&self, location: &str, reason: &str) {
        let line = format!("{location}: {reason}");
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Reports progress after one more item.
    pub fn advance(&self, summary: &Summary) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if summary.failed > 0 {
                bar.set_message(format!("({} failed)", summary.failed));
            }
            return;
        }
        let done = summary.done();
        let mut last = self.last_plain.lock().unwrap_or_else(|e| e.into_inner());
        let finished = self.total == Some(done);
        if finished || done >= last.0 + PLAIN_EVERY || last.1.elapsed() >= PLAIN_INTERVAL {
            let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
            eprintln!("progress: {done}{of} ({summary})");
            *last = (done, Instant::now());
        }
    }

    /// Removes the bar (the summary is printed by the caller).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One parsed line: a user, or why the line is not one.
enum Parsed {
    User(usize, User),
    Bad(usize, String),
}

/// Parses JSON lines in the old format; blank lines and `#` comments are
/// skipped, as in the users file. A cloud id seen on an earlier line makes
/// the later line fail, since which of two lines wins would otherwise depend
/// on timing.
fn parse_lines(text: &str) -> Vec<Parsed> {
    let mut seen: HashMap<CloudId, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match User::from_json_line(trimmed) {
            Ok(user) => match seen.get(&user.cloud_id) {
                Some(first) => out.push(Parsed::Bad(
                    number,
                    format!(
                        "cloud id {} already appeared on line {first}; keep one line per meter",
                        user.cloud_id
                    ),
                )),
                None => {
                    seen.insert(user.cloud_id, number);
                    out.push(Parsed::User(number, user));
                }
            },
            Err(e) => out.push(Parsed::Bad(number, e.to_string())),
        }
    }
    out
}

/// Counts the lines [`import_lines`] will handle, for the progress bar.
pub fn count_lines(text: &str) -> u64 {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count() as u64
}

/// Imports JSON lines in the old format (`cloud_id`, `user_email`,
/// `user_pw`, optional `active` and `local`; the old statistics fields are
/// ignored) into `target`.
pub async fn import_lines(text: &str, target: &Target, reporter: &Reporter) -> Report {
    let mut summary = Summary::default();
    let mut users = Vec::new();
    for parsed in parse_lines(text) {
        match parsed {
            Parsed::User(n, u) => users.push((n, u)),
            Parsed::Bad(n, reason) => {
                summary.failed += 1;
                reporter.failure(&format!("line {n}"), &reason);
                reporter.advance(&summary);
            }
        }
    }
    let mut results = futures::stream::iter(users)
        .map(|(n, user)| async move { (n, user.cloud_id, target.put(&user).await) })
        .buffer_unordered(CONCURRENCY);
    while let Some((n, id, result)) = results.next().await {
        match result {
            Ok(outcome) => summary.count(outcome),
            Err(Failure::Line(reason) | Failure::Retry(reason)) => {
                summary.failed += 1;
                reporter.failure(&format!("line {n} ({id})"), &reason);
            }
            Err(Failure::Fatal(e)) => {
                return Report {
                    summary,
                    aborted: Some(e),
                };
            }
        }
        reporter.advance(&summary);
    }
    Report {
        summary,
        aborted: None,
    }
}

/// A user read from the old system's Redis, with its statistics.
struct LegacyUser {
    user: User,
    stats: Option<StatsUpdate>,
}

/// Parses one legacy value (the JSON blob under a bare cloud-id key).
fn parse_legacy(id: CloudId, text: &str) -> Result<LegacyUser, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut map) = value else {
        return Err("not a JSON object".into());
    };
    match map.get("cloud_id") {
        None => {
            map.insert("cloud_id".into(), Value::String(id.to_string()));
        }
        Some(Value::String(s)) if CloudId::parse(s).ok() == Some(id) => {}
        Some(_) => return Err(format!("field `cloud_id` does not match the key ({id})")),
    }
    let events = legacy_number(&map, "total_events_logged")?;
    let first = legacy_number(&map, "first_timestamp")?;
    let last = legacy_number(&map, "last_timestamp")?;
    let user = User::from_json_map(&map).map_err(|e| e.to_string())?;
    let stats = (events.is_some() || first.is_some() || last.is_some()).then(|| StatsUpdate {
        events_logged: events.map_or(0, |n| n.max(0.0) as u64),
        first_timestamp: first,
        last_timestamp: last,
        ..StatsUpdate::new(id)
    });
    Ok(LegacyUser { user, stats })
}

/// A legacy statistics field: a number, a numeric string (the old system
/// was not consistent), or null/absent.
fn legacy_number(map: &Map<String, Value>, field: &str) -> Result<Option<f64>, String> {
    debug_assert!(LEGACY_STAT_FIELDS.contains(&field));
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().filter(|x| x.is_finite())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| format!("field `{field}` must be a number")),
        Some(_) => Err(format!("field `{field}` must be a number")),
    }
}

/// Imports the old system's Redis layout: every key that is a bare cloud id
/// (walked with `SCAN`, never `KEYS`) holds a JSON blob with `user_email`,
/// `user_pw`, `total_events_logged`, `first_timestamp`, `last_timestamp`.
///
/// Statistics are carried over when the user is new, or has no statistics
/// yet, so a second run changes nothing and never counts events twice.
/// Other keys (anything that is not six hex digits) are left alone.
pub async fn import_legacy(legacy_url: &str, registry: &Registry, reporter: &Reporter) -> Report {
    let mut summary = Summary::default();
    let shown = redact_url(legacy_url);
    let legacy_error = |reason: String| ImportError::Legacy {
        url: shown.clone(),
        reason,
    };
    let mut conn = match crate::tokens::redis_connection(legacy_url).await {
        Ok(c) => c,
        Err(reason) => {
            return Report {
                summary,
                aborted: Some(legacy_error(reason)),
            };
        }
    };
    let target = Target::Direct(registry.clone());
    let mut seen: HashSet<CloudId> = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg("??????")
            .arg("COUNT")
            .arg(LEGACY_SCAN_COUNT);
        let (next, keys): (u64, Vec<String>) = match scan.query_async(&mut conn).await {
            Ok(r) => r,
            Err(e) => {
                return Report {
                    summary,
                    aborted: Some(legacy_error(format!("SCAN failed: {e}"))),
                };
            }
        };
        let batch: Vec<(String, CloudId)> = keys
            .into_iter()
            .filter_map(|k| CloudId::parse(&k).ok().map(|id| (k, id)))
            .filter(|(_, id)| seen.insert(*id))
            .collect();
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            for (key, _) in &batch {
                pipe.cmd("GET").arg(key);
            }
            pipe.ignore_errors();
            let values: Vec<Value> = match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
                Ok(v) => v.into_iter().map(redis_text).collect(),
                Err(e) => {
                    return Report {
                        summary,
                        aborted: Some(legacy_error(format!("GET failed: {e}"))),
                    };
                }
            };
            for ((key, id), value) in batch.into_iter().zip(values) {
                let location = format!("key {key}");
                let parsed = match value {
                    Value::String(text) => parse_legacy(id, &text),
                    _ => Err("not a string value (the old layout stores a JSON string)".into()),
                };
                let legacy = match parsed {
                    Ok(l) => l,
                    Err(reason) => {
                        summary.failed += 1;
                        reporter.failure(&location, &reason);
                        reporter.advance(&summary);
                        continue;
                    }
                };
                match target.put(&legacy.user).await {
                    Ok(outcome) => {
                        summary.count(outcome);
                        match carry_stats(registry, outcome, legacy.stats).await {
                            Ok(true) => summary.statistics_carried += 1,
                            Ok(false) => {}
                            Err(e) => reporter.failure(
                                &location,
                                &format!("user loaded, but its statistics were not: {e}"),
                            ),
                        }
                    }
                    Err(Failure::Line(reason) | Failure::Retry(reason)) => {
                        summary.failed += 1;
                        reporter.failure(&location, &reason);
                    }
                    Err(Failure::Fatal(e)) => {
                        return Report {
                            summary,
                            aborted: Some(e),
                        };
                    }
                }
                reporter.advance(&summary);
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Report {
        summary,
        aborted: None,
    }
}

/// A `GET` reply as JSON-ish: text becomes a string, anything else null.
fn redis_text(v: redis::Value) -> Value {
    match v {
        redis::Value::BulkString(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Value::String(s),
            Err(_) => Value::Null,
        },
        redis::Value::SimpleString(s) => Value::String(s),
        _ => Value::Null,
    }
}

/// Writes the legacy statistics of a user that has none yet; `true` if
/// written. Existing statistics are never added to (that would count the
/// old events twice on a second run).
async fn carry_stats(
    registry: &Registry,
    outcome: PutOutcome,
    stats: Option<StatsUpdate>,
) -> Result<bool, RegistryError> {
    let Some(update) = stats else {
        return Ok(false);
    };
    if outcome != PutOutcome::Created && registry.stats(update.cloud_id).await?.is_some() {
        return Ok(false);
    }
    registry.write_stats(&[update]).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_comments_skipped_and_duplicates_refused() {
        let text = "# users\n\n{\"cloud_id\": \"00ce69\", \"user_email\": \"a@b.org\", \"user_pw\": \"x\"}\n\
                    {\"cloud_id\": \"00ce6\", \"user_email\": \"a@b.org\", \"user_pw\": \"x\"}\n\
                    {\"cloud_id\": \"00CE69\", \"user_email\": \"c@b.org\", \"user_pw\": \"y\"}\n";
        let parsed = parse_lines(text);
        assert_eq!(parsed.len(), 3);
        assert!(matches!(parsed[0], Parsed::User(3, _)));
        assert!(matches!(&parsed[1], Parsed::Bad(4, r) if r.contains("cloud_id")));
        assert!(matches!(&parsed[2], Parsed::Bad(5, r) if r.contains("line 3")));
        assert_eq!(count_lines(text), 3);
    }

    #[test]
    fn legacy_blob_carries_statistics_and_takes_the_id_from_the_key() {
        let id = CloudId::parse("0a1b2c").unwrap();
        let l = parse_legacy(
            id,
            r#"{"user_email": "c@example.org", "user_pw": "pw", "total_events_logged": 48213,
                "first_timestamp": 1497312000.52, "last_timestamp": "1528848000.25"}"#,
        )
        .unwrap();
        assert_eq!(l.user.cloud_id, id);
        let s = l.stats.unwrap();
        assert_eq!(s.events_logged, 48213);
        assert_eq!(s.first_timestamp, Some(1497312000.52));
        assert_eq!(s.last_timestamp, Some(1528848000.25));
        let none = parse_legacy(id, r#"{"user_email": "c@example.org", "user_pw": "pw"}"#).unwrap();
        assert!(none.stats.is_none());
    }

    #[test]
    fn legacy_problems_are_explained_without_the_password() {
        let id = CloudId::parse("0a1b2c").unwrap();
        for (text, want) in [
            ("not json", "not valid JSON"),
            ("[1]", "not a JSON object"),
            (
                r#"{"cloud_id": "ffffff", "user_email": "c@e.org", "user_pw": "hunter2"}"#,
                "does not match",
            ),
            (
                r#"{"user_email": "c@e.org", "user_pw": "hunter2", "total_events_logged": "many"}"#,
                "must be a number",
            ),
            (r#"{"user_email": "c@e.org", "user_pw": 5}"#, "user_pw"),
        ] {
            let e = parse_legacy(id, text).err().unwrap();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn summary_reads_like_the_issue_asks() {
        let mut s = Summary::default();
        s.count(PutOutcome::Created);
        s.count(PutOutcome::Unchanged);
        s.failed = 2;
        assert_eq!(s.to_string(), "created 1, updated 0, unchanged 1, failed 2");
        assert_eq!(s.done(), 4);
    }
}
