//! A subscriber's position in the log: reads in batches from it, learns it fell behind the
//! window, and wakes when the log grows.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio_stream::wrappers::WatchStream;

use super::{GapReason, Item, Lagged, Log};
use crate::config::SlowPolicy;
use crate::filter::Filter;

/// A subscriber's position in a [`Log`].
pub struct Cursor {
    pub(super) log: Arc<Log>,
    /// The seq this subscriber reads next.
    pub(super) next: u64,
    /// The gaps of a `from_seq` older than the window, handed out before anything else.
    pub(super) pending_gaps: Vec<Item>,
    pub(super) filters: Vec<Filter>,
    /// Only messages of these shared-subscription keys (sorted), when set.
    pub(super) keys: Option<Vec<Arc<str>>>,
    /// Wakes the cursor when the log grows; ends when the log is dropped.
    pub(super) changes: WatchStream<u64>,
    pub(super) ended: bool,
    /// Opened on a mirror before its position was known: the `from_seq` asked for, until
    /// [`Log::settle`] gives the start.
    pub(super) unsettled: Option<Option<u64>>,
}

impl Cursor {
    /// Reads only the messages tagged with one of `keys` (shared subscriptions).
    pub fn only_keys(&mut self, mut keys: Vec<Arc<str>>) {
        keys.sort_unstable();
        keys.dedup();
        self.keys = Some(keys);
    }

    /// The seq this cursor reads next.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Moves whatever is available (up to `max` items) into `out` without waiting. A cursor that
    /// fell out of the window gets a `SLOW_SUBSCRIBER` gap, or `Err` under the disconnect policy.
    pub fn try_read(&mut self, out: &mut Vec<Item>, max: usize) -> Result<(), Lagged> {
        if !self.settle() {
            return Ok(());
        }
        out.append(&mut self.pending_gaps);
        let at = out.len();
        let r = self
            .log
            .read(self.next, &self.filters, self.keys.as_deref(), out, max);
        if let Some((from, to)) = r.missed {
            if self.log.slow_policy == SlowPolicy::Disconnect {
                self.ended = true;
                return Err(Lagged { from, to });
            }
            // The gap goes before the messages read after it.
            out.insert(
                at,
                Item::Gap {
                    from,
                    to,
                    reason: GapReason::SlowSubscriber,
                },
            );
        }
        self.next = r.pos;
        Ok(())
    }

    /// Like [`try_read`](Self::try_read) but waits until at least one item is there.
    /// `Ready(Ok(false))` means the log is gone (endpoint removed).
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Item>,
        max: usize,
    ) -> Poll<Result<bool, Lagged>> {
        if self.ended {
            return Poll::Ready(Ok(false));
        }
        loop {
            self.try_read(out, max)?;
            if !out.is_empty() {
                return Poll::Ready(Ok(true));
            }
            if self.log.closed.load(Ordering::Acquire) {
                self.ended = true;
                return Poll::Ready(Ok(false));
            }
            match std::pin::Pin::new(&mut self.changes).poll_next(cx) {
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => {
                    self.ended = true;
                    return Poll::Ready(Ok(false));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Under `slow_subscriber = "disconnect"`, ready once the window has moved past this
    /// cursor, without reading anything: a writer whose client has stopped reading can notice
    /// while it waits for the socket. Never ready under the skip policy.
    pub fn poll_fell_behind(&mut self, cx: &mut Context<'_>) -> Poll<Lagged> {
        if self.log.slow_policy != SlowPolicy::Disconnect || self.ended || !self.settle() {
            return Poll::Pending;
        }
        loop {
            let first = self.log.first_retained();
            if first > self.next {
                self.ended = true;
                return Poll::Ready(Lagged {
                    from: self.next,
                    to: first - 1,
                });
            }
            // Taking the change here costs `poll_read` nothing: it reads before it waits.
            match std::pin::Pin::new(&mut self.changes).poll_next(cx) {
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// True once this cursor has a start (always, except on a mirror not positioned yet).
    fn settle(&mut self) -> bool {
        let Some(from_seq) = self.unsettled else {
            return true;
        };
        match self.log.settle(from_seq) {
            Some((next, gaps)) => {
                self.next = next;
                self.pending_gaps = gaps;
                self.unsettled = None;
                true
            }
            None => false,
        }
    }

    /// Async form of [`poll_read`](Self::poll_read).
    pub async fn read(&mut self, out: &mut Vec<Item>, max: usize) -> Result<bool, Lagged> {
        std::future::poll_fn(|cx| self.poll_read(cx, out, max)).await
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.log.cursors.fetch_sub(1, Ordering::Relaxed);
    }
}
