//! The overview: every active meter with its statistics at one moment,
//! and the counts over it, cached so that status pages and scrapers share
//! registry reads.
//!
//! One registry pass reads the active ids (no credentials) and, batched,
//! their statistics ([`Registry::stats_many`]). The status page and
//! `/api/stats` accept an overview up to [`OVERVIEW_TTL`] old; `/metrics`
//! one up to [`METRICS_MAX_AGE`], so Prometheus scrapes cost at most one
//! registry pass per that period, however many scrapers there are. Reads
//! only; sorting and paging are [`super::table`]'s.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::table::{Direction, SortKey, compare};
use crate::cloud_id::CloudId;
use crate::registry::{MeterState, Registry, RegistryError, UserStats};

/// How long one registry read serves every status page.
pub const OVERVIEW_TTL: Duration = Duration::from_secs(2);
/// How old the counts `/metrics` serves may be: a scrape reads the registry
/// only when the overview is older than this.
pub const METRICS_MAX_AGE: Duration = Duration::from_secs(30);
/// The thresholds of `rainforest_meters_stale{minutes=...}` and of
/// `/api/stats`' `stale_<N>m`: how long without a reading counts as "not
/// reporting".
pub const STALE_MINUTES: [u32; 3] = [5, 10, 60];

/// The active meters and their statistics at one moment, sorted failing
/// first; what the cache holds.
#[derive(Debug)]
pub(crate) struct Overview {
    pub(super) taken_at: Instant,
    pub(super) meters: Vec<Meter>,
    inactive: usize,
    /// Meters whose stored statistics do not parse (shown with none).
    invalid_stats: usize,
}

/// One active meter in the [`Overview`].
#[derive(Debug, Clone)]
pub(super) struct Meter {
    pub(super) cloud_id: CloudId,
    pub(super) stats: UserStats,
}

/// Counts over an [`Overview`] at one moment: the status page's totals,
/// `/api/stats`' `registry` and the `/metrics` registry gauges all come
/// from this one computation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) meters: usize,
    pub(super) ok: usize,
    pub(super) backoff: usize,
    pub(super) auth_failed: usize,
    pub(super) inactive: usize,
    pub(super) without_reading: usize,
    pub(super) invalid_stats: usize,
    /// Active meters whose latest reading is older than each of
    /// [`STALE_MINUTES`] (meters that never reported are counted apart).
    pub(super) stale: [usize; STALE_MINUTES.len()],
}

impl Counts {
    /// Meters silent for more than `minutes`, one of [`STALE_MINUTES`].
    pub(super) fn stale(&self, minutes: u32) -> Option<usize> {
        let i = STALE_MINUTES.iter().position(|m| *m == minutes)?;
        Some(self.stale[i])
    }
}

impl Overview {
    /// Reads the active ids and, in batches, their statistics.
    async fn load(registry: &Registry) -> Result<Overview, RegistryError> {
        let census = registry.census().await?;
        let (ids, total) = (census.active, census.users);
        let stats = registry.stats_many(&ids).await?;
        let mut invalid_stats = 0;
        let mut meters: Vec<Meter> = ids
            .iter()
            .zip(stats)
            .map(|(id, s)| {
                let stats = match s {
                    Ok(s) => s.unwrap_or_default(),
                    Err(e) => {
                        // Reported where it is stored; here it only must not
                        // hide the other meters.
                        tracing::debug!(cloud_id = %id, error = %e, "Showing a meter without its invalid statistics.");
                        invalid_stats += 1;
                        UserStats::default()
                    }
                };
                Meter {
                    cloud_id: *id,
                    stats,
                }
            })
            .collect();
        meters.sort_by(|a, b| compare(a, b, SortKey::State, Direction::Asc));
        Ok(Overview {
            taken_at: Instant::now(),
            // A user added between the two reads must not make this wrap.
            inactive: total.saturating_sub(meters.len()),
            meters,
            invalid_stats,
        })
    }

    /// An overview of `meters` as given (already in the default order).
    #[cfg(test)]
    pub(super) fn of(meters: Vec<Meter>, inactive: usize) -> Overview {
        Overview {
            taken_at: Instant::now(),
            meters,
            inactive,
            invalid_stats: 0,
        }
    }

    /// The counts at `now` (unix seconds; staleness depends on it).
    /// Every active meter's cloud id, in the overview's order.
    pub(crate) fn ids(&self) -> Vec<CloudId> {
        self.meters.iter().map(|m| m.cloud_id).collect()
    }

    pub(super) fn counts(&self, now: f64) -> Counts {
        let mut c = Counts {
            meters: self.meters.len(),
            inactive: self.inactive,
            invalid_stats: self.invalid_stats,
            ..Counts::default()
        };
        for m in &self.meters {
            match m.stats.state {
                MeterState::Ok => c.ok += 1,
                MeterState::Backoff => c.backoff += 1,
                MeterState::AuthFailed => c.auth_failed += 1,
            }
            match m.stats.last_timestamp {
                None => c.without_reading += 1,
                Some(t) => {
                    for (n, minutes) in c.stale.iter_mut().zip(STALE_MINUTES) {
                        if now - t > f64::from(minutes) * 60.0 {
                            *n += 1;
                        }
                    }
                }
            }
        }
        c
    }
}

/// The cached [`Overview`]; one per server.
#[derive(Debug, Default)]
pub(crate) struct OverviewCache {
    // A tokio mutex held across the registry read: concurrent requests on
    // an expired cache wait for the one read instead of each starting one.
    slot: tokio::sync::Mutex<Option<Arc<Overview>>>,
}

impl OverviewCache {
    /// The overview, read afresh when the cached one is older than
    /// [`OVERVIEW_TTL`]: what people look at.
    pub(crate) async fn get(&self, registry: &Registry) -> Result<Arc<Overview>, RegistryError> {
        self.get_within(registry, OVERVIEW_TTL).await
    }

    /// The overview, read afresh when the cached one is older than
    /// `max_age`.
    pub(super) async fn get_within(
        &self,
        registry: &Registry,
        max_age: Duration,
    ) -> Result<Arc<Overview>, RegistryError> {
        let mut slot = self.slot.lock().await;
        if let Some(o) = slot.as_ref()
            && o.taken_at.elapsed() < max_age
        {
            return Ok(Arc::clone(o));
        }
        let fresh = Arc::new(Overview::load(registry).await?);
        *slot = Some(Arc::clone(&fresh));
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{FileRegistry, StatsUpdate, User};
    use crate::secret::Secret;

    fn user(id: &str, active: bool) -> User {
        User {
            cloud_id: CloudId::parse(id).unwrap(),
            user_email: format!("u{id}@example.org"),
            user_pw: Secret::new("pw"),
            active,
            local: None,
            cadence: Default::default(),
        }
    }

    #[test]
    fn counts_states_silence_and_staleness_at_now() {
        let meter = |id: &str, state, last: Option<f64>| Meter {
            cloud_id: CloudId::parse(id).unwrap(),
            stats: UserStats {
                state,
                last_timestamp: last,
                ..UserStats::default()
            },
        };
        let o = Overview::of(
            vec![
                meter("000001", MeterState::AuthFailed, None),
                meter("000002", MeterState::Backoff, Some(0.0)),
                meter("000003", MeterState::Ok, Some(1000.0)),
            ],
            4,
        );
        let c = o.counts(1000.0 + 400.0);
        assert_eq!(
            (c.meters, c.ok, c.backoff, c.auth_failed, c.inactive),
            (3, 1, 1, 1, 4)
        );
        assert_eq!(c.without_reading, 1);
        // 1400 s and 400 s silent: both over 5 minutes, one over 10.
        assert_eq!(c.stale, [2, 1, 0]);
        assert_eq!((c.stale(10), c.stale(7)), (Some(1), None));
    }

    #[tokio::test(start_paused = true)]
    async fn scrapes_reuse_the_overview_until_it_is_older_than_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::File(FileRegistry::new(dir.path().join("users.jl")));
        registry.put(&user("000001", true)).await.unwrap();
        registry.put(&user("000002", false)).await.unwrap();
        let cache = OverviewCache::default();
        let first = cache.get(&registry).await.unwrap();
        assert_eq!(first.counts(0.0).meters, 1);

        registry.put(&user("000003", true)).await.unwrap();
        registry
            .write_stats(&[StatsUpdate::new(CloudId::parse("000003").unwrap())])
            .await
            .unwrap();
        tokio::time::advance(OVERVIEW_TTL + Duration::from_millis(1)).await;
        // Too old for a page, young enough for a scrape: no registry read.
        let scraped = cache.get_within(&registry, METRICS_MAX_AGE).await.unwrap();
        assert!(Arc::ptr_eq(&first, &scraped));
        let page = cache.get(&registry).await.unwrap();
        assert_eq!((page.counts(0.0).meters, page.counts(0.0).inactive), (2, 1));

        tokio::time::advance(METRICS_MAX_AGE).await;
        registry
            .remove(CloudId::parse("000001").unwrap())
            .await
            .unwrap();
        let scraped = cache.get_within(&registry, METRICS_MAX_AGE).await.unwrap();
        assert_eq!(scraped.counts(0.0).meters, 1);
    }
}
