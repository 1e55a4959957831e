//! The local log of a clustered endpoint, fed from the endpoint's stream by one reader for the
//! endpoint task's whole life, on every host (the leader's too), so seqs, payloads and gaps are
//! the same everywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::role::pause;
use super::stream::{EndpointStream, ReadError};
use crate::endpoint::{unix_nanos, Endpoint};
use crate::log::{GapReason, IdBreak};

/// How long the stream reader may yield nothing before the feed asks the stream whether it
/// is idle or the reader is stuck.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// Where the reader starts, and where live subscribers do (`None`: the log is positioned).
/// On the first run the reader starts a replay window's worth before the stream's end, and
/// live subscribers at the end; after a restart of the task, where the log is.
pub(super) async fn start(ep: &Endpoint, stream: &EndpointStream) -> (u64, Option<u64>) {
    if ep.log.is_positioned() {
        return (ep.log.next_seq(), None);
    }
    let Ok((first, last)) = stream.bounds().await else {
        // The reader retries and finds out; live from what it reads first.
        return (ep.log.next_seq(), Some(ep.log.next_seq()));
    };
    let window = ep.config().replay.messages as u64;
    (first.max((last + 1).saturating_sub(window)), Some(last + 1))
}

/// Feeds the local log from the stream from `next` on until `stop`. The log is positioned at
/// `live` once everything before it was read back, so a subscriber asking for the whole
/// window gets it, and a live one starts after it.
pub(super) async fn run(
    ep: Arc<Endpoint>,
    stream: EndpointStream,
    (mut next, mut live): (u64, Option<u64>),
    stop: CancellationToken,
) {
    let mut position = |ep: &Endpoint, next: u64| {
        if let Some(at) = live.filter(|at| next >= *at) {
            ep.log.position(at);
            live = None;
        }
    };
    position(&ep, next);
    let mut delay = Duration::from_millis(200);
    let mut gap: Option<IdBreak> = None;
    let expired = |next: u64, first: u64, had_any: bool| {
        // Before anything was read there is nobody to tell: the window just starts later.
        had_any.then_some(IdBreak {
            from: next,
            to: first.saturating_sub(1),
            reason: GapReason::ReplayExpired,
        })
    };
    loop {
        let reader = tokio::select! {
            r = stream.read_from(next) => r,
            _ = stop.cancelled() => return,
        };
        let mut reader = match reader {
            Ok(reader) => reader,
            Err(ReadError::Expired {
                first_available, ..
            }) => {
                gap = expired(next, first_available, ep.log.last_seq() > 0);
                next = first_available;
                position(&ep, next);
                continue;
            }
            Err(ReadError::Nats(e)) => {
                tracing::warn!(error = %e, "cannot read the endpoint's stream; retrying");
                if !pause(&mut delay, &stop).await {
                    return;
                }
                continue;
            }
        };
        // One timer for the reader's life, not one per message: at the stream's pace a new
        // timer for every message would cost more than the check.
        let mut tick = tokio::time::interval(STALL_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            let r = tokio::select! {
                r = reader.next() => r,
                _ = tick.tick() => {
                    if heard.elapsed() < STALL_CHECK {
                        continue;
                    }
                    // Quiet: an idle stream, or a reader whose consumer died with its NATS
                    // node and that the client has not replaced (it can take many seconds).
                    match tokio::time::timeout(STALL_CHECK, stream.bounds()).await {
                        Ok(Ok((_, last))) if last >= next => {
                            ep.cluster.stream_at(last);
                            tracing::warn!(next, last, "the stream reader is stuck behind the stream; reading again");
                            break;
                        }
                        _ => continue,
                    }
                }
                _ = stop.cancelled() => return,
            };
            match r {
                Ok(entry) => {
                    heard = Instant::now();
                    delay = Duration::from_millis(200);
                    let seq = entry.seq;
                    let meta = entry.meta;
                    let received_at = if meta.received_at == 0 {
                        unix_nanos()
                    } else {
                        meta.received_at
                    };
                    let len = entry.payload.len() as u64;
                    let gap = gap.take().or(meta.gap);
                    if ep.log.append_at(
                        seq,
                        meta.kind(),
                        entry.payload,
                        received_at,
                        gap,
                        meta.key.clone(),
                    ) {
                        Endpoint::count(&ep.stats.messages_received, 1);
                        Endpoint::count(&ep.stats.bytes_received, len);
                    }
                    ep.cluster.read_upto(seq);
                    ep.cluster.stream_at(seq + reader.pending());
                    position(&ep, seq + 1);
                    // The leader's own upstream loop knows newer ids than its stream reader.
                    if let Some(id) = entry.upstream_id {
                        if ep.cluster.leading().is_none() {
                            ep.set_last_upstream_id(id);
                        }
                    }
                    next = seq + 1;
                }
                Err(ReadError::Expired {
                    first_available, ..
                }) => {
                    gap = expired(next, first_available, true);
                    next = first_available;
                    position(&ep, next);
                    break;
                }
                Err(ReadError::Nats(e)) => {
                    tracing::warn!(error = %e, "the stream reader failed; reading again from seq {next}");
                    if !pause(&mut delay, &stop).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}
