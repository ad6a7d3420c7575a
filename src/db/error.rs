//! What went wrong talking to Redis, sorted by what the caller does next.
//!
//! Owns the one classifier ([`is_transient`]) that splits a Redis failure
//! into "Redis is not there right now, retry later" and "Redis answered
//! and refused, someone must act", and the one typed error ([`DbError`])
//! every Redis user converts into its own boundary error. It knows no key
//! and no business rule.

use ::redis::RedisError;

/// What an operator should check when Redis cannot be reached; the one
/// text every "Redis is unavailable" message ends with.
pub const CHECK_REDIS: &str = "check that Redis is running and reachable at that address, and the URL's password and database number";

/// A Redis operation that failed.
///
/// The registry, the token store and the archive lock each convert it into
/// their own error (keeping their variants), so the same outage reads the
/// same way whichever of them met it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// Redis could not be reached, timed out, is loading, failing over or
    /// rejected our credentials: retry later (or fix the URL).
    #[error("{target} is unavailable: {reason} ({CHECK_REDIS})")]
    Unavailable {
        /// `Redis at <url, password redacted>`.
        target: String,
        /// The operation and what failed, e.g. `HGETALL ns:user:00ce69 failed: …`.
        reason: String,
    },
    /// Redis answered but refused the command (wrong key type, out of
    /// memory, no permission); retrying will not help until someone acts.
    #[error("{target} refused {op}: {message}")]
    Refused {
        /// As in [`Unavailable`](DbError::Unavailable).
        target: String,
        /// The operation and key.
        op: String,
        /// Redis' message.
        message: String,
    },
    /// The URL or namespace cannot be used.
    #[error("{reason}")]
    Config {
        /// What is wrong and which setting to change.
        reason: String,
    },
}

impl DbError {
    /// Whether retrying later may succeed (Redis was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable { .. })
    }

    /// Sorts `e`, met while doing `op` against `target`, with
    /// [`is_transient`].
    pub fn classify(target: &str, op: &str, e: &RedisError) -> DbError {
        if is_transient(e) {
            DbError::Unavailable {
                target: target.to_string(),
                reason: format!("{op} failed: {e}"),
            }
        } else {
            DbError::Refused {
                target: target.to_string(),
                op: op.to_string(),
                message: e.to_string(),
            }
        }
    }
}

/// Whether a Redis failure means "not reachable right now" rather than a
/// refusal: connection and I/O errors, timeouts, failed authentication
/// (often a password rotated ahead of the URL), and the server codes of a
/// Redis that is starting, failing over, busy with a script or a cluster
/// that is re-sharding.
pub fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(
            e.code(),
            Some(
                "LOADING"
                    | "BUSY"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MASTERDOWN"
                    | "NOAUTH"
                    | "WRONGPASS"
                    | "READONLY"
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redis::ErrorKind;

    /// The error a server reply line such as `-LOADING …` becomes.
    fn server(line: &str) -> RedisError {
        ::redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .and_then(|v| v.extract_error())
            .expect_err("a server error reply")
    }

    #[test]
    fn outages_are_transient() {
        let io = |kind| RedisError::from(std::io::Error::new(kind, "x"));
        for e in [
            io(std::io::ErrorKind::ConnectionRefused),
            io(std::io::ErrorKind::ConnectionReset),
            io(std::io::ErrorKind::TimedOut),
            io(std::io::ErrorKind::UnexpectedEof),
            RedisError::from((ErrorKind::Io, "connection dropped")),
            RedisError::from((ErrorKind::AuthenticationFailed, "invalid password")),
        ] {
            assert!(is_transient(&e), "{e:?}");
        }
    }

    #[test]
    fn every_busy_or_failover_code_is_transient() {
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
            "NOAUTH Authentication required.",
            "WRONGPASS invalid username-password pair",
            "READONLY You can't write against a read only replica.",
        ] {
            let e = server(line);
            assert!(is_transient(&e), "{line}: {e:?}");
            let code = line.split(' ').next().unwrap_or_default();
            assert!(
                DbError::classify("Redis at r", "GET k", &e).is_unavailable(),
                "{code}"
            );
        }
    }

    #[test]
    fn refusals_are_not_transient_and_name_the_operation() {
        for line in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR unknown command",
            "OOM command not allowed when used memory > 'maxmemory'",
            "NOPERM this user has no permissions",
        ] {
            let e = server(line);
            assert!(!is_transient(&e), "{line}");
            let d = DbError::classify("Redis at redis://h:6379/", "HGETALL ns:user:00ce69", &e);
            let text = d.to_string();
            assert!(!d.is_unavailable(), "{text}");
            assert!(
                text.starts_with("Redis at redis://h:6379/ refused HGETALL ns:user:00ce69: "),
                "{text}"
            );
        }
        let client = RedisError::from((ErrorKind::UnexpectedReturnType, "not an integer"));
        assert!(!is_transient(&client));
    }

    #[test]
    fn an_outage_says_what_to_check() {
        let e = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let text = DbError::classify("Redis at redis://h:6379/", "PING", &e).to_string();
        assert!(
            text.starts_with("Redis at redis://h:6379/ is unavailable: PING failed: "),
            "{text}"
        );
        assert!(text.ends_with(&format!("({CHECK_REDIS})")), "{text}");
    }
}
