//! Where a meter's latest summation slot and its open gaps are kept: Redis
//! (through [`crate::db`], key names in [`crate::db::Keys`]) so a restart,
//! or another pinger taking the meter over, knows them; or memory when the
//! registry is a users file (a restart then forgets, and says so at start).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::cloud_id::CloudId;
use crate::db::{DbError, Keys, Redis};

use super::gaps::Gap;

/// The backfill state of every meter.
#[derive(Debug)]
pub enum Store {
    /// Kept in Redis.
    Redis {
        /// The one connection.
        db: Redis,
        /// Key names under the deployment's namespace.
        keys: Keys,
    },
    /// Kept in this process only.
    Memory(Mutex<MemoryState>),
}

/// [`Store::Memory`]'s contents.
#[derive(Debug, Default)]
pub struct MemoryState {
    last: HashMap<CloudId, i64>,
    gaps: HashMap<CloudId, Vec<Gap>>,
}

impl Store {
    /// Records `slot_ms` as meter `id`'s latest summation slot and returns
    /// the one before it, in one round trip.
    pub async fn swap_last(&self, id: CloudId, slot_ms: i64) -> Result<Option<i64>, DbError> {
        match self {
            Store::Redis { db, keys } => {
                let key = keys.backfill_last();
                let mut pipe = ::redis::pipe();
                pipe.atomic()
                    .hget(&key, id.as_str())
                    .hset(&key, id.as_str(), slot_ms)
                    .ignore();
                let (previous,): (Option<i64>,) =
                    db.send(&format!("HGET/HSET {key}"), &pipe).await?;
                Ok(previous)
            }
            Store::Memory(state) => Ok(lock(state).last.insert(id, slot_ms)),
        }
    }

    /// Meter `id`'s open gaps, oldest first.
    pub async fn gaps(&self, id: CloudId) -> Result<Vec<Gap>, DbError> {
        match self {
            Store::Redis { db, keys } => {
                let key = keys.backfill_gaps(id);
                let mut cmd = ::redis::cmd("HGETALL");
                cmd.arg(&key);
                let map: HashMap<String, String> = db.send(&format!("HGETALL {key}"), &cmd).await?;
                let mut gaps: Vec<Gap> = map
                    .iter()
                    // A field this version cannot read is left alone rather
                    // than failing the meter's backfill.
                    .filter_map(|(s, e)| {
                        Some(Gap {
                            start_ms: s.parse().ok()?,
                            end_ms: e.parse().ok()?,
                        })
                    })
                    .collect();
                gaps.sort();
                Ok(gaps)
            }
            Store::Memory(state) => {
                let mut gaps = lock(state).gaps.get(&id).cloned().unwrap_or_default();
                gaps.sort();
                Ok(gaps)
            }
        }
    }

    /// Replaces gap `old` of meter `id` by `new` (none: it is closed), and
    /// adds nothing else; `old` none adds `new`.
    pub async fn replace(
        &self,
        id: CloudId,
        old: Option<Gap>,
        new: Option<Gap>,
    ) -> Result<(), DbError> {
        match self {
            Store::Redis { db, keys } => {
                let key = keys.backfill_gaps(id);
                let mut pipe = ::redis::pipe();
                pipe.atomic();
                if let Some(old) = old {
                    pipe.hdel(&key, old.start_ms).ignore();
                }
                if let Some(new) = new {
                    pipe.hset(&key, new.start_ms, new.end_ms).ignore();
                }
                db.send::<()>(&format!("update {key}"), &pipe).await
            }
            Store::Memory(state) => {
                let mut state = lock(state);
                let gaps = state.gaps.entry(id).or_default();
                if let Some(old) = old {
                    gaps.retain(|g| g.start_ms != old.start_ms);
                }
                gaps.extend(new);
                Ok(())
            }
        }
    }
}

fn lock(state: &Mutex<MemoryState>) -> std::sync::MutexGuard<'_, MemoryState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}
