//! A scriptable fake upstream WebSocket server on 127.0.0.1, port 0.
//!
//! Every TCP connection is read up to the end of its HTTP request, recorded as an [`Attempt`],
//! and then answered the way the test wants: either a policy decides at once (see [`Reply`]) or
//! the connection is handed to the test as a [`PendingConn`] to accept or reject by hand.
//! Accepted connections become [`UpConn`]s, each driven by its own task so that pings are answered
//! (or deliberately not) while the test is busy elsewhere.
//!
//! The handshake and the framing are done by hand instead of through tungstenite's server side
//! so the fixture can do what a broken upstream does: hang mid-handshake, drop or reset the TCP,
//! swallow pings, write arbitrary bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::BytesMut;
use http::{HeaderMap, Request, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

use super::{wait_count, DEFAULT_WAIT};

mod conn;
pub use conn::{ClientClose, UpConn};

/// A request head larger than this is refused: no real client sends one, and an unbounded read
/// would let a broken client hold memory forever.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// What the fake upstream does with a handshake, decided by the policy given to
/// [`FakeUpstream::start_with`].
#[derive(Clone, Debug)]
pub enum Reply {
    /// Complete the handshake; the connection arrives on [`FakeUpstream::next_accepted`].
    Accept,
    /// Complete the handshake choosing this subprotocol.
    AcceptWithProtocol(String),
    /// Answer with a plain HTTP response (e.g. 401, 404, or 503 with `Retry-After`).
    Reject {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Close the TCP connection (FIN) without answering.
    DropTcp,
    /// Reset the TCP connection (RST) without answering.
    ResetTcp,
    /// Keep the TCP connection open and never answer, until the client gives up.
    Hang,
    /// Let the test decide: the connection arrives on [`FakeUpstream::next_conn`].
    Defer,
}

impl Reply {
    pub fn reject(status: u16, headers: &[(&str, &str)]) -> Reply {
        Reply::Reject {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }
}

/// One handshake request the fake upstream received.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When the TCP connection was accepted: the closest the server can see to when the client
    /// began the attempt, which is what backoff timing is measured against.
    pub at: Instant,
    /// Path and query, e.g. `/feed?since=41`.
    pub target: String,
    pub headers: HeaderMap,
}

impl Attempt {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Policy = dyn Fn(usize, &Request<()>) -> Reply + Send + Sync;
type OnAccept = dyn Fn(UpConn) + Send + Sync;

/// State shared by the accept loop, the per-connection tasks and the test's handle.
struct ServerShared {
    /// TCP connections accepted, handshake or not.
    accepted: AtomicUsize,
    /// Every parsed handshake request, in arrival order; the index is the policy's attempt index.
    attempts: Mutex<Vec<Attempt>>,
    /// Mirrors `attempts.len()` so a test can await a number of attempts instead of polling.
    attempt_count: watch::Sender<usize>,
    policy: Box<Policy>,
    /// Runs on every connection accepted by the policy, before the test sees it; used to attach
    /// scripted behaviour such as a tick stream.
    on_accept: Option<Box<OnAccept>>,
    pending_tx: mpsc::UnboundedSender<PendingConn>,
    accepted_tx: mpsc::UnboundedSender<UpConn>,
    /// Cancelled when the test drops the [`FakeUpstream`]: every task and socket goes with it.
    cancel: CancellationToken,
}

/// Handle to a running fake upstream. Dropping it stops the listener and closes every connection.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<ServerShared>,
    pending_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<PendingConn>>,
    accepted_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<UpConn>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl FakeUpstream {
    /// A server that answers HTTP `refused_status` while the returned flag is false and
    /// accepts while it is true: an upstream a test takes down and brings back.
    pub async fn start_gated(
        up: bool,
        refused_status: u16,
    ) -> (FakeUpstream, Arc<std::sync::atomic::AtomicBool>) {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(up));
        let gate = Arc::clone(&flag);
        let server = Self::start_with(move |_, _| {
            if gate.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::Accept
            } else {
                Reply::reject(refused_status, &[])
            }
        })
        .await;
        (server, flag)
    }

    /// A server where every handshake waits for the test on [`FakeUpstream::next_conn`].
    pub async fn start() -> FakeUpstream {
        Self::start_with(|_, _| Reply::Defer).await
    }

    /// A server whose `policy` answers each handshake, given its 0-based attempt index.
    /// The policy runs on a connection task: a panic there only drops that connection, so
    /// assert on [`FakeUpstream::attempts`] in the test body instead.
    pub async fn start_with<P>(policy: P) -> FakeUpstream
    where
        P: Fn(usize, &Request<()>) -> Reply + Send + Sync + 'static,
    {
        Self::spawn(Box::new(policy), None).await
    }

    /// Like [`FakeUpstream::start_with`], and `on_accept` runs on every connection the policy
    /// accepted (it gets a clone; the test still receives it on `next_accepted`).
    pub async fn start_with_handler<P, H>(policy: P, on_accept: H) -> FakeUpstream
    where
        P: Fn(usize, &Request<()>) -> Reply + Send + Sync + 'static,
        H: Fn(UpConn) + Send + Sync + 'static,
    {
        Self::spawn(Box::new(policy), Some(Box::new(on_accept))).await
    }

    async fn spawn(policy: Box<Policy>, on_accept: Option<Box<OnAccept>>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake upstream: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake upstream: local address of a bound listener");
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(ServerShared {
            accepted: AtomicUsize::new(0),
            attempts: Mutex::new(Vec::new()),
            attempt_count: watch::Sender::new(0),
            policy,
            on_accept,
            pending_tx,
            accepted_tx,
            cancel: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FakeUpstream {
            addr,
            shared,
            pending_rx: tokio::sync::Mutex::new(pending_rx),
            accepted_rx: tokio::sync::Mutex::new(accepted_rx),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT` followed by `path` (a leading `/` is added if missing).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("ws://{}{slash}{path}", self.addr)
    }

    /// TCP connections accepted so far, including those that never sent a handshake.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every handshake request seen so far, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.shared.attempts).clone()
    }

    /// Waits until at least `n` handshakes have been seen, then returns them all.
    pub async fn wait_attempts(&self, n: usize, within: Duration) -> anyhow::Result<Vec<Attempt>> {
        wait_count(&self.shared.attempt_count, n, within)
            .await
            .map_err(|seen| {
                anyhow!("fake upstream: {seen} handshake(s) seen, {n} expected within {within:?}")
            })?;
        Ok(self.attempts())
    }

    /// The next handshake deferred to the test, waiting at most [`DEFAULT_WAIT`].
    pub async fn next_conn(&self) -> anyhow::Result<PendingConn> {
        self.next_conn_within(DEFAULT_WAIT).await
    }

    pub async fn next_conn_within(&self, within: Duration) -> anyhow::Result<PendingConn> {
        let mut rx = self.pending_rx.lock().await;
        tokio::time::timeout(within, rx.recv())
            .await
            .map_err(|_| anyhow!("fake upstream: no handshake within {within:?}"))?
            .context("fake upstream stopped")
    }

    /// The next connection a policy accepted, waiting at most [`DEFAULT_WAIT`].
    pub async fn next_accepted(&self) -> anyhow::Result<UpConn> {
        self.next_accepted_within(DEFAULT_WAIT).await
    }

    pub async fn next_accepted_within(&self, within: Duration) -> anyhow::Result<UpConn> {
        let mut rx = self.accepted_rx.lock().await;
        tokio::time::timeout(within, rx.recv())
            .await
            .map_err(|_| anyhow!("fake upstream: no accepted connection within {within:?}"))?
            .context("fake upstream stopped")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not turn every later fixture call into a second panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<ServerShared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let at = Instant::now();
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle_tcp(stream, at, Arc::clone(&shared)));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("fake upstream: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_tcp(mut stream: TcpStream, at: Instant, shared: Arc<ServerShared>) {
    let _ = stream.set_nodelay(true);
    let head = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        head = read_request(&mut stream) => head,
    };
    let (request, leftover) = match head {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return,
        Err(why) => {
            eprintln!("fake upstream: bad handshake request: {why}");
            let _ = write_http_response(&mut stream, 400, &[]).await;
            return;
        }
    };
    let index = {
        let mut attempts = lock(&shared.attempts);
        attempts.push(Attempt {
            at,
            target: request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().to_string(), ToString::to_string),
            headers: request.headers().clone(),
        });
        // Published under the lock so the count never runs ahead of the list.
        shared.attempt_count.send_replace(attempts.len());
        attempts.len() - 1
    };
    let reply = (shared.policy)(index, &request);
    let pending = PendingConn {
        stream,
        leftover,
        request,
        index,
        cancel: shared.cancel.clone(),
    };
    match reply {
        Reply::Defer => {
            // The receiver only goes away with the server, and then the connection should too.
            let _ = shared.pending_tx.send(pending);
        }
        Reply::Accept | Reply::AcceptWithProtocol(_) => {
            let protocol = match reply {
                Reply::AcceptWithProtocol(protocol) => Some(protocol),
                _ => None,
            };
            match pending.accept_inner(protocol).await {
                Ok(conn) => {
                    if let Some(on_accept) = &shared.on_accept {
                        on_accept(conn.clone());
                    }
                    let _ = shared.accepted_tx.send(conn);
                }
                Err(error) => eprintln!("fake upstream: accepting attempt {index}: {error}"),
            }
        }
        Reply::Reject { status, headers } => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            if let Err(error) = pending.reject(status, &headers).await {
                eprintln!("fake upstream: rejecting attempt {index}: {error}");
            }
        }
        Reply::DropTcp => pending.drop_tcp(),
        Reply::ResetTcp => pending.reset(),
        Reply::Hang => pending.hang().await,
    }
}

/// Reads one HTTP request head. `Ok(None)`: the client went away first; `Err`: not a request.
/// Returns the bytes read past the head too, in case the client did not wait for the 101.
async fn read_request(stream: &mut TcpStream) -> Result<Option<(Request<()>, BytesMut)>, String> {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            return parse_request_head(&head).map(|request| Some((request, buf)));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Err(format!("request head over {MAX_REQUEST_HEAD} bytes"));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

fn parse_request_head(head: &[u8]) -> Result<Request<()>, String> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some("HTTP/1.1"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {request_line:?}"));
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .version(http::Version::HTTP_11);
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        builder = builder.header(name, value.trim_matches([' ', '\t']));
    }
    builder.body(()).map_err(|error| error.to_string())
}

/// A plain HTTP response that ends the connection, as servers send when refusing an upgrade.
async fn write_http_response(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Unknown");
    let body = format!("{status} {reason}\n");
    let mut response = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|protocol| protocol.trim().to_owned())
        .filter(|protocol| !protocol.is_empty())
        .collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// A handshake request waiting for the test's decision. While it is held the client waits, so
/// holding it (or calling [`PendingConn::hang`]) is how a test stalls a handshake.
pub struct PendingConn {
    stream: TcpStream,
    /// Bytes read past the request head; they belong to the WebSocket stream.
    leftover: BytesMut,
    request: Request<()>,
    index: usize,
    cancel: CancellationToken,
}

impl PendingConn {
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    pub fn uri(&self) -> &Uri {
        self.request.uri()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.request.headers()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header_str(self.request.headers(), name)
    }

    /// Subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order.
    pub fn subprotocols(&self) -> Vec<String> {
        offered_protocols(self.request.headers())
    }

    /// 0-based index of this handshake among all the server has seen.
    pub fn attempt_index(&self) -> usize {
        self.index
    }

    pub async fn accept(self) -> io::Result<UpConn> {
        self.accept_inner(None).await
    }

    pub async fn accept_with_protocol(self, protocol: &str) -> io::Result<UpConn> {
        self.accept_inner(Some(protocol.to_owned())).await
    }

    async fn accept_inner(mut self, protocol: Option<String>) -> io::Result<UpConn> {
        let Some(key) = header_str(self.request.headers(), "sec-websocket-key") else {
            let _ = write_http_response(&mut self.stream, 400, &[]).await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake request has no Sec-WebSocket-Key",
            ));
        };
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            derive_accept_key(key.as_bytes())
        );
        if let Some(protocol) = &protocol {
            response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
        }
        response.push_str("\r\n");
        self.stream.write_all(response.as_bytes()).await?;
        Ok(UpConn::spawn(
            self.stream,
            self.leftover,
            self.request,
            protocol,
            self.cancel,
        ))
    }

    /// Answers with a plain HTTP `status` and `headers`, then closes the connection.
    pub async fn reject(mut self, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
        write_http_response(&mut self.stream, status, headers).await
    }

    /// Closes the TCP connection (FIN) without a response.
    pub fn drop_tcp(self) {}

    /// Resets the TCP connection (RST) without a response.
    pub fn reset(self) {
        // Zero linger is the portable way to make close() send RST instead of FIN.
        let _ = self.stream.set_zero_linger();
    }

    /// Never answers; returns once the client closes or the server is dropped.
    pub async fn hang(mut self) {
        let mut sink = [0u8; 1024];
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                read = self.stream.read(&mut sink) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
    }
}
