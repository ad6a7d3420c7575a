//! The one Redis connection type: timeouts, reconnects, and sending.
//!
//! Every Redis user (registry, tokens, archive lock, importer, service
//! statistics) holds a [`Redis`]; clones share one self-healing,
//! multiplexed connection ([`ConnectionManager`]). The URL is checked when
//! the value is made, and the connection opened by [`Redis::connect`] or on
//! first use ([`Redis::open`]), so a rotator whose store enforces
//! conditional writes never needs Redis at all.
//!
//! `rediss://` speaks TLS (rustls) and checks the server's certificate
//! against the system's trust store, or only against the PEM file named by
//! the URL's `ca_file` parameter (`rediss://user:pw@host:6380/0?ca_file=/etc/rainforest/redis-ca.pem`)
//! for a private CA. The CA travels in the URL because the URL is the one
//! thing every Redis user (registry, tokens, archive lock, the statistics
//! of split services) is given, so it cannot be set for some and forgotten
//! for others. A user name in the URL logs in as that ACL user.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, FromRedisValue, Pipeline, RedisError};
use tokio::sync::OnceCell;

use super::DbError;
use crate::config::redact_url;

/// How long one connection attempt may take. Redis answers a connect in
/// milliseconds on a LAN; two seconds tells "down" from "slow" quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command or pipelined batch may wait for its answer. The
/// largest round trips (1000 pipelined `HGETALL`s while loading users, a
/// statistics write for every meter at once) take well under a second on a
/// healthy Redis, so ten seconds is a wide margin. Short enough for the
/// archive lock: connect plus one answer (12 s) is noticed well within its
/// 60 s ttl, and its renewal (every 20 s, given up at 40 s) still gets two
/// tries when the first times out.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect attempts after the connection broke before calls fail with
/// [`DbError::Unavailable`]; kept low so an outage is reported in well
/// under a poll interval. Later calls start a fresh attempt.
const RECONNECT_RETRIES: usize = 1;
/// Shortest and longest pause between reconnect attempts.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// A connection to one Redis; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: ::redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// `Redis at <url>` with the password redacted, for messages.
    target: String,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("target", &self.inner.target)
            .field("connected", &self.inner.conn.initialized())
            .finish()
    }
}

/// One command or a pipeline, for [`Redis::send`].
#[derive(Clone, Copy)]
pub enum Request<'a> {
    /// A single command.
    Cmd(&'a Cmd),
    /// Commands sent together in one round trip.
    Pipe(&'a Pipeline),
}

impl<'a> From<&'a Cmd> for Request<'a> {
    fn from(cmd: &'a Cmd) -> Self {
        Request::Cmd(cmd)
    }
}

impl<'a> From<&'a Pipeline> for Request<'a> {
    fn from(pipe: &'a Pipeline) -> Self {
        Request::Pipe(pipe)
    }
}

impl Redis {
    /// Checks `url` (`redis[s]://[user][:password@]host[:port][/db][?ca_file=PATH]`)
    /// and reads its CA file without connecting; the connection opens on
    /// first use.
    pub fn open(url: &str) -> Result<Redis, DbError> {
        let shown = redact_url(url);
        let unusable = |e: &dyn fmt::Display| DbError::Config {
            reason: format!(
                "Redis URL {shown} is not usable: {e}; use \
                 redis[s]://[user][:password@]host[:port][/db][?ca_file=/path/ca.pem]"
            ),
        };
        let (url, ca) = split_ca_file(url).map_err(|e| unusable(&e))?;
        let client = match ca {
            None => ::redis::Client::open(url.as_str()),
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|e| DbError::Config {
                    reason: format!(
                        "cannot read the Redis CA file {path} (ca_file in the Redis URL {shown}): {e}"
                    ),
                })?;
                let certs = ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                ::redis::Client::build_with_tls(url.as_str(), certs)
            }
        }
        .map_err(|e| unusable(&e))?;
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                conn: OnceCell::new(),
                target: format!("Redis at {shown}"),
            }),
        })
    }

    /// Connects to `url` now and checks that Redis answers `PING`.
    ///
    /// Fails with [`DbError::Unavailable`] when Redis cannot be reached now;
    /// once connected, later outages are survived (calls fail until Redis
    /// is back, then work again on the same value).
    pub async fn connect(url: &str) -> Result<Redis, DbError> {
        let redis = Redis::open(url)?;
        redis.ping().await?;
        Ok(redis)
    }

    /// `Redis at <url>` with the password redacted, for messages.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Checks Redis answers `PING`.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.send("PING", &::redis::cmd("PING")).await
    }

    /// Sends a command or pipeline; `op` names it (and its key) in errors.
    ///
    /// A refused connection is retried once: nothing was sent, and the
    /// first call after Redis comes back can meet the connection manager's
    /// last failed attempt; the retry waits for the fresh one instead of
    /// reporting an outage that is already over.
    pub async fn send<'a, T: FromRedisValue>(
        &self,
        op: &str,
        request: impl Into<Request<'a>>,
    ) -> Result<T, DbError> {
        let request = request.into();
        let mut conn = self.connection().await?;
        let mut retried = false;
        loop {
            let result = match request {
                Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Request::Pipe(pipe) => pipe.query_async(&mut conn).await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if !retried && e.is_connection_refusal() => retried = true,
                Err(e) => return Err(self.error(op, &e)),
            }
        }
    }

    /// Sorts a failure met during `op` (for replies a pipeline with
    /// `ignore_errors` hands back one by one).
    pub fn error(&self, op: &str, e: &RedisError) -> DbError {
        DbError::classify(&self.inner.target, op, e)
    }

    /// The shared connection, opened on first use. A failed first attempt
    /// is not remembered: the next call tries again.
    async fn connection(&self) -> Result<ConnectionManager, DbError> {
        let conn = self
            .inner
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_min_delay(RECONNECT_MIN_DELAY)
                    .set_max_delay(RECONNECT_MAX_DELAY)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                ConnectionManager::new_with_config(self.inner.client.clone(), config).await
            })
            .await
            // Whatever stops the first connection (down, wrong password,
            // wrong database number) is for the operator to check.
            .map_err(|e| DbError::Unavailable {
                target: self.inner.target.clone(),
                reason: format!("cannot connect: {e}"),
            })?;
        Ok(conn.clone())
    }
}

/// `url` without its `ca_file` parameter, and that parameter. Only a
/// `rediss://` URL may name a CA: on a plain connection it would silently
/// protect nothing.
fn split_ca_file(url: &str) -> Result<(String, Option<String>), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let mut ca = None;
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        if k == "ca_file" {
            ca = Some(v.into_owned());
        } else {
            rest.push((k.into_owned(), v.into_owned()));
        }
    }
    let Some(ca) = ca else {
        return Ok((url.to_string(), None));
    };
    if parsed.scheme() != "rediss" {
        return Err("ca_file needs a rediss:// (TLS) URL".into());
    }
    if ca.is_empty() {
        return Err("ca_file is empty".into());
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((parsed.to_string(), Some(ca)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_refused_without_connecting_and_without_its_password() {
        let e = Redis::open("http://:hunter2@example.com/").expect_err("not redis://");
        assert!(matches!(e, DbError::Config { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let r = Redis::open("redis://:hunter2@127.0.0.1:1/0").expect("valid URL");
        assert!(!r.target().contains("hunter2"), "{}", r.target());
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn ca_file_is_taken_out_of_a_rediss_url_and_refused_elsewhere() {
        let (url, ca) = split_ca_file("rediss://u:p@h:6380/2?ca_file=%2Fx%2Fca.pem&protocol=resp3")
            .expect("valid");
        assert_eq!(url, "rediss://u:p@h:6380/2?protocol=resp3");
        assert_eq!(ca.as_deref(), Some("/x/ca.pem"));
        let (url, ca) = split_ca_file("rediss://h/0?ca_file=/x/ca.pem").expect("valid");
        assert_eq!(
            (url.as_str(), ca.as_deref()),
            ("rediss://h/0", Some("/x/ca.pem"))
        );
        assert!(split_ca_file("redis://h/0?ca_file=/x/ca.pem").is_err());
        let e = Redis::open("rediss://:hunter2@h/0?ca_file=/nonexistent/ca.pem")
            .expect_err("missing CA file");
        let text = e.to_string();
        assert!(
            text.contains("/nonexistent/ca.pem") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_naming_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let e = Redis::connect(&format!("redis://:hunter2@127.0.0.1:{port}/"))
            .await
            .expect_err("nothing listens there");
        let text = e.to_string();
        assert!(e.is_unavailable(), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(super::super::CHECK_REDIS), "{text}");
    }
}
