//! A fault-injecting proxy in front of the test S3 server (moto): requests
//! pass through untouched until a test arms a fault, which then hits the
//! next matching requests: a status with an S3 error code (403, 500,
//! `ExpiredToken` for one access key), a body corrupted in flight, a delay,
//! or a hold the test releases when it is ready.
//!
//! It counts every request by method and every answer it forged, so a
//! test can prove that a fault was met and how often the client came back.
//!
//! moto does not verify `Content-MD5`, so the corrupting fault does what S3
//! does after flipping a byte: when the request carries a `Content-MD5`
//! that no longer matches, it answers `400 BadDigest`; without one, the
//! damaged body goes on to moto and is stored, which a test then sees.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use md5::{Digest, Md5};
use tokio::sync::{Notify, Semaphore};

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// `PutObject` (every upload).
    Put,
    /// `GetObject` and `HeadBucket`.
    Get,
    /// Any request.
    Any,
}

impl On {
    fn matches(self, method: &Method) -> bool {
        match self {
            On::Put => method == Method::PUT,
            On::Get => method == Method::GET || method == Method::HEAD,
            On::Any => true,
        }
    }
}

/// What the proxy does to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answers this status with an S3 error document carrying `code`,
    /// without asking moto.
    Status(u16, &'static str),
    /// Answers `400 ExpiredToken` to requests signed with this access key
    /// id; others pass. Not consumed by the requests it lets pass.
    ExpiredFor(String),
    /// Forwards the request, then drops moto's answer and answers this
    /// status instead: the store did the work, the client cannot know.
    AnswerLost(u16, &'static str),
    /// Flips one byte of the body in flight (see the module documentation).
    CorruptBody,
    /// Waits this long, then forwards.
    Delay(Duration),
    /// Waits until [`S3Proxy::release`], then forwards.
    Hold,
}

struct Armed {
    on: On,
    fault: Fault,
    /// Requests it still applies to; `None`: until disarmed.
    left: Option<usize>,
}

struct Shared {
    upstream: String,
    armed: Mutex<VecDeque<Armed>>,
    puts: AtomicUsize,
    gets: AtomicUsize,
    forged: AtomicUsize,
    bad_digests: AtomicUsize,
    held: AtomicUsize,
    held_changed: Notify,
    gate: Semaphore,
    client: reqwest::Client,
}

/// The proxy; it stops when dropped.
pub struct S3Proxy {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl S3Proxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`http://127.0.0.1:port`).
    pub async fn start(upstream: &str) -> S3Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the S3 proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("proxy client"),
            armed: Mutex::default(),
            puts: AtomicUsize::default(),
            gets: AtomicUsize::default(),
            forged: AtomicUsize::default(),
            bad_digests: AtomicUsize::default(),
            held: AtomicUsize::default(),
            held_changed: Notify::new(),
            gate: Semaphore::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        S3Proxy { addr, shared, task }
    }

    /// The endpoint to give the client under test.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to the next `n` requests `on` matches (after faults
    /// armed earlier are used up).
    pub fn arm(&self, on: On, fault: Fault, n: usize) {
        self.push(on, fault, Some(n));
    }

    /// Applies `fault` to every request `on` matches until [`disarm`](Self::disarm).
    pub fn arm_always(&self, on: On, fault: Fault) {
        self.push(on, fault, None);
    }

    fn push(&self, on: On, fault: Fault, left: Option<usize>) {
        self.shared
            .armed
            .lock()
            .expect("armed faults")
            .push_back(Armed { on, fault, left });
    }

    /// Removes every armed fault; held requests stay held until released.
    pub fn disarm(&self) {
        self.shared.armed.lock().expect("armed faults").clear();
    }

    /// PUT requests received (forwarded or not).
    pub fn puts(&self) -> usize {
        self.shared.puts.load(Ordering::SeqCst)
    }

    /// GET and HEAD requests received.
    pub fn gets(&self) -> usize {
        self.shared.gets.load(Ordering::SeqCst)
    }

    /// Answers the proxy made up instead of moto (statuses, expired
    /// tokens, bad digests).
    pub fn forged(&self) -> usize {
        self.shared.forged.load(Ordering::SeqCst)
    }

    /// `400 BadDigest` answers to bodies corrupted in flight.
    pub fn bad_digests(&self) -> usize {
        self.shared.bad_digests.load(Ordering::SeqCst)
    }

    /// Waits (up to `limit`) until at least `n` requests are held by
    /// [`Fault::Hold`]; panics when they do not come.
    pub async fn wait_held(&self, n: usize, limit: Duration) {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let changed = self.shared.held_changed.notified();
                if self.shared.held.load(Ordering::SeqCst) >= n {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{n} requests were not held by the S3 proxy within {limit:?} (held: {})",
            self.shared.held.load(Ordering::SeqCst)
        );
    }

    /// Lets `n` held requests (present or future) go on.
    pub fn release(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fault for this request, if any, used up by one.
fn take_fault(shared: &Shared, method: &Method, headers: &HeaderMap) -> Option<Fault> {
    let mut armed = shared.armed.lock().expect("armed faults");
    let i = armed.iter().position(|a| {
        a.on.matches(method)
            && match &a.fault {
                Fault::ExpiredFor(key) => signed_with(headers, key),
                _ => true,
            }
    })?;
    let fault = armed[i].fault.clone();
    if let Some(left) = armed[i].left.as_mut() {
        *left -= 1;
        if *left == 0 {
            armed.remove(i);
        }
    }
    Some(fault)
}

/// Whether the SigV4 `Authorization` header names `access_key`.
fn signed_with(headers: &HeaderMap, access_key: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(&format!("Credential={access_key}/")))
}

fn s3_error(status: u16, code: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message><RequestId>proxy</RequestId></Error>"
    );
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", "application/xml")
        .body(Body::from(body))
        .expect("error response")
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let counter = if parts.method == Method::PUT {
        &shared.puts
    } else {
        &shared.gets
    };
    counter.fetch_add(1, Ordering::SeqCst);
    let Ok(mut body) = axum::body::to_bytes(body, usize::MAX).await else {
        return s3_error(400, "IncompleteBody");
    };
    let mut lose_answer = None;
    match take_fault(&shared, &parts.method, &parts.headers) {
        None => {}
        Some(Fault::AnswerLost(status, code)) => lose_answer = Some((status, code)),
        Some(Fault::Status(status, code)) => {
            shared.forged.fetch_add(1, Ordering::SeqCst);
            return s3_error(status, code);
        }
        Some(Fault::ExpiredFor(_)) => {
            shared.forged.fetch_add(1, Ordering::SeqCst);
            return s3_error(400, "ExpiredToken");
        }
        Some(Fault::CorruptBody) => {
            let mut damaged = body.to_vec();
            let middle = damaged.len() / 2;
            if let Some(b) = damaged.get_mut(middle) {
                *b ^= 0x55;
            }
            let sent = parts
                .headers
                .get("content-md5")
                .and_then(|v| v.to_str().ok());
            let actual = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&damaged));
            if sent.is_some_and(|s| s != actual) {
                shared.forged.fetch_add(1, Ordering::SeqCst);
                shared.bad_digests.fetch_add(1, Ordering::SeqCst);
                return s3_error(400, "BadDigest");
            }
            body = Bytes::from(damaged);
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Hold) => {
            shared.held.fetch_add(1, Ordering::SeqCst);
            shared.held_changed.notify_waiters();
            if let Ok(permit) = shared.gate.acquire().await {
                permit.forget();
            }
        }
    }
    let url = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = shared.client.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        // The body is buffered, so reqwest sets its own length.
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.body(body).send().await {
        Ok(a) => a,
        Err(e) => return s3_error(502, &format!("ProxyUpstreamFailed: {e}")),
    };
    if let Some((status, code)) = lose_answer {
        shared.forged.fetch_add(1, Ordering::SeqCst);
        return s3_error(status, code);
    }
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).expect("proxied response")
}
