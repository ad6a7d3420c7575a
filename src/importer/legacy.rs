//! Importing the old system's Redis layout (`users import
//! --from-legacy-redis URL`): every key that is a bare cloud id holds a
//! JSON blob with the user and its old statistics.
//!
//! Reaches the legacy Redis only through [`crate::db`], read-only (`SCAN`
//! and `GET`); it never writes there.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{Failure, ImportError, Report, Reporter, Summary, Target};
use crate::cloud_id::CloudId;
use crate::config::redact_url;
use crate::db::{DbError, Redis};
use crate::registry::user::LEGACY_STAT_FIELDS;
use crate::registry::{PutOutcome, Registry, RegistryError, StatsUpdate, User};

/// Keys read from the legacy Redis per `SCAN` call.
const LEGACY_SCAN_COUNT: usize = 1000;

/// A user read from the old system's Redis, with its statistics.
pub(super) struct LegacyUser {
    /// The user, validated.
    pub(super) user: User,
    /// Its old statistics, if it had any.
    pub(super) stats: Option<StatsUpdate>,
}

/// Parses one legacy value (the JSON blob under a bare cloud-id key).
pub(super) fn parse_legacy(id: CloudId, text: &str) -> Result<LegacyUser, String> {
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
    // The URL is in the message already; the reason is what failed.
    let legacy_error = |e: DbError| ImportError::Legacy {
        url: shown.clone(),
        reason: match e {
            DbError::Unavailable { reason, .. } | DbError::Config { reason } => reason,
            DbError::Refused { op, message, .. } => format!("{op} refused: {message}"),
        },
    };
    let legacy = match Redis::connect(legacy_url).await {
        Ok(r) => r,
        Err(e) => {
            return Report {
                summary,
                aborted: Some(legacy_error(e)),
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
            .arg(crate::db::keys::LEGACY_USER_PATTERN)
            .arg("COUNT")
            .arg(LEGACY_SCAN_COUNT);
        let (next, keys): (u64, Vec<String>) = match legacy.send("SCAN", &scan).await {
            Ok(r) => r,
            Err(e) => {
                return Report {
                    summary,
                    aborted: Some(legacy_error(e)),
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
            let values: Vec<Value> = match legacy.send::<Vec<redis::Value>>("GET", &pipe).await {
                Ok(v) => v.into_iter().map(redis_text).collect(),
                Err(e) => {
                    return Report {
                        summary,
                        aborted: Some(legacy_error(e)),
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
                    Err(Failure::Line(reason)) => {
                        summary.failed += 1;
                        reporter.failure(&location, &reason);
                    }
                    Err(Failure::Fatal(e) | Failure::Retry(e)) => {
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
}
