//! The write half of one connection: control frames (close, pings, replies, renewal frames)
//! ahead of the outbox, the outbox only once the `on_connect` gate is open, and every frame
//! through the endpoint's send rate limit ([`crate::ratelimit`]).
//!
//! Without a limit the outbox goes out in batches with one flush each. With one, every frame
//! is flushed on its own as soon as its turn comes: a frame left in the sink's buffer while
//! the next one waits would leave later than its turn says (and break the spacing the limiter
//! recorded). A control frame or a close that arrives while an outbox entry waits goes first;
//! the entry is not sent, so it stays in the outbox and nothing is lost.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::failure::Failure;
use crate::endpoint::Endpoint;
use crate::log::Kind;
use crate::ratelimit::Class;

/// Frames the connection loop asks the writer to send ahead of the outbox.
pub(super) enum Ctl {
    Frame(Message),
    Close(CloseCode, &'static str),
}

/// The payload of the last WebSocket Ping written and when: a ping may wait for its turn, and
/// its pong is due only once it was on the wire (see `Heartbeat::with_writes`).
pub(super) type PingWritten = watch::Sender<Option<(Bytes, Instant)>>;

/// Frames the connection may queue for the writer. A writer that far behind is stuck (the
/// upstream stopped reading, or replies come faster than the rate limit lets them out): the
/// connection ends rather than queueing without bound.
pub(super) const CTL_QUEUE: usize = 1024;

/// Outbox entries written per flush when no rate limit applies: enough to amortise the flush,
/// small enough that a heartbeat frame is not stuck behind a long batch.
const OUTBOX_BATCH: usize = 256;

/// Writes one frame once its turn comes; `timeout` bounds the write, not the wait for the turn.
/// `what` names the frame in a timeout's reason.
pub(super) async fn send_one<S>(
    sink: &mut S,
    ep: &Endpoint,
    m: Message,
    timeout: Duration,
    what: &str,
) -> Result<(), Failure>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let permit = ep.rate.acquire(Class::of(&m)).await;
    let r = match tokio::time::timeout(timeout, sink.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::retry(format!("write failed: {e}"))),
        Err(_) => Err(Failure::retry(format!("write timeout sending {what}"))),
    };
    drop(permit);
    r
}

/// Owns the write half until a close is sent or the connection loop goes away. The outbox
/// flows once `open` is true. Outbox entries are marked sent only after their flush succeeded.
pub(super) async fn writer<S>(
    mut sink: S,
    mut ctl: mpsc::Receiver<Ctl>,
    mut open: watch::Receiver<bool>,
    ep: &Endpoint,
    pinged: PingWritten,
) -> Result<(), Failure>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let werr = |e: WsError| Failure::retry(format!("write failed: {e}"));
    let mut last = 0u64;
    // Control frames taken from `ctl`, waiting for their turn, in order.
    let mut queued: VecDeque<Message> = VecDeque::new();
    // An outbox entry is ready to go once it gets a turn.
    let mut outbox_ready = false;
    let mut released = *open.borrow_and_update();
    loop {
        let front = queued.front().map(Class::of).unwrap_or(Class::Data);
        tokio::select! {
            biased;
            permit = ep.rate.acquire(front), if !queued.is_empty() => {
                let Some(m) = queued.pop_front() else { continue };
                let ping = match &m {
                    Message::Ping(p) => Some(p.clone()),
                    _ => None,
                };
                sink.send(m).await.map_err(werr)?;
                drop(permit);
                if let Some(p) = ping {
                    pinged.send_replace(Some((p, Instant::now())));
                }
            }
            c = ctl.recv() => match c {
                Some(Ctl::Frame(_)) if queued.len() >= CTL_QUEUE => {
                    return Err(Failure::retry(format!(
                        "the upstream is not reading: {CTL_QUEUE} frames wait to be written"
                    )));
                }
                Some(Ctl::Frame(m)) => queued.push_back(m),
                Some(Ctl::Close(code, why)) => {
                    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(why) };
                    // After the upstream's own close this is refused, but a flush still sends
                    // the echo tungstenite queued for it.
                    if sink.send(Message::Close(Some(frame))).await.is_err() {
                        let _ = sink.flush().await;
                    }
                    return Ok(());
                }
                None => return Ok(()),
            },
            r = open.changed(), if !released => {
                if r.is_err() {
                    // The connection loop is gone; it ends this future too.
                    std::future::pending::<()>().await;
                }
                released = *open.borrow_and_update();
            }
            permit = ep.rate.acquire(Class::Data), if queued.is_empty() && outbox_ready && released => {
                outbox_ready = false;
                let max = if permit.is_limited() { 1 } else { OUTBOX_BATCH };
                let batch = ep.outbox.peek_after(last, max);
                let Some(tail) = batch.last().map(|e| e.id) else {
                    // Expired meanwhile: nothing was sent.
                    permit.unused();
                    continue;
                };
                let n = batch.len() as u64;
                let bytes: u64 = batch.iter().map(|e| e.data.len() as u64).sum();
                for e in batch {
                    let msg = match e.kind {
                        Kind::Binary => Message::Binary(e.data),
                        // Publishers' text is validated on the way in; never send bad UTF-8 as text.
                        Kind::Text => match Utf8Bytes::try_from(e.data.clone()) {
                            Ok(t) => Message::Text(t),
                            Err(_) => Message::Binary(e.data),
                        },
                    };
                    sink.feed(msg).await.map_err(werr)?;
                }
                sink.flush().await.map_err(werr)?;
                drop(permit);
                ep.outbox.mark_sent(tail);
                Endpoint::count(&ep.stats.messages_sent, n);
                Endpoint::count(&ep.stats.bytes_sent, bytes);
                last = tail;
            }
            _ = ep.outbox.wait_after(last), if queued.is_empty() && !outbox_ready && released => {
                outbox_ready = true;
            }
        }
    }
}

/// Queues `out` for the writer. A writer [`CTL_QUEUE`] frames behind means the upstream stopped
/// reading: the connection is ended rather than queueing without bound.
pub(super) fn hand_over(ctl: &mpsc::Sender<Ctl>, out: &mut Vec<Message>) -> Result<(), Failure> {
    for m in std::mem::take(out) {
        if ctl.try_send(Ctl::Frame(m)).is_err() {
            return Err(Failure::retry(format!(
                "the upstream is not reading: {CTL_QUEUE} frames wait to be written"
            )));
        }
    }
    Ok(())
}
