//! What the scheduler and one meter's tasks share: the user's latest
//! settings, the meter's stop signal and its demand pause.
//!
//! Owns the one small allocation kept per meter besides its tasks. It
//! replaces a `tokio::sync::watch` channel (which carries eight wake-up
//! slots and the user inline, ~450 bytes), a child `CancellationToken`
//! (~110 bytes) and a separate pause cell: at 100,000 meters those were
//! ~60 MB. One [`Notify`] wakes whoever waits (the demand task for the
//! stop); a version counter tells a task whether it has seen the latest
//! settings. The streams driver ([`super::streams`]) waits on no handle: the
//! scheduler tells it of changes, and it sees a stop at the meter's next
//! slot. It never decides anything about polling: the demand task sets the
//! pause, the streams driver respects it, and the scheduler alone replaces
//! the settings and stops the meter.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::registry::User;

/// One meter's shared state; the scheduler keeps one per meter and its
/// tasks hold clones of the `Arc`.
#[derive(Debug)]
pub struct MeterHandle {
    user: Mutex<Arc<User>>,
    /// Bumped on each change of the settings, after the new ones are in.
    version: AtomicU64,
    stopped: AtomicBool,
    /// Until when the demand task paused the meter (backoff, rejected
    /// credentials), so its other streams do not hammer it either.
    pause: Mutex<Option<Instant>>,
    notify: Notify,
}

impl MeterHandle {
    /// A running meter with `user`'s settings (version 0).
    pub fn new(user: User) -> Arc<Self> {
        Arc::new(MeterHandle {
            user: Mutex::new(Arc::new(user)),
            version: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            pause: Mutex::new(None),
            notify: Notify::new(),
        })
    }

    /// The latest settings; cheap (an `Arc` clone), so a poll can hold
    /// them across its request while newer ones arrive.
    pub fn user(&self) -> Arc<User> {
        lock(&self.user).clone()
    }

    /// How many times the settings changed; read it before [`Self::user`]
    /// so a change in between is seen as a change next time.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Hands new settings to the meter's tasks, used from their next poll
    /// (nobody waits for a change: the demand task looks at its slot).
    pub fn replace(&self, user: User) {
        *lock(&self.user) = Arc::new(user);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops the meter's tasks (each after its in-flight read).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether [`Self::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Waits until the meter is stopped.
    pub async fn stopped(&self) {
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }

    /// Publishes the demand task's pause (`None`: not paused).
    pub fn set_pause(&self, until: Option<Instant>) {
        *lock(&self.pause) = until;
    }

    /// Whether the demand task has the meter paused at `at`.
    pub fn paused_at(&self, at: Instant) -> bool {
        lock(&self.pause).is_some_and(|until| at < until)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: still usable after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn user(n: u32) -> User {
        crate::simulator::meter_user(n)
    }

    #[test]
    fn a_pause_lasts_until_its_instant() {
        let handle = MeterHandle::new(user(1));
        let now = Instant::now();
        assert!(!handle.paused_at(now));
        handle.set_pause(Some(now + Duration::from_secs(5)));
        assert!(handle.paused_at(now));
        assert!(!handle.paused_at(now + Duration::from_secs(5)));
        handle.set_pause(None);
        assert!(!handle.paused_at(now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_setting_is_read_at_once_and_a_waiting_task_sees_the_stop() {
        let handle = MeterHandle::new(user(1));
        let seen = handle.version();
        let mut newer = user(1);
        newer.user_email = "new@example.com".into();
        handle.replace(newer);
        assert_ne!(handle.version(), seen, "a change is seen as one");
        assert_eq!(handle.user().user_email, "new@example.com");
        let waiter = tokio::spawn({
            let handle = handle.clone();
            async move { handle.stopped().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "a change is not a stop");
        handle.stop();
        waiter.await.expect("waiter");
        assert!(handle.is_stopped());
    }
}
