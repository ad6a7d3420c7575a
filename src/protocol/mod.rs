//! Talking to EAGLE gateways: the cloud relay and the local EAGLE-200 API.
//!
//! Owns the wire formats, the shared HTTP clients, where an EAGLE-200 may
//! be (host syntax and address policy), request pacing and the global caps,
//! `--trace-http` curl lines, and the classification of every failure into
//! an [`ErrorKind`] the scheduler can act on. It knows nothing about users
//! in Redis, schedules or files: callers hand it a [`Source`] and get back a
//! [`Reading`] or a [`ProtocolError`].
//!
//! Layout: [`xml`] reads bytes into a forgiving element tree, [`parse`] turns
//! trees into typed notifications, [`client`] does the HTTP, [`address`]
//! and [`resolve`] fence EAGLE-200 requests, [`pacing`] holds the device pace
//! and the global caps, [`devices`] remembers each EAGLE-200's meter,
//! [`kinds`] reads summation, price and history, and [`trace`] prints curl
//! lines.

pub mod address;
pub mod client;
pub mod devices;
pub mod kinds;
pub mod pacing;
pub mod parse;
pub mod resolve;
pub mod trace;
pub mod xml;

use chrono::{DateTime, Utc};

use crate::secret::Secret;

pub use address::{AddressPolicy, HostError, LocalHost};
pub use client::{Eagle, EagleOptions, MAX_BODY, ReadError};
pub use kinds::{PriceReading, SummationReading};
pub use pacing::{Late, Start};
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
        /// `host` or `host:port` (see [`LocalHost::parse`]).
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
    /// When the request went out, after any wait for the device's pace and
    /// the caps (`None` when no request of ours produced it): the record's
    /// time and the scheduler's lag are measured from here, not from when
    /// the poll started waiting.
    pub sent: Option<tokio::time::Instant>,
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
    /// An answer arrived but is not a usable notification (or is too large).
    Malformed,
    /// A 3xx answer; redirects are never followed, since they would carry
    /// the credentials elsewhere.
    Redirect,
    /// The EAGLE-200's host or address is not one requests may go to
    /// (loopback, metadata, a private range not in `local_networks`...).
    Refused,
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
            ErrorKind::Redirect => "redirect",
            ErrorKind::Refused => "address_refused",
        }
    }

    /// All kinds, in a stable order (for summaries).
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Auth,
        ErrorKind::Relay,
        ErrorKind::Http,
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Malformed,
        ErrorKind::Redirect,
        ErrorKind::Refused,
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
    /// The body is not a usable notification (HTML, truncated, missing
    /// fields, larger than [`MAX_BODY`]).
    #[error("malformed answer: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// A redirect, which is not followed.
    #[error(
        "HTTP {status} redirect, not followed (check the relay URL or the EAGLE-200's address)"
    )]
    Redirect {
        /// The 3xx status.
        status: u16,
    },
    /// The host is not `host[:port]`, or its address is refused.
    #[error("address refused: {message}")]
    Refused {
        /// Which host or address, and why.
        message: String,
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
            ProtocolError::Redirect { .. } => ErrorKind::Redirect,
            ProtocolError::Refused { .. } => ErrorKind::Refused,
        }
    }

    /// The same failure with every text that came from the remote side, or
    /// that would tell an API caller what a name resolves to, replaced by a
    /// fixed one. For answers to API callers: a token holder must not learn
    /// what some host returned (that would make the API a scanner). Logs
    /// keep the original at debug level.
    pub fn for_client(&self) -> ProtocolError {
        match self {
            ProtocolError::BadCredentials { .. } => ProtocolError::BadCredentials {
                message: "rejected".into(),
            },
            ProtocolError::Relay { .. } => ProtocolError::Relay {
                message: "the relay reported an error (gateway offline?)".into(),
            },
            ProtocolError::Connect { .. } => ProtocolError::Connect {
                message: "no connection to the relay or EAGLE-200".into(),
            },
            ProtocolError::Malformed { .. } => ProtocolError::Malformed {
                reason: "not a usable notification".into(),
            },
            ProtocolError::Refused { .. } => ProtocolError::Refused {
                message: "not an address an EAGLE-200 may have here (see local_networks)".into(),
            },
            same @ (ProtocolError::Status { .. }
            | ProtocolError::Timeout { .. }
            | ProtocolError::Redirect { .. }) => same.clone(),
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

    #[test]
    fn errors_for_clients_keep_the_kind_and_drop_remote_text() {
        let leaky = [
            ProtocolError::Malformed {
                reason: "expected <devicelist>, got <secret-admin-page>".into(),
            },
            ProtocolError::Relay {
                message: "secret-admin-page".into(),
            },
            ProtocolError::BadCredentials {
                message: "secret-admin-page".into(),
            },
            ProtocolError::Connect {
                message: "tcp connect error: 10.0.0.9:6379 secret-admin-page".into(),
            },
            ProtocolError::Refused {
                message: "every address of redis.internal is refused (10.0.3.4: private)".into(),
            },
        ];
        for e in leaky {
            let shown = e.for_client();
            assert_eq!(shown.kind(), e.kind());
            let text = shown.to_string();
            assert!(
                !text.contains("secret-admin-page") && !text.contains("10.0"),
                "{text}"
            );
        }
    }
}
