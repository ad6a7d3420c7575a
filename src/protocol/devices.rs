//! What the client remembers about each local EAGLE-200: its meter's
//! hardware address, found once by `device_list`.
//!
//! Owns the cache and its forgetting: an entry not used for [`IDLE`] is
//! dropped (checked at most every [`SWEEP_EVERY`]), so users removed or
//! moved to another host do not stay in memory for the process's life.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// An entry unused this long is forgotten (a polled device is used every
/// poll interval; one paused for bad credentials looks its meter up again).
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// How often idle entries are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Meter hardware addresses by `cloud_id@host`.
#[derive(Debug)]
pub struct MeterAddresses {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<String, (String, Instant)>,
    last_sweep: Instant,
}

impl Default for MeterAddresses {
    fn default() -> Self {
        MeterAddresses {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }
}

impl MeterAddresses {
    /// The address remembered for `key`, marking it used.
    pub fn get(&self, key: &str) -> Option<String> {
        let mut inner = self.inner.lock().ok()?;
        let now = Instant::now();
        inner.sweep(now);
        let (address, used) = inner.entries.get_mut(key)?;
        *used = now;
        Some(address.clone())
    }

    /// Remembers `address` for `key`.
    pub fn insert(&self, key: String, address: String) {
        if let Ok(mut inner) = self.inner.lock() {
            let now = Instant::now();
            inner.sweep(now);
            inner.entries.insert(key, (address, now));
        }
    }

    /// Entries remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.entries
            .retain(|_, (_, used)| now.duration_since(*used) < IDLE);
        self.entries.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_entries_are_dropped_used_ones_kept() {
        let m = MeterAddresses::default();
        m.insert("00ce69@10.0.0.1".into(), "0x01".into());
        m.insert("00ce6a@10.0.0.2".into(), "0x02".into());
        for _ in 0..40 {
            tokio::time::advance(Duration::from_secs(60)).await;
            assert_eq!(m.get("00ce69@10.0.0.1").as_deref(), Some("0x01"));
        }
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("00ce6a@10.0.0.2"), None);
    }
}
