//! The HTTP/1.1 upgrade that turns an upstream byte stream into a WebSocket (RFC 6455 §4.1):
//! the request sent and the answer read by hyper's client with bounds on a hostile head, the
//! 101 checked by `answer`, any other answer classified by its status (SPEC §5).
//!
//! tungstenite's own client handshake compares list-valued headers as whole strings, so it
//! refuses `Connection: Upgrade, Keep-Alive`, and it never reads `Sec-WebSocket-Extensions`, so
//! it accepts an extension that was not offered and then fails on every compressed frame. Once
//! the 101 has passed, the stream goes to tungstenite without a second handshake.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{LOCATION, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::connect::{Io, Ws};
use super::failure::{parse_retry_after, sanitize, Failure};
use super::frame_watch::WireWatch;
use answer::{check_101, Offer};

mod answer;

/// Longest response head accepted, status line included: tungstenite's limit, kept.
const MAX_HEAD: usize = 64 * 1024;

/// Most header fields a response head may have (tungstenite allowed 124).
const MAX_HEADERS: usize = 128;

/// The stream under hyper while it reads the answer; the type `Upgraded::downcast` gives back.
type Wire = TokioIo<HeadGuard<WireWatch<Box<dyn Io>>>>;

/// Sends the upgrade `request` on `stream` and, if the answer is a valid 101, returns the
/// WebSocket over the same stream (bytes read past the head included).
pub async fn upgrade(
    stream: WireWatch<Box<dyn Io>>,
    request: Request,
    config: WebSocketConfig,
) -> Result<Ws, Failure> {
    let offer = Offer::of(request.headers())?;
    let request = origin_form(request)?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // Header names are case-insensitive (RFC 9110 §5.1), but some servers compare them as
        // written: title case (`Sec-Websocket-Key`) is the closest hyper writes to the usual
        // spelling (`Sec-WebSocket-Key`, which it cannot reproduce).
        .title_case_headers(true)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .handshake::<Wire, Empty<Bytes>>(TokioIo::new(HeadGuard::new(stream)))
        .await
        .map_err(read_failure)?;
    // The connection future does the I/O; after a 101 it ends by itself, handing the stream to
    // `hyper::upgrade::on`. It may end in the same poll that answers the request.
    let mut conn = std::pin::pin!(conn.with_upgrades());
    let mut conn_done = false;
    let mut send = std::pin::pin!(sender.send_request(request));
    let mut response = loop {
        tokio::select! {
            r = send.as_mut() => break r.map_err(read_failure)?,
            r = conn.as_mut(), if !conn_done => {
                conn_done = true;
                r.map_err(read_failure)?;
            }
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refusal(response.status(), response.headers()));
    }
    let protocol = check_101(response.headers(), &offer)?;
    if protocol.is_none() && !offer.protocols.is_empty() {
        // RFC 6455 §4.2.2 lets a server select none; the upstream then speaks its default.
        tracing::warn!("upstream selected none of the subprotocols offered; continuing without");
    }
    if !conn_done {
        conn.as_mut().await.map_err(read_failure)?;
    }
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(read_failure)?;
    let parts = upgraded
        .downcast::<Wire>()
        .map_err(|_| Failure::retry("handshake: the upgraded stream is not the one opened"))?;
    let stream = parts.io.into_inner().inner;
    tracing::debug!(read_ahead = parts.read_buf.len(), "upgrade accepted");
    // tungstenite reads into its buffer's free capacity. Once payloads still share the buffer
    // (the log holds them), bytes allocates the next one no larger than the Vec the buffer
    // started from: an exact-size Vec (empty, mostly) would mean a read per frame header and
    // another per payload, for as long as the connection lasts.
    let mut part = Vec::with_capacity(config.read_buffer_size.max(parts.read_buf.len()));
    part.extend_from_slice(&parts.read_buf);
    Ok(WebSocketStream::from_partially_read(stream, part, Role::Client, Some(config)).await)
}

/// The request as hyper sends it: the target in origin form (`/path?query`), no body.
fn origin_form(request: Request) -> Result<http::Request<Empty<Bytes>>, Failure> {
    let (mut parts, ()) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // The query may hold a credential: the error does not show it.
    parts.uri = target
        .parse()
        .map_err(|_| Failure::fatal("invalid url: its path and query are not a request target"))?;
    Ok(http::Request::from_parts(parts, Empty::new()))
}

/// Classifies an answer other than 101 by its status (with `Retry-After`); a redirect is
/// named, never followed.
fn refusal(status: StatusCode, headers: &HeaderMap) -> Failure {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let detail = if status.is_redirection() {
        let loc = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        format!("redirect to {} not followed", shown_location(loc))
    } else {
        String::new()
    };
    Failure::http(status.as_u16(), retry_after, &detail)
}

/// A redirect target as it may be shown in a reason. Upstreams often echo the request in it,
/// credential included, so the query and fragment are cut and any userinfo dropped.
fn shown_location(loc: &str) -> String {
    let cut = loc.find(['?', '#']).map_or(loc, |at| &loc[..at]);
    let mut shown = match url::Url::parse(cut) {
        Ok(mut url) => {
            // Only fails for URLs that cannot carry userinfo, which then have none.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        // Relative (`/feed`) or unparsable: no userinfo to drop.
        Err(_) => cut.to_owned(),
    };
    if cut.len() < loc.len() {
        shown.push_str("?…");
    }
    sanitize(&shown)
}

/// Classifies a failure to send the request or read the answer; all are retried.
fn read_failure(e: hyper::Error) -> Failure {
    let io = e.source().and_then(|s| s.downcast_ref::<io::Error>());
    if let Some(refused) = io.and_then(|io| io.get_ref()?.downcast_ref::<HeadRefused>()) {
        return Failure::retry(refused.to_string());
    }
    if e.is_parse_too_large() {
        return Failure::retry(format!(
            "handshake response refused: over {} KiB, or over {MAX_HEADERS} header fields",
            MAX_HEAD / 1024
        ));
    }
    if e.is_parse() || e.is_parse_status() {
        return Failure::retry(format!("handshake response is not HTTP/1.1: {e}"));
    }
    if e.is_incomplete_message() {
        return Failure::retry("handshake: connection closed before a complete answer");
    }
    match io {
        Some(io) => Failure::retry(format!("handshake i/o: {io}")),
        None => match e.source() {
            Some(cause) => Failure::retry(format!("handshake failed: {e}: {cause}")),
            None => Failure::retry(format!("handshake failed: {e}")),
        },
    }
}

/// A response head that arrived in too many tiny reads.
#[derive(Debug)]
struct HeadRefused;

impl fmt::Display for HeadRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("handshake response refused: in too many tiny TCP segments")
    }
}

impl std::error::Error for HeadRefused {}

/// Counts the reads that bring the response head, and refuses a head that trickles in: more
/// than 512 reads, or more than 64 averaging under 128 bytes (tungstenite's rule, kept). Only
/// there while hyper reads the head; taken off before the WebSocket starts.
struct HeadGuard<S> {
    inner: S,
    reads: usize,
    bytes: usize,
}

impl<S> HeadGuard<S> {
    fn new(inner: S) -> Self {
        HeadGuard {
            inner,
            reads: 0,
            bytes: 0,
        }
    }

    fn trickles(&self) -> bool {
        self.reads > 512 || (self.reads > 64 && self.reads * 128 > self.bytes)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if matches!(read, Poll::Ready(Ok(()))) && n > 0 {
            this.reads += 1;
            this.bytes += n;
            if this.trickles() {
                return Poll::Ready(Err(io::Error::other(HeadRefused)));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    #[test]
    fn only_the_path_and_query_are_sent_as_the_target() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let req = "ws://user:pw@example.com:8080/feed?k=secret"
            .into_client_request()
            .expect("request");
        let sent = origin_form(req).expect("origin form");
        assert_eq!(sent.uri().to_string(), "/feed?k=secret");
        assert_eq!(sent.headers()["host"], "example.com:8080");
    }

    /// A byte stream that counts the reads that returned data.
    struct CountReads<S> {
        inner: S,
        reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for CountReads<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let before = buf.filled().len();
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                this.reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            read
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for CountReads<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn after_the_upgrade_frames_are_read_many_at_a_time() {
        use futures_util::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;

        // 260 KiB in all: more than one read buffer, so it is renewed while payloads are held.
        const BATCHES: usize = 40;
        const FRAMES: usize = 100;
        let (ours, mut upstream) = tokio::io::duplex(1 << 20);
        let reads = std::sync::Arc::default();
        let counted = CountReads {
            inner: ours,
            reads: std::sync::Arc::clone(&reads),
        };
        let watched = WireWatch::new(
            Box::new(counted) as Box<dyn Io>,
            std::time::Duration::from_secs(60),
        );
        // Batches come one at a time once the upgrade is done, as from an upstream that waits
        // for a subscribe: nothing is read ahead with the head, and the read buffer has to be
        // renewed while earlier payloads are still held (the log holds them).
        let (next, mut asked) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = upstream.read(&mut buf).await.expect("request");
                assert!(n > 0, "request cut short");
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8(head).expect("ascii request");
            let key = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v.trim().to_owned())
                .expect("key sent");
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            upstream.write_all(answer.as_bytes()).await.expect("answer");
            let mut batch = Vec::new();
            for _ in 0..FRAMES {
                batch.extend_from_slice(&[0x82, 64]);
                batch.extend_from_slice(&[b'x'; 64]);
            }
            while asked.recv().await.is_some() {
                upstream.write_all(&batch).await.expect("frames");
            }
        });
        let request = "ws://example.com/feed"
            .into_client_request()
            .expect("request");
        let config = crate::upstream::connect::ws_config(1 << 20);
        let mut ws = upgrade(watched, request, config).await.expect("upgraded");
        let before = reads.load(std::sync::atomic::Ordering::Relaxed);
        let mut held = Vec::new();
        for _ in 0..BATCHES {
            next.send(()).await.expect("server waits");
            for _ in 0..FRAMES {
                let msg = ws.next().await.expect("open").expect("frame");
                assert_eq!(msg.len(), 64);
                held.push(msg);
            }
        }
        drop(next);
        server.await.expect("server");
        let reads = reads.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            reads <= 2 * BATCHES,
            "{reads} reads for {BATCHES} batches of {FRAMES} frames"
        );
    }

    #[test]
    fn redirect_targets_are_shown_without_credentials() {
        assert_eq!(
            shown_location("wss://user:pw@example.com/feed?token=abc#x"),
            "wss://example.com/feed?…"
        );
        assert_eq!(shown_location("/feed?access_token=abc"), "/feed?…");
        assert_eq!(
            shown_location("https://example.com/"),
            "https://example.com/"
        );
        assert_eq!(shown_location(""), "");
    }
}
