//! The fields of the registry's Redis hashes, and their conversion to and
//! from [`User`] and [`UserStats`]. Pure: no I/O, unit-tested below.
//!
//! `rainforest:user:<id>` fields, all strings:
//!
//! - `user_email`: account e-mail (the relay's `User` header);
//! - `user_pw`: account password, sealed (absent for a local user without one);
//! - `active`: `1` to poll the meter, `0` to keep but not poll it;
//! - `source`: `relay` (the vendor's cloud relay) or `local` (an EAGLE-200 on the LAN);
//! - `host`, `install_code`: only when `source` is `local`; `install_code`
//!   is sealed;
//! - `summation_interval`, `price_interval`: the meter's own cadences in
//!   whole seconds, `0` for off; absent to follow the configuration;
//! - `updated_at`: when the settings last changed, unix seconds (e.g. `1718000000.25`).
//!
//! "Sealed" means `v1:<key id>:<base64 nonce ‖ ciphertext>`, XChaCha20-Poly1305
//! under the credentials key named by its id and bound to this cloud id and
//! field ([`crate::vault`] has the format). A registry given no key (only
//! with `allow_plaintext_credentials`, the users file, or tests) writes them
//! in clear; a clear value written so still reads under a key, until
//! `rainforest users rekey` seals it.
//!
//! `rainforest:stats:<id>` fields, all strings; absent until first known:
//!
//! - `total_events_logged`: readings written, an integer only ever raised
//!   with `HINCRBY`;
//! - `first_timestamp`: unix seconds of the first reading, set once with
//!   `HSETNX`;
//! - `last_timestamp`: unix seconds of the latest reading;
//! - `last_error_kind`, `last_error_at`: the latest failure's kind
//!   (`auth`, `timeout`, `connect`, `relay_error`, `http_status`,
//!   `malformed`) and unix seconds;
//! - `consecutive_failures`: failures in a row, `0` after a success;
//! - `state`: `ok`, `backoff` or `auth_failed`;
//! - `last_demand_kw`: the latest reading's demand in kW;
//! - `spark`: the recent demand history the status page draws.

use std::collections::HashMap;

use ::redis::{FromRedisValue, Value};

use crate::cloud_id::CloudId;
use crate::registry::RegistryError;
use crate::registry::cadence::{self, Cadence};
use crate::registry::stats::{MeterState, UserStats};
use crate::registry::user::{LocalSource, User};
use crate::secret::Secret;
use crate::vault::{self, Sealing, Vault};

/// The hash fields that hold credentials, sealed when a key is configured.
pub const SEALED_FIELDS: [&str; 2] = ["user_pw", "install_code"];

/// Converts an `HGETALL` reply to field -> value, reporting non-text data
/// against the key.
pub(super) fn hash_fields(
    key: &str,
    value: Value,
) -> Result<HashMap<String, String>, RegistryError> {
    HashMap::<String, String>::from_redis_value(value).map_err(|e| RegistryError::Invalid {
        key: key.to_string(),
        field: "(hash)".into(),
        reason: format!("not a hash of text fields: {e}"),
    })
}

/// The stored form of a user's settings (without `updated_at`), in a fixed
/// order, credentials sealed under `vault` (in clear without one). Secrets
/// are exposed here because this is a write to the store.
pub fn user_to_hash(user: &User, vault: Option<&Vault>) -> Vec<(&'static str, String)> {
    let store = |field: &'static str, value: &Secret| match vault {
        Some(v) => v.seal(user.cloud_id, field, value),
        None => value.expose().to_string(),
    };
    let mut fields = vec![
        ("user_email", user.user_email.clone()),
        ("active", if user.active { "1" } else { "0" }.to_string()),
    ];
    if !user.user_pw.is_empty() {
        fields.push(("user_pw", store("user_pw", &user.user_pw)));
    }
    match &user.local {
        None => fields.push(("source", "relay".into())),
        Some(local) => {
            fields.push(("source", "local".into()));
            fields.push(("host", local.host.clone()));
            fields.push(("install_code", store("install_code", &local.install_code)));
        }
    }
    fields.extend(user.cadence.fields().map(|(f, s)| (f, s.to_string())));
    fields
}

/// Opens one stored credential of user `id`, reporting a value this process
/// cannot open against `key` and `field` (never the value), and how it was
/// stored.
pub fn open_field(
    vault: Option<&Vault>,
    id: CloudId,
    key: &str,
    field: &str,
    stored: &str,
) -> Result<(Secret, Sealing), RegistryError> {
    vault::open(vault, id, field, stored).map_err(|e| RegistryError::Invalid {
        key: key.to_string(),
        field: field.to_string(),
        reason: e.to_string(),
    })
}

/// Reads a user back from its hash, opening its credentials with `vault`,
/// and validates it; problems name `key` and the field. Fields this version
/// does not know are ignored.
pub fn user_from_hash(
    id: CloudId,
    key: &str,
    fields: &HashMap<String, String>,
    vault: Option<&Vault>,
) -> Result<User, RegistryError> {
    let open = |field: &str, stored: &str| -> Result<Secret, RegistryError> {
        open_field(vault, id, key, field, stored).map(|(secret, _)| secret)
    };
    let invalid = |field: &str, reason: &str| RegistryError::Invalid {
        key: key.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    let user_email = fields
        .get("user_email")
        .cloned()
        .ok_or_else(|| invalid("user_email", "is missing"))?;
    let active = match fields.get("active").map(String::as_str) {
        Some("1") | None => true,
        Some("0") => false,
        Some(_) => return Err(invalid("active", "must be 1 or 0")),
    };
    let user_pw = match fields.get("user_pw") {
        Some(stored) => open("user_pw", stored)?,
        None => Secret::new(""),
    };
    let local = match fields.get("source").map(String::as_str) {
        Some("relay") => None,
        Some("local") => Some(LocalSource {
            host: fields
                .get("host")
                .cloned()
                .ok_or_else(|| invalid("host", "is missing (required when source is local)"))?,
            install_code: open(
                "install_code",
                fields.get("install_code").ok_or_else(|| {
                    invalid("install_code", "is missing (required when source is local)")
                })?,
            )?,
        }),
        Some(_) => return Err(invalid("source", "must be relay or local")),
        None => return Err(invalid("source", "is missing")),
    };
    let cadence = Cadence::from_text(
        fields.get(cadence::SUMMATION_FIELD).map(String::as_str),
        fields.get(cadence::PRICE_FIELD).map(String::as_str),
    )
    .map_err(|e| invalid(&e.field, &e.reason))?;
    let user = User {
        cloud_id: id,
        user_email,
        user_pw,
        active,
        local,
        cadence,
    };
    user.validate().map_err(|e| {
        // The hash stores `local.host` as plain `host`.
        let field = e.field.strip_prefix("local.").unwrap_or(&e.field);
        invalid(field, &e.reason)
    })?;
    Ok(user)
}

/// Reads statistics back from their hash; problems name `key` and the field.
pub fn stats_from_hash(
    key: &str,
    fields: &HashMap<String, String>,
) -> Result<UserStats, RegistryError> {
    let invalid = |field: &str, reason: &str| RegistryError::Invalid {
        key: key.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    let ts = |field: &str| -> Result<Option<f64>, RegistryError> {
        match fields.get(field) {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(t) if t.is_finite() => Ok(Some(t)),
                _ => Err(invalid(field, "must be unix seconds like 1718000000.25")),
            },
        }
    };
    let total_events_logged = match fields.get("total_events_logged") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| invalid("total_events_logged", "must be a whole number"))?,
    };
    let consecutive_failures = match fields.get("consecutive_failures") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| invalid("consecutive_failures", "must be a whole number"))?,
    };
    let state = match fields.get("state") {
        None => MeterState::Ok,
        Some(v) => v
            .parse::<MeterState>()
            .map_err(|e| invalid("state", &e.to_string()))?,
    };
    Ok(UserStats {
        total_events_logged,
        first_timestamp: ts("first_timestamp")?,
        last_timestamp: ts("last_timestamp")?,
        last_error_kind: fields.get("last_error_kind").cloned(),
        last_error_at: ts("last_error_at")?,
        consecutive_failures,
        state,
        last_demand_kw: ts("last_demand_kw")?,
        spark: fields
            .get("spark")
            .map(|s| crate::stats::Sparkline::decode(s)),
    })
}

/// Unix seconds as Redis stores them (the shortest text that reads back to
/// the same float); non-finite values become "" (not stored).
pub(super) fn format_ts(t: f64) -> String {
    if t.is_finite() {
        t.to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> CloudId {
        CloudId::parse("00ce69").unwrap()
    }

    fn relay_user() -> User {
        User {
            cloud_id: id(),
            user_email: "a@b.org".into(),
            user_pw: Secret::new("pw"),
            active: true,
            local: None,
            cadence: Default::default(),
        }
    }

    fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, String> {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn hash_round_trips_relay_and_local_users() {
        let relay = relay_user();
        let key = "rainforest:user:00ce69";
        assert_eq!(
            user_from_hash(id(), key, &as_map(user_to_hash(&relay, None)), None).unwrap(),
            relay
        );
        let local = User {
            user_pw: Secret::new(""),
            active: false,
            local: Some(LocalSource {
                host: "10.0.0.2".into(),
                install_code: Secret::new("c0de"),
            }),
            ..relay
        };
        let fields = as_map(user_to_hash(&local, None));
        assert!(!fields.contains_key("user_pw"));
        assert_eq!(fields["source"], "local");
        assert_eq!(user_from_hash(id(), key, &fields, None).unwrap(), local);
        let paced = User {
            cadence: Cadence {
                summation_s: Some(0),
                price_s: Some(300),
            },
            ..relay_user()
        };
        let mut fields = as_map(user_to_hash(&paced, None));
        assert_eq!(fields["summation_interval"], "0");
        assert_eq!(user_from_hash(id(), key, &fields, None).unwrap(), paced);
        fields.insert("price_interval".into(), "soon".into());
        let e = user_from_hash(id(), key, &fields, None).unwrap_err();
        assert!(e.to_string().contains("`price_interval`"), "{e}");
    }

    #[test]
    fn invalid_hash_names_key_and_field() {
        let mut fields = as_map(user_to_hash(&relay_user(), None));
        fields.insert("source".into(), "carrier-pigeon".into());
        let e = user_from_hash(id(), "ns:user:00ce69", &fields, None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ns:user:00ce69") && text.contains("`source`"),
            "{text}"
        );
        fields.insert("source".into(), "relay".into());
        fields.remove("user_pw");
        let e = user_from_hash(id(), "ns:user:00ce69", &fields, None).unwrap_err();
        assert!(
            matches!(e, RegistryError::Invalid { ref field, .. } if field == "user_pw"),
            "{e}"
        );
    }

    fn vault() -> Vault {
        let hex = Secret::new("42".repeat(32));
        Vault::new(
            vault::CredentialKey::from_hex(&hex, "test").unwrap(),
            vec![],
        )
    }

    #[test]
    fn credentials_are_sealed_in_the_hash_and_open_only_for_their_user() {
        let v = vault();
        let local = User {
            local: Some(LocalSource {
                host: "10.0.0.2".into(),
                install_code: Secret::new("c0de-1234"),
            }),
            ..relay_user()
        };
        let key = "rainforest:user:00ce69";
        let fields = as_map(user_to_hash(&local, Some(&v)));
        for field in SEALED_FIELDS {
            assert!(
                fields[field].starts_with("v1:"),
                "{field}: {}",
                fields[field]
            );
        }
        assert!(!fields.values().any(|f| f.contains("c0de") || f == "pw"));
        assert_eq!(user_from_hash(id(), key, &fields, Some(&v)).unwrap(), local);
        // Without the key the sealed value is an error naming the key id.
        let e = user_from_hash(id(), key, &fields, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(v.current_id()) && e.contains("`user_pw`"), "{e}");
        // Copied to another user, it does not open.
        let other = CloudId::parse("00ce6a").unwrap();
        let e = user_from_hash(other, "rainforest:user:00ce6a", &fields, Some(&v)).unwrap_err();
        assert!(
            matches!(e, RegistryError::Invalid { ref field, .. } if field == "user_pw"),
            "{e}"
        );
        // A value written in clear before the key existed still reads.
        let clear = as_map(user_to_hash(&local, None));
        assert_eq!(user_from_hash(id(), key, &clear, Some(&v)).unwrap(), local);
    }

    #[test]
    fn stats_hash_parses_and_rejects_garbage() {
        let fields = as_map(vec![
            ("total_events_logged", "12".into()),
            ("first_timestamp", "1718000000.25".into()),
            ("state", "auth_failed".into()),
        ]);
        let s = stats_from_hash("k", &fields).unwrap();
        assert_eq!(s.total_events_logged, 12);
        assert_eq!(s.first_timestamp, Some(1718000000.25));
        assert_eq!(s.state, MeterState::AuthFailed);
        let bad = as_map(vec![("last_timestamp", "yesterday".into())]);
        let e = stats_from_hash("k", &bad).unwrap_err();
        assert!(matches!(e, RegistryError::Invalid { ref field, .. } if field == "last_timestamp"));
    }

    #[test]
    fn timestamps_are_stored_exactly() {
        let t = 1718000000.123456_f64;
        assert_eq!(format_ts(t).parse::<f64>().unwrap(), t);
        assert_eq!(format_ts(f64::NAN), "");
    }
}
