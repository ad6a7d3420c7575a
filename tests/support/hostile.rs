//! A programmable hostile HTTP endpoint for the outbound tests: it
//! redirects, streams without end, answers with chosen content or slowly,
//! and records every connection and request it gets (headers included), so
//! a test can prove that a request never reached it or carried nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the endpoint answers to every request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// `307 Temporary Redirect` to this URL.
    Redirect(String),
    /// `200` with a chunked body that never ends (until the client leaves).
    Endless,
    /// `200` with this body.
    Body(String),
    /// Waits, then `200` with this body.
    Slow(Duration, String),
}

/// One request as received: lower-cased header names and their values.
pub type Headers = Vec<(String, String)>;

#[derive(Default)]
struct Log {
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    bytes_sent: AtomicUsize,
    requests: Mutex<Vec<Headers>>,
}

/// The endpoint; it stops when dropped.
pub struct HostileServer {
    addr: std::net::SocketAddr,
    log: Arc<Log>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileServer {
    /// Listens on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Log::default());
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    log.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, behaviour.clone(), log.clone()));
                }
            })
        };
        HostileServer { addr, log, task }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> url::Url {
        url::Url::parse(&format!("http://{}{path}", self.addr)).expect("url")
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far, with their headers.
    pub fn requests(&self) -> Vec<Headers> {
        self.log.requests.lock().expect("log").clone()
    }

    /// Most requests it was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.log.max_in_flight.load(Ordering::SeqCst)
    }

    /// Body bytes written so far.
    pub fn bytes_sent(&self) -> usize {
        self.log.bytes_sent.load(Ordering::SeqCst)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour, log: Arc<Log>) {
    let Some(headers) = read_request(&mut stream).await else {
        return;
    };
    log.requests.lock().expect("log").push(headers);
    let now = log.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    log.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _ = answer(&mut stream, behaviour, &log).await;
    log.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// Reads the head and a `Content-Length` body; `None` on a broken request.
async fn read_request(stream: &mut TcpStream) -> Option<Headers> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: Headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Some(headers)
}

async fn answer(stream: &mut TcpStream, behaviour: Behaviour, log: &Log) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Redirect(to) => {
            let head = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await
        }
        Behaviour::Body(body) => ok(stream, &body, log).await,
        Behaviour::Slow(wait, body) => {
            tokio::time::sleep(wait).await;
            ok(stream, &body, log).await
        }
        Behaviour::Endless => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await?;
            let piece = vec![b'x'; 16 * 1024];
            let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
            // At most 256 MiB, so a client that never stops still ends.
            for _ in 0..16 * 1024 {
                stream.write_all(&frame).await?;
                log.bytes_sent.fetch_add(piece.len(), Ordering::SeqCst);
            }
            stream.write_all(b"0\r\n\r\n").await
        }
    }
}

async fn ok(stream: &mut TcpStream, body: &str, log: &Log) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    log.bytes_sent.fetch_add(body.len(), Ordering::SeqCst);
    Ok(())
}
