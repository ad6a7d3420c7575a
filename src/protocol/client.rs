//! The HTTP side of the protocol: one shared `reqwest` client for every meter.
//!
//! One client means one keep-alive pool and one TLS configuration for the
//! whole process; certificates are verified unless the operator opts out
//! explicitly. Local EAGLE-200 devices are paced to one request per second
//! each, because they are small embedded boxes.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::time::Instant;
use url::Url;

use super::{Command, ProtocolError, Reading, Source, parse};
use crate::cloud_id::CloudId;

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
}

/// The EAGLE client shared by every poll in the process.
#[derive(Clone)]
pub struct Eagle {
    http: reqwest::Client,
    opts: Arc<EagleOptions>,
    local_pace: Arc<DefaultKeyedRateLimiter<String>>,
    /// Hardware address of each local device's meter, found once by `device_list`.
    local_meters: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for Eagle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eagle").field("opts", &self.opts).finish()
    }
}

const USER_AGENT: &str = concat!("rainforest/", env!("CARGO_PKG_VERSION"));

impl Eagle {
    /// Builds the shared client.
    pub fn new(opts: EagleOptions) -> Result<Self, ProtocolError> {
        if opts.insecure_tls {
            tracing::warn!(
                relay_url = %opts.relay_url,
                "TLS certificate checks are OFF (relay_insecure_tls = true). Anyone on the path can read meter passwords."
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(opts.request_timeout)
            .connect_timeout(opts.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tls_danger_accept_invalid_certs(opts.insecure_tls)
            .build()
            .map_err(|e| ProtocolError::Connect {
                message: format!("cannot build HTTP client: {e}"),
            })?;
        let one_per_second = Quota::per_second(NonZeroU32::MIN);
        Ok(Eagle {
            http,
            opts: Arc::new(opts),
            local_pace: Arc::new(RateLimiter::keyed(one_per_second)),
            local_meters: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The options the client was built with.
    pub fn options(&self) -> &EagleOptions {
        &self.opts
    }

    /// Reads instantaneous demand from a meter, whatever its source.
    pub async fn read_demand(
        &self,
        cloud_id: CloudId,
        source: &Source,
    ) -> Result<Reading, ProtocolError> {
        match source {
            Source::Relay { .. } => {
                let body = self
                    .relay(cloud_id, source, &Command::InstantaneousDemand)
                    .await?;
                let demand = parse::demand(&body)?;
                Ok(Reading {
                    demand_kw: demand.kw(),
                    meter_time: Some(demand.header.meter_time()),
                    meter_mac_id: Some(demand.header.meter_mac_id.clone()),
                    raw: Some(demand),
                })
            }
            Source::Local { host, .. } => {
                let address = self.local_meter_address(cloud_id, source, host).await?;
                let body = self
                    .local(cloud_id, source, &device_query_xml(&address))
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
        let Source::Relay { user, password } = source else {
            return Err(ProtocolError::Malformed {
                reason: "relay command sent to a local EAGLE-200 source".into(),
            });
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
            format!(
                "curl -sS -X POST '{url}' -H 'Content-Type: text/xml' -H 'Cloud-ID: {cloud_id}' -H {} -H \"Password: $EAGLE_PASSWORD\" --data-binary {}",
                shell_quote(&format!("User: {user}")),
                shell_quote(&body)
            )
        });
        let request = self.http.post(url).headers(headers).body(body);
        self.send(cloud_id, request, trace).await
    }

    /// Sends a raw command body to a local EAGLE-200, paced per device.
    pub async fn local(
        &self,
        cloud_id: CloudId,
        source: &Source,
        body: &str,
    ) -> Result<Vec<u8>, ProtocolError> {
        let Source::Local { host, install_code } = source else {
            return Err(ProtocolError::Malformed {
                reason: "local command sent to a relay source".into(),
            });
        };
        let url = local_url(host)?;
        self.local_pace.until_key_ready(&url.to_string()).await;
        let trace = self.opts.trace_http.then(|| {
            format!(
                "curl -sS -X POST '{url}' -u \"{cloud_id}:$EAGLE_INSTALL_CODE\" -H 'Content-Type: text/xml' --data-binary {}",
                shell_quote(body)
            )
        });
        let request = self
            .http
            .post(url)
            .basic_auth(cloud_id.as_str(), Some(install_code.expose()))
            .header(CONTENT_TYPE, "text/xml")
            .body(body.to_string());
        self.send(cloud_id, request, trace).await
    }

    /// Lists an EAGLE-200's devices.
    pub async fn local_devices(
        &self,
        cloud_id: CloudId,
        source: &Source,
    ) -> Result<Vec<parse::LocalDevice>, ProtocolError> {
        let body = self
            .local(
                cloud_id,
                source,
                "<Command>\r\n  <Name>device_list</Name>\r\n</Command>\r\n",
            )
            .await?;
        parse::device_list(&body)
    }

    async fn local_meter_address(
        &self,
        cloud_id: CloudId,
        source: &Source,
        host: &str,
    ) -> Result<String, ProtocolError> {
        let key = format!("{cloud_id}@{host}");
        if let Some(addr) = self.cached_meter(&key) {
            return Ok(addr);
        }
        let devices = self.local_devices(cloud_id, source).await?;
        let meter = devices
            .iter()
            .find(|d| d.model_id.eq_ignore_ascii_case("electric_meter"))
            .ok_or_else(|| ProtocolError::Malformed {
                reason: format!("EAGLE-200 at {host} lists no electric_meter device"),
            })?;
        if let Ok(mut cache) = self.local_meters.lock() {
            cache.insert(key, meter.hardware_address.clone());
        }
        Ok(meter.hardware_address.clone())
    }

    fn cached_meter(&self, key: &str) -> Option<String> {
        self.local_meters.lock().ok()?.get(key).cloned()
    }

    async fn send(
        &self,
        cloud_id: CloudId,
        request: reqwest::RequestBuilder,
        trace: Option<String>,
    ) -> Result<Vec<u8>, ProtocolError> {
        let started = Instant::now();
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
        result.map(|(_, body)| body)
    }

    async fn send_inner(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), ProtocolError> {
        let after_ms = self.opts.request_timeout.as_millis() as u64;
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(e, after_ms))?;
        let status = response.status();
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
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, after_ms))?;
        Ok((status.as_u16(), body.to_vec()))
    }
}

fn transport_error(e: reqwest::Error, after_ms: u64) -> ProtocolError {
    if e.is_timeout() {
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

fn header_value(value: &str, what: &str) -> Result<HeaderValue, ProtocolError> {
    HeaderValue::from_str(value).map_err(|_| ProtocolError::Malformed {
        reason: format!("the {what} contains characters that cannot go in an HTTP header"),
    })
}

/// The EAGLE-200's command URL for a host given as `host`, `host:port` or a base URL.
pub fn local_url(host: &str) -> Result<Url, ProtocolError> {
    let base = if host.starts_with("http://") || host.starts_with("https://") {
        host.to_string()
    } else {
        format!("http://{host}")
    };
    let mut url = Url::parse(&base).map_err(|e| ProtocolError::Connect {
        message: format!("bad EAGLE-200 host {host:?}: {e}"),
    })?;
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/cgi-bin/post_manager");
    }
    Ok(url)
}

fn device_query_xml(hardware_address: &str) -> String {
    format!(
        "<Command>\r\n  <Name>device_query</Name>\r\n  <DeviceDetails>\r\n    <HardwareAddress>{hardware_address}</HardwareAddress>\r\n  </DeviceDetails>\r\n  <Components>\r\n    <Component>\r\n      <Name>Main</Name>\r\n      <Variables>\r\n        <Variable><Name>zigbee:InstantaneousDemand</Name></Variable>\r\n      </Variables>\r\n    </Component>\r\n  </Components>\r\n</Command>\r\n"
    )
}

/// Quotes a string for a POSIX shell, so a traced curl line pastes as is.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_url_accepts_host_port_and_urls() {
        assert_eq!(
            local_url("10.0.0.5").unwrap().as_str(),
            "http://10.0.0.5/cgi-bin/post_manager"
        );
        assert_eq!(
            local_url("http://127.0.0.1:9000").unwrap().as_str(),
            "http://127.0.0.1:9000/cgi-bin/post_manager"
        );
    }

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
