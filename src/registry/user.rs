//! One registered user: which meter, how to reach it, and whether to poll it.
//!
//! Owns the [`User`] type, its validation rules and the old system's
//! JSON-lines format (`{"cloud_id": "00ce69", "user_email": ..., "user_pw": ...}`),
//! both reading it and writing it back. Every way a user enters the program
//! (users file, Redis hash, API, import) ends in [`User::validate`], so the
//! rules live here once. It does no I/O and must not log: callers add the
//! file, line or key to a [`ValidationError`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::cadence::{self, Cadence};
use crate::cloud_id::CloudId;
use crate::protocol::{LocalHost, Source};
use crate::secret::Secret;

/// Longest e-mail address accepted (the SMTP limit for a forward path).
pub const MAX_EMAIL_LEN: usize = 254;

/// Fields the old system wrote into each user's line next to the
/// credentials. They are accepted and ignored so an old file loads as is;
/// statistics now live apart from credentials (see [`super::redis`]).
pub const LEGACY_STAT_FIELDS: &[&str] =
    &["total_events_logged", "first_timestamp", "last_timestamp"];

/// The fields a user line may carry, for the "unknown field" message.
const KNOWN_FIELDS: &str =
    "cloud_id, user_email, user_pw, active, local, summation_interval, price_interval";

/// A registered user: one EAGLE gateway and the credentials that unlock it.
///
/// `Debug` is safe to log: both secrets redact themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The gateway's id; the key everything else is stored under.
    pub cloud_id: CloudId,
    /// The account e-mail, sent to the relay as the `User` header.
    pub user_email: String,
    /// The account password for the relay; may be empty for a local user.
    pub user_pw: Secret,
    /// Whether the scheduler polls this meter; inactive users are kept, not
    /// polled.
    pub active: bool,
    /// Set for an EAGLE-200 read on the customer's LAN instead of through
    /// the relay.
    pub local: Option<LocalSource>,
    /// This meter's own summation and price cadences (`None`: the
    /// configuration's; 0: off).
    pub cadence: Cadence,
}

/// How to reach an EAGLE-200 directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSource {
    /// `host`, `host:port` or an `http(s)://` base URL.
    pub host: String,
    /// The device's install code (its HTTP Basic password).
    pub install_code: Secret,
}

/// Why a user record is rejected: the field (dotted for nested ones, e.g.
/// `local.host`) and what is wrong with it. Never carries a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct ValidationError {
    /// The offending field, as named in the file or hash.
    pub field: String,
    /// What is wrong and what a valid value looks like.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl User {
    /// Where the scheduler reads this meter from, with the credentials it
    /// needs: the relay unless a local EAGLE-200 is configured.
    pub fn source(&self) -> Source {
        match &self.local {
            Some(local) => Source::Local {
                host: local.host.clone(),
                install_code: local.install_code.clone(),
            },
            None => Source::Relay {
                user: self.user_email.clone(),
                password: self.user_pw.clone(),
            },
        }
    }

    /// Checks every field; the fields are public, so anything that stores a
    /// user calls this first rather than trusting how it was built.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_email(&self.user_email)?;
        if self.local.is_none() && self.user_pw.is_empty() {
            return Err(ValidationError::new(
                "user_pw",
                "must not be empty for a relay user (set the account password, or `local` for an EAGLE-200)",
            ));
        }
        check_secret_chars("user_pw", &self.user_pw)?;
        if let Some(local) = &self.local {
            check_host(&local.host)?;
            if local.install_code.is_empty() {
                return Err(ValidationError::new(
                    "local.install_code",
                    "must not be empty (it is printed on the EAGLE-200's label)",
                ));
            }
            check_secret_chars("local.install_code", &local.install_code)?;
        }
        Ok(())
    }

    /// Parses one line of the users file: a JSON object in the old format.
    pub fn from_json_line(line: &str) -> Result<User, ValidationError> {
        // Parse to a `Value` first: serde_json's syntax errors never quote the
        // input, while its type errors would (and could quote a password).
        let value: Value = serde_json::from_str(line)
            .map_err(|e| ValidationError::new("(line)", format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => User::from_json_map(&map),
            _ => Err(ValidationError::new(
                "(line)",
                "must be one JSON object like {\"cloud_id\": \"00ce69\", \"user_email\": ..., \"user_pw\": ...}",
            )),
        }
    }

    /// Builds a user from a JSON object in the old format and validates it.
    ///
    /// The legacy statistics fields ([`LEGACY_STAT_FIELDS`]) are ignored;
    /// any other unknown field is rejected by name, since it is most likely a
    /// typo of a setting that would otherwise silently not apply.
    pub fn from_json_map(map: &Map<String, Value>) -> Result<User, ValidationError> {
        for key in map.keys() {
            let known = matches!(
                key.as_str(),
                "cloud_id" | "user_email" | "user_pw" | "active" | "local"
            ) || key == cadence::SUMMATION_FIELD
                || key == cadence::PRICE_FIELD
                || LEGACY_STAT_FIELDS.contains(&key.as_str());
            if !known {
                return Err(unknown_field(key, KNOWN_FIELDS));
            }
        }
        let cloud_id = match map.get("cloud_id") {
            Some(Value::String(s)) => parse_cloud_id(s)?,
            Some(_) => {
                return Err(ValidationError::new(
                    "cloud_id",
                    "must be a string like \"00ce69\"",
                ));
            }
            None => return Err(missing("cloud_id")),
        };
        let user_email = match map.get("user_email") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ValidationError::new("user_email", "must be a string")),
            None => return Err(missing("user_email")),
        };
        let user_pw = match map.get("user_pw") {
            Some(Value::String(s)) => Secret::new(s.as_str()),
            None | Some(Value::Null) => Secret::new(""),
            Some(_) => return Err(ValidationError::new("user_pw", "must be a string")),
        };
        let active = match map.get("active") {
            Some(Value::Bool(b)) => *b,
            None | Some(Value::Null) => true,
            Some(_) => return Err(ValidationError::new("active", "must be true or false")),
        };
        let local = match map.get("local") {
            None | Some(Value::Null) => None,
            Some(Value::Object(local)) => Some(local_from_map(local)?),
            Some(_) => {
                return Err(ValidationError::new(
                    "local",
                    "must be an object like {\"host\": \"192.168.1.20\", \"install_code\": \"...\"}",
                ));
            }
        };
        let cadence = Cadence::from_json_map(map)?;
        let user = User {
            cloud_id,
            user_email,
            user_pw,
            active,
            local,
            cadence,
        };
        user.validate()?;
        Ok(user)
    }

    /// The user as one line of the users file, in the old format, without a
    /// trailing newline.
    ///
    /// This is the one place a password is serialised in clear: the users
    /// file *is* the credential store when Redis is not used. `active` is
    /// written only when false, so lines stay identical to the old system's.
    pub fn to_file_line(&self) -> String {
        let line = FileLine {
            cloud_id: self.cloud_id.as_str(),
            user_email: &self.user_email,
            user_pw: self.user_pw.expose(),
            active: (!self.active).then_some(false),
            local: self.local.as_ref().map(|l| FileLocal {
                host: &l.host,
                install_code: l.install_code.expose(),
            }),
            summation_interval: self.cadence.summation_s,
            price_interval: self.cadence.price_s,
        };
        // Serialising a struct of strings and bools cannot fail; fall back to
        // an empty object rather than panicking.
        serde_json::to_string(&line).unwrap_or_else(|_| String::from("{}"))
    }
}

impl<'de> Deserialize<'de> for User {
    /// Deserialises through [`User::from_json_map`], so serde users get the
    /// same validation and messages as the users file.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        User::from_json_map(&map).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for LocalSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "local EAGLE-200 at {}", self.host)
    }
}

/// The on-disk shape of a line, field order as the old system wrote it.
#[derive(Serialize)]
struct FileLine<'a> {
    cloud_id: &'a str,
    user_email: &'a str,
    user_pw: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    active: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<FileLocal<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summation_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price_interval: Option<u32>,
}

#[derive(Serialize)]
struct FileLocal<'a> {
    host: &'a str,
    install_code: &'a str,
}

fn local_from_map(map: &Map<String, Value>) -> Result<LocalSource, ValidationError> {
    for key in map.keys() {
        if key != "host" && key != "install_code" {
            return Err(unknown_field(&format!("local.{key}"), "host, install_code"));
        }
    }
    let host = match map.get("host") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ValidationError::new("local.host", "must be a string")),
        None => return Err(missing("local.host")),
    };
    let install_code = match map.get("install_code") {
        Some(Value::String(s)) => Secret::new(s.as_str()),
        Some(_) => {
            return Err(ValidationError::new(
                "local.install_code",
                "must be a string",
            ));
        }
        None => return Err(missing("local.install_code")),
    };
    Ok(LocalSource { host, install_code })
}

/// Parses a cloud id, naming the field in the error.
pub(crate) fn parse_cloud_id(s: &str) -> Result<CloudId, ValidationError> {
    CloudId::parse(s).map_err(|e| ValidationError::new("cloud_id", e.to_string()))
}

fn missing(field: &str) -> ValidationError {
    ValidationError::new(field, "is missing")
}

fn unknown_field(field: &str, known: &str) -> ValidationError {
    ValidationError::new(
        field,
        format!("unknown field (a typo?); the known fields are {known}"),
    )
}

fn check_email(email: &str) -> Result<(), ValidationError> {
    let fail = |reason: &str| Err(ValidationError::new("user_email", reason));
    if email.is_empty() {
        return fail("must not be empty");
    }
    if email.len() > MAX_EMAIL_LEN {
        return fail("is longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail("must not contain spaces or control characters");
    }
    match email.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        _ => fail("must be an e-mail address like name@example.org"),
    }
}

/// `host[:port]` and nothing else; the one parser is the protocol's, so
/// what passes here is exactly what the client will connect to (where the
/// address itself is checked against `local_networks`).
fn check_host(host: &str) -> Result<(), ValidationError> {
    LocalHost::parse(host)
        .map(|_| ())
        .map_err(|e| ValidationError::new("local.host", e.to_string()))
}

/// Secrets travel in HTTP headers, where a control character is either
/// rejected by the client or splits the header.
fn check_secret_chars(field: &str, secret: &Secret) -> Result<(), ValidationError> {
    if secret.expose().chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters (it is sent in an HTTP header)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<User, ValidationError> {
        User::from_json_line(line)
    }

    #[test]
    fn old_format_line_parses_with_defaults() {
        let u = parse(r#"{"cloud_id": "00CE69", "user_email": "a@b.org", "user_pw": "secret"}"#)
            .unwrap();
        assert_eq!(u.cloud_id.as_str(), "00ce69");
        assert!(u.active);
        assert!(u.local.is_none());
        assert_eq!(
            u.source(),
            Source::Relay {
                user: "a@b.org".into(),
                password: Secret::new("secret")
            }
        );
    }

    #[test]
    fn legacy_stat_fields_are_ignored() {
        let u = parse(
            r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x",
                "total_events_logged": 12, "first_timestamp": 1.5, "last_timestamp": null}"#,
        )
        .unwrap();
        assert_eq!(u.user_email, "a@b.org");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse(
            r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x", "actve": false}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "actve");
        let e = parse(
            r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "local": {"host": "h", "install_code": "c", "port": 80}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "local.port");
    }

    #[test]
    fn local_user_needs_no_password() {
        let u = parse(r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "local": {"host": "10.0.0.2", "install_code": "abc"}}"#)
            .unwrap();
        assert!(matches!(u.source(), Source::Local { ref host, .. } if host == "10.0.0.2"));
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (
                r#"{"cloud_id": "00ce6", "user_email": "a@b.org", "user_pw": "x"}"#,
                "cloud_id",
            ),
            (
                r#"{"cloud_id": 5, "user_email": "a@b.org", "user_pw": "x"}"#,
                "cloud_id",
            ),
            (r#"{"user_email": "a@b.org", "user_pw": "x"}"#, "cloud_id"),
            (
                r#"{"cloud_id": "00ce69", "user_email": "", "user_pw": "x"}"#,
                "user_email",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "ab.org", "user_pw": "x"}"#,
                "user_email",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a @b.org", "user_pw": "x"}"#,
                "user_email",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org"}"#,
                "user_pw",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": ""}"#,
                "user_pw",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "a\nb"}"#,
                "user_pw",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x", "active": "yes"}"#,
                "active",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "local": {"host": "", "install_code": "c"}}"#,
                "local.host",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "local": {"host": "a b", "install_code": "c"}}"#,
                "local.host",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "local": {"host": "h", "install_code": ""}}"#,
                "local.install_code",
            ),
            (
                r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "local": "h"}"#,
                "local",
            ),
        ];
        for (line, field) in cases {
            let e = parse(line).unwrap_err();
            assert_eq!(e.field, field, "{line}: {e}");
        }
        let long = format!(
            r#"{{"cloud_id": "00ce69", "user_email": "{}@b.org", "user_pw": "x"}}"#,
            "a".repeat(250)
        );
        assert_eq!(parse(&long).unwrap_err().field, "user_email");
    }

    #[test]
    fn errors_never_quote_the_password() {
        for line in [r#""hunter2""#, r#"["hunter2"]"#, r#"{"user_pw": "hunter2""#] {
            let e = parse(line).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn file_line_round_trips_and_keeps_the_old_shape() {
        let line = r#"{"cloud_id":"00ce69","user_email":"a@b.org","user_pw":"secret"}"#;
        let u = parse(line).unwrap();
        assert_eq!(u.to_file_line(), line);
        let mut v = u.clone();
        v.active = false;
        v.local = Some(LocalSource {
            host: "10.0.0.2".into(),
            install_code: Secret::new("c0de"),
        });
        v.cadence = Cadence {
            summation_s: Some(30),
            price_s: Some(0),
        };
        assert_eq!(parse(&v.to_file_line()).unwrap(), v);
        assert!(v.to_file_line().contains(r#""price_interval":0"#));
    }

    #[test]
    fn local_host_is_host_port_only() {
        let line = |host: &str| {
            serde_json::json!({"cloud_id": "00ce69", "user_email": "a@b.org",
                "local": {"host": host, "install_code": "c"}})
            .to_string()
        };
        for ok in [
            "10.0.0.2",
            "10.0.0.2:8080",
            "eagle-00ce69.local",
            "[fd00::2]",
        ] {
            assert!(parse(&line(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:28081/internal/admin?x=1",
            "10.0.0.2/cgi-bin",
            "u:p@10.0.0.2",
            "2130706433",
            "a'$(id)'",
        ] {
            assert_eq!(parse(&line(bad)).unwrap_err().field, "local.host", "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let u = parse(r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "hunter2", "local": {"host": "h", "install_code": "s3cret"}}"#)
            .unwrap();
        let shown = format!("{u:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn serde_deserialize_uses_the_same_rules() {
        let u: User = serde_json::from_str(
            r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x"}"#,
        )
        .unwrap();
        assert_eq!(u.cloud_id.as_str(), "00ce69");
        let e = serde_json::from_str::<User>(
            r#"{"cloud_id": "00ce69", "user_email": "a@b.org", "user_pw": "x", "zz": 1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`zz`"), "{e}");
    }
}
