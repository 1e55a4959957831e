//! The leader's side of one term: every inbound upstream message goes to the endpoint's stream
//! through [`Leading::submit`], with several appends in flight at once.
//!
//! A submit assigns the next seq, writes the message to the NATS client and returns; the
//! term's acker task reads the acks in seq order. Each message carries its own fences
//! (`Nats-Expected-Last-Sequence: seq-1`, and from the term's second append on
//! `Nats-Expected-Last-Msg-Id` naming this term's `seq - 1`, see [`Writer::prepare`]), so the
//! server stores seq N+1 only right after this writer's N, whatever the order acks come back
//! in. When an append fails (NATS error or timeout), the acker waits for every ack still out,
//! then sends that append and all after it again, in order, while no new one is submitted:
//! what had landed comes back a duplicate (same `Nats-Msg-Id`). A fence ends the term.
//!
//! At most [`WINDOW`] appends (and [`WINDOW_BYTES`] of payload) are in flight; a submit waits
//! for room, which holds the upstream loop back (and the upstream through TCP), never memory.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::slot::Slot;
use super::stream::{AppendError, Meta, Outgoing, Writer};

/// Appends in flight at most: enough to cover a round trip to NATS at the upstream's pace
/// (256 × 64 B messages at ~300 µs per ack here), few enough that a retry resends little.
pub const WINDOW: usize = 256;

/// Payload bytes in flight at most: the messages are kept until acked, for a resend. A message
/// larger than this goes alone.
pub const WINDOW_BYTES: usize = 8 << 20;

/// Pause before sending again what NATS did not confirm.
const RETRY: Duration = Duration::from_millis(100);

/// The term's state the acker shares with the submitter.
struct Term {
    /// The lease's deadline as last renewed (see `Held::valid_until`).
    valid_until: Mutex<Instant>,
    /// Cancelled when the term ends.
    lost: CancellationToken,
    /// Why the term ended, first reason wins.
    why: Mutex<Option<String>>,
}

impl Term {
    fn deadline(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end(&self, why: String) {
        {
            let mut w = self.why.lock().unwrap_or_else(|e| e.into_inner());
            if w.is_none() {
                *w = Some(why);
            }
        }
        self.lost.cancel();
    }
}

/// What a submit holds while it assigns a seq and writes the message; the acker holds it while
/// it sends again, so the wire carries the appends in seq order.
struct Submitting {
    /// The seq the next append gets.
    next: u64,
    /// Appends go to the acker, in seq order.
    to_acker: mpsc::UnboundedSender<(InFlight, Sent)>,
}

/// An append between its submit and its ack.
struct InFlight {
    out: Outgoing,
    /// When it was submitted: `append_duration_seconds` is submit to ack.
    started: Instant,
    /// Its room in the window, given back when it is acked or dropped.
    _room: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// What writing an append to the client gave.
type Sent = Result<PublishAckFuture, PublishError>;

/// An append's ack, awaited.
type Acked = Pin<Box<dyn Future<Output = (InFlight, Result<PublishAck, PublishError>)> + Send>>;

fn acked(m: InFlight, sent: Sent) -> Acked {
    Box::pin(async move {
        let ack = match sent {
            Ok(ack) => ack.into_future().await,
            Err(e) => Err(e),
        };
        (m, ack)
    })
}

/// The leader's side of one term: appends each inbound message at the next seq, pipelined, and
/// ends the term (through `lost`) when the stream refuses or the lease cannot be kept.
pub struct Leading {
    writer: Writer,
    term: Arc<Term>,
    /// The term's first seq: its append is fenced by the seq alone.
    first: u64,
    /// Cancelled when the term ends; the upstream connection closes with it.
    pub lost: CancellationToken,
    submitting: Arc<tokio::sync::Mutex<Submitting>>,
    /// The acker's end of the queue, until the first submit starts it.
    pending_acker: Mutex<Option<mpsc::UnboundedReceiver<(InFlight, Sent)>>>,
    window: Arc<Semaphore>,
    window_bytes: Arc<Semaphore>,
    /// The most appends seen in flight at once this term.
    peak: AtomicUsize,
}

impl Leading {
    /// A term writing with `writer` from seq `next`, valid until `valid_until` unless renewed.
    pub fn new(writer: Writer, next: u64, valid_until: Instant, lost: CancellationToken) -> Self {
        let (to_acker, from_submit) = mpsc::unbounded_channel();
        Leading {
            writer,
            term: Arc::new(Term {
                valid_until: Mutex::new(valid_until),
                lost: lost.clone(),
                why: Mutex::new(None),
            }),
            first: next,
            lost,
            submitting: Arc::new(tokio::sync::Mutex::new(Submitting { next, to_acker })),
            pending_acker: Mutex::new(Some(from_submit)),
            window: Arc::new(Semaphore::new(WINDOW)),
            window_bytes: Arc::new(Semaphore::new(WINDOW_BYTES)),
            peak: AtomicUsize::new(0),
        }
    }

    /// The lease was renewed until `until`.
    pub fn renewed(&self, until: Instant) {
        *self
            .term
            .valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Ends the term for `why` (kept if it is the first reason).
    pub fn end(&self, why: String) {
        self.term.end(why);
    }

    /// Why the term ended, once it has.
    pub fn why(&self) -> Option<String> {
        self.term
            .why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Appends submitted and not acked yet.
    pub fn in_flight(&self) -> usize {
        WINDOW - self.window.available_permits()
    }

    /// The most appends in flight at once so far this term.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Waits until every append submitted so far was acked, or the term ended.
    pub async fn settled(&self) {
        let all = u32::try_from(WINDOW).unwrap_or(u32::MAX);
        tokio::select! {
            _ = self.window.acquire_many(all) => {}
            _ = self.lost.cancelled() => {}
        }
    }

    /// Submits one message for the next seq and returns once it is on its way to the stream;
    /// the local log gets it from the stream like every host's. Waits while [`WINDOW`] appends
    /// are in flight. Returns the seq it got, or `None` when the term ended (the message is
    /// then not delivered by this daemon; the next leader resumes before it) or when it is too
    /// large for the server (dropped before it got a seq, logged and counted).
    ///
    /// Once submitted, an append is retried until the lease runs out; if it never lands, the
    /// term ends and neither it nor any later one is delivered by this daemon.
    pub async fn submit(
        &self,
        slot: &Slot,
        payload: Bytes,
        upstream_id: Option<&str>,
        meta: &Meta,
    ) -> Option<u64> {
        let started = Instant::now();
        self.start_acker(slot);
        let bytes = u32::try_from(payload.len().min(WINDOW_BYTES)).unwrap_or(u32::MAX);
        let room = async {
            let one = Arc::clone(&self.window).acquire_owned().await.ok()?;
            let bytes = Arc::clone(&self.window_bytes)
                .acquire_many_owned(bytes)
                .await
                .ok()?;
            let submitting = self.submitting.lock().await;
            Some((one, bytes, submitting))
        };
        let (one, bytes, mut submitting) = tokio::select! {
            r = room => r?,
            _ = self.lost.cancelled() => return None,
        };
        let seq = submitting.next;
        let out = self
            .writer
            .prepare(seq, payload, upstream_id, meta, seq != self.first);
        let max = self.writer.max_payload();
        if out.size() > max {
            too_large(slot, &self.writer, &out, max);
            return None;
        }
        let sent = tokio::select! {
            s = self.writer.send(&out) => s,
            _ = self.lost.cancelled() => return None,
        };
        let m = InFlight {
            out,
            started,
            _room: (one, bytes),
        };
        if submitting.to_acker.send((m, sent)).is_err() {
            // The acker is gone: the term ended.
            return None;
        }
        submitting.next = seq + 1;
        drop(submitting);
        self.peak.fetch_max(self.in_flight(), Ordering::Relaxed);
        Some(seq)
    }

    /// Starts the term's acker on the first submit (it reports to the slot submits come with).
    fn start_acker(&self, slot: &Slot) {
        let Some(from_submit) = self
            .pending_acker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let acker = Acker {
            writer: self.writer.clone(),
            term: Arc::clone(&self.term),
            submitting: Arc::clone(&self.submitting),
            counters: slot.counters(),
            from_submit,
            acks: FuturesOrdered::new(),
        };
        tokio::spawn(acker.run());
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        // The acker holds the submit side's lock, not its end of the queue: without this it
        // would wait for appends that can no longer come.
        self.term.lost.cancel();
    }
}

/// Drops a message no server of this size can take: going on (the seq stays free for the next
/// message) beats stepping down, which would only fetch it again.
fn too_large(slot: &Slot, writer: &Writer, out: &Outgoing, max: usize) {
    let e = AppendError::TooLarge {
        endpoint: writer.endpoint().to_string(),
        seq: out.seq(),
        size: out.size(),
        max,
    };
    tracing::error!(error = %e, "upstream message dropped");
    slot.too_large.fetch_add(1, Ordering::Relaxed);
}

/// Reads a term's acks in seq order and sends again what did not land.
struct Acker {
    writer: Writer,
    term: Arc<Term>,
    submitting: Arc<tokio::sync::Mutex<Submitting>>,
    counters: AppendCounters,
    from_submit: mpsc::UnboundedReceiver<(InFlight, Sent)>,
    /// The appends in flight, oldest first.
    acks: FuturesOrdered<Acked>,
}

/// What to do about an append that did not land.
enum Next {
    /// Send it (and everything after it) again after a pause.
    Retry,
    /// Send it again at once, without the chain.
    Unchain,
    /// The term is over.
    End,
}

impl Acker {
    async fn run(mut self) {
        let lost = self.term.lost.clone();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                _ = lost.cancelled() => return,
                Some((m, ack)) = self.acks.next(), if !self.acks.is_empty() => {
                    let done = tokio::select! {
                        r = self.writer.confirm(&m.out, ack) => r,
                        _ = lost.cancelled() => return,
                    };
                    let next = match done {
                        Ok(_) => {
                            self.counters.acked(m.out.seq(), m.started.elapsed());
                            continue;
                        }
                        Err(e) => self.failed(&m, e),
                    };
                    if !self.resend(m, next).await {
                        return;
                    }
                }
                m = self.from_submit.recv(), if open => match m {
                    Some((m, sent)) => self.acks.push_back(acked(m, sent)),
                    None => open = false,
                },
                else => return,
            }
        }
    }

    /// Decides about the oldest append in flight, which did not land.
    fn failed(&self, m: &InFlight, e: AppendError) -> Next {
        let seq = m.out.seq();
        match e {
            AppendError::Unchained { .. } => Next::Unchain,
            // Refused because it reached the server before an earlier append's resend: every
            // append before it is acked, so it goes again with the rest.
            AppendError::OutOfOrder { last, .. } if last + 1 == seq => self.retry(seq, &e),
            AppendError::Fenced { .. } | AppendError::OutOfOrder { .. } => {
                self.term.end(e.to_string());
                Next::End
            }
            AppendError::TooLarge { .. } => {
                // Too late to drop: the appends after it are chained to its seq.
                tracing::error!(error = %e, "upstream message dropped");
                self.counters.too_large.fetch_add(1, Ordering::Relaxed);
                self.term.end(format!(
                    "{e}; the server's limit fell after the message got its seq"
                ));
                Next::End
            }
            AppendError::Nats(_) => self.retry(seq, &e),
        }
    }

    fn retry(&self, seq: u64, e: &AppendError) -> Next {
        if Instant::now() + RETRY >= self.term.deadline() {
            self.term.end(format!(
                "the stream did not take seq {seq} before the lease ran out: {e}"
            ));
            return Next::End;
        }
        tracing::warn!(seq, error = %e, "append to the stream not confirmed; sending it and those after it again");
        Next::Retry
    }

    /// Sends `first` and every append after it again, in order, once the acks still out are
    /// in (so no earlier attempt is still on its way); no submit goes out meanwhile. False when
    /// the term is over.
    async fn resend(&mut self, mut first: InFlight, next: Next) -> bool {
        let lost = self.term.lost.clone();
        match next {
            Next::End => return false,
            Next::Unchain => first.out.unchain(),
            Next::Retry => {}
        }
        let _hold = tokio::select! {
            g = self.submitting.lock() => g,
            _ = lost.cancelled() => return false,
        };
        while let Ok((m, sent)) = self.from_submit.try_recv() {
            self.acks.push_back(acked(m, sent));
        }
        let mut again = VecDeque::from([first]);
        loop {
            let m = tokio::select! {
                m = self.acks.next() => m,
                _ = lost.cancelled() => return false,
            };
            match m {
                Some((m, _)) => again.push_back(m),
                None => break,
            }
        }
        if matches!(next, Next::Retry) {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = lost.cancelled() => return false,
            }
        }
        for m in again {
            let sent = tokio::select! {
                s = self.writer.send(&m.out) => s,
                _ = lost.cancelled() => return false,
            };
            self.acks.push_back(acked(m, sent));
        }
        true
    }
}

/// The slot's append counters, for the acker.
pub(super) struct AppendCounters {
    /// See `Slot::appends`.
    pub appends: Arc<AtomicU64>,
    /// See `Slot::append_micros`.
    pub append_micros: Arc<AtomicU64>,
    /// See `Slot::too_large`.
    pub too_large: Arc<AtomicU64>,
    /// The stream's last seq as learnt.
    pub stream_last: Arc<AtomicU64>,
}

impl AppendCounters {
    fn acked(&self, seq: u64, took: Duration) {
        self.stream_last.fetch_max(seq, Ordering::Relaxed);
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.append_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}
