//! Sharing service snapshots through Redis, so the server of a split
//! deployment (separate pinger and rotator containers) can show polls per
//! second and the upload backlog on its status page.
//!
//! Each standalone service publishes its [`HubSnapshot`] as JSON every few
//! seconds under `<ns>:service:<service>:<host>-<pid>` with a short expiry
//! (a service that dies disappears by itself) and scores that key with the
//! time in the sorted set `<ns>:services`, so the server finds the live
//! ones without scanning the keyspace. On a clean stop the publisher
//! deletes both before the process exits, so a stopped service vanishes at
//! once instead of lingering for the expiry. The server's reader
//! deserialises them and hands them to its [`Hub`], which folds them in
//! (see [`super::fold`]); it drops index entries whose snapshot expired,
//! so liveness never depends on the hosts' clocks agreeing. Only counts
//! travel this way, over the registry's connection when there is one.
//!
//! Both loops run as tasks of a [`TaskTracker`] the caller owns and awaits
//! at shutdown, so the publisher's clean-up is part of stopping, not a
//! detached task the runtime may drop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Hub, HubSnapshot};
use crate::clock::now_unix;
use crate::config::Config;
use crate::db::{DbError, Keys, Redis};
use crate::registry::Registry;

/// How often snapshots are published and read.
const EVERY: Duration = Duration::from_secs(5);
/// A published snapshot outlives a few missed publications, then expires.
const TTL_SECS: u64 = 30;
/// How long the publisher's clean-up may take at shutdown (Redis down:
/// the keys expire by themselves anyway).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// This process's name among the publishers: `<host>-<pid>`.
fn instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "host" } else { &host };
    format!("{host}-{}", std::process::id())
}

/// The Redis layer and key names statistics are shared through: the
/// registry's connection when the registry is in Redis (so the process
/// opens no second one), else one opened from `redis_url`; `None` without
/// Redis, or (logged) when the settings cannot be used, and then sharing is
/// off while nothing else stops.
pub fn shared_redis(config: &Config, registry: Option<&Registry>) -> Option<(Redis, Keys)> {
    if let Some(Registry::Redis(r)) = registry {
        return Some((r.db().clone(), r.keys().clone()));
    }
    let url = config.redis_url.as_ref()?;
    match Redis::open(url.as_str()).and_then(|db| Ok((db, Keys::new(&config.redis_namespace)?))) {
        Ok(pair) => Some(pair),
        Err(e) => {
            tracing::warn!(error = %e, "Not sharing service statistics through Redis.");
            None
        }
    }
}

/// Publishes `hub`'s snapshot for `service` until `shutdown`, then removes
/// it, as a task of `tasks`. Redis errors are logged once per outage and
/// retried.
pub fn spawn_publisher(
    tasks: &TaskTracker,
    hub: Hub,
    (db, keys): (Redis, Keys),
    service: &'static str,
    shutdown: CancellationToken,
) {
    tasks.spawn(async move {
        let key = keys.service(service, &instance());
        let index = keys.services();
        let mut published = false;
        let mut failing = false;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let body = match serde_json::to_string(&hub.snapshot()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot encode the statistics snapshot; not publishing it.");
                    continue;
                }
            };
            let mut pipe = redis::pipe();
            pipe.set_ex(&key, body, TTL_SECS)
                .ignore()
                .zadd(&index, &key, now_unix() as i64)
                .ignore();
            let result: Result<(), _> = db.send(&format!("publish {key}"), &pipe).await;
            match (result, failing) {
                (Err(e), false) => {
                    failing = true;
                    tracing::warn!(%key, error = %e, "Cannot publish service statistics to Redis; retrying.");
                }
                (Ok(()), _) => {
                    failing = false;
                    published = true;
                }
                _ => {}
            }
        }
        if !published {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.del(&key).ignore().zrem(&index, &key).ignore();
        let op = format!("withdraw {key}");
        let cleanup = db.send::<()>(&op, &pipe);
        match tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await {
            Ok(Ok(())) => tracing::debug!(%key, "Service statistics withdrawn from Redis."),
            Ok(Err(e)) => {
                tracing::warn!(%key, error = %e, "Cannot withdraw service statistics from Redis; they expire within {TTL_SECS} s.");
            }
            Err(_) => {
                tracing::warn!(%key, "Redis did not answer while withdrawing service statistics; they expire within {TTL_SECS} s.");
            }
        }
    });
}

/// Reads every published service snapshot into `hub` until `shutdown`, as
/// a task of `tasks`.
///
/// Liveness comes from the snapshots' own expiry, not from comparing the
/// index scores with this host's clock (a publisher whose clock is behind
/// would vanish): an index entry whose snapshot has expired is dropped.
/// While Redis cannot be read, no remote snapshot is shown rather than an
/// old one.
pub fn spawn_reader(
    tasks: &TaskTracker,
    hub: Hub,
    (db, keys): (Redis, Keys),
    shutdown: CancellationToken,
) {
    tasks.spawn(async move {
        let index = keys.services();
        let mut failing = false;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match read_snapshots(&db, &index).await {
                Ok(remote) => {
                    if failing {
                        failing = false;
                        tracing::info!("Reading service statistics from Redis again.");
                    }
                    hub.set_remote(remote);
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "Cannot read service statistics from Redis; showing none until it answers.");
                    }
                    hub.set_remote(Vec::new());
                }
            }
        }
    });
}

/// The live snapshots listed in `index`; entries whose snapshot expired
/// are removed from it, and snapshots that do not parse are skipped.
async fn read_snapshots(db: &Redis, index: &str) -> Result<Vec<HubSnapshot>, DbError> {
    let mut range = redis::cmd("ZRANGE");
    range.arg(index).arg(0).arg(-1);
    let keys: Vec<String> = db.send(&format!("ZRANGE {index}"), &range).await?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut mget = redis::cmd("MGET");
    mget.arg(&keys);
    let values: Vec<Option<String>> = db.send("MGET (service snapshots)", &mget).await?;
    let mut remote = Vec::new();
    let mut expired = Vec::new();
    for (key, v) in keys.iter().zip(values) {
        let Some(v) = v else {
            expired.push(key);
            continue;
        };
        match serde_json::from_str::<HubSnapshot>(&v) {
            Ok(s) => remote.push(s),
            Err(e) => {
                tracing::debug!(%key, error = %e, "Skipping a service snapshot that does not parse.");
            }
        }
    }
    if !expired.is_empty() {
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(index).arg(&expired);
        db.send::<()>(&format!("ZREM {index}"), &zrem).await?;
    }
    Ok(remote)
}
