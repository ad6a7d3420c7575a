//! One reading, from the wire to the spool.
//!
//! Both the scheduler's polls and the server's on-demand reads go through
//! [`Poller::poll`], so a reading takes exactly one path into the archive:
//! read the EAGLE, build the [`Record`], append it to the spool. This module
//! does not decide when to poll or what to do after a failure; the scheduler
//! owns that.

use chrono::Utc;
use tokio::time::Instant;

use crate::protocol::{Eagle, ProtocolError};
use crate::record::Record;
use crate::registry::User;
use crate::spool::{Spool, SpoolError};

/// Why a poll produced no line.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The EAGLE or relay failed; see its kind.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The reading was taken but the spool is gone (shutting down).
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Reads meters and writes their records.
#[derive(Clone)]
pub struct Poller {
    eagle: Eagle,
    spool: Spool,
}

impl Poller {
    /// A poller over the shared client and spool.
    pub fn new(eagle: Eagle, spool: Spool) -> Self {
        Poller { eagle, spool }
    }

    /// The spool lines go to.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Reads the user's meter once and appends the record to the spool.
    pub async fn poll(&self, user: &User) -> Result<Record, PollError> {
        let source = user.source();
        let polled_at = Utc::now();
        let started = Instant::now();
        let reading = self.eagle.read_demand(user.cloud_id, &source).await?;
        let latency_ms = started.elapsed().as_millis() as u64;
        let kind = source.kind();
        let record = Record::new(user.cloud_id, polled_at, latency_ms, kind, &reading);
        self.spool
            .append(user.cloud_id, polled_at, record.to_line())
            .await?;
        Ok(record)
    }
}
