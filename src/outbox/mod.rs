//! The per-endpoint outbox (SPEC §11): a FIFO of published messages waiting to go upstream,
//! durable in the store when `outbox.durable` is set.
//!
//! Publishers `push` and are acknowledged once the entry is committed. The upstream writer
//! `peek_after`s committed entries, writes and flushes them, then `mark_sent`s: an entry leaves
//! the queue (and the store) only once its frame was flushed to the socket, or when it expires,
//! so a connection lost mid-write resends it on the next connection. Ids are assigned and jobs
//! submitted under one lock, and the store commits jobs in order, so committed entries are
//! always a prefix of the queue and FIFO order survives group commit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch, Notify};

use crate::config::OutboxConfig;
use crate::log::Kind;
use crate::store::{Op, Restored, Store, StoreError};

/// A queued publish.
#[derive(Debug, Clone)]
pub struct OutEntry {
    pub id: u64,
    pub kind: Kind,
    pub data: Bytes,
    enqueued_at: Instant,
    /// Committed to the store (always true for a memory-only outbox).
    committed: bool,
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
    #[error("cannot store the message: {0}")]
    StoreFull(String),
    #[error("cannot store the message: {0}")]
    Store(String),
}

impl From<StoreError> for PublishError {
    fn from(e: StoreError) -> Self {
        if e.full {
            PublishError::StoreFull(e.to_string())
        } else {
            PublishError::Store(e.to_string())
        }
    }
}

/// What a `wait = SENT` publisher learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentOutcome {
    Sent,
    /// Dropped after `max_age` before it could be sent.
    Expired,
    /// Dropped by an operator (`ClearOutbox`) before it could be sent.
    Cleared,
}

/// What an outbox holds, for `GetOutbox`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Entries waiting to be sent, and their payload bytes.
    pub depth: usize,
    pub bytes: usize,
    /// How long the oldest entry has waited; zero when empty.
    pub oldest_age: Duration,
    /// Ids of the oldest and newest entries; 0 when empty.
    pub oldest_id: u64,
    pub newest_id: u64,
    /// Entries are committed to the store.
    pub durable: bool,
}

/// What [`Outbox::clear`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleared {
    pub messages: usize,
    pub bytes: usize,
}

/// Receives the outcome of one `wait = SENT` publish.
pub type SentReceiver = oneshot::Receiver<SentOutcome>;

/// How `push` placed a message.
enum Queued {
    /// The idempotency key was seen: this is the first publish's id.
    Repeat(u64),
    InMemory(u64),
    /// Waiting for the store's commit.
    Committing(u64, oneshot::Receiver<Result<(), StoreError>>),
}

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
    /// When idempotency keys were last pruned in the store.
    pruned_at: Instant,
}

/// State the store's commit callbacks update, so an entry becomes sendable even when its
/// publisher went away before the commit finished.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the upstream writer when an entry becomes sendable.
    pushed: Notify,
    /// Highest outbox id whose commit finished, well or badly (commits finish in id order).
    settled: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One endpoint's outbox.
pub struct Outbox {
    cfg: OutboxConfig,
    endpoint: Arc<str>,
    /// `None` keeps the outbox in memory only (`outbox.durable = false` or no store).
    store: Option<Store>,
    shared: Arc<Shared>,
    /// Messages dropped after `max_age`, for status and metrics.
    expired: AtomicU64,
}

fn unix_ms_ago(ms: u64) -> Instant {
    let now_ms = crate::endpoint::unix_nanos() / 1_000_000;
    let age = Duration::from_millis(now_ms.saturating_sub(ms));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

impl Outbox {
    /// An empty in-memory outbox; ids start at 1.
    pub fn new(cfg: OutboxConfig) -> Self {
        Self::restored(cfg, Arc::from(""), None, &Restored::default())
    }

    /// An outbox holding what the store had for `endpoint`; with `store`, new entries are
    /// committed to it (when `cfg.durable`).
    pub fn restored(
        cfg: OutboxConfig,
        endpoint: Arc<str>,
        store: Option<Store>,
        restored: &Restored,
    ) -> Self {
        let entries: VecDeque<OutEntry> = restored
            .outbox
            .iter()
            .map(|(id, kind, at_ms, data)| OutEntry {
                id: *id,
                kind: *kind,
                data: data.clone(),
                enqueued_at: unix_ms_ago(*at_ms),
                committed: true,
            })
            .collect();
        let next_id = restored
            .outbox_next
            .max(entries.back().map_or(1, |e| e.id + 1))
            .max(1);
        let keys = restored
            .idempotency
            .iter()
            .map(|(k, id, at)| (k.clone(), (*id, unix_ms_ago(*at))))
            .collect();
        let bytes = entries.iter().map(|e| e.data.len()).sum();
        let store = store.filter(|_| cfg.durable);
        Outbox {
            cfg,
            endpoint,
            store,
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    entries,
                    bytes,
                    next_id,
                    sent_upto: 0,
                    keys,
                    waiters: HashMap::new(),
                    pruned_at: Instant::now(),
                }),
                pushed: Notify::new(),
                settled: watch::Sender::new(next_id - 1),
            }),
            expired: AtomicU64::new(0),
        }
    }

    /// Queues a message and returns its outbox id once it is stored. A repeated
    /// `idempotency_key` returns the first id and queues nothing. With `want_sent`, also
    /// returns a receiver for the outcome.
    pub async fn push(
        &self,
        kind: Kind,
        data: Bytes,
        idempotency_key: Option<&str>,
        want_sent: bool,
    ) -> Result<(u64, Option<SentReceiver>), PublishError> {
        let queued = {
            let mut q = self.shared.lock();
            let now = Instant::now();
            self.expire_locked(&mut q, now);
            // Checked under the same lock as the insert, so two concurrent publishes with one
            // new key cannot both queue.
            match idempotency_key.and_then(|k| q.keys.get(k)) {
                Some(&(id, _)) => Queued::Repeat(id),
                None => self.queue_locked(&mut q, kind, data, idempotency_key, now)?,
            }
        };
        let id = match queued {
            Queued::Repeat(id) => return self.repeated(id, want_sent).await,
            Queued::InMemory(id) => {
                self.shared.pushed.notify_one();
                self.shared.settled.send_replace(id);
                id
            }
            Queued::Committing(id, rx) => match rx.await {
                Ok(Ok(())) => id,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(PublishError::Store("store stopped".into())),
            },
        };
        let rx = want_sent.then(|| {
            let mut q = self.shared.lock();
            Self::waiter_locked(&mut q, id)
        });
        Ok((id, rx))
    }

    /// Appends a new entry under the lock and, for a durable outbox, submits its commit.
    fn queue_locked(
        &self,
        q: &mut Queue,
        kind: Kind,
        data: Bytes,
        idempotency_key: Option<&str>,
        now: Instant,
    ) -> Result<Queued, PublishError> {
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
            data: data.clone(),
            enqueued_at: now,
            committed: self.store.is_none(),
        });
        if let Some(key) = idempotency_key {
            q.keys.insert(key.to_owned(), (id, now));
        }
        let Some(store) = &self.store else {
            return Ok(Queued::InMemory(id));
        };
        let (tx, rx) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let op = Op::OutboxPut {
            endpoint: Arc::clone(&self.endpoint),
            id,
            kind,
            enqueued_ms: crate::endpoint::unix_nanos() / 1_000_000,
            data,
            idempotency_key: idempotency_key.map(str::to_owned),
        };
        // Submitted under the lock: the store commits in submission order, which is id order.
        store.submit(
            vec![op],
            Some(Box::new(move |r| {
                settle(&shared, id, r.is_ok());
                let _ = tx.send(r);
            })),
        );
        Ok(Queued::Committing(id, rx))
    }

    /// A publish with a known idempotency key: wait until the first one's commit settled, then
    /// answer as it was answered.
    async fn repeated(
        &self,
        id: u64,
        want_sent: bool,
    ) -> Result<(u64, Option<SentReceiver>), PublishError> {
        let mut settled = self.shared.settled.subscribe();
        let _ = settled.wait_for(|s| *s >= id).await;
        let mut q = self.shared.lock();
        let known = id <= q.sent_upto || q.entries.iter().any(|e| e.id == id && e.committed);
        // Not sent and not queued: expired (its key remains) or never stored (key removed).
        if !known && !q.keys.values().any(|(kid, _)| *kid == id) {
            return Err(PublishError::Store(
                "the first publish with this idempotency key was not stored".into(),
            ));
        }
        let rx = want_sent.then(|| Self::waiter_locked(&mut q, id));
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

    /// The first committed entries with id > `after`, at most `max` of them, oldest first.
    pub fn peek_after(&self, after: u64, max: usize) -> Vec<OutEntry> {
        let mut q = self.shared.lock();
        self.expire_locked(&mut q, Instant::now());
        q.entries
            .iter()
            .filter(|e| e.id > after)
            .take_while(|e| e.committed)
            .take(max)
            .cloned()
            .collect()
    }

    /// Waits until a committed entry with id > `after` is queued; returns at once if one is.
    pub async fn wait_after(&self, after: u64) {
        loop {
            let notified = self.shared.pushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ready = {
                let q = self.shared.lock();
                q.entries
                    .iter()
                    .find(|e| e.id > after)
                    .is_some_and(|e| e.committed)
            };
            if ready {
                return;
            }
            notified.await;
        }
    }

    /// Removes every entry up to `id`: they were flushed to the upstream socket.
    pub fn mark_sent(&self, id: u64) {
        let mut q = self.shared.lock();
        let mut removed = false;
        while q.entries.front().is_some_and(|e| e.id <= id) {
            if let Some(e) = q.entries.pop_front() {
                q.bytes -= e.data.len();
                removed = true;
                for w in q.waiters.remove(&e.id).unwrap_or_default() {
                    let _ = w.send(SentOutcome::Sent);
                }
            }
        }
        q.sent_upto = q.sent_upto.max(id);
        drop(q);
        if removed {
            self.forget_upto(id);
        }
        // Re-wake the writer: it may have been waiting with a stale position.
        self.shared.pushed.notify_one();
    }

    /// Deletes entries up to `id` from the store. Not awaited: if the daemon dies before this
    /// commits, the entries are sent again after the restart (at-least-once upstream).
    fn forget_upto(&self, id: u64) {
        if let Some(store) = &self.store {
            store.submit(
                vec![Op::OutboxRemoveUpTo {
                    endpoint: Arc::clone(&self.endpoint),
                    upto: id,
                }],
                None,
            );
        }
    }

    /// Drops entries older than `max_age`, and idempotency keys too old to matter.
    pub fn expire(&self) {
        let mut q = self.shared.lock();
        self.expire_locked(&mut q, Instant::now());
    }

    fn expire_locked(&self, q: &mut Queue, now: Instant) {
        let max_age = self.cfg.max_age;
        let mut last_expired = None;
        while q
            .entries
            .front()
            .is_some_and(|e| e.committed && now.saturating_duration_since(e.enqueued_at) > max_age)
        {
            if let Some(e) = q.entries.pop_front() {
                q.bytes -= e.data.len();
                last_expired = Some(e.id);
                self.expired.fetch_add(1, Ordering::Relaxed);
                for w in q.waiters.remove(&e.id).unwrap_or_default() {
                    let _ = w.send(SentOutcome::Expired);
                }
            }
        }
        if let Some(id) = last_expired {
            tracing::warn!(endpoint = %self.endpoint, upto = id, "outbox messages expired unsent");
            self.forget_upto(id);
        }
        // On a timer only: keys younger than max_age must stay however many there are, so a
        // size trigger would rescan them on every publish.
        if now.saturating_duration_since(q.pruned_at) > Duration::from_secs(60) {
            q.pruned_at = now;
            q.keys
                .retain(|_, (_, at)| now.saturating_duration_since(*at) <= max_age);
            if let Some(store) = &self.store {
                let before = crate::endpoint::unix_nanos() / 1_000_000;
                store.submit(
                    vec![Op::IdemPrune {
                        endpoint: Arc::clone(&self.endpoint),
                        before_ms: before.saturating_sub(max_age.as_millis() as u64),
                    }],
                    None,
                );
            }
        }
    }

    /// What the outbox holds now (expired entries dropped first).
    pub fn snapshot(&self) -> Snapshot {
        let mut q = self.shared.lock();
        let now = Instant::now();
        self.expire_locked(&mut q, now);
        let (front, back) = (q.entries.front(), q.entries.back());
        Snapshot {
            depth: q.entries.len(),
            bytes: q.bytes,
            oldest_age: front.map_or(Duration::ZERO, |e| {
                now.saturating_duration_since(e.enqueued_at)
            }),
            oldest_id: front.map_or(0, |e| e.id),
            newest_id: back.map_or(0, |e| e.id),
            durable: self.store.is_some(),
        }
    }

    /// Drops every entry with id <= `up_to` (`None`: every entry), for good: an operator gave
    /// up on them. The queue loses a prefix, as when entries are sent, so FIFO order holds for
    /// the rest; idempotency keys stay, so a repeated publish is still not queued again. A
    /// durable outbox returns once the store forgot them; on a store failure they are gone
    /// from memory but may come back after a restart, and the error says so.
    pub async fn clear(&self, up_to: Option<u64>) -> Result<Cleared, StoreError> {
        let (cleared, upto, done) = {
            let mut q = self.shared.lock();
            let mut cleared = Cleared::default();
            let mut last = None;
            while let Some(e) = q.entries.front() {
                if up_to.is_some_and(|u| e.id > u) {
                    break;
                }
                let Some(e) = q.entries.pop_front() else {
                    break;
                };
                q.bytes -= e.data.len();
                cleared.messages += 1;
                cleared.bytes += e.data.len();
                last = Some(e.id);
                for w in q.waiters.remove(&e.id).unwrap_or_default() {
                    let _ = w.send(SentOutcome::Cleared);
                }
            }
            let Some(upto) = last else {
                return Ok(cleared);
            };
            // Submitted under the lock, so it commits after the puts of every cleared entry
            // (some may still be committing): none of them comes back after a restart.
            let done = self.store.as_ref().map(|store| {
                let (tx, rx) = oneshot::channel();
                store.submit(
                    vec![Op::OutboxRemoveUpTo {
                        endpoint: Arc::clone(&self.endpoint),
                        upto,
                    }],
                    Some(Box::new(move |r| {
                        let _ = tx.send(r);
                    })),
                );
                rx
            });
            (cleared, upto, done)
        };
        tracing::warn!(
            endpoint = %self.endpoint,
            cleared = cleared.messages,
            bytes = cleared.bytes,
            upto,
            "outbox cleared by an operator: these messages will never be sent"
        );
        if let Some(done) = done {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(StoreError {
                        path: self
                            .store
                            .as_ref()
                            .map(|s| s.path().to_owned())
                            .unwrap_or_default(),
                        msg: "store stopped before the clear was committed".into(),
                        full: false,
                    })
                }
            }
        }
        Ok(cleared)
    }

    /// Entries queued.
    pub fn depth(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// Entries dropped after `max_age` so far.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }
}

/// Records the outcome of entry `id`'s commit: sendable, or gone with its key.
fn settle(shared: &Shared, id: u64, ok: bool) {
    {
        let mut q = shared.lock();
        if ok {
            if let Some(e) = q.entries.iter_mut().rev().find(|e| e.id == id) {
                e.committed = true;
            }
        } else if let Some(pos) = q.entries.iter().position(|e| e.id == id) {
            if let Some(e) = q.entries.remove(pos) {
                q.bytes -= e.data.len();
            }
            q.keys.retain(|_, (kid, _)| *kid != id);
        }
    }
    shared.settled.send_modify(|s| *s = (*s).max(id));
    if ok {
        shared.pushed.notify_one();
    }
}

#[cfg(test)]
mod tests;
