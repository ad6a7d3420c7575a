//! One reading, from the wire to the spool, and what it means for the
//! meter's statistics.
//!
//! Both the scheduler's polls and the server's on-demand reads go through
//! [`Poller::poll`], so a reading takes exactly one path into the archive
//! (read the EAGLE, build the [`Record`], append it to the spool) and is
//! counted one way: the [`Polled::stats`] it returns (one event, the
//! reading's time, its demand) is the whole statistics update of an
//! on-demand read. The scheduler adds only what it alone knows (the
//! failure streak, the meter's state, the sparkline) before recording it,
//! and builds a failure's update with [`failure_stats`]. This module does
//! not decide when to poll or what a failure means for the cadence; the
//! scheduler owns that.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::cloud_id::CloudId;
use crate::protocol::{Eagle, ErrorKind, Late, ProtocolError, ReadError, Start};
use crate::record::Record;
use crate::registry::{StatsUpdate, User};
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
    /// Not sent by the start deadline: the slot is skipped, the meter is
    /// not at fault.
    #[error(transparent)]
    Late(#[from] Late),
}

impl From<ReadError> for PollError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Late(late) => PollError::Late(late),
            ReadError::Failed(e) => PollError::Protocol(e),
        }
    }
}

/// A reading that is in the spool, and how it counts in the meter's
/// statistics.
#[derive(Debug, Clone)]
pub struct Polled {
    /// The record as appended to the spool.
    pub record: Record,
    /// One event at the poll's time with its demand. It carries no state
    /// and no streak, so recording it never ends a backoff or an
    /// `auth_failed` pause the scheduler decided on.
    pub stats: StatsUpdate,
    /// When the poll was sent (unix seconds), as stamped in the record.
    pub at: f64,
    /// When the request went out, on the runtime's clock: the scheduler's
    /// lag is from the slot to here.
    pub sent: Instant,
}

/// When a read began waiting for the caps, on the record's clock and the
/// runtime's, to stamp its record with when the request actually left.
pub(crate) struct Asked {
    wall: DateTime<Utc>,
    at: Instant,
}

impl Asked {
    pub(crate) fn now(clock: &Clock) -> Asked {
        Asked {
            wall: clock.now(),
            at: Instant::now(),
        }
    }

    /// `polled_at`, `latency_ms` and the send instant of a reading whose
    /// request left at `sent` (`None`: when it was asked). Under load the
    /// wait for the caps is up to `max_start_lag`; it is neither the
    /// meter's time nor its latency.
    pub(crate) fn stamp(&self, sent: Option<Instant>) -> (DateTime<Utc>, u64, Instant) {
        let sent = sent.unwrap_or(self.at);
        let waited = chrono::Duration::from_std(sent.saturating_duration_since(self.at));
        let latency_ms = sent.elapsed().as_millis() as u64;
        (self.wall + waited.unwrap_or_default(), latency_ms, sent)
    }
}

/// Reads meters and writes their records.
#[derive(Clone)]
pub struct Poller {
    eagle: Eagle,
    spool: Spool,
    clock: Clock,
}

impl Poller {
    /// A poller over the shared client and spool, stamping polls with the
    /// system clock.
    pub fn new(eagle: Eagle, spool: Spool) -> Self {
        Poller {
            eagle,
            spool,
            clock: Clock::system(),
        }
    }

    /// Stamps polls with `clock` instead: `polled_at` decides a line's hour
    /// file, so tests step this clock to cross, skip and revisit hours.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The EAGLE client, whose caps' usage the pinger reports.
    pub fn eagle(&self) -> &Eagle {
        &self.eagle
    }

    /// The spool lines go to.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Reads the user's meter once and appends the record to the spool.
    /// An on-demand read has no schedule, so its record has no `slot`: the
    /// merge's hand-over dedupe by `(cloud_id, slot)` must never drop it,
    /// nor the scheduled reading of the slot it happened to fall in.
    pub async fn poll(&self, user: &User) -> Result<Polled, PollError> {
        self.poll_by(user, None, Start::ANYTIME).await
    }

    /// Like [`Poller::poll`], but the request goes out by `start`'s
    /// deadline or not at all ([`PollError::Late`]); a scheduled poll names
    /// its `slot`, which the record carries.
    pub async fn poll_by(
        &self,
        user: &User,
        slot: Option<DateTime<Utc>>,
        start: Start,
    ) -> Result<Polled, PollError> {
        let source = user.source();
        let asked = Asked::now(&self.clock);
        let reading = self
            .eagle
            .read_demand_by(user.cloud_id, &source, start)
            .await?;
        let (polled_at, latency_ms, sent) = asked.stamp(reading.sent);
        let kind = source.kind();
        let mut record = Record::new(user.cloud_id, polled_at, latency_ms, kind, &reading);
        if let Some(slot) = slot {
            record = record.with_slot(slot);
        }
        self.spool
            .append(user.cloud_id, polled_at, record.to_line())
            .await?;
        let at = polled_at.timestamp_millis() as f64 / 1000.0;
        let stats = StatsUpdate {
            events_logged: 1,
            first_timestamp: Some(at),
            last_timestamp: Some(at),
            last_demand_kw: Some(record.demand_kw),
            ..StatsUpdate::new(user.cloud_id)
        };
        Ok(Polled {
            record,
            stats,
            at,
            sent,
        })
    }
}

/// The statistics of a failed poll of `id` at `at` (unix seconds): the
/// failure's kind and time. Like [`Polled::stats`] it carries no state; the
/// scheduler adds the streak and the state it now gives the meter.
pub fn failure_stats(id: CloudId, kind: ErrorKind, at: f64) -> StatsUpdate {
    StatsUpdate {
        last_error: Some((kind.as_str().to_string(), at)),
        ..StatsUpdate::new(id)
    }
}
