//! The leader's side of the publish work-queue: what apps on any host published to a clustered
//! endpoint goes, in queue order, into the leader's outbox, and leaves the queue only once it
//! was written upstream.
//!
//! A message is acked in the queue after the outbox reports it sent, so a leader that dies with
//! messages taken but not sent leaves them queued, and the next leader's take-over delivers them
//! again, first and in order. The price is at-least-once upstream across a failover (a message
//! written just before the crash is sent again), the same as a single daemon killed after a
//! write. Idempotency keys are the queue's (`Nats-Msg-Id`, within its duplicate window): a
//! publish retried by an app is queued once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::queue::{PublishQueue, QueueError, Queued};
use super::slot::Leading;
use crate::endpoint::Endpoint;
use crate::outbox::{PublishError, SentOutcome, SentReceiver};

/// Messages taken from the queue and waiting for their upstream write, at most.
const IN_FLIGHT: usize = 256;

/// Pause after an error before trying again.
const RETRY: Duration = Duration::from_millis(200);

/// Drains `queue` into `ep`'s outbox for the term `term` until the term ends; a later term's
/// take-over ends the term too.
pub async fn run(ep: Arc<Endpoint>, queue: PublishQueue, term: u64, leading: Arc<Leading>) {
    let lost = leading.lost.clone();
    tokio::select! {
        _ = drain(&ep, &queue, term, &leading) => {}
        _ = lost.cancelled() => {}
    }
}

async fn drain(ep: &Endpoint, queue: &PublishQueue, term: u64, leading: &Leading) {
    let mut drain = loop {
        match queue.take_over(term).await {
            Ok(d) => break d,
            Err(e @ QueueError::TakenOver { .. }) => return leading.end(e.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the publish queue over yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let (sent_tx, mut sent_rx) = mpsc::channel::<(SentReceiver, Queued)>(IN_FLIGHT);
    let take = async {
        loop {
            let q = match drain.next().await {
                Ok(q) => q,
                Err(e @ QueueError::Malformed { .. }) => {
                    tracing::warn!(error = %e, "skipped in the publish queue");
                    continue;
                }
                Err(e @ QueueError::TakenOver { .. }) => return leading.end(e.to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the publish queue failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let Some(rx) = to_outbox(ep, &q).await else {
                // Never sendable: out of the queue, loudly (to_outbox logged why).
                let _ = q.ack().await;
                continue;
            };
            if sent_tx.send((rx, q)).await.is_err() {
                return;
            }
        }
    };
    let ack = async {
        while let Some((rx, q)) = sent_rx.recv().await {
            match rx.await {
                Ok(SentOutcome::Sent) => {}
                Ok(outcome) => {
                    tracing::warn!(
                        seq = q.seq,
                        ?outcome,
                        "queued publish dropped by the outbox"
                    )
                }
                // The outbox went away (shutdown): it stays queued for the next leader.
                Err(_) => return,
            }
            let seq = q.seq;
            if let Err(e) = q.ack().await {
                tracing::warn!(seq, error = %e, "ack of a sent publish not confirmed; the next leader may send it again");
            }
        }
    };
    tokio::join!(take, ack);
}

/// Puts a queued message in the outbox; `None` when the outbox can never take it (too large).
/// A full outbox is waited out: the message stays first in line.
async fn to_outbox(ep: &Endpoint, q: &Queued) -> Option<SentReceiver> {
    loop {
        // No idempotency key here: the queue deduplicated the publish already, and the outbox,
        // cleared between terms, would take a key it saw in an earlier term for this message
        // sent, and the drain would ack a message nobody sent.
        match ep.outbox.push(q.kind, q.data.clone(), None, true).await {
            Ok((_, Some(rx))) => return Some(rx),
            Ok((_, None)) => {
                // Not asked for: the outbox always gives one with `want_sent`.
                tracing::error!(seq = q.seq, "the outbox gave no sent receiver");
                return None;
            }
            Err(e @ PublishError::TooLarge(_)) => {
                tracing::error!(seq = q.seq, error = %e, "queued publish dropped");
                return None;
            }
            Err(e) => {
                tracing::warn!(seq = q.seq, error = %e, "the outbox refused a queued publish; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
