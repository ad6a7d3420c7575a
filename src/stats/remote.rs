//! Sharing service snapshots through Redis, so the server of a split
//! deployment (separate pinger and rotator containers) can show polls per
//! second and the upload backlog on its status page.
//!
//! Each standalone service publishes its [`Hub`] snapshot every few seconds
//! under `<ns>:service:<service>:<host>-<pid>` with a short expiry (a
//! stopped service disappears by itself) and scores that key with the time
//! in the sorted set `<ns>:services`, so the server finds the live ones
//! without scanning the keyspace. The hub folds them into its own snapshot.
//! Only counts travel this way.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Hub;

/// How often snapshots are published and read.
const EVERY: Duration = Duration::from_secs(5);
/// A published snapshot outlives a few missed publications, then expires.
const TTL_SECS: u64 = 30;

fn instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(
        "{}-{}",
        if host.is_empty() { "host" } else { &host },
        std::process::id()
    )
}

/// Publishes `hub`'s snapshot for `service` until `shutdown`; Redis errors
/// are logged once per outage and retried.
pub fn spawn_publisher(
    hub: Hub,
    redis_url: String,
    namespace: String,
    service: &'static str,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let key = format!("{namespace}:service:{service}:{}", instance());
        let mut conn = None;
        let mut failing = false;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if conn.is_none() {
                conn = crate::db::Redis::unported_connection(&redis_url).await.ok();
            }
            let Some(c) = conn.as_mut() else { continue };
            let body = hub.snapshot().to_string();
            let now = chrono::Utc::now().timestamp();
            let result: redis::RedisResult<()> = redis::pipe()
                .set_ex(&key, body, TTL_SECS)
                .ignore()
                .zadd(format!("{namespace}:services"), &key, now)
                .ignore()
                .query_async(c)
                .await;
            match (result, failing) {
                (Err(e), false) => {
                    failing = true;
                    tracing::warn!(error = %e, "Cannot publish service statistics to Redis; retrying.");
                }
                (Ok(()), true) => failing = false,
                _ => {}
            }
        }
        if let Some(c) = conn.as_mut() {
            let _: redis::RedisResult<()> = c.del(&key).await;
            let _: redis::RedisResult<()> = c.zrem(format!("{namespace}:services"), &key).await;
        }
    });
}

/// Reads every published service snapshot into `hub` until `shutdown`.
pub fn spawn_reader(hub: Hub, redis_url: String, namespace: String, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let index = format!("{namespace}:services");
        let mut conn = None;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if conn.is_none() {
                conn = crate::db::Redis::unported_connection(&redis_url).await.ok();
            }
            let Some(c) = conn.as_mut() else { continue };
            let oldest = chrono::Utc::now().timestamp() - TTL_SECS as i64;
            let _: redis::RedisResult<()> = c.zrembyscore(&index, "-inf", oldest).await;
            let keys: Vec<String> = match c.zrangebyscore(&index, oldest, "+inf").await {
                Ok(k) => k,
                Err(_) => continue,
            };
            let mut remote = Vec::new();
            if !keys.is_empty() {
                let values: redis::RedisResult<Vec<Option<String>>> = c.mget(&keys).await;
                for (k, v) in keys.iter().zip(values.unwrap_or_default()) {
                    let Some(v) = v.and_then(|v| serde_json::from_str::<Value>(&v).ok()) else {
                        continue;
                    };
                    let service = k.rsplit(':').nth(1).unwrap_or("").to_string();
                    remote.push((service, v));
                }
            }
            hub.set_remote(remote);
        }
    });
}
