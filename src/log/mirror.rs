//! A log fed from elsewhere at given seqs: a clustered endpoint's local copy of its JetStream
//! stream (`crate::cluster`), whose seqs are the stream's on every host of the fleet.
//!
//! Such a log starts empty and does not know its seqs until the stream answers, while apps may
//! already subscribe. [`Log::mirror`] makes cursors opened before [`Log::position`] wait
//! without a start; once the position is known each starts where its `from_seq` says, as if it
//! had subscribed then: a live one at the stream's next message, never at the messages read
//! back to fill the replay window.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{IdBreak, Item, Kind, Log, ReplayConfig};

impl Log {
    /// An empty log that mirrors a stream: cursors get their start at [`Log::position`].
    pub fn mirror(cfg: &ReplayConfig) -> Arc<Log> {
        let log = Log::new(cfg, 1);
        log.mirrors.store(true, Ordering::Release);
        log
    }

    /// Whether [`Log::position`] was called (it is kept across an endpoint task's restart).
    pub fn is_positioned(&self) -> bool {
        self.positioned.get().is_some()
    }

    /// Fixes where the mirror starts: `live_from` is the seq of the next message to arrive
    /// (the stream's last seq + 1). Entries older than it may follow with
    /// [`append_at`](Self::append_at) (a replay window read back); live cursors do not see them.
    /// Only the first call counts.
    pub fn position(&self, live_from: u64) {
        let w = self.lock();
        if self.positioned.set(live_from).is_ok() {
            drop(w);
            // Wakes the cursors that waited for a start.
            self.last_seq.send_modify(|_| {});
        }
    }

    /// Appends a message at `seq`, visible at once; `gap` tells readers of seqs that will never
    /// come (the source dropped them before this log read them). A seq at or below the last
    /// one appended is ignored (a source read again from an earlier seq) and `false` returned.
    pub fn append_at(
        &self,
        seq: u64,
        kind: Kind,
        data: Bytes,
        received_at: u64,
        gap: Option<IdBreak>,
        key: Option<Arc<str>>,
    ) -> bool {
        {
            let mut w = self.lock();
            if seq < w.next_seq {
                return false;
            }
            w.next_seq = seq;
        }
        let seq = self.append_quiet(kind, data, received_at, gap, key);
        self.announce(seq);
        true
    }

    /// For a cursor opened before [`position`](Self::position): its start and first gaps now,
    /// or `None` while the position is still unknown.
    pub(super) fn settle(&self, from_seq: Option<u64>) -> Option<(u64, Vec<Item>)> {
        let w = self.lock();
        let live = *self.positioned.get()?;
        Some(self.start_of(&w, from_seq, live))
    }
}
