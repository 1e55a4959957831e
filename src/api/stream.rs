//! The NDJSON socket (SPEC §13): one JSON object per line each way, usable with `socat`.
//!
//! Per connection a reader parses requests and a writer owns the socket's write half, the
//! connection's subscriptions and the replies; it drains everything ready into one buffer and
//! writes it in one go. A client that stops reading only stalls its own writer; its cursors fall
//! behind and it gets a `gap` when it reads again.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ndjson::SubscriptionSet;
use super::subscription::Subscription;
use super::PublishError;
use crate::access::Peer;
use crate::filter;
use crate::log::Kind;
use crate::registry::Registry;
use crate::status::EndpointStatus;

/// Replies queued per connection before its reader waits for the writer.
const REPLY_QUEUE: usize = 256;

/// Accepts connections until `shutdown`; each runs on its own task. `max_line` is the longest
/// request line read, in bytes ([`super::limits::RequestLimits::ndjson_line`]); a longer one is
/// answered with a `line_too_long` error and skipped.
pub async fn serve(
    listener: UnixListener,
    registry: Arc<Registry>,
    max_line: usize,
    shutdown: CancellationToken,
) {
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, _)) => {
                let peer = sock.peer_cred().map_or(Peer::Unknown, Peer::from);
                conns.spawn(handle(
                    sock,
                    peer,
                    Arc::clone(&registry),
                    max_line,
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on accept.
                tracing::warn!(error = %e, "ndjson accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    conns.close();
    conns.wait().await;
}

/// What the reader hands the writer.
pub(crate) enum Out {
    Line(String),
    Subscribe(Box<Subscription>),
    /// A request waiting for its replies (it writes them itself), by its line id's JSON text:
    /// the writer keeps it to cancel it, and aborts it when the connection ends.
    Call(String, super::share_ops::Running),
    /// `cancel`: end the request with this line id (JSON text).
    Cancel(String),
    /// `unsubscribe`: end this connection's subscriptions holding `key` on `endpoint`.
    Unsubscribe {
        endpoint: String,
        key: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum Request {
    Subscribe {
        endpoint: String,
        #[serde(default)]
        from_seq: Option<u64>,
        #[serde(default)]
        filters: Vec<FilterReq>,
        /// Shared upstream subscriptions to hold (`Attach`), one or several.
        #[serde(default)]
        key: Option<String>,
        #[serde(default)]
        keys: Vec<String>,
        #[serde(default)]
        params: Option<Value>,
    },
    /// Lets go of a key held by this connection.
    Unsubscribe { endpoint: String, key: String },
    /// A request whose reply comes back to this connection (`Request`/`RequestStream`).
    #[serde(rename = "request")]
    Call {
        endpoint: String,
        /// The request: JSON, or a string of JSON text.
        data: Value,
        #[serde(default)]
        id: Option<Value>,
        #[serde(default)]
        stream: bool,
    },
    /// Ends the request with this `id`.
    Cancel { id: Value },
    Publish {
        endpoint: String,
        data: String,
        #[serde(default)]
        binary: bool,
        #[serde(default)]
        id: Option<Value>,
        #[serde(default)]
        idempotency_key: Option<String>,
        #[serde(default)]
        wait: Option<String>,
    },
    Status {
        #[serde(default)]
        endpoint: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterReq {
    pub(crate) pointer: String,
    pub(crate) equals: Value,
}

/// A request line, or the news that one was too long (and skipped).
pub(crate) enum Line {
    Text(String),
    TooLong,
    NotUtf8,
}

/// `LinesCodec` whose over-long line is an item, not a stream error: `FramedRead` ends the
/// stream after an error, and one bad line must not end the connection.
pub(crate) struct Lines(pub(crate) LinesCodec);

impl Decoder for Lines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Line>, std::io::Error> {
        line(self.0.decode(src))
    }

    fn decode_eof(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Line>, std::io::Error> {
        line(self.0.decode_eof(src))
    }
}

fn line(r: Result<Option<String>, LinesCodecError>) -> Result<Option<Line>, std::io::Error> {
    match r {
        Ok(l) => Ok(l.map(Line::Text)),
        Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
        // The codec consumed the line before checking it, so reading can go on.
        Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Ok(Some(Line::NotUtf8))
        }
        Err(LinesCodecError::Io(e)) => Err(e),
    }
}

async fn handle(
    sock: UnixStream,
    peer: Peer,
    registry: Arc<Registry>,
    max_line: usize,
    shutdown: CancellationToken,
) {
    let (rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel::<Out>(REPLY_QUEUE);
    // Ends the writer once the client is gone, so an idle subscription does not keep its
    // subscriber slot until its next event fails to write.
    let gone = shutdown.child_token();
    let writer = tokio::spawn(write_loop(wr, rx, gone.clone()));
    let mut lines = FramedRead::new(rd, Lines(LinesCodec::new_with_max_length(max_line)));
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = lines.next() => n,
        };
        let out = match next {
            None => break,
            Some(Ok(Line::Text(line))) if line.trim().is_empty() => continue,
            Some(Ok(Line::Text(line))) => request(&line, peer, &registry, &tx).await,
            Some(Ok(Line::TooLong)) => Some(Out::Line(error_line(
                "line_too_long",
                &format!(
                    "request line longer than {max_line} bytes ignored (the limit follows the \
                     largest endpoint max_message_size)"
                ),
                None,
            ))),
            Some(Ok(Line::NotUtf8)) => Some(Out::Line(error_line(
                "bad_request",
                "request line is not valid UTF-8",
                None,
            ))),
            Some(Err(_)) => break,
        };
        if let Some(out) = out {
            if tx.send(out).await.is_err() {
                break;
            }
        }
    }
    // Half-closed clients (`echo … | socat`) keep receiving their subscriptions.
    if client_gone(lines.get_ref().as_ref()) {
        gone.cancel();
    }
    drop(tx);
    let _ = writer.await;
}

/// True when the client closed its socket both ways, once its reads hit the end. To a
/// half-closed client an empty write succeeds; to a closed one it fails (EPIPE, or ECONNRESET
/// when it left unread data behind).
fn client_gone(sock: &UnixStream) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    sock.try_write(&[])
        .is_err_and(|e| matches!(e.kind(), BrokenPipe | ConnectionReset))
}

/// Handles one request line; returns the reply to queue, if any.
pub(crate) async fn request(
    line: &str,
    peer: Peer,
    registry: &Arc<Registry>,
    tx: &mpsc::Sender<Out>,
) -> Option<Out> {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return Some(Out::Line(error_line(
                "bad_request",
                &bad_request(line, &e),
                None,
            )))
        }
    };
    match req {
        Request::Subscribe {
            endpoint,
            from_seq,
            filters,
            key,
            keys,
            params,
        } if key.is_some() || !keys.is_empty() => {
            if !filters.is_empty() {
                let msg = "filters and keys do not go together: a key's messages are its own";
                return Some(Out::Line(error_line("invalid_argument", msg, None)));
            }
            let keys = key.into_iter().chain(keys).collect();
            Some(super::share_ops::attach(
                registry, &endpoint, keys, params, from_seq, peer,
            ))
        }
        Request::Unsubscribe { endpoint, key } => Some(Out::Unsubscribe { endpoint, key }),
        Request::Call {
            endpoint,
            data,
            id,
            stream,
        } => Some(super::share_ops::call(
            registry, &endpoint, data, id, stream, peer, tx,
        )),
        Request::Cancel { id } => Some(Out::Cancel(id.to_string())),
        Request::Subscribe {
            endpoint,
            from_seq,
            filters,
            ..
        } => {
            let specs = filters.into_iter().map(|f| (f.pointer, f.equals));
            let filters = match filter::for_subscriber(specs) {
                Ok(f) => f,
                Err(e) => {
                    return Some(Out::Line(error_line(
                        "invalid_argument",
                        &e.to_string(),
                        None,
                    )))
                }
            };
            match Subscription::open(registry, &endpoint, from_seq, filters, peer) {
                Ok(sub) => Some(Out::Subscribe(Box::new(sub))),
                Err(e) => Some(Out::Line(super::share_ops::subscribe_error(&e))),
            }
        }
        Request::Publish {
            endpoint,
            data,
            binary,
            id,
            idempotency_key,
            wait,
        } => {
            let (wait_sent, confirmed) = match wait.as_deref() {
                None | Some("stored") => (false, false),
                Some("sent") => (true, false),
                Some("confirmed") if idempotency_key.is_none() => (true, true),
                Some("confirmed") => {
                    let msg = "idempotency_key is not supported with wait \"confirmed\"";
                    return Some(Out::Line(error_line("invalid_argument", msg, id.as_ref())));
                }
                Some(other) => {
                    let msg = format!(
                        "wait must be \"stored\", \"sent\" or \"confirmed\", not {other:?}"
                    );
                    return Some(Out::Line(error_line("invalid_argument", &msg, id.as_ref())));
                }
            };
            let (kind, payload) = if binary {
                match base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) {
                    Ok(b) => (Kind::Binary, Bytes::from(b)),
                    Err(e) => {
                        let msg = format!("binary data is not valid base64: {e}");
                        return Some(Out::Line(error_line("invalid_argument", &msg, id.as_ref())));
                    }
                }
            } else {
                (Kind::Text, Bytes::from(data))
            };
            let registry = Arc::clone(registry);
            let publish = async move {
                let r = if confirmed {
                    super::publish_confirmed(&registry, &endpoint, peer, kind, payload).await
                } else {
                    super::publish(
                        &registry,
                        &endpoint,
                        peer,
                        kind,
                        payload,
                        idempotency_key.as_deref(),
                        wait_sent,
                    )
                    .await
                };
                Out::Line(match r {
                    Ok(outbox_id) => {
                        let mut ack = json!({"type": "ack", "outbox_id": outbox_id});
                        if let Some(id) = id {
                            ack["id"] = id;
                        }
                        ack.to_string()
                    }
                    Err(e) => error_line(publish_code(&e), &e.to_string(), id.as_ref()),
                })
            };
            if wait_sent {
                // Waiting for the upstream must not hold up this client's other requests.
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(publish.await).await;
                });
                None
            } else {
                Some(publish.await)
            }
        }
        Request::Status { endpoint } => {
            let eps = match endpoint {
                Some(name) => match registry.lookup(&name) {
                    Ok(ep) => vec![EndpointStatus::of(&ep)],
                    Err(e) => {
                        return Some(Out::Line(error_line("not_found", &e.to_string(), None)));
                    }
                },
                None => registry
                    .all()
                    .iter()
                    .map(|e| EndpointStatus::of(e))
                    .collect(),
            };
            Some(Out::Line(
                match registry.reload_refused() {
                    Some(why) => json!({"type": "status", "endpoints": eps, "reload_refused": why}),
                    None => json!({"type": "status", "endpoints": eps}),
                }
                .to_string(),
            ))
        }
    }
}

fn bad_request(line: &str, e: &serde_json::Error) -> String {
    // serde's message for an unknown tag lists the expected ops, which is what a user needs.
    if serde_json::from_str::<Value>(line).is_ok() {
        format!("invalid request: {e}")
    } else {
        format!("invalid JSON: {e}")
    }
}

fn publish_code(e: &PublishError) -> &'static str {
    e.code()
}

pub(crate) fn error_line(code: &str, message: &str, id: Option<&Value>) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string()
}

/// Puts what the reader handed over where it belongs: a line into the buffer, a subscription
/// into the set, a request among the connection's calls.
fn take(
    out: Out,
    buf: &mut Vec<u8>,
    subs: &mut SubscriptionSet,
    calls: &mut super::share_ops::Calls,
) {
    let line = match out {
        Out::Line(l) => l,
        Out::Subscribe(s) => return subs.push(*s),
        Out::Call(id, running) => return calls.insert(id, running),
        Out::Cancel(id) => calls.cancel(&id),
        Out::Unsubscribe { endpoint, key } => subs.release(&endpoint, &key),
    };
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
}

/// Bytes gathered before a write even if more events are ready.
const WRITE_CHUNK: usize = 256 * 1024;

async fn write_loop(
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    shutdown: CancellationToken,
) {
    let mut subs = SubscriptionSet::default();
    let mut calls = super::share_ops::Calls::default();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut replies_open = true;
    loop {
        if !replies_open && subs.is_empty() {
            return;
        }
        let mut hang_up = false;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            out = rx.recv(), if replies_open => match out {
                Some(out) => take(out, &mut buf, &mut subs, &mut calls),
                None => replies_open = false,
            },
            filled = std::future::poll_fn(|cx| subs.poll_fill(cx, &mut buf, WRITE_CHUNK)), if !subs.is_empty() => {
                hang_up = filled.hang_up;
            }
        }
        // Coalesce: take the other replies that are ready, then write once. (The subscriptions
        // were drained up to the chunk size already.)
        while buf.len() < WRITE_CHUNK {
            match rx.try_recv() {
                Ok(out) => take(out, &mut buf, &mut subs, &mut calls),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            let write = wr.write_all(&buf);
            let ok = tokio::select! {
                biased;
                _ = shutdown.cancelled() => false,
                r = write => r.is_ok(),
                // The client stopped reading and a disconnect-policy subscription fell out of
                // the window meanwhile: the error line cannot get through, so just hang up.
                _ = std::future::poll_fn(|cx| subs.poll_fell_behind(cx)) => {
                    tracing::debug!("NDJSON client not reading: slow subscriber disconnected");
                    false
                }
            };
            if !ok {
                return;
            }
            buf.clear();
        }
        if hang_up {
            // `slow_subscriber = "disconnect"`: the error line is out, now hang up.
            let _ = wr.shutdown().await;
            return;
        }
    }
}
