//! The accept loop: how many connections the server holds, how long it
//! waits for them, and TLS.
//!
//! Owns sockets, not requests: it caps concurrent connections, closes those
//! that send no request head in time or move no bytes for too long, serves
//! HTTPS when a certificate is configured, and drains open requests on
//! shutdown. What a request means is the [`Router`]'s business; this module
//! never looks inside one.
//!
//! Over the cap, the loop stops accepting: new connections wait in the
//! kernel's accept backlog (and are refused once it is full) while the
//! connections already open keep being served, so a flood of idle sockets
//! cannot take the descriptors the pinger and the spool need in `run` mode.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Pause after an accept error that is not about one connection (out of
/// descriptors): retrying at once would spin; the pause lets connections
/// close and free descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// How long connections still open after the drain grace get to notice they
/// are being closed before [`serve`] returns anyway.
const FORCE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the server tolerates from one connection, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once (`max_connections`).
    pub max_connections: usize,
    /// Time a client has to send a request's head, from connecting (and
    /// finishing the TLS handshake) or from the end of its previous
    /// response (`header_read_timeout`). It is therefore also the longest
    /// pause hyper allows between keep-alive requests.
    pub header_read_timeout: Duration,
    /// Time without a byte moving either way and without a handler at work
    /// after which a connection is asked to close, and dropped after a
    /// second such period (`idle_timeout`): a client that stopped reading
    /// its answers, or one that stays silent between requests. A handler
    /// waiting for its client's body is bounded by `api_timeout` instead.
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// Why the TLS certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("cannot read {what} {}: {source}; check tls_cert / tls_key", path.display())]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error(
        "{} holds no PEM {what}; tls_cert must be the certificate chain (leaf first) and \
         tls_key its private key, both PEM"
    , path.display())]
    NoPem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the pair (e.g. the key does not match).
    #[error("the certificate {} and key {} do not work together: {reason}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

/// A TLS acceptor for the PEM certificate chain `cert` and key `key`,
/// speaking HTTP/1.1 only (the server has no HTTP/2).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let no_pem = |what, path: &Path| TlsError::NoPem {
        what,
        path: path.to_path_buf(),
    };
    let cert_pem = read("certificate", cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| no_pem("certificate", cert))?;
    if chain.is_empty() {
        return Err(no_pem("certificate", cert));
    }
    let key_pem = read("private key", key)?;
    let private =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| no_pem("private key", key))?;
    let rejected = |e: tokio_rustls::rustls::Error| TlsError::Rejected {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    };
    // An explicit provider: the process-wide default panics when more than
    // one crypto back end is compiled in.
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(rejected)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` within `limits` (over TLS when `tls` is set)
/// until `shutdown` is cancelled; then stops accepting, lets open requests
/// finish for up to `grace`, and closes what is left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    // Cancelled when the grace period ran out: the connections still open
    // are dropped.
    let force = CancellationToken::new();
    loop {
        // The permit is taken before accepting, so over the cap connections
        // wait in the backlog instead of being accepted and starved.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot accept a connection; retrying shortly.");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let conn = Conn {
            app: app.clone(),
            limits,
            shutdown: shutdown.clone(),
            force: force.clone(),
        };
        let tls = tls.clone();
        connections.spawn(async move {
            conn.run(stream, tls).await;
            drop(permit);
        });
    }
    // New connections are refused from here on.
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs(),
            open = connections.len(),
            "Requests still open after the grace period; closing them."
        );
        force.cancel();
        let _ = tokio::time::timeout(FORCE_CLOSE_WAIT, connections.wait()).await;
    }
}

/// Accept errors about one connection that went away before it was
/// accepted; the next one may be fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// One accepted connection and what it needs to be served.
struct Conn {
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    force: CancellationToken,
}

impl Conn {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        // Answers are small; waiting to fill a segment only adds latency.
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let stream = Watched {
            inner: stream,
            activity: activity.clone(),
        };
        match tls {
            None => self.http(stream, &activity).await,
            Some(acceptor) => {
                // A handshake is part of what a client must finish before
                // its request head, and gets the same time.
                let handshake =
                    tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
                let handshake = tokio::select! {
                    done = handshake => done,
                    _ = self.force.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls_stream)) => self.http(tls_stream, &activity).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed."),
                    Err(_) => tracing::debug!("TLS handshake timed out."),
                }
            }
        }
    }

    /// Serves HTTP/1.1 on `io` until the client leaves, a timeout closes
    /// it, or shutdown drains it.
    async fn http<I>(self, io: I, activity: &Activity)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = TowerToHyperService::new(self.app);
        let busy = activity.clone();
        // A handler at work (waiting for a meter, say) is not idleness.
        let service = service_fn(move |req| {
            let working = busy.working();
            let answer = router.call(req);
            async move {
                let answer = answer.await;
                drop(working);
                answer
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle = self.limits.idle_timeout;
        let mut draining = false;
        let mut idle_periods = 0u32;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "Connection ended with an error.");
                    }
                    return;
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    // Finishes the request in flight, then closes.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = self.force.cancelled() => return,
                _ = tokio::time::sleep_until(activity.idle_deadline(idle)) => {
                    if activity.idle_deadline(idle) > Instant::now() {
                        continue; // bytes moved or a handler ran meanwhile
                    }
                    idle_periods += 1;
                    if idle_periods > 1 {
                        tracing::debug!("Connection idle twice over; dropping it.");
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// When bytes last moved on a connection and whether a handler is at
/// work, shared between its stream, its service and its idle watch.
#[derive(Clone)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: Arc<AtomicU64>,
    handlers: Arc<AtomicUsize>,
}

/// A handler at work on a connection; ends (and counts as activity) when
/// dropped.
struct Working(Activity);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.handlers.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            handlers: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn working(&self) -> Working {
        self.handlers.fetch_add(1, Ordering::Relaxed);
        Working(self.clone())
    }

    /// When the connection counts as idle for `idle`, as far as is known now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.handlers.load(Ordering::Relaxed) > 0 {
            Instant::now() + idle
        } else {
            self.last() + idle
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records in [`Activity`] every time bytes move.
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server with a `/slow` route that answers after `delay`.
    async fn slow_server(
        limits: Limits,
        delay: Duration,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let app = Router::new().route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(delay).await;
                "done"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            app,
            limits,
            None,
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        (addr, shutdown, task)
    }

    async fn get_slow(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        let mut buf = [0u8; 512];
        while !answer.ends_with("done") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        answer
    }

    #[tokio::test]
    async fn a_handler_slower_than_the_idle_timeout_still_answers() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(200),
        };
        let (addr, shutdown, task) = slow_server(limits, Duration::from_millis(700)).await;
        let answer = get_slow(addr).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer:?}"
        );
        shutdown.cancel();
        task.await.expect("server task");
    }

    #[tokio::test]
    async fn shutdown_drains_a_request_in_flight_and_refuses_new_connections() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let (addr, shutdown, task) = slow_server(limits, Duration::from_millis(500)).await;
        let in_flight = tokio::spawn(get_slow(addr));
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        let answer = in_flight.await.expect("client task");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer:?}"
        );
        task.await.expect("server task");
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }
}
