//! The per-endpoint outbox (SPEC §11): a FIFO of published messages waiting to go upstream.
//!
//! Publishers `push`; the upstream writer `peek_after`s, writes and flushes, then `mark_sent`s.
//! An entry leaves the queue only once its frame was flushed to the socket (or it expired), so a
//! connection lost mid-write resends it on the next connection. This is the in-memory queue; the
//! durable store plugs in behind the same methods.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::config::OutboxConfig;
use crate::log::Kind;

/// A queued publish.
#[derive(Debug, Clone)]
pub struct OutEntry {
    pub id: u64,
    pub kind: Kind,
    pub data: Bytes,
    enqueued_at: Instant,
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("outbox full: {depth} messages, {bytes} bytes queued (limits {max_messages} messages, {max_bytes} bytes)")]
    Full {
        depth: usize,
        bytes: usize,
        max_messages: usize,
        max_bytes: usize,
    },
    #[error("message of {0} bytes is larger than the outbox max_bytes")]
    TooLarge(usize),
}

/// What a `wait = SENT` publisher learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentOutcome {
    Sent,
    /// Dropped after `max_age` before it could be sent.
    Expired,
}

/// Receives the outcome of one `wait = SENT` publish.
pub type SentReceiver = oneshot::Receiver<SentOutcome>;

struct Queue {
    entries: VecDeque<OutEntry>,
    bytes: usize,
    next_id: u64,
    /// Highest id flushed upstream.
    sent_upto: u64,
    /// Idempotency key → (outbox id, first seen), pruned after `max_age`.
    keys: HashMap<String, (u64, Instant)>,
    /// `wait = SENT` publishers by outbox id.
    waiters: HashMap<u64, Vec<oneshot::Sender<SentOutcome>>>,
}

/// One endpoint's outbox.
pub struct Outbox {
    cfg: OutboxConfig,
    queue: Mutex<Queue>,
    /// Wakes the upstream writer when something is pushed.
    pushed: Notify,
    /// Messages dropped after `max_age`, for status and metrics.
    expired: AtomicU64,
}

impl Outbox {
    /// An empty outbox; ids start at 1.
    pub fn new(cfg: OutboxConfig) -> Self {
        Outbox {
            cfg,
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                bytes: 0,
                next_id: 1,
                sent_upto: 0,
                keys: HashMap::new(),
                waiters: HashMap::new(),
            }),
            pushed: Notify::new(),
            expired: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message and returns its outbox id. A repeated `idempotency_key` returns the
    /// first id and queues nothing. With `want_sent`, also returns a receiver for the outcome.
    pub fn push(
        &self,
        kind: Kind,
        data: Bytes,
        idempotency_key: Option<&str>,
        want_sent: bool,
    ) -> Result<(u64, Option<SentReceiver>), PublishError> {
        let now = Instant::now();
        let mut q = self.lock();
        self.expire_locked(&mut q, now);
        if let Some(key) = idempotency_key {
            if let Some(&(id, _)) = q.keys.get(key) {
                let rx = want_sent.then(|| Self::waiter_locked(&mut q, id));
                return Ok((id, rx));
            }
        }
        if data.len() > self.cfg.max_bytes {
            return Err(PublishError::TooLarge(data.len()));
        }
        if q.entries.len() >= self.cfg.max_messages || q.bytes + data.len() > self.cfg.max_bytes {
            return Err(PublishError::Full {
                depth: q.entries.len(),
                bytes: q.bytes,
                max_messages: self.cfg.max_messages,
                max_bytes: self.cfg.max_bytes,
            });
        }
        let id = q.next_id;
        q.next_id += 1;
        q.bytes += data.len();
        q.entries.push_back(OutEntry {
            id,
            kind,
            data,
            enqueued_at: now,
        });
        if let Some(key) = idempotency_key {
            q.keys.insert(key.to_owned(), (id, now));
        }
        let rx = want_sent.then(|| Self::waiter_locked(&mut q, id));
        drop(q);
        self.pushed.notify_one();
        Ok((id, rx))
    }

    fn waiter_locked(q: &mut Queue, id: u64) -> SentReceiver {
        let (tx, rx) = oneshot::channel();
        if id <= q.sent_upto {
            let _ = tx.send(SentOutcome::Sent);
        } else if q.entries.iter().any(|e| e.id == id) {
            q.waiters.entry(id).or_default().push(tx);
        } else {
            let _ = tx.send(SentOutcome::Expired);
        }
        rx
    }

    /// The first queued entries with id > `after`, at most `max` of them, oldest first.
    pub fn peek_after(&self, after: u64, max: usize) -> Vec<OutEntry> {
        let mut q = self.lock();
        self.expire_locked(&mut q, Instant::now());
        q.entries
            .iter()
            .filter(|e| e.id > after)
            .take(max)
            .cloned()
            .collect()
    }

    /// Waits until an entry with id > `after` is queued; returns at once if one is.
    pub async fn wait_after(&self, after: u64) {
        loop {
            let notified = self.pushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().entries.back().is_some_and(|e| e.id > after) {
                return;
            }
            notified.await;
        }
    }

    /// Removes every entry up to `id`: they were flushed to the upstream socket.
    pub fn mark_sent(&self, id: u64) {
        let mut q = self.lock();
        while q.entries.front().is_some_and(|e| e.id <= id) {
            if let Some(e) = q.entries.pop_front() {
                q.bytes -= e.data.len();
                for w in q.waiters.remove(&e.id).unwrap_or_default() {
                    let _ = w.send(SentOutcome::Sent);
                }
            }
        }
        q.sent_upto = q.sent_upto.max(id);
        // Re-wake the writer: it may have been waiting with a stale position.
        self.pushed.notify_one();
    }

    /// Drops entries older than `max_age`, and idempotency keys too old to matter.
    pub fn expire(&self) {
        let mut q = self.lock();
        self.expire_locked(&mut q, Instant::now());
    }

    fn expire_locked(&self, q: &mut Queue, now: Instant) {
        let max_age = self.cfg.max_age;
        while q
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.enqueued_at) > max_age)
        {
            if let Some(e) = q.entries.pop_front() {
                q.bytes -= e.data.len();
                self.expired.fetch_add(1, Ordering::Relaxed);
                for w in q.waiters.remove(&e.id).unwrap_or_default() {
                    let _ = w.send(SentOutcome::Expired);
                }
            }
        }
        if q.keys.len() > 1024 || q.entries.is_empty() {
            q.keys
                .retain(|_, (_, at)| now.saturating_duration_since(*at) <= max_age);
        }
    }

    /// Entries queued.
    pub fn depth(&self) -> usize {
        self.lock().entries.len()
    }

    /// Entries dropped after `max_age` so far.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outbox(max_messages: usize, max_bytes: usize, max_age: Duration) -> Outbox {
        Outbox::new(OutboxConfig {
            max_messages,
            max_bytes,
            max_age,
            durable: false,
        })
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn fifo_and_removal_only_after_sent() {
        let o = outbox(10, 1000, Duration::from_secs(60));
        for s in ["a", "b", "c"] {
            o.push(Kind::Text, b(s), None, false).expect("room");
        }
        let first = o.peek_after(0, 2);
        assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
        // Nothing marked sent: a new connection starts from the head again.
        assert_eq!(o.peek_after(0, 10).len(), 3);
        o.mark_sent(2);
        assert_eq!(o.depth(), 1);
        assert_eq!(o.peek_after(0, 10)[0].data, b("c"));
    }

    #[test]
    fn limits_refuse() {
        let o = outbox(2, 1000, Duration::from_secs(60));
        o.push(Kind::Text, b("a"), None, false).expect("room");
        o.push(Kind::Text, b("b"), None, false).expect("room");
        assert!(matches!(
            o.push(Kind::Text, b("c"), None, false),
            Err(PublishError::Full { depth: 2, .. })
        ));
        let o = outbox(10, 3, Duration::from_secs(60));
        o.push(Kind::Text, b("ab"), None, false).expect("room");
        assert!(o.push(Kind::Text, b("cd"), None, false).is_err());
        assert_eq!(
            o.push(Kind::Text, b("abcd"), None, false).err(),
            Some(PublishError::TooLarge(4))
        );
    }

    #[test]
    fn idempotency_key_queues_once() {
        let o = outbox(10, 1000, Duration::from_secs(60));
        let (a, _) = o.push(Kind::Text, b("x"), Some("k1"), false).expect("room");
        let (b2, _) = o.push(Kind::Text, b("x"), Some("k1"), false).expect("room");
        assert_eq!(a, b2);
        assert_eq!(o.depth(), 1);
    }

    #[tokio::test]
    async fn wait_sent_and_expiry() {
        let o = outbox(10, 1000, Duration::from_millis(50));
        let (id, rx) = o.push(Kind::Text, b("x"), None, true).expect("room");
        o.mark_sent(id);
        assert_eq!(rx.expect("asked").await, Ok(SentOutcome::Sent));
        let (_, rx) = o.push(Kind::Text, b("y"), None, true).expect("room");
        tokio::time::sleep(Duration::from_millis(80)).await;
        o.expire();
        assert_eq!(rx.expect("asked").await, Ok(SentOutcome::Expired));
        assert_eq!(o.expired(), 1);
        assert_eq!(o.depth(), 0);
    }
}
