//! The Prometheus side of the hub: a prometheus-client [`Collector`] over
//! the live counters, the registry it is registered in (with build info),
//! the text encoding, and the small `/metrics` + `/healthz` server a
//! standalone pinger or rotator runs on `metrics_listen`.
//!
//! Everything Prometheus sees goes through one prometheus-client
//! [`Registry`] per scrape: the API server registers its registry gauges
//! (a collector of its own) next to this one, so the text is produced in one
//! pass, never pieced together by hand. It only reads counters.

use std::net::SocketAddr;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Hub, Parts};
use crate::protocol::ErrorKind;
use crate::spool::SpoolStats;

/// The media type of the Prometheus text format (0.0.4) [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl Hub {
    /// A metrics registry holding `rainforest_build_info` and this hub's
    /// collector, built per scrape; a caller may register more collectors
    /// (all under the `rainforest_` prefix) before [`encode`].
    pub fn metrics_registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("rainforest");
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "Build information", info);
        registry.register_collector(Box::new(HubCollector(self.parts())));
        registry
    }

    /// The hub alone in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        encode(&self.metrics_registry())
    }
}

/// `registry` in the Prometheus text format (0.0.4), [`CONTENT_TYPE`].
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String only fails if a collector fails; a scrape then
    // gets what was written rather than nothing.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "A metrics collector failed; the scrape is incomplete.");
    }
    out
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown`, as a task
/// of `tasks`: what a standalone pinger or rotator exposes
/// (`metrics_listen`), since it has no API server of its own.
///
/// No token, unlike the API server's `/metrics`: this endpoint serves only
/// the service's own counts and durations (no registry gauges, no meter
/// id, e-mail or secret), and is meant for a private network.
pub async fn serve_metrics(
    addr: SocketAddr,
    hub: Hub,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let hub = hub.clone();
                async move { ([("content-type", CONTENT_TYPE)], hub.prometheus()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tracing::info!(%addr, "Serving /metrics and /healthz.");
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(%addr, error = %e, "The metrics server stopped.");
        }
    });
    Ok(())
}

/// Encodes the hub's counters at scrape time (nothing is copied into
/// prometheus-client's own metric types between scrapes).
#[derive(Clone)]
struct HubCollector(Parts);

impl std::fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubCollector")
    }
}

/// One unlabelled counter family (`<name>_total`).
pub fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One unlabelled gauge family.
pub fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One gauge family with one label: a sample per `(label value, value)`.
pub fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, i64)],
) -> Result<(), std::fmt::Error> {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, n) in samples {
        let labels = [(label, *value)];
        ConstGauge::new(*n).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
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
                    "Round trip of answered EAGLE polls, from when the request went out (not counting the wait for the caps)",
                    None,
                    MetricType::Histogram,
                )?;
                h.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
            }
            gauge_family(
                &mut enc,
                "meters",
                "Meters scheduled, by state",
                "state",
                &[
                    ("ok", (s.meters - s.meters_in_backoff).max(0)),
                    (
                        "backoff",
                        (s.meters_in_backoff - s.meters_auth_failed).max(0),
                    ),
                    ("auth_failed", s.meters_auth_failed.max(0)),
                ],
            )?;
            gauge(
                &mut enc,
                "fleet_members",
                "Live pingers sharing the meters, as this one sees them (itself included)",
                s.fleet_members,
            )?;
            gauge(
                &mut enc,
                "fleet_owned_meters",
                "Active meters this pinger owns and polls",
                s.meters,
            )?;
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
            counter(
                &mut enc,
                "polls_skipped_overload",
                "Slots skipped because the poll could not start within max_start_lag (over capacity)",
                s.skipped_overload,
            )?;
            counter(
                &mut enc,
                "backfilled_readings",
                "Summation readings written from meters' history to fill gaps",
                s.backfilled_readings,
            )?;
            {
                let g = ConstGauge::new(s.gaps_open);
                g.encode(enc.encode_descriptor(
                    "gaps_open",
                    "Gaps in meters' summation streams still to fill from their history",
                    None,
                    g.metric_type(),
                )?)?;
            }
            {
                let g = ConstGauge::new(s.capacity_ratio);
                g.encode(enc.encode_descriptor(
                    "capacity_ratio",
                    "Polls per second the caps allow over those the meters need; below 1 the pinger skips slots",
                    None,
                    g.metric_type(),
                )?)?;
            }
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
            counter(
                &mut enc,
                "spool_fsync_errors",
                "Failed fsyncs when an hour's files were sealed or closed (their lines may not be durable)",
                SpoolStats::get(&st.fsync_errors),
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
    use crate::scheduler::Counters;
    use std::sync::Arc;

    #[test]
    fn prometheus_text_has_build_info_and_pinger_metrics_and_no_eof() {
        let hub = Hub::new();
        let counters = Arc::new(Counters::default());
        counters.failure(ErrorKind::Timeout);
        counters.latency(std::time::Duration::from_millis(120));
        counters
            .skipped_overload
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        counters.set_capacity(&crate::scheduler::Capacity::estimate(
            std::time::Duration::from_secs(6),
            std::time::Duration::from_secs(6),
            10_000,
            crate::protocol::pacing::Usage {
                started: 8_192,
                finished: 8_192,
                busy_micros: 8_192 * 3_000_000,
            },
            4_096,
            20_000,
        ));
        super::super::lock(&hub.0.parts).pinger = Some(counters);
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
        assert!(text.contains("rainforest_meters{state=\"ok\"} 0"), "{text}");
        assert!(
            text.contains("rainforest_polls_skipped_overload_total 3"),
            "{text}"
        );
        assert!(text.contains("rainforest_capacity_ratio 0.819"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
