//! The HTTP side of the protocol: the clients every meter is read with.
//!
//! Two `reqwest` clients, shared by the whole process: one for the
//! operator's relay (`relay_url`) and one for customers' EAGLE-200s, whose
//! addresses come from API users. The second one resolves names through
//! [`FencedResolver`] and checks IP-literal hosts against the same
//! [`AddressPolicy`], ignores proxy settings (a proxy would resolve the name
//! itself), and so reaches only where an EAGLE-200 may be. The relay URL is
//! not fenced: the operator sets it, and the simulator and tests run it on
//! loopback. Neither client follows redirects (a redirect would carry the
//! relay password or install code to whoever the `Location` names); a 3xx is
//! [`ProtocolError::Redirect`]. Answers are read up to [`MAX_BODY`] bytes
//! and the read stops past that. Every request waits for its device's pace,
//! then for the global caps ([`super::pacing`]). Certificates are verified
//! unless the operator opts out explicitly.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::time::Instant;
use url::Url;

use super::address::{AddressPolicy, LocalHost};
use super::devices::MeterAddresses;
use super::pacing::{Caps, DevicePace, Late, Start};
use super::resolve::{self, AddressRefused, FencedResolver};
use super::trace::Curl;
use super::{Command, ProtocolError, Reading, Source, parse};
use crate::cloud_id::CloudId;

/// An EAGLE's answer body and when its request went out: after any wait
/// for the device's pace and the caps, which is the scheduler's doing, not
/// the meter's latency.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) body: Vec<u8>,
    pub(super) sent: Instant,
}

impl std::ops::Deref for Answer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.body
    }
}

/// Largest answer read from a relay or EAGLE-200; a demand notification is
/// well under 2 KiB, a device list a few.
pub const MAX_BODY: usize = 64 * 1024;

/// Settings for [`Eagle`], taken from the configuration.
#[derive(Debug, Clone)]
pub struct EagleOptions {
    /// The relay's `post_manager` URL.
    pub relay_url: Url,
    /// Per-request timeout (connect + answer).
    pub request_timeout: Duration,
    /// Skip TLS certificate checks (explicit opt-out, logged loudly).
    pub insecure_tls: bool,
    /// Log each request as a reproducible curl command.
    pub trace_http: bool,
    /// Which addresses an EAGLE-200 may have (`local_networks`).
    pub local_networks: AddressPolicy,
    /// Global cap on requests in flight (`max_concurrent_requests`).
    pub max_concurrent: usize,
    /// Global cap on requests started per second (`max_requests_per_second`).
    pub max_per_second: u32,
}

/// Why a read with a start deadline produced no reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadError {
    /// Not sent: no room under the caps by the deadline. The meter is fine;
    /// the process (or its caps) cannot keep up.
    #[error(transparent)]
    Late(#[from] Late),
    /// Sent, and it failed.
    #[error(transparent)]
    Failed(#[from] ProtocolError),
}

/// The result of a read without a deadline, which is never [`Late`].
fn anytime<T>(r: Result<T, ReadError>) -> Result<T, ProtocolError> {
    r.map_err(|e| match e {
        ReadError::Failed(e) => e,
        // Only a deadline makes a request late; kept total rather than
        // panicking.
        ReadError::Late(late) => ProtocolError::Timeout {
            after_ms: late.waited_ms,
        },
    })
}

/// The EAGLE client shared by every poll in the process.
#[derive(Clone)]
pub struct Eagle {
    relay_http: reqwest::Client,
    local_http: reqwest::Client,
    opts: Arc<EagleOptions>,
    caps: Arc<Caps>,
    local_pace: Arc<DevicePace>,
    local_meters: Arc<MeterAddresses>,
}

impl std::fmt::Debug for Eagle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eagle").field("opts", &self.opts).finish()
    }
}

const USER_AGENT: &str = concat!("rainforest/", env!("CARGO_PKG_VERSION"));

/// Names of the variables the `--trace-http` lines read secrets from.
const PASSWORD_VAR: &str = "EAGLE_PASSWORD";
const INSTALL_CODE_VAR: &str = "EAGLE_INSTALL_CODE";

impl Eagle {
    /// Builds the shared clients and caps.
    pub fn new(opts: EagleOptions) -> Result<Self, ProtocolError> {
        if opts.insecure_tls {
            tracing::warn!(
                relay_url = %crate::config::redact_url(opts.relay_url.as_str()),
                "TLS certificate checks are OFF (relay_insecure_tls = true). Anyone on the path can read meter passwords."
            );
        }
        let base = || {
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .timeout(opts.request_timeout)
                .connect_timeout(opts.request_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                // Retrying is the scheduler's call (backoff, start deadlines);
                // reqwest's own retry layer would also copy every request's
                // headers and body up front in case it retries.
                .retry(reqwest::retry::never().max_retries_per_request(0))
        };
        let build_error = |e: reqwest::Error| ProtocolError::Connect {
            message: format!("cannot build HTTP client: {e}"),
        };
        let relay_http = base()
            .tls_danger_accept_invalid_certs(opts.insecure_tls)
            .build()
            .map_err(build_error)?;
        let policy = Arc::new(opts.local_networks.clone());
        let local_http = base()
            .no_proxy()
            .dns_resolver(Arc::new(FencedResolver::new(policy)))
            .build()
            .map_err(build_error)?;
        Ok(Eagle {
            relay_http,
            local_http,
            caps: Arc::new(Caps::new(opts.max_concurrent, opts.max_per_second)),
            opts: Arc::new(opts),
            local_pace: Arc::new(DevicePace::new()),
            local_meters: Arc::new(MeterAddresses::default()),
        })
    }

    /// The options the client was built with.
    pub fn options(&self) -> &EagleOptions {
        &self.opts
    }

    /// The global caps, for their usage figures.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Reads instantaneous demand from a meter, whatever its source, however
    /// long the caps make it wait.
    pub async fn read_demand(
        &self,
        cloud_id: CloudId,
        source: &Source,
    ) -> Result<Reading, ProtocolError> {
        anytime(self.read_demand_by(cloud_id, source, Start::ANYTIME).await)
    }

    /// Reads instantaneous demand, sending the request only if it can go out
    /// by `start`'s deadline (a scheduled poll's slot plus `max_start_lag`).
    pub async fn read_demand_by(
        &self,
        cloud_id: CloudId,
        source: &Source,
        start: Start,
    ) -> Result<Reading, ReadError> {
        match source {
            Source::Relay { .. } => {
                let body = self
                    .relay_by(cloud_id, source, &Command::InstantaneousDemand, start)
                    .await?;
                let demand = parse::demand(&body)?;
                Ok(Reading {
                    demand_kw: demand.kw(),
                    meter_time: Some(demand.header.meter_time()),
                    meter_mac_id: Some(demand.header.meter_mac_id.clone()),
                    raw: Some(demand),
                    sent: Some(body.sent),
                })
            }
            Source::Local { host, .. } => {
                let address = self
                    .local_meter_address(cloud_id, source, host, start)
                    .await?;
                let body = self
                    .local_by(cloud_id, source, &device_query_xml(&address), start)
                    .await?;
                let reading = parse::device_query(&body)?;
                let demand_kw = reading.demand_kw.ok_or_else(|| ProtocolError::Malformed {
                    reason: "the meter has not reported zigbee:InstantaneousDemand yet".into(),
                })?;
                Ok(Reading {
                    demand_kw,
                    meter_time: None,
                    raw: None,
                    meter_mac_id: Some(address),
                    sent: Some(body.sent),
                })
            }
        }
    }

    /// Sends a relay command and returns the raw answer body.
    pub async fn relay(
        &self,
        cloud_id: CloudId,
        source: &Source,
        command: &Command,
    ) -> Result<Vec<u8>, ProtocolError> {
        anytime(
            self.relay_by(cloud_id, source, command, Start::ANYTIME)
                .await,
        )
        .map(|a| a.body)
    }

    pub(super) async fn relay_by(
        &self,
        cloud_id: CloudId,
        source: &Source,
        command: &Command,
        start: Start,
    ) -> Result<Answer, ReadError> {
        let Source::Relay { user, password } = source else {
            return Err(ProtocolError::Malformed {
                reason: "relay command sent to a local EAGLE-200 source".into(),
            }
            .into());
        };
        let body = command.to_xml();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
        headers.insert("Cloud-ID", header_value(cloud_id.as_str(), "cloud id")?);
        headers.insert("User", header_value(user, "user e-mail")?);
        let mut pw = header_value(password.expose(), "password")?;
        pw.set_sensitive(true);
        headers.insert("Password", pw);
        let url = self.opts.relay_url.clone();
        let trace = self.opts.trace_http.then(|| {
            Curl::post(&url)
                .header("Content-Type", "text/xml")
                .header("Cloud-ID", cloud_id.as_str())
                .header("User", user)
                .header_from_env("Password", PASSWORD_VAR)
                .body(&body)
                .line()
        });
        let request = self.relay_http.post(url).headers(headers).body(body);
        self.send(cloud_id, request, trace, start).await
    }

    /// Sends a raw command body to a local EAGLE-200: first its pace, then
    /// the global caps, and only to an address the policy allows.
    pub async fn local(
        &self,
        cloud_id: CloudId,
        source: &Source,
        body: &str,
    ) -> Result<Vec<u8>, ProtocolError> {
        anytime(self.local_by(cloud_id, source, body, Start::ANYTIME).await).map(|a| a.body)
    }

    pub(super) async fn local_by(
        &self,
        cloud_id: CloudId,
        source: &Source,
        body: &str,
        start: Start,
    ) -> Result<Answer, ReadError> {
        let Source::Local { host, install_code } = source else {
            return Err(ProtocolError::Malformed {
                reason: "local command sent to a relay source".into(),
            }
            .into());
        };
        let host = self.allowed_host(host)?;
        let url = host.command_url();
        self.local_pace
            .until_ready_by(&host.to_string(), start)
            .await?;
        let trace = self.opts.trace_http.then(|| {
            Curl::post(&url)
                .basic_auth_from_env(cloud_id.as_str(), INSTALL_CODE_VAR)
                .header("Content-Type", "text/xml")
                .body(body)
                .line()
        });
        let request = self
            .local_http
            .post(url)
            .basic_auth(cloud_id.as_str(), Some(install_code.expose()))
            .header(CONTENT_TYPE, "text/xml")
            .body(body.to_string());
        self.send(cloud_id, request, trace, start).await
    }

    /// The stored host, parsed, and refused when it is an IP literal the
    /// policy does not allow (names are checked by the resolver).
    fn allowed_host(&self, host: &str) -> Result<LocalHost, ProtocolError> {
        let parsed = LocalHost::parse(host).map_err(|e| ProtocolError::Refused {
            message: format!("EAGLE-200 host {host:?} {e}"),
        })?;
        if let Some(ip) = parsed.ip() {
            let addr = std::net::SocketAddr::new(ip, 0);
            resolve::filter(&parsed.to_string(), [addr], &self.opts.local_networks).map_err(
                |e| ProtocolError::Refused {
                    message: e.to_string(),
                },
            )?;
        }
        Ok(parsed)
    }

    /// Lists an EAGLE-200's devices.
    pub async fn local_devices(
        &self,
        cloud_id: CloudId,
        source: &Source,
    ) -> Result<Vec<parse::LocalDevice>, ProtocolError> {
        anytime(
            self.local_devices_by(cloud_id, source, Start::ANYTIME)
                .await,
        )
    }

    async fn local_devices_by(
        &self,
        cloud_id: CloudId,
        source: &Source,
        start: Start,
    ) -> Result<Vec<parse::LocalDevice>, ReadError> {
        let body = self
            .local_by(
                cloud_id,
                source,
                "<Command>\r\n  <Name>device_list</Name>\r\n</Command>\r\n",
                start,
            )
            .await?;
        Ok(parse::device_list(&body)?)
    }

    pub(super) async fn local_meter_address(
        &self,
        cloud_id: CloudId,
        source: &Source,
        host: &str,
        start: Start,
    ) -> Result<String, ReadError> {
        let key = format!("{cloud_id}@{host}");
        if let Some(addr) = self.local_meters.get(&key) {
            return Ok(addr);
        }
        let devices = self.local_devices_by(cloud_id, source, start).await?;
        let meter = devices
            .iter()
            .find(|d| d.model_id.eq_ignore_ascii_case("electric_meter"))
            .ok_or_else(|| ProtocolError::Malformed {
                reason: format!("EAGLE-200 at {host} lists no electric_meter device"),
            })?;
        self.local_meters
            .insert(key, meter.hardware_address.clone());
        Ok(meter.hardware_address.clone())
    }

    async fn send(
        &self,
        cloud_id: CloudId,
        request: reqwest::RequestBuilder,
        trace: Option<String>,
        start: Start,
    ) -> Result<Answer, ReadError> {
        let permit = self.caps.admit(start).await?;
        let started = permit.sent_at();
        let result = self.send_inner(request).await;
        if let Some(curl) = trace {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok((status, _)) => {
                    tracing::info!(%cloud_id, status, elapsed_ms, curl = %curl, "EAGLE request.")
                }
                Err(e) => {
                    tracing::info!(%cloud_id, error = %e, elapsed_ms, curl = %curl, "EAGLE request failed.")
                }
            }
        }
        Ok(result.map(|(_, body)| Answer {
            body,
            sent: started,
        })?)
    }

    async fn send_inner(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), ProtocolError> {
        let after_ms = self.opts.request_timeout.as_millis() as u64;
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_error(e, after_ms))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(ProtocolError::Redirect {
                status: status.as_u16(),
            });
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(ProtocolError::BadCredentials {
                message: format!("HTTP {}", status.as_u16()),
            });
        }
        if !status.is_success() {
            return Err(ProtocolError::Status {
                status: status.as_u16(),
            });
        }
        let too_large = || ProtocolError::Malformed {
            reason: format!("the answer is larger than {} KiB", MAX_BODY / 1024),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(too_large());
        }
        // Chunk by chunk: a length header may lie, or be absent.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(e, after_ms))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status.as_u16(), body))
    }
}

fn transport_error(e: reqwest::Error, after_ms: u64) -> ProtocolError {
    if let Some(refused) = find_source::<AddressRefused>(&e) {
        ProtocolError::Refused {
            message: refused.to_string(),
        }
    } else if e.is_timeout() {
        ProtocolError::Timeout { after_ms }
    } else if e.is_connect() {
        ProtocolError::Connect {
            message: crate::error_text::chain(&e),
        }
    } else if e.is_body() || e.is_decode() {
        ProtocolError::Malformed {
            reason: format!("body cut short: {}", crate::error_text::chain(&e)),
        }
    } else {
        ProtocolError::Connect {
            message: crate::error_text::chain(&e),
        }
    }
}

/// The first error of type `T` in `e`'s source chain.
fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

fn header_value(value: &str, what: &str) -> Result<HeaderValue, ProtocolError> {
    HeaderValue::from_str(value).map_err(|_| ProtocolError::Malformed {
        reason: format!("the {what} contains characters that cannot go in an HTTP header"),
    })
}

fn device_query_xml(hardware_address: &str) -> String {
    super::kinds::query_xml(hardware_address, &["zigbee:InstantaneousDemand"])
}
