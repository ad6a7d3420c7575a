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

use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Hub, HubSnapshot};
use crate::clock::now_unix;

/// How often snapshots are published and read.
const EVERY: Duration = Duration::from_secs(5);
/// A published snapshot outlives a few missed publications, then expires.
const TTL_SECS: u64 = 30;
/// How long the publisher's clean-up may take at shutdown (Redis down:
/// the keys expire by themselves anyway).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The sorted set indexing the published snapshots.
fn index_key(namespace: &str) -> String {
    format!("{namespace}:services")
}

/// Where one instance publishes.
fn instance_key(namespace: &str, service: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "host" } else { &host };
    format!(
        "{namespace}:service:{service}:{host}-{}",
        std::process::id()
    )
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
        let key = instance_key(&namespace, service);
        let index = index_key(&namespace);
        let mut conn = None;
        let mut failing = false;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if conn.is_none() {
                conn = crate::tokens::redis_connection(&redis_url).await.ok();
            }
            let Some(c) = conn.as_mut() else { continue };
            let body = match serde_json::to_string(&hub.snapshot()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot encode the statistics snapshot; not publishing it.");
                    continue;
                }
            };
            let result: redis::RedisResult<()> = redis::pipe()
                .set_ex(&key, body, TTL_SECS)
                .ignore()
                .zadd(&index, &key, now_unix() as i64)
                .ignore()
                .query_async(c)
                .await;
            match (result, failing) {
                (Err(e), false) => {
                    failing = true;
                    tracing::warn!(%key, error = %e, "Cannot publish service statistics to Redis; retrying.");
                }
                (Ok(()), true) => failing = false,
                _ => {}
            }
        }
        let Some(c) = conn.as_mut() else { return };
        let cleanup = async {
            let _: () = c.del(&key).await?;
            c.zrem::<_, _, ()>(&index, &key).await
        };
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
        let index = index_key(&namespace);
        let mut conn = None;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if conn.is_none() {
                conn = crate::tokens::redis_connection(&redis_url).await.ok();
            }
            let Some(c) = conn.as_mut() else { continue };
            let oldest = now_unix() as i64 - TTL_SECS as i64;
            let _: redis::RedisResult<()> = c.zrembyscore(&index, "-inf", oldest).await;
            let keys: Vec<String> = match c.zrangebyscore(&index, oldest, "+inf").await {
                Ok(k) => k,
                Err(_) => continue,
            };
            let mut remote = Vec::new();
            if !keys.is_empty() {
                let values: redis::RedisResult<Vec<Option<String>>> = c.mget(&keys).await;
                for (key, v) in keys.iter().zip(values.unwrap_or_default()) {
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
