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
//! (see [`super::fold`]). Only counts travel this way.
//!
//! Both loops run as tasks of a [`TaskTracker`] the caller owns and awaits
//! at shutdown, so the publisher's clean-up is part of stopping, not a
//! detached task the runtime may drop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Hub, HubSnapshot};
use crate::clock::now_unix;
use crate::db::{Keys, Redis};

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

/// The Redis layer and key names for `redis_url` and `namespace`, or `None`
/// (logged) when the settings cannot be used; statistics sharing is then
/// off, nothing else stops.
fn open(redis_url: &str, namespace: &str) -> Option<(Redis, Keys)> {
    match Redis::open(redis_url).and_then(|db| Ok((db, Keys::new(namespace)?))) {
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
    redis_url: String,
    namespace: String,
    service: &'static str,
    shutdown: CancellationToken,
) {
    tasks.spawn(async move {
        let Some((db, keys)) = open(&redis_url, &namespace) else {
            return;
        };
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
pub fn spawn_reader(
    tasks: &TaskTracker,
    hub: Hub,
    redis_url: String,
    namespace: String,
    shutdown: CancellationToken,
) {
    tasks.spawn(async move {
        let Some((db, keys)) = open(&redis_url, &namespace) else {
            return;
        };
        let index = keys.services();
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let oldest = now_unix() as i64 - TTL_SECS as i64;
            let mut pipe = redis::pipe();
            pipe.zrembyscore(&index, "-inf", oldest)
                .ignore()
                .zrangebyscore(&index, oldest, "+inf");
            let (keys_now,): (Vec<String>,) =
                match db.send(&format!("ZRANGEBYSCORE {index}"), &pipe).await {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::debug!(error = %e, "Cannot read service statistics from Redis; retrying.");
                        continue;
                    }
                };
            let mut remote = Vec::new();
            if !keys_now.is_empty() {
                let mut mget = redis::cmd("MGET");
                mget.arg(&keys_now);
                let values: Vec<Option<String>> = db
                    .send("MGET (service snapshots)", &mget)
                    .await
                    .unwrap_or_default();
                for (key, v) in keys_now.iter().zip(values) {
                    let Some(v) = v else { continue };
                    match serde_json::from_str::<HubSnapshot>(&v) {
                        Ok(s) => remote.push(s),
                        Err(e) => {
                            tracing::debug!(%key, error = %e, "Skipping a service snapshot that does not parse.");
                        }
                    }
                }
            }
            hub.set_remote(remote);
        }
    });
}
