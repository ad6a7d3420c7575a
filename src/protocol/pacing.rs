//! How fast requests go out: the global caps and the per-device pace.
//!
//! Owns the two limits every EAGLE request passes, in this order: first the
//! device's pace ([`DevicePace`], one request per second per EAGLE-200, for
//! the small embedded boxes), then the process-wide [`Caps`] (requests in
//! flight, requests started per second). A request waiting for its device
//! holds no global permit, so 600 meters behind one EAGLE-200 queue on that
//! device alone and never starve relay meters. The client owns both, so the
//! scheduler, on-demand reads and `rainforest fetch` share whatever caps
//! their client was built with. It knows nothing about users or schedules.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The process-wide caps (`max_concurrent_requests`,
/// `max_requests_per_second`).
#[derive(Debug)]
pub struct Caps {
    permits: Semaphore,
    rate: DefaultDirectRateLimiter,
}

impl Caps {
    /// At most `max_concurrent` requests in flight and `max_per_second`
    /// started per second (0 counts as 1).
    pub fn new(max_concurrent: usize, max_per_second: u32) -> Self {
        let rps = NonZeroU32::new(max_per_second).unwrap_or(NonZeroU32::MIN);
        // A burst of a tenth of a second keeps the start of each slot smooth.
        let burst = NonZeroU32::new((max_per_second / 10).max(1)).unwrap_or(NonZeroU32::MIN);
        Caps {
            permits: Semaphore::new(max_concurrent.max(1)),
            rate: RateLimiter::direct(Quota::per_second(rps).allow_burst(burst)),
        }
    }

    /// Waits for a slot under both caps; the request is in flight until the
    /// returned permit drops. `None` only if the semaphore were closed,
    /// which nothing does.
    pub async fn admit(&self) -> Option<SemaphorePermit<'_>> {
        let permit = self.permits.acquire().await.ok();
        self.rate.until_ready().await;
        permit
    }

    /// Permits free now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// One request per period per device, keyed by the device's address.
pub struct DevicePace {
    limiter: DefaultKeyedRateLimiter<String>,
    sweep_every: Duration,
    last_sweep: Mutex<Instant>,
}

impl std::fmt::Debug for DevicePace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePace")
            .field("devices", &self.limiter.len())
            .finish()
    }
}

/// How often devices idle for a whole period are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl DevicePace {
    /// One request per second per device, as EAGLE-200s need.
    pub fn new() -> Self {
        DevicePace::with_period(Duration::from_secs(1), SWEEP_EVERY)
    }

    /// One request per `period` per device; idle devices are dropped at
    /// most every `sweep_every` (tests shorten both).
    pub fn with_period(period: Duration, sweep_every: Duration) -> Self {
        let quota =
            Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        DevicePace {
            limiter: RateLimiter::keyed(quota),
            sweep_every,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `device` may get its next request.
    pub async fn until_ready(&self, device: &str) {
        self.sweep();
        self.limiter.until_key_ready(&device.to_string()).await;
    }

    /// Devices remembered now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no device is remembered.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Drops devices whose pace is back to fresh (idle for a period): they
    /// would get their next request at once anyway, and without this the
    /// map grows with every address ever polled.
    fn sweep(&self) {
        let Ok(mut last) = self.last_sweep.lock() else {
            return;
        };
        if last.elapsed() >= self.sweep_every {
            *last = Instant::now();
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

impl Default for DevicePace {
    fn default() -> Self {
        DevicePace::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_devices_are_forgotten() {
        let pace = DevicePace::with_period(Duration::from_millis(20), Duration::ZERO);
        pace.until_ready("10.0.0.1:80").await;
        pace.until_ready("10.0.0.2:80").await;
        assert_eq!(pace.len(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pace.until_ready("10.0.0.3:80").await;
        assert_eq!(pace.len(), 1, "only the device just used is kept");
    }

    #[tokio::test]
    async fn a_device_waits_for_its_period_others_do_not() {
        let pace = DevicePace::with_period(Duration::from_millis(300), SWEEP_EVERY);
        pace.until_ready("a").await;
        let t = Instant::now();
        pace.until_ready("b").await;
        assert!(t.elapsed() < Duration::from_millis(100));
        pace.until_ready("a").await;
        assert!(t.elapsed() >= Duration::from_millis(250));
    }
}
