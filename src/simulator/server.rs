//! The HTTP side: one axum route that answers both the relay protocol
//! (`Cloud-ID`/`User`/`Password` headers) and the EAGLE-200 protocol (HTTP
//! Basic), with latency, relay errors and garbage injected per request.
//!
//! The hot path takes no shared lock: meters live in a `Vec` indexed by
//! cloud id, counters are relaxed atomics, random numbers are hashed from the
//! request number, and each answer is written into one `String`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};
use tokio::time::Instant;

use super::faults::{LatencySpec, RequestRng};
use super::meters::{self, Arrival, MeterState};
use super::render::{self, Macs};
use super::{Arrivals, MeterArrivals, SimulateArgs};
use crate::cloud_id::CloudId;
use crate::protocol::parse::EAGLE_EPOCH_OFFSET;

/// The one path both protocols use.
pub(crate) const PATH: &str = "/cgi-bin/post_manager";
/// Command bodies are a few hundred bytes; anything far larger is refused.
const MAX_BODY: usize = 64 * 1024;
/// Default `get_history_data` spacing when the command gives none, seconds.
const HISTORY_STEP: u64 = 900;

/// State shared by every request: the meters and the fault settings.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Meter `i` has cloud id `FIRST_ID + i`.
    pub(crate) meters: Vec<MeterState>,
    /// Requests that reached [`PATH`], whatever the answer.
    pub(crate) requests: AtomicU64,
    /// Answers sent, by [`AnswerKind`] (indexed by its discriminant).
    pub(crate) answers: [AtomicU64; AnswerKind::COUNT],
    seed: u64,
    latency: LatencySpec,
    error_rate: f64,
    garbage_rate: f64,
    /// Set with `--record-arrivals`: the zero point of arrival times.
    recording: Option<Instant>,
    /// Most entries per `get_history_data` answer.
    history_max: u32,
    /// Whether history entries go out newest first.
    history_unordered: bool,
    /// How far back history reaches, seconds.
    history_keep_s: u64,
}

impl Shared {
    /// Precomputes every meter for validated `args`.
    pub(crate) fn new(args: &SimulateArgs) -> Self {
        Shared {
            meters: (0..args.meters)
                .map(|i| MeterState::new(i, args.seed))
                .collect(),
            requests: AtomicU64::new(0),
            answers: std::array::from_fn(|_| AtomicU64::new(0)),
            seed: args.seed,
            latency: args.latency,
            error_rate: args.error_rate,
            garbage_rate: args.garbage_rate,
            recording: args.record_arrivals.then(Instant::now),
            history_max: args.history_max,
            history_unordered: args.history_unordered,
            history_keep_s: args.history_keep.as_secs(),
        }
    }

    /// Every meter's recorded arrivals.
    pub(crate) fn arrivals(&self) -> Arrivals {
        let meters = self
            .meters
            .iter()
            .filter_map(|m| {
                let list = m.arrivals.lock().unwrap_or_else(|e| e.into_inner());
                (!list.is_empty()).then(|| MeterArrivals {
                    cloud_id: m.id.to_string(),
                    at_ms: list.iter().map(|a| a.at_ms).collect(),
                    served: list.iter().map(|a| a.served).collect(),
                    demand: list.iter().map(|a| a.demand).collect(),
                })
            })
            .collect();
        Arrivals { meters }
    }

    /// The state of `id`, when it is a simulated meter.
    pub(crate) fn meter(&self, id: CloudId) -> Option<&MeterState> {
        meters::meter_index(id, self.meters.len()).map(|i| &self.meters[i])
    }
}

/// The simulator's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(PATH, post(post_manager))
        .route("/sim/arrivals", get(arrivals))
        .with_state(shared)
}

/// Which protocol a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Relay,
    Local,
}

/// Who a request claims to be, decided from its headers alone.
#[derive(Debug, Clone, Copy)]
struct Caller {
    protocol: Protocol,
    /// Index of the addressed meter, when it is a simulated one.
    meter: Option<usize>,
    /// Whether the credentials unlock that meter.
    authorized: bool,
}

impl Caller {
    fn identify(headers: &HeaderMap, sim: &Shared) -> Caller {
        let count = sim.meters.len();
        if let Some(cloud_id) = headers.get("cloud-id") {
            let meter = header_id(cloud_id).and_then(|id| meters::meter_index(id, count));
            let authorized = meter.is_some_and(|i| {
                let m = &sim.meters[i];
                header_str(headers, "user").is_some_and(|u| meters::is_meter_email(u, m.id))
                    && header_str(headers, "password").is_some_and(|p| m.password_matches(p))
            });
            return Caller {
                protocol: Protocol::Relay,
                meter,
                authorized,
            };
        }
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let mut buf = [0u8; 192];
            let (meter, authorized) = match basic_credentials(auth.as_bytes(), &mut buf) {
                Some((user, code)) => {
                    let meter = CloudId::parse(user)
                        .ok()
                        .and_then(|id| meters::meter_index(id, count));
                    let ok = meter.is_some_and(|i| meters::is_install_code(code, sim.meters[i].id));
                    (meter, ok)
                }
                None => (None, false),
            };
            return Caller {
                protocol: Protocol::Local,
                meter,
                authorized,
            };
        }
        // No identity at all: the relay answers a missing Cloud-ID like a wrong one.
        Caller {
            protocol: Protocol::Relay,
            meter: None,
            authorized: false,
        }
    }
}

/// What an answer that went out carried, so tests can hold a client's
/// counts against what it was actually served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A demand reading (relay `get_instantaneous_demand` or EAGLE-200
    /// `device_query`), intact.
    Reading,
    /// Credentials rejected (relay error text or HTTP 401).
    AuthError,
    /// The relay's "EAGLE is offline" error, with HTTP 200.
    RelayError,
    /// HTTP 500 with an HTML page.
    ServerError,
    /// Garbage with HTTP 200: a cut answer, a proxy's page, an empty body.
    Garbage,
    /// Anything else (other commands, unknown meters' devices).
    Other,
}

impl AnswerKind {
    pub(crate) const COUNT: usize = 6;
}

/// One answer before garbage injection.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: String,
    /// Add `WWW-Authenticate`, as the EAGLE-200 does with its 401.
    challenge: bool,
    kind: AnswerKind,
}

impl Answer {
    fn xml(body: String) -> Answer {
        Answer {
            status: StatusCode::OK,
            content_type: "text/xml",
            body,
            challenge: false,
            kind: AnswerKind::Other,
        }
    }

    fn html(status: StatusCode, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/html",
            body: body.to_string(),
            challenge: false,
            kind: AnswerKind::ServerError,
        }
    }

    fn of_kind(mut self, kind: AnswerKind) -> Answer {
        self.kind = kind;
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"EAGLE-200\""),
            );
        }
        response
    }
}

/// What the injected faults decided for one request, drawn up front so the
/// random stream does not depend on the answer.
#[derive(Debug, Clone, Copy)]
struct Faults {
    fail: bool,
    fail_with_500: bool,
    garble: bool,
    garbage_bits: u64,
}

async fn post_manager(State(sim): State<Arc<Shared>>, request: Request) -> Response {
    let n = sim.requests.fetch_add(1, Ordering::Relaxed);
    let mut rng = RequestRng::new(sim.seed, n);
    let delay = sim.latency.sample(rng.next_unit());
    let faults = Faults {
        fail: rng.chance(sim.error_rate),
        fail_with_500: rng.chance(0.125),
        garble: rng.chance(sim.garbage_rate),
        garbage_bits: rng.next_u64(),
    };
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let caller = Caller::identify(&parts.headers, &sim);
    if let Some(i) = caller.meter {
        sim.meters[i].requests.fetch_add(1, Ordering::Relaxed);
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "command body too large").into_response();
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answer = match caller.protocol {
        Protocol::Relay => relay_answer(&sim, caller, faults, &body),
        Protocol::Local => local_answer(&sim, caller, faults, &body),
    };
    // Counted only once the answer is ready: a request the client gave up
    // on during the delay was never served.
    let kind = if faults.garble {
        AnswerKind::Garbage
    } else {
        answer.kind
    };
    sim.answers[kind as usize].fetch_add(1, Ordering::Relaxed);
    if let (AnswerKind::Reading, Some(i)) = (kind, caller.meter) {
        sim.meters[i].served.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(zero), Some(i)) = (sim.recording, caller.meter) {
        let served = caller.authorized && !faults.fail && !faults.garble;
        let at_ms = arrived.duration_since(zero).as_millis() as u64;
        let mut list = sim.meters[i]
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        list.push(Arrival {
            at_ms,
            served,
            demand: asks_for_demand(caller.protocol, &body),
        });
    }
    if faults.garble {
        garbage(answer, faults.garbage_bits)
    } else {
        answer.into_response()
    }
}

/// Whether a command body asks for instantaneous demand: the relay's
/// `get_instantaneous_demand`, or an EAGLE-200 `device_query` naming the
/// demand variable (its summation and price queries name others).
fn asks_for_demand(protocol: Protocol, body: &[u8]) -> bool {
    let name = tag_text(body, b"name").unwrap_or_default();
    match protocol {
        Protocol::Relay => name.eq_ignore_ascii_case("get_instantaneous_demand"),
        Protocol::Local => {
            name.eq_ignore_ascii_case("device_query")
                && body
                    .windows(b"instantaneousdemand".len())
                    .any(|w| w.eq_ignore_ascii_case(b"instantaneousdemand"))
        }
    }
}

/// `GET /sim/arrivals`: the record the pinger benchmark grades from.
async fn arrivals(State(sim): State<Arc<Shared>>) -> axum::Json<Arrivals> {
    axum::Json(sim.arrivals())
}

fn relay_answer(sim: &Shared, caller: Caller, faults: Faults, body: &[u8]) -> Answer {
    let Some(i) = caller.meter.filter(|_| caller.authorized) else {
        return Answer::xml(render::AUTH_ERROR.to_string()).of_kind(AnswerKind::AuthError);
    };
    if faults.fail {
        return if faults.fail_with_500 {
            Answer::html(StatusCode::INTERNAL_SERVER_ERROR, render::HTML_500)
        } else {
            Answer::xml(render::OFFLINE_ERROR.to_string()).of_kind(AnswerKind::RelayError)
        };
    }
    let meter = &sim.meters[i];
    let macs = Macs {
        device: meters::device_mac(meter.id),
        meter: meters::meter_mac(meter.id),
    };
    let now = eagle_now();
    let name = tag_text(body, b"name").unwrap_or_default();
    let mut out = String::with_capacity(640);
    let mut kind = AnswerKind::Other;
    if name.eq_ignore_ascii_case("get_instantaneous_demand") {
        let watts = meter.profile.demand_w(i as u32, sim.seed, now);
        render::demand(&mut out, macs, now, watts);
        kind = AnswerKind::Reading;
    } else if name.eq_ignore_ascii_case("get_current_summation") {
        let (delivered, received) = meter.profile.summation_wh(now);
        render::summation(&mut out, "", macs, now, delivered, received);
    } else if name.eq_ignore_ascii_case("get_price") {
        render::price(&mut out, macs, now);
    } else if name.eq_ignore_ascii_case("get_history_data") {
        meter.history_requests.fetch_add(1, Ordering::Relaxed);
        let entries = history_entries(sim, body, u64::from(now));
        out.reserve(entries.len() * 560);
        render::history(
            &mut out,
            macs,
            entries.into_iter().map(|t| {
                let (delivered, received) = meter.profile.summation_wh(t);
                (t, delivered, received)
            }),
        );
    } else {
        out.push_str(render::UNKNOWN_COMMAND);
    }
    Answer::xml(out).of_kind(kind)
}

/// The times a `get_history_data` answer holds: from `StartTime` (but no
/// further back than the history kept) to `EndTime` (at most now),
/// `Frequency` apart, at most `history_max` of them (a partial answer),
/// newest first when the simulator plays unordered firmware.
fn history_entries(sim: &Shared, body: &[u8], now: u64) -> Vec<u32> {
    let oldest = now.saturating_sub(sim.history_keep_s);
    let asked = hex_tag(body, b"starttime").map_or(now.saturating_sub(3600), u64::from);
    let end = hex_tag(body, b"endtime").map_or(now, u64::from).min(now);
    let step = hex_tag(body, b"frequency")
        .filter(|&f| f > 0)
        .map_or(HISTORY_STEP, u64::from);
    // The device's samples lie on its own grid; the first one kept at or
    // after the start asked for.
    let start = asked.max(oldest.div_ceil(step) * step);
    let mut times: Vec<u32> = (0..u64::from(sim.history_max))
        .map(|k| start + k * step)
        .take_while(|&t| t <= end)
        .map(|t| t as u32) // t <= now, which fits in u32
        .collect();
    if sim.history_unordered {
        times.reverse();
    }
    times
}

fn local_answer(sim: &Shared, caller: Caller, faults: Faults, body: &[u8]) -> Answer {
    let Some(i) = caller.meter.filter(|_| caller.authorized) else {
        return Answer {
            status: StatusCode::UNAUTHORIZED,
            content_type: "text/plain",
            body: "Unauthorized\n".to_string(),
            challenge: true,
            kind: AnswerKind::AuthError,
        };
    };
    if faults.fail {
        return Answer::html(StatusCode::INTERNAL_SERVER_ERROR, render::HTML_500);
    }
    let meter = &sim.meters[i];
    let meter_mac = meters::meter_mac(meter.id);
    let now = eagle_now();
    let unix = (i64::from(now) + EAGLE_EPOCH_OFFSET).clamp(0, i64::from(u32::MAX)) as u32;
    let name = tag_text(body, b"name").unwrap_or_default();
    let mut out = String::with_capacity(1400);
    let mut kind = AnswerKind::Other;
    if name.eq_ignore_ascii_case("device_list") {
        render::device_list(&mut out, meter_mac, unix);
    } else if name.eq_ignore_ascii_case("device_query") {
        let asked = tag_text(body, b"hardwareaddress").map(parse_hex_u64);
        if asked.is_some_and(|a| a != Some(meter_mac)) {
            out.push_str("<Error><Text>Device not found</Text></Error>\n");
        } else {
            let watts = meter.profile.demand_w(i as u32, sim.seed, now);
            let (delivered, received) = meter.profile.summation_wh(now);
            render::device_query(
                &mut out,
                meter_mac,
                unix,
                f64::from(watts) / 1000.0,
                f64::from(delivered) / 1000.0,
                f64::from(received) / 1000.0,
                Some(render::tariff_price(now)),
            );
            kind = AnswerKind::Reading;
        }
    } else {
        out.push_str(render::UNKNOWN_COMMAND);
    }
    Answer::xml(out).of_kind(kind)
}

/// Replaces an answer with one of three kinds of garbage, all with HTTP 200:
/// the answer cut mid-element, a proxy's HTML error page, or an empty body.
fn garbage(answer: Answer, bits: u64) -> Response {
    let (content_type, body) = match bits % 3 {
        0 => {
            let mut body = answer.body.into_bytes();
            let len = body.len();
            // Somewhere in the middle half: always inside the root element.
            let cut = len / 4 + ((bits >> 8) as usize) % (len / 2).max(1);
            body.truncate(cut.max(1));
            ("text/xml", Body::from(body))
        }
        1 => ("text/html", Body::from(render::HTML_502)),
        _ => ("text/xml", Body::empty()),
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Seconds since 2000-01-01T00:00:00Z, the EAGLE's clock.
fn eagle_now() -> u32 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (unix as i64 - EAGLE_EPOCH_OFFSET).clamp(0, i64::from(u32::MAX)) as u32
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn header_id(value: &HeaderValue) -> Option<CloudId> {
    CloudId::parse(value.to_str().ok()?.trim()).ok()
}

/// Text of the first `<tag>` element in `body` (tag matched
/// case-insensitively, as the device does), trimmed. A byte scan rather
/// than a parse: commands are tiny and the command name comes first.
fn tag_text<'a>(body: &'a [u8], tag: &[u8]) -> Option<&'a str> {
    let mut i = 0;
    while let Some(offset) = body[i..].iter().position(|&b| b == b'<') {
        let start = i + offset + 1;
        let rest = &body[start..];
        if rest.len() > tag.len()
            && rest[..tag.len()].eq_ignore_ascii_case(tag)
            && rest[tag.len()] == b'>'
        {
            let text_start = start + tag.len() + 1;
            let end = body[text_start..]
                .iter()
                .position(|&b| b == b'<')
                .map_or(body.len(), |p| text_start + p);
            return std::str::from_utf8(&body[text_start..end])
                .ok()
                .map(str::trim);
        }
        i = start;
    }
    None
}

fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

/// A `0x…` hex element as `u32` (history times and frequencies).
fn hex_tag(body: &[u8], tag: &[u8]) -> Option<u32> {
    u32::from_str_radix(strip_0x(tag_text(body, tag)?), 16).ok()
}

fn parse_hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(strip_0x(s), 16).ok()
}

/// Decodes `Authorization: Basic …` into `(user, password)` using `buf` as
/// scratch, so checking credentials allocates nothing.
fn basic_credentials<'a>(value: &[u8], buf: &'a mut [u8]) -> Option<(&'a str, &'a str)> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64_decode(value[6..].trim_ascii(), buf)?;
    let text = std::str::from_utf8(decoded).ok()?;
    text.split_once(':')
}

/// Standard-alphabet base64, padded or not (as the old hand-written
/// decoder accepted), for the `Authorization: Basic` header.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes into `out` without allocating; `None` on bad input or overflow.
fn base64_decode<'a>(input: &[u8], out: &'a mut [u8]) -> Option<&'a [u8]> {
    let len = BASIC.decode_slice(input, out).ok()?;
    out.get(..len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_command_name_case_insensitively() {
        let body = b"<Command>\r\n  <NAME> get_price </NAME>\r\n</Command>";
        assert_eq!(tag_text(body, b"name"), Some("get_price"));
        let body =
            b"<Command><Name>get_history_data</Name><StartTime>0x2f1a3e00</StartTime></Command>";
        assert_eq!(hex_tag(body, b"starttime"), Some(0x2f1a_3e00));
        assert_eq!(hex_tag(body, b"endtime"), None);
        assert_eq!(tag_text(b"<Names>x</Names>", b"name"), None);
        assert_eq!(tag_text(b"<Name", b"name"), None);
        assert_eq!(tag_text(b"", b"name"), None);
    }

    #[test]
    fn history_answers_are_partial_unordered_and_bounded_by_what_is_kept() {
        let args = SimulateArgs {
            meters: 1,
            history_max: 3,
            history_unordered: true,
            history_keep: std::time::Duration::from_secs(600),
            ..SimulateArgs::default()
        };
        let sim = Shared::new(&args);
        let now = 100_000;
        let ask = |start: u64| {
            format!(
                "<Command><Name>get_history_data</Name><StartTime>0x{start:08x}</StartTime><EndTime>0x{now:08x}</EndTime><Frequency>0x3c</Frequency></Command>"
            )
        };
        // Partial (three of many) and newest first.
        assert_eq!(
            history_entries(&sim, ask(now - 3000).as_bytes(), now),
            // Kept: the last 600 s only, on the 60 s grid.
            vec![99_540, 99_480, 99_420]
        );
        assert_eq!(
            history_entries(&sim, ask(now - 100).as_bytes(), now),
            vec![99_960, 99_900]
        );
    }

    #[test]
    fn decodes_basic_credentials() {
        let mut buf = [0u8; 192];
        // base64("a00000:ic-a00000")
        let v = b"Basic YTAwMDAwOmljLWEwMDAwMA==";
        assert_eq!(
            basic_credentials(v, &mut buf),
            Some(("a00000", "ic-a00000"))
        );
        assert_eq!(basic_credentials(b"Basic YTo=", &mut buf), Some(("a", "")));
        assert_eq!(basic_credentials(b"Basic YTo", &mut buf), Some(("a", "")));
        assert_eq!(basic_credentials(b"Bearer xyz", &mut buf), None);
        assert_eq!(basic_credentials(b"Basic !!!", &mut buf), None);
        let mut tiny = [0u8; 2];
        assert_eq!(basic_credentials(v, &mut tiny), None);
    }
}
