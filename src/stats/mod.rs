//! The statistics hub: one place that knows the live counters of every
//! service running in this process, and turns them into a JSON snapshot
//! (`/api/stats`) or Prometheus text (`/metrics`).
//!
//! Services hand their counters over once at start; the hot paths only bump
//! atomics. Rates (polls per second, lines per second) are computed here when
//! a snapshot is taken, from the difference with the previous sample, never
//! on the hot path. This module reads counters; it changes nothing.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

pub mod remote;

use crate::protocol::ErrorKind;
use crate::rotator::RotatorStats;
use crate::scheduler::Counters;
use crate::spool::{Spool, SpoolStats};

/// Live counters of the services in this process; cheap to clone.
#[derive(Clone, Default)]
pub struct Hub(Arc<Inner>);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

struct Inner {
    started: Instant,
    parts: Mutex<Parts>,
    rates: Mutex<Option<Sample>>,
    /// Snapshots other processes published (service name, snapshot).
    remote: Mutex<Vec<(String, Value)>>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            started: Instant::now(),
            parts: Mutex::new(Parts::default()),
            rates: Mutex::new(None),
            remote: Mutex::new(Vec::new()),
        }
    }
}

#[derive(Default, Clone)]
struct Parts {
    pinger: Option<Arc<Counters>>,
    spool: Option<Spool>,
    rotator: Option<Arc<RotatorStats>>,
}

/// Totals at one moment, kept to compute rates at the next snapshot.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    polls: u64,
    lines: u64,
    uploads: u64,
    last_upload_unix: Option<i64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// An empty hub; services attach their counters as they start.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Registers the pinger's scheduler counters and its spool.
    pub fn attach_pinger(&self, counters: Arc<Counters>, spool: Spool) {
        let mut p = lock(&self.0.parts);
        p.pinger = Some(counters);
        p.spool = Some(spool);
    }

    /// Registers the rotator's counters.
    pub fn attach_rotator(&self, stats: Arc<RotatorStats>) {
        lock(&self.0.parts).rotator = Some(stats);
    }

    /// Replaces the snapshots read from other processes (see [`remote`]).
    pub fn set_remote(&self, remote: Vec<(String, Value)>) {
        *lock(&self.0.remote) = remote;
    }

    fn parts(&self) -> Parts {
        lock(&self.0.parts).clone()
    }

    /// Rates since the previous snapshot (at least a second apart, so two
    /// scrapes in a row do not divide by nothing).
    fn rates(&self, polls: u64, lines: u64, uploads: u64) -> (f64, f64, Option<i64>) {
        let now = Instant::now();
        let mut guard = lock(&self.0.rates);
        let prev = guard.unwrap_or(Sample {
            at: self.0.started,
            polls: 0,
            lines: 0,
            uploads: 0,
            last_upload_unix: None,
        });
        let secs = now.duration_since(prev.at).as_secs_f64();
        let last_upload_unix = if uploads > prev.uploads {
            Some(chrono::Utc::now().timestamp())
        } else {
            prev.last_upload_unix
        };
        let (pps, lps) = if secs > 0.0 {
            (
                polls.saturating_sub(prev.polls) as f64 / secs,
                lines.saturating_sub(prev.lines) as f64 / secs,
            )
        } else {
            (0.0, 0.0)
        };
        if secs >= 1.0 || guard.is_none() {
            *guard = Some(Sample {
                at: now,
                polls,
                lines,
                uploads,
                last_upload_unix,
            });
        }
        (pps, lps, last_upload_unix)
    }

    /// The JSON snapshot behind `/api/stats`: one namespace per service.
    pub fn snapshot(&self) -> Value {
        let parts = self.parts();
        let pinger = parts.pinger.as_ref().map(|c| c.snapshot());
        let polls = pinger.as_ref().map_or(0, |s| s.polls_ok + s.failed());
        let lines = parts
            .spool
            .as_ref()
            .map_or(0, |s| SpoolStats::get(&s.stats().lines_written));
        let rot = parts.rotator.as_ref().map(|r| r.snapshot());
        let uploads = rot.map_or(0, |r| r.uploads_ok);
        let (pps, lps, last_upload) = self.rates(polls, lines, uploads);
        let mut out = json!({
            "uptime_s": self.0.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        });
        if let Some(s) = pinger {
            let failures: serde_json::Map<String, Value> = ErrorKind::ALL
                .iter()
                .zip(s.failures)
                .map(|(k, n)| (k.as_str().to_string(), json!(n)))
                .collect();
            let spool = parts.spool.as_ref().map(|sp| sp.stats());
            out["pinger"] = json!({
                "meters": s.meters,
                "polls_per_s": round2(pps),
                "lines_per_s": round2(lps),
                "ok_total": s.polls_ok,
                "failed_total": s.failed(),
                "failures_total": failures,
                "in_backoff": s.meters_in_backoff,
                "auth_failed": s.meters_auth_failed,
                "missed_slots_total": s.missed_slots,
                "on_time_ratio": if s.slots_polled + s.missed_slots == 0 { 1.0 } else {
                    s.slots_on_time as f64 / (s.slots_polled + s.missed_slots) as f64
                },
                "lag_p50_ms": s.lag_quantile_ms(0.5),
                "lag_p99_ms": s.lag_quantile_ms(0.99),
                "lines_written_total": lines,
                "bytes_written_total": spool.map(|x| SpoolStats::get(&x.bytes_written)),
                "write_errors_total": spool.map(|x| SpoolStats::get(&x.write_errors)),
            });
        }
        if let Some(r) = rot {
            out["rotator"] = json!({
                "files_pending": r.files_pending,
                "oldest_pending_age_s": r.oldest_pending_age_secs,
                "last_upload_at": last_upload.and_then(|t| chrono::DateTime::from_timestamp(t, 0)).map(|t| t.to_rfc3339()),
                "uploads_ok": r.uploads_ok,
                "uploads_failed": r.uploads_failed,
                "merges": r.merges,
                "conflicts": r.conflicts,
                "lines_uploaded": r.lines_uploaded,
                "lines_dropped": r.lines_dropped,
                "quarantined": r.quarantined,
            });
        }
        fold_remote(&mut out, &lock(&self.0.remote));
        out
    }

    /// Everything in the hub in the Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("rainforest");
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "Build information", info);
        registry.register_collector(Box::new(HubCollector(self.parts())));
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics` (Prometheus text) and `/healthz` on `addr` until
/// `shutdown`: what a standalone pinger or rotator exposes (`metrics_listen`),
/// since it has no API server of its own. Only counts are exposed, no
/// meter ids or secrets, so it needs no token.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    hub: Hub,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let hub = hub.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        hub.prometheus(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tracing::info!(%addr, "Serving /metrics and /healthz.");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    }))
}

/// Fills the `pinger` / `rotator` namespaces from other processes'
/// snapshots when this process runs no such service: rates and counts add
/// up across instances, ages take the maximum, times the latest.
fn fold_remote(out: &mut Value, remote: &[(String, Value)]) {
    if remote.is_empty() {
        return;
    }
    out["instances"] = json!(remote.len());
    for service in ["pinger", "rotator"] {
        if out.get(service).is_some() {
            continue;
        }
        let parts: Vec<&Value> = remote
            .iter()
            .filter(|(s, _)| s == service)
            .filter_map(|(_, v)| v.get(service))
            .collect();
        if parts.is_empty() {
            continue;
        }
        let mut folded = serde_json::Map::new();
        for p in &parts {
            let Some(obj) = p.as_object() else { continue };
            for (k, v) in obj {
                let merged = match (folded.get(k), v) {
                    (None, v) => v.clone(),
                    (Some(Value::Number(a)), Value::Number(b)) => {
                        let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
                        if k.contains("age") || k.contains("ratio") || k.contains("lag") {
                            json!(a.max(b))
                        } else {
                            json!(round2(a + b))
                        }
                    }
                    (Some(Value::String(a)), Value::String(b)) => json!(a.max(b)),
                    (Some(a), _) => a.clone(),
                };
                folded.insert(k.clone(), merged);
            }
        }
        out[service] = Value::Object(folded);
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Clone)]
struct HubCollector(Parts);

impl std::fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubCollector")
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for HubCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(c) = &self.0.pinger {
            let s = c.snapshot();
            {
                let mut fam = enc.encode_descriptor(
                    "polls",
                    "Polls by outcome (ok or the failure kind)",
                    None,
                    MetricType::Counter,
                )?;
                let ok = [("outcome", "ok")];
                ConstCounter::new(s.polls_ok).encode(fam.encode_family(&ok)?)?;
                for (k, n) in ErrorKind::ALL.iter().zip(s.failures) {
                    let labels = [("outcome", k.as_str())];
                    ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
                }
            }
            {
                let (buckets, sum, count) = c.latency_histogram();
                let mut h = enc.encode_descriptor(
                    "poll_latency_seconds",
                    "Round trip of EAGLE requests",
                    None,
                    MetricType::Histogram,
                )?;
                h.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
            }
            {
                let mut fam = enc.encode_descriptor(
                    "meters",
                    "Meters scheduled, by state",
                    None,
                    MetricType::Gauge,
                )?;
                let backoff = s.meters_in_backoff - s.meters_auth_failed;
                for (state, n) in [
                    ("ok", s.meters - s.meters_in_backoff),
                    ("backoff", backoff),
                    ("auth_failed", s.meters_auth_failed),
                ] {
                    let labels = [("state", state)];
                    ConstGauge::new(n.max(0)).encode(fam.encode_family(&labels)?)?;
                }
            }
            counter(
                &mut enc,
                "slots_missed",
                "Poll slots skipped because the previous poll overran",
                s.missed_slots,
            )?;
            counter(
                &mut enc,
                "slots_late",
                "Polls that started more than 500 ms after their slot",
                s.slots_polled.saturating_sub(s.slots_on_time),
            )?;
            counter(&mut enc, "slots_polled", "Polls started", s.slots_polled)?;
        }
        if let Some(sp) = &self.0.spool {
            let st = sp.stats();
            counter(
                &mut enc,
                "spool_lines_written",
                "Lines written to spool files",
                SpoolStats::get(&st.lines_written),
            )?;
            counter(
                &mut enc,
                "spool_bytes_written",
                "Bytes written to spool files",
                SpoolStats::get(&st.bytes_written),
            )?;
            counter(
                &mut enc,
                "spool_write_errors",
                "Failed spool writes (retried)",
                SpoolStats::get(&st.write_errors),
            )?;
            counter(
                &mut enc,
                "spool_lines_dropped",
                "Lines dropped because the disk kept failing",
                SpoolStats::get(&st.lines_dropped),
            )?;
        }
        if let Some(r) = &self.0.rotator {
            let r = r.snapshot();
            gauge(
                &mut enc,
                "upload_files_pending",
                "Completed hour files not yet archived",
                r.files_pending as i64,
            )?;
            gauge(
                &mut enc,
                "upload_oldest_pending_age_seconds",
                "Age of the oldest completed hour not yet archived",
                r.oldest_pending_age_secs as i64,
            )?;
            {
                let mut fam = enc.encode_descriptor(
                    "uploads",
                    "Uploads by outcome",
                    None,
                    MetricType::Counter,
                )?;
                for (outcome, n) in [
                    ("ok", r.uploads_ok),
                    ("failed", r.uploads_failed),
                    ("merged", r.merges),
                    ("conflict", r.conflicts),
                ] {
                    let labels = [("outcome", outcome)];
                    ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
                }
            }
            counter(
                &mut enc,
                "upload_lines",
                "Lines uploaded to the archive",
                r.lines_uploaded,
            )?;
            counter(
                &mut enc,
                "upload_lines_dropped",
                "Torn or invalid lines left out of uploads",
                r.lines_dropped,
            )?;
            counter(
                &mut enc,
                "upload_quarantined",
                "Files moved to quarantine",
                r.quarantined,
            )?;
            counter(
                &mut enc,
                "upload_bytes",
                "Gzipped bytes uploaded",
                r.bytes_uploaded,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_build_info_and_pinger_metrics() {
        let hub = Hub::new();
        let counters = Arc::new(Counters::default());
        counters.failure(ErrorKind::Timeout);
        counters.latency(std::time::Duration::from_millis(120));
        lock(&hub.0.parts).pinger = Some(counters);
        let text = hub.prometheus();
        assert!(text.contains("rainforest_build_info{version="), "{text}");
        assert!(
            text.contains("rainforest_polls_total{outcome=\"timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rainforest_poll_latency_seconds_bucket{le=\"0.15\"} 1"),
            "{text}"
        );
        let snap = hub.snapshot();
        assert_eq!(snap["pinger"]["failed_total"], 1);
        assert!(snap.get("rotator").is_none());
    }
}
