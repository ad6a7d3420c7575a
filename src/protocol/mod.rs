//! Talking to EAGLE gateways: the cloud relay and the local EAGLE-200 API.
//!
//! Owns the wire formats, the one shared HTTP client, request pacing per
//! local device, `--trace-http` curl lines, and the classification of every
//! failure into an [`ErrorKind`] the scheduler can act on. It knows nothing
//! about users in Redis, schedules or files: callers hand it a [`Source`] and
//! get back a [`Reading`] or a [`ProtocolError`].
//!
//! Layout: [`xml`] reads bytes into a forgiving element tree, [`parse`] turns
//! trees into typed notifications, [`client`] does the HTTP.

pub mod client;
pub mod parse;
pub mod xml;

use chrono::{DateTime, Utc};

use crate::secret::Secret;

pub use client::{Eagle, EagleOptions};
pub use parse::{Demand, Header, LocalDevice, LocalReading, Price, Summation};

/// Where a meter is read from, with the credentials that unlock it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The vendor's cloud relay (EAGLE-100 and the old system's protocol).
    Relay {
        /// Account e-mail sent in the `User` header.
        user: String,
        /// Account password sent in the `Password` header.
        password: Secret,
    },
    /// An EAGLE-200 on the customer's LAN.
    Local {
        /// `host`, `host:port` or an `http(s)://` base URL.
        host: String,
        /// The device's install code (HTTP Basic password).
        install_code: Secret,
    },
}

impl Source {
    /// `relay` or `local`: the record's `source` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Relay { .. } => "relay",
            Source::Local { .. } => "local",
        }
    }
}

/// Commands the relay understands that this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read instantaneous demand (the pinger's every-six-seconds call).
    InstantaneousDemand,
    /// Read the delivered/received energy counters.
    CurrentSummation,
    /// Read the current price.
    Price,
    /// Read stored summation history from `start` (EAGLE seconds) onwards.
    HistoryData {
        /// First EAGLE timestamp wanted.
        start: u32,
        /// Optional last timestamp.
        end: Option<u32>,
        /// Optional sample spacing in seconds.
        frequency: Option<u32>,
    },
}

impl Command {
    /// The command's XML body, as the relay expects it.
    pub fn to_xml(&self) -> String {
        let (name, extra) = match self {
            Command::InstantaneousDemand => ("get_instantaneous_demand", String::new()),
            Command::CurrentSummation => ("get_current_summation", String::new()),
            Command::Price => ("get_price", String::new()),
            Command::HistoryData {
                start,
                end,
                frequency,
            } => {
                let mut extra = format!("  <StartTime>0x{start:08x}</StartTime>\r\n");
                if let Some(end) = end {
                    extra.push_str(&format!("  <EndTime>0x{end:08x}</EndTime>\r\n"));
                }
                if let Some(f) = frequency {
                    extra.push_str(&format!("  <Frequency>0x{f:04x}</Frequency>\r\n"));
                }
                ("get_history_data", extra)
            }
        };
        format!("<Command>\r\n  <Name>{name}</Name>\r\n{extra}</Command>\r\n")
    }
}

/// What every poll produces, whichever source answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Demand in kW, scaling applied; negative means net export.
    pub demand_kw: f64,
    /// When the meter measured it, if the source says.
    pub meter_time: Option<DateTime<Utc>>,
    /// The relay's raw fields (absent for an EAGLE-200, which sends kW).
    pub raw: Option<Demand>,
    /// The meter's MAC id (`0x…`), when known.
    pub meter_mac_id: Option<String>,
}

/// The kind of a failure, which decides what the scheduler does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Wrong user/password or install code: back off long, flag the user.
    Auth,
    /// The relay answered with an error text (gateway offline, unknown command).
    Relay,
    /// A non-success HTTP status other than 401.
    Http,
    /// No answer within the request timeout.
    Timeout,
    /// Could not connect (DNS, refused, TLS handshake).
    Connect,
    /// An answer arrived but is not a usable notification.
    Malformed,
}

impl ErrorKind {
    /// Stable lower-case name used in logs, metrics and Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::Relay => "relay_error",
            ErrorKind::Http => "http_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Malformed => "malformed",
        }
    }

    /// All kinds, in a stable order (for summaries).
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Auth,
        ErrorKind::Relay,
        ErrorKind::Http,
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Malformed,
    ];
}

/// A failed EAGLE request, classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The relay or device rejected the credentials.
    #[error(
        "bad credentials: {message} (check the user's e-mail and password, or the install code)"
    )]
    BadCredentials {
        /// What the relay said, or the HTTP status.
        message: String,
    },
    /// The relay answered with an `<Error>` that is not about credentials,
    /// typically an offline gateway.
    #[error("relay error: {message}")]
    Relay {
        /// The relay's text.
        message: String,
    },
    /// A non-success HTTP status.
    #[error("HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// No complete answer within the timeout.
    #[error("timed out after {after_ms} ms")]
    Timeout {
        /// The timeout that expired, in milliseconds.
        after_ms: u64,
    },
    /// The connection could not be made.
    #[error("connection failed: {message}")]
    Connect {
        /// The transport's explanation.
        message: String,
    },
    /// The body is not a usable notification (HTML, truncated, missing fields).
    #[error("malformed answer: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
}

impl ProtocolError {
    /// The failure's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProtocolError::BadCredentials { .. } => ErrorKind::Auth,
            ProtocolError::Relay { .. } => ErrorKind::Relay,
            ProtocolError::Status { .. } => ErrorKind::Http,
            ProtocolError::Timeout { .. } => ErrorKind::Timeout,
            ProtocolError::Connect { .. } => ErrorKind::Connect,
            ProtocolError::Malformed { .. } => ErrorKind::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_command_carries_hex_times() {
        let xml = Command::HistoryData {
            start: 0x2f1a3e00,
            end: None,
            frequency: Some(900),
        }
        .to_xml();
        assert!(xml.contains("<Name>get_history_data</Name>"));
        assert!(xml.contains("<StartTime>0x2f1a3e00</StartTime>"));
        assert!(xml.contains("<Frequency>0x0384</Frequency>"));
    }
}
