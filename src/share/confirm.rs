//! Confirmed publishes (issue 14): publishes that stay in a durable queue of their own until the
//! upstream answers them by id (`requests.id`), sent again on every new connection (and after a
//! restart) until it does. The queue is apart from the outbox: the outbox is a FIFO whose
//! entries leave in order once flushed, these leave in the order their replies come.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use super::link::Link;
use super::{Inner, Share, Target, Work};
use crate::dialogue::template::Values;
use crate::log::Kind;
use crate::store::{Op, Store, StoreError};

/// The upstream answered a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// Its id in the confirm queue.
    pub id: u64,
    /// The answer matched `requests.error`: the upstream refused it (it was delivered, though).
    pub error: bool,
}

/// Why a confirmed publish was refused or ended without a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfirmError {
    /// `outbox.max_messages` publishes wait for their confirmation already.
    #[error(
        "{depth} confirmed publishes wait for their reply (limit outbox.max_messages = {max})"
    )]
    Full { depth: usize, max: usize },
    /// No reply within `outbox.max_age`.
    #[error("no confirmation from the upstream within outbox.max_age")]
    Expired,
    /// The request has no place for the daemon's id.
    #[error("the message has no place for an id at {0:?}: a JSON object (or array) with that parent is needed")]
    NoIdPlace(String),
    #[error("cannot store the message: {0}")]
    Store(StoreError),
    /// The endpoint stopped.
    #[error("the endpoint stopped")]
    Closed,
}

/// What a confirmed publisher waits on.
pub type ConfirmReceiver = oneshot::Receiver<Result<Confirmed, ConfirmError>>;

/// One confirmed publish waiting for its reply.
pub(super) struct Entry {
    doc: Value,
    /// When it is dropped unanswered (`outbox.max_age` after it was queued).
    deadline: Instant,
    /// Committed to the store (or no store): it may be sent.
    ready: bool,
    /// The id it was sent with on the current connection.
    sent: Option<Value>,
    waiters: Vec<oneshot::Sender<Result<Confirmed, ConfirmError>>>,
}

/// The confirm queue of one endpoint, in [`Inner`].
#[derive(Default)]
pub(super) struct Queue {
    pub(super) entries: BTreeMap<u64, Entry>,
    next: u64,
}

/// Where confirm entries are kept across restarts.
pub(super) struct Durable {
    pub(super) store: Store,
    pub(super) endpoint: Arc<str>,
}

fn unix_ms() -> u64 {
    crate::endpoint::unix_nanos() / 1_000_000
}

impl Share {
    /// An endpoint's share whose confirmed publishes live in `store` (when given), starting
    /// with those a previous run left unanswered (`restored`: id, kind, enqueued Unix ms,
    /// payload), each dropped `max_age` after it was first queued.
    pub fn with_confirms(
        store: Option<Store>,
        endpoint: Arc<str>,
        restored: &[(u64, Kind, u64, Bytes)],
        max_age: Duration,
    ) -> Share {
        let share = Share {
            durable: store.map(|store| Durable { store, endpoint }),
            ..Share::default()
        };
        let mut inner = share.lock();
        let now_ms = unix_ms();
        for (id, _, at, data) in restored {
            // Entries were checked when published; one that no longer parses is dropped.
            let Ok(doc) = serde_json::from_slice::<Value>(data) else {
                share.remove_stored(*id);
                continue;
            };
            let age = Duration::from_millis(now_ms.saturating_sub(*at));
            let left = max_age.saturating_sub(age);
            inner.confirms.entries.insert(
                *id,
                Entry {
                    doc,
                    deadline: Instant::now() + left,
                    ready: true,
                    sent: None,
                    waiters: Vec::new(),
                },
            );
            inner.confirms.next = inner.confirms.next.max(*id);
        }
        drop(inner);
        share
    }

    /// Queues a confirmed publish (`data`, parsed as `doc`), durably where the share has a
    /// store; the receiver learns the upstream's answer, or that none came within `max_age`.
    pub fn confirm(
        self: &Arc<Self>,
        kind: Kind,
        data: Bytes,
        doc: Value,
        max: usize,
        max_age: Duration,
    ) -> Result<(u64, Instant, ConfirmReceiver), ConfirmError> {
        let mut inner = self.lock();
        let now = Instant::now();
        self.expire_locked(&mut inner, now);
        let depth = inner.confirms.entries.len();
        if depth >= max {
            return Err(ConfirmError::Full { depth, max });
        }
        inner.confirms.next += 1;
        let id = inner.confirms.next;
        let (tx, rx) = oneshot::channel();
        let deadline = now + max_age;
        inner.confirms.entries.insert(
            id,
            Entry {
                doc,
                deadline,
                ready: self.durable.is_none(),
                sent: None,
                waiters: vec![tx],
            },
        );
        if self.durable.is_none() && inner.open {
            inner.queue.push_back(Work::Confirm(id));
        }
        drop(inner);
        // Submitted outside the lock: a closed store calls back at once, and the callback locks.
        match &self.durable {
            Some(d) => {
                let share = Arc::clone(self);
                let op = Op::ConfirmPut {
                    endpoint: Arc::clone(&d.endpoint),
                    id,
                    kind,
                    enqueued_ms: unix_ms(),
                    data,
                };
                d.store
                    .submit(vec![op], Some(Box::new(move |r| share.stored(id, r))));
            }
            None => self.work.notify_one(),
        }
        Ok((id, deadline, rx))
    }

    /// The commit of confirm entry `id` finished: it may be sent, or it fails its publisher.
    fn stored(&self, id: u64, r: Result<(), StoreError>) {
        let mut inner = self.lock();
        match r {
            Ok(()) => {
                let open = inner.open;
                let Some(e) = inner.confirms.entries.get_mut(&id) else {
                    return;
                };
                e.ready = true;
                if open {
                    inner.queue.push_back(Work::Confirm(id));
                    drop(inner);
                    self.work.notify_one();
                }
            }
            Err(err) => {
                if let Some(e) = inner.confirms.entries.remove(&id) {
                    for w in e.waiters {
                        let _ = w.send(Err(ConfirmError::Store(err.clone())));
                    }
                }
            }
        }
    }

    /// A publisher's deadline passed: drops its entry if it is still unanswered. Returns what
    /// `rx` holds by now (a reply that came just in time wins).
    pub fn confirm_deadline(&self, mut rx: ConfirmReceiver) -> Result<Confirmed, ConfirmError> {
        let mut inner = self.lock();
        self.expire_locked(&mut inner, Instant::now());
        drop(inner);
        match rx.try_recv() {
            Ok(r) => r,
            Err(_) => Err(ConfirmError::Expired),
        }
    }

    /// The daemon stops: publishers waiting for a confirmation end with `Closed` (so the API
    /// servers can finish); the entries stay in the store and are sent after the next start.
    pub fn stop_confirm_waiters(&self) {
        let mut inner = self.lock();
        for e in inner.confirms.entries.values_mut() {
            for w in e.waiters.drain(..) {
                let _ = w.send(Err(ConfirmError::Closed));
            }
        }
    }

    /// Confirmed publishes waiting for their reply.
    pub fn confirm_depth(&self) -> usize {
        self.lock().confirms.entries.len()
    }

    /// Drops entries past their deadline, durably; their publishers learn it.
    pub(super) fn expire_locked(&self, inner: &mut Inner, now: Instant) {
        let old: Vec<u64> = inner
            .confirms
            .entries
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            if let Some(e) = inner.confirms.entries.remove(&id) {
                if let Some(sent) = e.sent {
                    inner.orphan(sent.to_string());
                }
                tracing::warn!(confirm_id = id, "a confirmed publish expired unanswered");
                for w in e.waiters {
                    let _ = w.send(Err(ConfirmError::Expired));
                }
                self.remove_stored(id);
            }
        }
    }

    /// Forgets confirm entry `id` in the store (no wait: a removal lost to a crash only means
    /// one more resend, which the upstream tolerates by contract).
    fn remove_stored(&self, id: u64) {
        if let Some(d) = &self.durable {
            let op = Op::ConfirmRemove {
                endpoint: Arc::clone(&d.endpoint),
                id,
            };
            d.store.submit(vec![op], None);
        }
    }
}

impl Link<'_> {
    /// The unanswered confirm entries to send on a connection that just opened, in queue order.
    pub(super) fn confirms_to_send(&self, share: &Share, inner: &mut Inner) -> Vec<Work> {
        share.expire_locked(inner, Instant::now());
        inner
            .confirms
            .entries
            .iter()
            .filter(|(_, e)| e.ready && e.sent.is_none())
            .map(|(id, _)| Work::Confirm(*id))
            .collect()
    }

    /// The connection ended: every entry sent on it waits to be sent again.
    pub(super) fn confirms_lost(inner: &mut Inner) {
        for e in inner.confirms.entries.values_mut() {
            e.sent = None;
        }
    }

    /// Renders confirm entry `id` as a request with a fresh id from the connection's counter.
    pub(super) fn render_confirm(
        &self,
        share: &Share,
        inner: &mut Inner,
        id: u64,
        values: Values<'_>,
    ) -> Option<String> {
        let reqs = self.reqs?;
        let e = inner.confirms.entries.get(&id)?;
        if !e.ready || e.sent.is_some() {
            return None;
        }
        if e.deadline <= Instant::now() {
            share.expire_locked(inner, Instant::now());
            return None;
        }
        let rid = self.next_id(values);
        let mut doc = e.doc.clone();
        let text = if self.socketio {
            super::socketio::event(Some(&rid), &doc)
        } else if super::key::set(&mut doc, &reqs.id, rid.clone()) {
            doc.to_string()
        } else {
            // Checked when published: only a changed `requests.id` gets here.
            if let Some(e) = inner.confirms.entries.remove(&id) {
                for w in e.waiters {
                    let _ = w.send(Err(ConfirmError::NoIdPlace(reqs.id.clone())));
                }
            }
            share.remove_stored(id);
            return None;
        };
        let e = inner.confirms.entries.get_mut(&id)?;
        e.sent = Some(rid.clone());
        inner.ids.insert(rid.to_string(), Target::Confirm(id));
        Some(text)
    }

    /// The upstream answered confirm entry `id` (its reply sent with id text `rid`): the entry
    /// leaves the queue durably and its publishers learn the answer.
    pub(super) fn confirm_reply(
        &self,
        share: &Share,
        inner: &mut Inner,
        id: u64,
        rid: &str,
        error: bool,
    ) {
        inner.ids.remove(rid);
        let Some(e) = inner.confirms.entries.remove(&id) else {
            return;
        };
        for w in e.waiters {
            let _ = w.send(Ok(Confirmed { id, error }));
        }
        share.remove_stored(id);
        Share::count(&share.stats.confirmed);
    }
}
