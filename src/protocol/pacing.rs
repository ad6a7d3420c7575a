//! How fast requests go out: the global caps, the per-device pace, and the
//! start deadline.
//!
//! Owns the two limits every EAGLE request passes, in this order: first the
//! device's pace ([`DevicePace`], one request per second per EAGLE-200, for
//! the small embedded boxes), then the process-wide [`Caps`] (requests in
//! flight, requests started per second). A request waiting for its device
//! holds no global permit, so 600 meters behind one EAGLE-200 queue on that
//! device alone and never starve relay meters. The client owns both, so the
//! scheduler, on-demand reads and `rainforest fetch` share whatever caps
//! their client was built with. It knows nothing about users or schedules.
//!
//! Every wait here honours the request's [`Start`]: a scheduled poll that
//! cannot go out by its deadline gets [`Late`] instead of a permit, so an
//! overloaded process skips slots rather than running every poll late. While
//! either cap is short, the next request to go out is the waiter's of
//! highest [`Start::rank`] (earliest first among equals): the scheduler ranks a
//! meter by how many slots it has already skipped, so the meters that
//! skipped least are the ones left waiting, and skips rotate through the
//! fleet. On-demand reads rank above every poll and have no deadline.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// When a request must have gone out to be worth sending, and its place in
/// the queue for the caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Past this instant the request is not sent ([`Late`]); `None` waits
    /// as long as it takes.
    pub by: Option<Instant>,
    /// Higher ranks get freed permits first.
    pub rank: u64,
}

impl Start {
    /// No deadline, first in the queue: on-demand reads and `rainforest
    /// fetch`, which a person is waiting for.
    pub const ANYTIME: Start = Start {
        by: None,
        rank: u64::MAX,
    };

    /// A scheduled poll: sent by `deadline` or not at all.
    pub fn by(deadline: Instant, rank: u64) -> Start {
        Start {
            by: Some(deadline),
            rank,
        }
    }
}

/// A request that could not go out by its [`Start::by`]: the device's pace or
/// the global caps had no room in time. Not a failure of the meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "not sent: no room under the device pace or the global caps within {waited_ms} ms (the start deadline)"
)]
pub struct Late {
    /// How long the request waited before giving up.
    pub waited_ms: u64,
}

impl Late {
    fn since(asked: Instant) -> Late {
        Late {
            waited_ms: asked.elapsed().as_millis() as u64,
        }
    }
}

/// What the caps have let through so far, for the capacity estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Requests that went out.
    pub started: u64,
    /// Requests that went out and have ended (answered or failed).
    pub finished: u64,
    /// Total time permits were held by the requests that finished (µs):
    /// the requests' own round trips, without any queueing.
    pub busy_micros: u64,
}

impl Usage {
    /// What went through since `earlier`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            started: self.started.saturating_sub(earlier.started),
            finished: self.finished.saturating_sub(earlier.finished),
            busy_micros: self.busy_micros.saturating_sub(earlier.busy_micros),
        }
    }

    /// The finished requests' mean round trip in seconds (0: none).
    pub fn mean_round_trip_s(&self) -> f64 {
        if self.finished == 0 {
            0.0
        } else {
            self.busy_micros as f64 / 1e6 / self.finished as f64
        }
    }
}

/// The process-wide caps (`max_concurrent_requests`,
/// `max_requests_per_second`), served from one queue by rank.
///
/// Both caps hand out the same permit: a waiter gets one only when a
/// request may be in flight *and* may start this instant. A second queue
/// for the rate cap (a plain rate limiter after the in-flight cap) would
/// serve its waiters in whatever order their timers fire, so when the rate
/// cap binds the skips would fall at random instead of rotating.
#[derive(Debug)]
pub struct Caps {
    gate: Arc<Gate>,
    max_per_second: u32,
}

/// The queue and the state of both caps.
#[derive(Debug)]
struct Gate {
    max: usize,
    /// Requests started per second.
    rate: f64,
    /// Most starts allowed back to back after a quiet spell.
    burst: f64,
    state: Mutex<GateState>,
    started: AtomicU64,
    finished: AtomicU64,
    busy_micros: AtomicU64,
}

/// A whole start, give or take the rounding of the bucket's arithmetic.
const ONE: f64 = 1.0 - 1e-9;

/// A waiter's place: highest rank first, then first come.
type QueueKey = (Reverse<u64>, u64);

#[derive(Debug)]
struct GateState {
    in_flight: usize,
    /// Starts the rate cap allows right now (a token bucket).
    tokens: f64,
    refilled: Instant,
    /// Highest rank first, then first come; a waiter that gives up removes
    /// its own entry.
    queue: BTreeMap<QueueKey, oneshot::Sender<Permit>>,
    next_seq: u64,
    /// A task is sleeping until the rate cap's next start, to hand it on:
    /// no permit is released in between to do it.
    timer: bool,
}

/// One request in flight; dropping it frees the slot for the best waiter.
#[derive(Debug)]
pub struct Permit {
    /// `None` once disarmed (a hand-over that found its waiter gone).
    gate: Option<Arc<Gate>>,
    since: Instant,
    /// Whether the request went out: a permit refused as late after it was
    /// handed over is no round trip, and gives its start back.
    sent: bool,
}

impl Permit {
    /// When the request went out (when [`Caps::admit`] let it through).
    pub fn sent_at(&self) -> Instant {
        self.since
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            if self.sent {
                gate.busy_micros
                    .fetch_add(self.since.elapsed().as_micros() as u64, Ordering::Relaxed);
                gate.finished.fetch_add(1, Ordering::Relaxed);
            }
            Gate::release(&gate, !self.sent);
        }
    }
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state stays consistent even if a holder panicked: every
        // change is a single step under the lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit not yet sent: [`Caps::admit`] marks it sent once its
    /// waiter takes it in time.
    fn permit(gate: &Arc<Gate>) -> Permit {
        Permit {
            gate: Some(gate.clone()),
            since: Instant::now(),
            sent: false,
        }
    }

    fn refill(&self, st: &mut GateState, now: Instant) {
        let gained = now.saturating_duration_since(st.refilled).as_secs_f64() * self.rate;
        st.tokens = (st.tokens + gained).min(self.burst);
        st.refilled = now;
    }

    /// A permit now, or a place in the queue. Nobody overtakes a waiter: a
    /// newcomer queues behind anyone already waiting, whose rank decides.
    fn take_or_queue(
        gate: &Arc<Gate>,
        rank: u64,
    ) -> Result<Permit, (QueueKey, oneshot::Receiver<Permit>)> {
        let mut st = gate.lock();
        if st.queue.is_empty() && st.in_flight < gate.max {
            gate.refill(&mut st, Instant::now());
            if st.tokens >= ONE {
                st.tokens -= 1.0;
                st.in_flight += 1;
                return Ok(Gate::permit(gate));
            }
        }
        let (tx, rx) = oneshot::channel();
        let key = (Reverse(rank), st.next_seq);
        st.next_seq += 1;
        st.queue.insert(key, tx);
        Gate::dispatch_or_arm(gate, &mut st);
        Err((key, rx))
    }

    /// A request ended (or never went out, `refund`): its slot, and its
    /// start if unused, go to the best waiter.
    fn release(gate: &Arc<Gate>, refund: bool) {
        let mut st = gate.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if refund {
            st.tokens = (st.tokens + 1.0).min(gate.burst);
        }
        Gate::dispatch_or_arm(gate, &mut st);
    }

    /// [`dispatch`](Self::dispatch), and when only the rate cap holds the
    /// waiters back, a timer task to hand on its next start, since no
    /// release may come to do it.
    fn dispatch_or_arm(gate: &Arc<Gate>, st: &mut GateState) {
        if Gate::dispatch(gate, st) && !st.timer {
            st.timer = Gate::arm_timer(gate, st.tokens);
        }
    }

    /// Hands permits to the best waiters while both caps allow; `true` when
    /// waiters remain that only the rate cap holds back.
    fn dispatch(gate: &Arc<Gate>, st: &mut GateState) -> bool {
        while !st.queue.is_empty() && st.in_flight < gate.max {
            gate.refill(st, Instant::now());
            if st.tokens < ONE {
                return true;
            }
            let Some((_, tx)) = st.queue.pop_first() else {
                return false;
            };
            match tx.send(Gate::permit(gate)) {
                Ok(()) => {
                    st.tokens -= 1.0;
                    st.in_flight += 1;
                }
                // The waiter was cancelled (shutdown): the permit must not
                // release what it never took.
                Err(mut unused) => unused.gate = None,
            }
        }
        false
    }

    /// Starts the task that waits for the rate cap's next start; `false`
    /// outside a runtime (then the next release hands it on).
    fn arm_timer(gate: &Arc<Gate>, tokens: f64) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let gate = gate.clone();
        let until_next =
            |tokens: f64, rate: f64| Duration::from_secs_f64((1.0 - tokens).max(0.0) / rate);
        let mut wait = until_next(tokens, gate.rate);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(wait).await;
                let mut st = gate.lock();
                // `timer` stays set while this task lives, so no second
                // one starts.
                if !Gate::dispatch(&gate, &mut st) {
                    st.timer = false;
                    return;
                }
                wait = until_next(st.tokens, gate.rate);
            }
        });
        true
    }

    /// Leaves the queue; `false` when a permit was already handed over.
    fn leave(&self, key: &QueueKey) -> bool {
        self.lock().queue.remove(key).is_some()
    }
}

impl Caps {
    /// At most `max_concurrent` requests in flight and `max_per_second`
    /// started per second (0 counts as 1).
    pub fn new(max_concurrent: usize, max_per_second: u32) -> Self {
        let rps = NonZeroU32::new(max_per_second).unwrap_or(NonZeroU32::MIN);
        // A burst of a tenth of a second keeps the start of each slot smooth.
        let burst = f64::from((rps.get() / 10).max(1));
        Caps {
            gate: Arc::new(Gate {
                max: max_concurrent.max(1),
                rate: f64::from(rps.get()),
                burst,
                state: Mutex::new(GateState {
                    in_flight: 0,
                    tokens: burst,
                    refilled: Instant::now(),
                    queue: BTreeMap::new(),
                    next_seq: 0,
                    timer: false,
                }),
                started: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                busy_micros: AtomicU64::new(0),
            }),
            max_per_second: rps.get(),
        }
    }

    /// Waits for room under both caps, by `start`'s deadline; the request is
    /// in flight until the returned permit drops. Waiters are served by
    /// rank, whichever cap holds them back.
    pub async fn admit(&self, start: Start) -> Result<Permit, Late> {
        let asked = Instant::now();
        let mut permit = match Gate::take_or_queue(&self.gate, start.rank) {
            Ok(permit) => permit,
            Err((key, mut rx)) => {
                let handed = match start.by {
                    None => (&mut rx).await.ok(),
                    Some(by) => match tokio::time::timeout_at(by, &mut rx).await {
                        Ok(handed) => handed.ok(),
                        Err(_) if self.gate.leave(&key) => return Err(Late::since(asked)),
                        // Handed over just as the deadline passed: it is
                        // already in the channel, and ours.
                        Err(_) => rx.try_recv().ok(),
                    },
                };
                let permit = handed.ok_or_else(|| Late::since(asked))?;
                // Handed over in the instant the deadline passed (the timer
                // had not fired yet): too late all the same. Dropping the
                // unsent permit hands it, and its start, to the next waiter.
                if start.by.is_some_and(|by| Instant::now() > by) {
                    return Err(Late::since(asked));
                }
                permit
            }
        };
        self.gate.started.fetch_add(1, Ordering::Relaxed);
        permit.since = Instant::now();
        permit.sent = true;
        Ok(permit)
    }

    /// Permits free now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.gate.max.saturating_sub(self.gate.lock().in_flight)
    }

    /// Requests waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.gate.lock().queue.len()
    }

    /// `max_concurrent_requests` as applied.
    pub fn max_concurrent(&self) -> usize {
        self.gate.max
    }

    /// `max_requests_per_second` as applied.
    pub fn max_per_second(&self) -> u32 {
        self.max_per_second
    }

    /// Requests let through and the time they held their permits.
    pub fn usage(&self) -> Usage {
        Usage {
            started: self.gate.started.load(Ordering::Relaxed),
            finished: self.gate.finished.load(Ordering::Relaxed),
            busy_micros: self.gate.busy_micros.load(Ordering::Relaxed),
        }
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

    /// Waits until `device` may get its next request, or [`Late`] when that
    /// is after `start`'s deadline (its turn is then not used up).
    pub async fn until_ready_by(&self, device: &str, start: Start) -> Result<(), Late> {
        let Some(by) = start.by else {
            self.until_ready(device).await;
            return Ok(());
        };
        let asked = Instant::now();
        tokio::time::timeout_at(by, self.until_ready(device))
            .await
            .map_err(|_| Late::since(asked))
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

    /// One permit; no rate limit to speak of.
    fn one_permit() -> Arc<Caps> {
        Arc::new(Caps::new(1, 1_000_000))
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_permit_goes_to_the_highest_rank_and_the_rest_are_late() {
        let caps = one_permit();
        let held = caps.admit(Start::ANYTIME).await.unwrap();
        let t0 = Instant::now();
        let by = t0 + Duration::from_secs(1);
        let low = tokio::spawn({
            let caps = caps.clone();
            async move { caps.admit(Start::by(by, 0)).await.map(|_| Instant::now()) }
        });
        tokio::task::yield_now().await;
        let high = tokio::spawn({
            let caps = caps.clone();
            async move {
                let p = caps.admit(Start::by(by, 5)).await;
                // Holds the permit past the low waiter's deadline.
                tokio::time::sleep(Duration::from_secs(2)).await;
                p.map(|_| ())
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        assert_eq!(
            high.await.unwrap(),
            Ok(()),
            "the higher rank came later but goes first"
        );
        let late = low.await.unwrap().unwrap_err();
        assert_eq!(late.waited_ms, 1000, "gives up exactly at its deadline");
        assert_eq!(caps.available(), 1, "the permit came back");
        assert_eq!(caps.usage().started, 2);
    }

    /// Real time: the rate cap's clock is the runtime's, and this proves
    /// the order without leaning on paused time.
    #[tokio::test]
    async fn when_the_rate_cap_binds_the_next_start_goes_to_the_highest_rank() {
        // Plenty of permits, one start per 100 ms, none left right now.
        let caps = Arc::new(Caps::new(100, 10));
        let _first = caps.admit(Start::ANYTIME).await.unwrap();
        let by = Instant::now() + Duration::from_secs(2);
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |rank: u64| {
            let (caps, order) = (caps.clone(), order.clone());
            tokio::spawn(async move {
                let permit = caps.admit(Start::by(by, rank)).await;
                order.lock().unwrap().push(rank);
                permit.map(|_| ())
            })
        };
        let low = waiter(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let high = waiter(5);
        assert_eq!(high.await.unwrap(), Ok(()));
        assert_eq!(low.await.unwrap(), Ok(()));
        assert_eq!(
            *order.lock().unwrap(),
            [5, 0],
            "the higher rank came later but starts first"
        );
        assert_eq!(caps.usage().started, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_a_permit_freed_before_its_deadline() {
        let caps = one_permit();
        let held = caps.admit(Start::ANYTIME).await.unwrap();
        let by = Instant::now() + Duration::from_secs(1);
        let waiter = tokio::spawn({
            let caps = caps.clone();
            async move { caps.admit(Start::by(by, 0)).await.map(|_| Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let freed = Instant::now();
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(freed));
    }

    #[tokio::test(start_paused = true)]
    async fn round_trips_are_counted_over_the_requests_that_finished() {
        let quick = Arc::new(Caps::new(4, 1_000_000));
        let a = quick.admit(Start::ANYTIME).await.unwrap();
        let _b = quick.admit(Start::ANYTIME).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(a);
        let used = quick.usage();
        assert_eq!((used.started, used.finished), (2, 1));
        // One finished in 300 ms: not 150 ms averaged over both starts.
        assert!((used.mean_round_trip_s() - 0.3).abs() < 1e-3, "{used:?}");
        // A permit given back at the rate cap's deadline is no round trip.
        let slow = Arc::new(Caps::new(4, 1));
        let first = slow.admit(Start::ANYTIME).await.unwrap();
        let by = Instant::now() + Duration::from_millis(100);
        assert!(slow.admit(Start::by(by, 0)).await.is_err());
        drop(first);
        assert_eq!(slow.usage().finished, 1);
    }

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
