//! The write half of a live connection: frames the connection asks for (replies, pings,
//! renewal frames, the close) ahead of the outbox, and the outbox once the `on_connect` gate is
//! open.

use futures_util::SinkExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::failure::Failure;
use crate::endpoint::Endpoint;
use crate::log::Kind;

/// Frames the connection loop asks the writer to send ahead of the outbox.
pub(super) enum Ctl {
    Frame(Message),
    Close(CloseCode, &'static str),
}

/// Frames the connection may queue for the writer. A writer that far behind is stuck (the
/// upstream stopped reading): the connection ends rather than queueing without bound.
pub(super) const CTL_QUEUE: usize = 1024;

/// Outbox entries written per flush: enough to amortise the flush, small enough that a
/// heartbeat frame is not stuck behind a long batch.
const OUTBOX_BATCH: usize = 256;

/// Owns the write half: control frames first, then (once `open` is true) the outbox in batches
/// with one flush each. Entries are marked sent only after their flush succeeded.
pub(super) async fn writer<S>(
    mut sink: S,
    mut ctl: mpsc::Receiver<Ctl>,
    mut open: watch::Receiver<bool>,
    ep: &Endpoint,
) -> Result<(), Failure>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let werr = |e: WsError| Failure::retry(format!("write failed: {e}"));
    let mut last = 0u64;
    let mut released = *open.borrow_and_update();
    loop {
        tokio::select! {
            biased;
            c = ctl.recv() => match c {
                Some(Ctl::Frame(m)) => sink.send(m).await.map_err(werr)?,
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
            _ = ep.outbox.wait_after(last), if released => {
                let batch = ep.outbox.peek_after(last, OUTBOX_BATCH);
                let Some(tail) = batch.last().map(|e| e.id) else { continue };
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
                ep.outbox.mark_sent(tail);
                Endpoint::count(&ep.stats.messages_sent, n);
                Endpoint::count(&ep.stats.bytes_sent, bytes);
                last = tail;
            }
        }
    }
}
