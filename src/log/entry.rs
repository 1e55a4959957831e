//! One retained message, and the encodings of it that every subscriber shares.
//!
//! Rendering a message for a subscriber (a gRPC `Event`, an NDJSON line) depends only on the
//! message and its endpoint, so it is done once, by the first subscriber that needs it, and
//! cached on the entry. The cached bytes count against the replay window's byte bound like the
//! payloads do, so caching cannot make a log hold more memory than `replay.bytes` allows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;

use super::{IdBreak, Kind};

/// `Entry::charged` once the log has evicted the entry: later renderings are not charged.
const EVICTED: usize = usize::MAX;

/// A shared rendering of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The bytes of a gRPC `Event` that come before the payload.
    GrpcHead,
    /// The NDJSON line, newline included.
    Ndjson,
}

/// One fanned-out message.
#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    /// Wall-clock receive time in Unix nanoseconds.
    pub received_at: u64,
    pub kind: Kind,
    pub data: Bytes,
    /// A break in the upstream's ids just before this message: missing ids (`UPSTREAM_GAP`,
    /// resume with `contiguous = true`) or ids that started again (`UPSTREAM_RESET`). Every
    /// reader gets it before the message, filtered or not.
    pub upstream_gap: Option<IdBreak>,
    /// The shared subscription the message belongs to (`crate::share`): subscribers holding
    /// keys get only their keys' messages.
    pub key: Option<std::sync::Arc<str>>,
    /// Parsed JSON, computed once on first use by a filter and shared by all subscribers.
    json: OnceLock<Option<serde_json::Value>>,
    grpc_head: OnceLock<Bytes>,
    ndjson: OnceLock<Bytes>,
    /// Bytes of cached encodings charged to the log, or `EVICTED`.
    charged: AtomicUsize,
}

impl Entry {
    /// A message read from elsewhere than a log (a clustered endpoint's stream, for a replay
    /// older than the local window): its cached encodings are charged to no log's budget.
    pub fn detached(
        seq: u64,
        received_at: u64,
        kind: Kind,
        data: Bytes,
        upstream_gap: Option<IdBreak>,
        key: Option<std::sync::Arc<str>>,
    ) -> Entry {
        let e = Entry::new(seq, received_at, kind, data, upstream_gap, key);
        e.charged.store(EVICTED, Ordering::Release);
        e
    }

    pub(super) fn new(
        seq: u64,
        received_at: u64,
        kind: Kind,
        data: Bytes,
        upstream_gap: Option<IdBreak>,
        key: Option<std::sync::Arc<str>>,
    ) -> Entry {
        Entry {
            seq,
            received_at,
            kind,
            data,
            upstream_gap,
            key,
            json: OnceLock::new(),
            grpc_head: OnceLock::new(),
            ndjson: OnceLock::new(),
            charged: AtomicUsize::new(0),
        }
    }

    /// The payload as JSON, or `None` when it is not JSON.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(&self.data).ok())
            .as_ref()
    }

    /// The cached `encoding`, if a subscriber rendered it already.
    pub fn cached(&self, encoding: Encoding) -> Option<&[u8]> {
        self.slot(encoding).get().map(|b| &b[..])
    }

    fn slot(&self, encoding: Encoding) -> &OnceLock<Bytes> {
        match encoding {
            Encoding::GrpcHead => &self.grpc_head,
            Encoding::Ndjson => &self.ndjson,
        }
    }

    /// The cached `encoding`, rendered by `render` on first use and charged to `budget` (the
    /// owning log's count of cached bytes) while the log retains the entry.
    pub(super) fn encoding(
        &self,
        encoding: Encoding,
        budget: &AtomicUsize,
        render: impl FnOnce(&Entry) -> Bytes,
    ) -> &Bytes {
        let slot = self.slot(encoding);
        if let Some(b) = slot.get() {
            return b;
        }
        let mut fresh = None;
        let b = slot.get_or_init(|| {
            let b = render(self);
            fresh = Some(b.len());
            b
        });
        if let Some(len) = fresh {
            self.charge(len, budget);
        }
        b
    }

    /// Adds `len` to the budget unless the entry is already evicted. The budget is raised
    /// first, so a concurrent [`release`](Self::release) can never take it below zero.
    fn charge(&self, len: usize, budget: &AtomicUsize) {
        budget.fetch_add(len, Ordering::AcqRel);
        let added = self
            .charged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c != EVICTED).then(|| c + len)
            });
        if added.is_err() {
            budget.fetch_sub(len, Ordering::AcqRel);
        }
    }

    /// Called when the log evicts the entry: takes its cached bytes off the budget. Readers that
    /// still hold the entry keep (and may still render) its encodings, uncharged.
    pub(super) fn release(&self, budget: &AtomicUsize) {
        let charged = self.charged.swap(EVICTED, Ordering::AcqRel);
        if charged != EVICTED {
            budget.fetch_sub(charged, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry::new(1, 0, Kind::Text, Bytes::from_static(b"{}"), None, None)
    }

    #[test]
    fn renders_once_and_charges_once() {
        let budget = AtomicUsize::new(0);
        let e = entry();
        let mut calls = 0;
        for _ in 0..3 {
            let b = e.encoding(Encoding::Ndjson, &budget, |_| {
                calls += 1;
                Bytes::from_static(b"line\n")
            });
            assert_eq!(&b[..], b"line\n");
        }
        assert_eq!(calls, 1);
        assert_eq!(budget.load(Ordering::Acquire), 5);
        e.encoding(Encoding::GrpcHead, &budget, |_| Bytes::from_static(b"abc"));
        assert_eq!(budget.load(Ordering::Acquire), 8);
        e.release(&budget);
        assert_eq!(budget.load(Ordering::Acquire), 0);
        e.release(&budget);
        assert_eq!(
            budget.load(Ordering::Acquire),
            0,
            "a second release must not subtract"
        );
    }

    #[test]
    fn rendering_after_eviction_is_not_charged() {
        let budget = AtomicUsize::new(0);
        let e = entry();
        e.release(&budget);
        let b = e.encoding(Encoding::Ndjson, &budget, |_| Bytes::from_static(b"x\n"));
        assert_eq!(&b[..], b"x\n");
        assert_eq!(budget.load(Ordering::Acquire), 0);
    }

    #[test]
    fn concurrent_charges_and_release_balance() {
        for _ in 0..200 {
            let budget = std::sync::Arc::new(AtomicUsize::new(0));
            let e = std::sync::Arc::new(entry());
            let readers: Vec<_> = [Encoding::Ndjson, Encoding::GrpcHead]
                .into_iter()
                .map(|enc| {
                    let (b, e) = (budget.clone(), e.clone());
                    std::thread::spawn(move || {
                        e.encoding(enc, &b, |_| Bytes::from_static(b"0123456789"));
                    })
                })
                .collect();
            e.release(&budget);
            for r in readers {
                r.join().expect("reader thread");
            }
            assert_eq!(budget.load(Ordering::Acquire), 0);
        }
    }
}
