//! The HTTP/1.1 upgrade that turns an upstream byte stream into a WebSocket (RFC 6455 §4.1):
//! the request sent and the answer read by hyper's client, the 101 checked here, any other
//! answer classified by its status (SPEC §5).
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
use http::header::{
    CONNECTION, LOCATION, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{HeaderMap, HeaderName, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::connect::{Io, Ws};
use super::failure::{parse_retry_after, sanitize, Failure};
use super::frame_watch::WireWatch;

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
        // Some servers match header names case-sensitively; title case is what they expect.
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

/// What the request offered, which the 101 must agree with.
#[derive(Debug)]
struct Offer {
    /// The `Sec-WebSocket-Accept` the key sent calls for.
    accept: String,
    /// Subprotocols offered (never shown: some protocols carry a token in them).
    protocols: Vec<String>,
}

impl Offer {
    fn of(headers: &HeaderMap) -> Result<Offer, Failure> {
        let key = headers
            .get(SEC_WEBSOCKET_KEY)
            .ok_or_else(|| Failure::fatal("handshake request has no Sec-WebSocket-Key"))?;
        Ok(Offer {
            accept: derive_accept_key(key.as_bytes()),
            protocols: list(headers, &SEC_WEBSOCKET_PROTOCOL),
        })
    }
}

/// Checks a 101 answer against RFC 6455 §4.1; the subprotocol the upstream selected, if any.
///
/// A wrong `Upgrade`, `Connection` or `Sec-WebSocket-Accept` is retried (a middlebox may have
/// mangled it); a selected subprotocol or extension that was not offered is `failed`: that is
/// how the upstream is configured, and like close code 1002 no retry changes it.
fn check_101(headers: &HeaderMap, offer: &Offer) -> Result<Option<String>, Failure> {
    for (name, shown, token) in [
        (&UPGRADE, "Upgrade", "websocket"),
        (&CONNECTION, "Connection", "upgrade"),
    ] {
        let values = list(headers, name);
        if !values.iter().any(|v| v.eq_ignore_ascii_case(token)) {
            let got = if values.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", sanitize(&values.join(", ")))
            };
            return Err(Failure::retry(format!(
                "handshake: the 101 answer's {shown} does not name {token} (got {got})"
            )));
        }
    }
    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(v), None) if v.as_bytes() == offer.accept.as_bytes() => {}
        (None, _) => {
            return Err(Failure::retry(
                "handshake: the 101 answer has no Sec-WebSocket-Accept",
            ))
        }
        _ => {
            return Err(Failure::retry(
                "handshake: Sec-WebSocket-Accept does not match the key sent",
            ))
        }
    }
    // None is ever offered: the request has no Sec-WebSocket-Extensions (config refuses one in
    // `headers`), so any extension selected is one that was not offered.
    let selected = list(headers, &SEC_WEBSOCKET_EXTENSIONS);
    if !selected.is_empty() {
        let names: Vec<String> = selected
            .iter()
            .map(|e| sanitize(extension_name(e)))
            .collect();
        return Err(Failure::fatal(match names.as_slice() {
            [one] => format!("handshake: upstream selected extension {one}, which was not offered"),
            _ => format!(
                "handshake: upstream selected extensions {}, which were not offered",
                names.join(", ")
            ),
        }));
    }
    match list(headers, &SEC_WEBSOCKET_PROTOCOL).as_slice() {
        [] => Ok(None),
        [one] if offer.protocols.contains(one) => Ok(Some(one.clone())),
        [one] => Err(Failure::fatal(format!(
            "handshake: upstream selected subprotocol {:?}, which was not offered",
            sanitize(one)
        ))),
        many => Err(Failure::fatal(format!(
            "handshake: upstream selected {} subprotocols ({:?}), where one is allowed",
            many.len(),
            sanitize(&many.join(", "))
        ))),
    }
}

/// The elements of a list-valued header over all its field lines (RFC 9110 §5.6.1): split at
/// commas, whitespace trimmed, empty elements skipped.
fn list(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            // Bytes outside ASCII are kept (lossily), so they still count as an element.
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|e| e.trim_matches([' ', '\t']).to_owned())
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An extension's name, without its parameters (`permessage-deflate; client_max_window_bits`).
fn extension_name(element: &str) -> &str {
    element.split(';').next().unwrap_or("").trim()
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
    use crate::upstream::failure::Class;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    /// RFC 6455 §1.3's example answer to `KEY`.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn offer(protocols: &[&str]) -> Offer {
        let mut h = HeaderMap::new();
        h.insert(SEC_WEBSOCKET_KEY, KEY.parse().expect("key"));
        if !protocols.is_empty() {
            let v = protocols.join(", ");
            h.insert(SEC_WEBSOCKET_PROTOCOL, v.parse().expect("protocols"));
        }
        Offer::of(&h).expect("offer")
    }

    fn answer(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
            h.append(name, value.parse().expect("value"));
        }
        h
    }

    fn valid(extra: &[(&str, &str)]) -> HeaderMap {
        let mut lines = vec![
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ];
        lines.extend_from_slice(extra);
        answer(&lines)
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(offer(&[]).accept, ACCEPT);
    }

    #[test]
    fn token_lists_match_any_element_in_any_case_over_any_lines() {
        for (upgrade, connection) in [
            ("websocket", "Upgrade, Keep-Alive"),
            ("WebSocket", "keep-alive,UPGRADE"),
            ("websocket, foo", " , upgrade ,"),
            ("WEBSOCKET", "upgrade\t"),
        ] {
            let h = answer(&[
                ("upgrade", upgrade),
                ("connection", connection),
                ("sec-websocket-accept", ACCEPT),
            ]);
            assert_eq!(
                check_101(&h, &offer(&[])),
                Ok(None),
                "{upgrade} / {connection}"
            );
        }
        let split = answer(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ]);
        assert_eq!(check_101(&split, &offer(&[])), Ok(None));
    }

    #[test]
    fn a_token_must_be_a_whole_element() {
        for (upgrade, connection, named) in [
            (
                "websocket2",
                "upgrade",
                "Upgrade does not name websocket (got \"websocket2\")",
            ),
            (
                "h2c",
                "upgrade",
                "Upgrade does not name websocket (got \"h2c\")",
            ),
            (
                "websocket",
                "keep-alive, upgraded",
                "Connection does not name upgrade",
            ),
            (
                "websocket",
                "upgrade-insecure",
                "Connection does not name upgrade",
            ),
        ] {
            let h = answer(&[
                ("upgrade", upgrade),
                ("connection", connection),
                ("sec-websocket-accept", ACCEPT),
            ]);
            let f = check_101(&h, &offer(&[])).expect_err(upgrade);
            assert_eq!(f.class, Class::Retry);
            assert!(f.reason.contains(named), "{}", f.reason);
        }
        let none = answer(&[("sec-websocket-accept", ACCEPT)]);
        let f = check_101(&none, &offer(&[])).expect_err("no upgrade");
        assert!(f.reason.ends_with("(got none)"), "{}", f.reason);
    }

    #[test]
    fn the_accept_key_must_be_there_once_and_right() {
        let wrong = answer(&[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-accept", "bm90IHRoZSByaWdodCBrZXk="),
        ]);
        let twice = valid(&[("sec-websocket-accept", ACCEPT)]);
        let missing = answer(&[("upgrade", "websocket"), ("connection", "upgrade")]);
        for h in [wrong, twice, missing] {
            let f = check_101(&h, &offer(&[])).expect_err("refused");
            assert_eq!(f.class, Class::Retry);
            assert!(f.reason.contains("Sec-WebSocket-Accept"), "{}", f.reason);
        }
    }

    #[test]
    fn extensions_never_offered_fail_naming_them() {
        let h = valid(&[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits=15",
        )]);
        let f = check_101(&h, &offer(&[])).expect_err("unoffered extension");
        assert_eq!(f.class, Class::Fatal);
        assert_eq!(
            f.reason,
            "handshake: upstream selected extension permessage-deflate, which was not offered"
        );
        let two = valid(&[
            ("sec-websocket-extensions", "x-foo"),
            (
                "sec-websocket-extensions",
                "x-bar; p=\"1\", permessage-deflate",
            ),
        ]);
        let f = check_101(&two, &offer(&[])).expect_err("three unoffered");
        assert!(
            f.reason
                .ends_with("extensions x-foo, x-bar, permessage-deflate, which were not offered"),
            "{}",
            f.reason
        );
        let empty = valid(&[("sec-websocket-extensions", " , ")]);
        assert_eq!(
            check_101(&empty, &offer(&[])),
            Ok(None),
            "an empty list names none"
        );
    }

    #[test]
    fn the_subprotocol_must_be_one_of_those_offered() {
        let o = offer(&["v1", "v2"]);
        assert_eq!(
            check_101(&valid(&[("sec-websocket-protocol", "v2")]), &o),
            Ok(Some("v2".to_owned()))
        );
        assert_eq!(
            check_101(&valid(&[]), &o),
            Ok(None),
            "none selected is allowed"
        );
        for (answered, offered, why) in [
            (
                "v3",
                &["v1", "v2"][..],
                "subprotocol \"v3\", which was not offered",
            ),
            (
                "V1",
                &["v1"][..],
                "subprotocol \"V1\", which was not offered",
            ),
            ("v1", &[][..], "subprotocol \"v1\", which was not offered"),
            ("v1, v2", &["v1", "v2"][..], "2 subprotocols (\"v1, v2\")"),
        ] {
            let f = check_101(
                &valid(&[("sec-websocket-protocol", answered)]),
                &offer(offered),
            )
            .expect_err(answered);
            assert_eq!(f.class, Class::Fatal);
            assert!(f.reason.contains(why), "{}", f.reason);
        }
    }

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
        let config = super::super::connect::ws_config(1 << 20);
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
