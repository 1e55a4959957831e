//! Replays older than a clustered endpoint's local window, read from its stream: a follower's
//! (or leader's) local log holds `replay.messages`, the stream what `[cluster.retention]`
//! keeps, and a subscriber's `from_seq` reaches the latter. What the stream no longer has is a
//! `REPLAY_EXPIRED` gap, as for the local window.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use super::stream::{EndpointStream, ReadError, Reader};
use crate::endpoint::Endpoint;
use crate::filter::{self, Filter};
use crate::log::{Entry, GapReason, Item, Log};

/// The items of seqs `from..=to` from the stream, in order, then the end.
pub type History = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// For a subscriber of `ep` asking for `from_seq`: the part older than the local window, read
/// from the stream. It ends at the first seq the local log holds then (the window moves on
/// while it is read), which the caller continues from. `None` when the local window covers the
/// request (or the endpoint is not clustered or not joined yet).
///
/// `from_seq = 0` ("from the oldest retained") starts at the oldest message the stream keeps,
/// with no gap before it.
pub fn older(ep: &Endpoint, from_seq: Option<u64>, filters: &[Filter]) -> Option<History> {
    let n = from_seq?;
    let stream = ep.cluster.stream()?.clone();
    if !ep.log.is_positioned() || n + 1 >= ep.log.first_retained() {
        return None;
    }
    let log = Arc::clone(&ep.log);
    let filters = filters.to_vec();
    let state = State::Start {
        stream,
        next: n + 1,
        oldest: n == 0,
    };
    let items = futures_util::stream::unfold(state, move |state| {
        let filters = filters.clone();
        let log = Arc::clone(&log);
        async move { step(state, &log, &filters).await }
    })
    .filter_map(|item| async move { item });
    Some(Box::pin(items))
}

enum State {
    Start {
        stream: EndpointStream,
        next: u64,
        /// Asked from the oldest retained: what the stream dropped before is no gap.
        oldest: bool,
    },
    Reading {
        stream: EndpointStream,
        reader: Box<Reader>,
        next: u64,
    },
    Done,
}

/// One item (`None`: a message the filters leave out) and the state after it, or the end.
async fn step(state: State, log: &Log, filters: &[Filter]) -> Option<(Option<Item>, State)> {
    // Up to what the local log holds now.
    let to = log.first_retained().saturating_sub(1);
    let gap = |from: u64, to: u64| Item::Gap {
        from,
        to,
        reason: GapReason::ReplayExpired,
    };
    // What the stream dropped before it was read: a gap, then on from the first it has.
    let expired = |stream: EndpointStream, next: u64, first_available: u64| {
        let end = first_available.saturating_sub(1).min(to);
        let after = State::Start {
            stream,
            next: first_available,
            oldest: false,
        };
        Some((Some(gap(next, end)), after))
    };
    match state {
        State::Done => None,
        State::Start { next, .. } | State::Reading { next, .. } if next > to => None,
        State::Start {
            stream,
            oldest: true,
            ..
        } => match stream.bounds().await {
            Ok((first, _)) => Some((
                None,
                State::Start {
                    stream,
                    next: first,
                    oldest: false,
                },
            )),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stream for from_seq 0");
                Some((None, State::Done))
            }
        },
        State::Start { stream, next, .. } => match stream.read_from(next).await {
            Ok(reader) => Some((
                None,
                State::Reading {
                    stream,
                    reader: Box::new(reader),
                    next,
                },
            )),
            Err(ReadError::Expired {
                first_available, ..
            }) => expired(stream, next, first_available),
            Err(ReadError::Nats(e)) => {
                tracing::warn!(error = %e, "cannot read the stream for an old from_seq");
                Some((Some(gap(next, to)), State::Done))
            }
        },
        State::Reading {
            stream,
            mut reader,
            next,
        } => match reader.next().await {
            Ok(e) => {
                let entry = Entry::detached(
                    e.seq,
                    e.meta.received_at,
                    e.meta.kind(),
                    e.payload,
                    e.meta.gap,
                    e.meta.key.clone(),
                );
                let keep = filter::all_match(
                    filters,
                    if filters.is_empty() {
                        None
                    } else {
                        entry.json()
                    },
                );
                let item = keep.then(|| Item::Message(Arc::new(entry)));
                let next = e.seq + 1;
                Some((
                    item,
                    State::Reading {
                        stream,
                        reader,
                        next,
                    },
                ))
            }
            Err(ReadError::Expired {
                first_available, ..
            }) => expired(stream, next, first_available),
            Err(ReadError::Nats(e)) => {
                tracing::warn!(error = %e, "the stream failed during an old from_seq");
                Some((Some(gap(next, to)), State::Done))
            }
        },
    }
}
