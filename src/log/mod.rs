//! The per-endpoint message log (SPEC §10): assigns `seq`, keeps the replay window, and lets
//! subscribers read it through cursors.
//!
//! The upstream task appends and never waits for a reader. A subscriber is a [`Cursor`]: a
//! position in the log plus a change notification. Payloads are shared `Bytes` inside
//! `Arc<Entry>`, so a message exists once however many subscribers read it. A cursor that falls
//! behind the retained window learns it on its next read and gets a `Gap` (or an error, with
//! `slow_subscriber = "disconnect"`): lagging is reported, never skipped silently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::config::{ReplayConfig, SlowPolicy};
use crate::filter::{self, Filter};

mod cursor;
mod entry;
mod mirror;
pub use cursor::Cursor;
pub use entry::{Encoding, Entry};

/// WebSocket frame type, kept end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
}

/// Why a subscriber missed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The seqs asked for are older than the replay window.
    ReplayExpired,
    /// The subscriber fell behind the replay window.
    SlowSubscriber,
    /// The upstream's ids jumped; the range is upstream ids.
    UpstreamGap,
    /// Seqs reserved before a crash: lost with it, or never used.
    DaemonRestart,
    /// The upstream's ids started again; the range is (last id before, first id after).
    UpstreamReset,
}

impl GapReason {
    /// Gaps in the upstream's ids: they travel with the message that follows them, and their
    /// range is upstream ids, not seqs.
    pub fn is_upstream(self) -> bool {
        matches!(self, GapReason::UpstreamGap | GapReason::UpstreamReset)
    }

    /// The reason [`as_str`](Self::as_str) names.
    pub fn parse(name: &str) -> Option<GapReason> {
        [
            GapReason::ReplayExpired,
            GapReason::SlowSubscriber,
            GapReason::UpstreamGap,
            GapReason::DaemonRestart,
            GapReason::UpstreamReset,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }

    /// The name used on both APIs and in metrics (proto enum value names).
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::ReplayExpired => "REPLAY_EXPIRED",
            GapReason::SlowSubscriber => "SLOW_SUBSCRIBER",
            GapReason::UpstreamGap => "UPSTREAM_GAP",
            GapReason::DaemonRestart => "DAEMON_RESTART",
            GapReason::UpstreamReset => "UPSTREAM_RESET",
        }
    }
}

/// A break in the upstream's ids, handed to readers just before the message it precedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdBreak {
    /// `UPSTREAM_GAP`: first missing id; `UPSTREAM_RESET`: last id before the reset.
    pub from: u64,
    /// `UPSTREAM_GAP`: last missing id; `UPSTREAM_RESET`: first id after it.
    pub to: u64,
    /// [`GapReason::UpstreamGap`] or [`GapReason::UpstreamReset`].
    pub reason: GapReason,
}

/// What a cursor yields.
#[derive(Debug, Clone)]
pub enum Item {
    Message(Arc<Entry>),
    /// Seqs `from..=to` are not delivered to this subscriber (for `UpstreamGap`: the upstream
    /// ids that never arrived).
    Gap {
        from: u64,
        to: u64,
        reason: GapReason,
    },
}

/// A cursor that fell behind with `slow_subscriber = "disconnect"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscriber fell behind the replay window (missed seq {from}..={to})")]
pub struct Lagged {
    pub from: u64,
    pub to: u64,
}

struct Window {
    entries: VecDeque<Arc<Entry>>,
    /// Sum of payload sizes in `entries`.
    bytes: usize,
    /// The seq the next append gets.
    next_seq: u64,
    /// Highest seq readers may see. Appends waiting for their durable commit sit above it.
    visible: u64,
    /// Payload bytes of the entries above `visible`; the window bounds count visible ones only.
    pending_bytes: usize,
}

/// The log of one endpoint.
pub struct Log {
    window: Mutex<Window>,
    max_messages: usize,
    max_bytes: usize,
    slow_policy: SlowPolicy,
    /// Carries the last assigned seq; every append bumps it and wakes waiting cursors.
    last_seq: watch::Sender<u64>,
    /// Live cursors, for status and metrics.
    cursors: AtomicUsize,
    /// Bytes of encodings cached on retained entries; they count against `max_bytes`.
    cached: AtomicUsize,
    /// Set when the endpoint is removed or the daemon stops: cursors end after draining.
    closed: AtomicBool,
    /// Seqs reserved before a crash that may never have been used (set once at start).
    restart_hole: std::sync::OnceLock<(u64, u64)>,
    /// For a log that mirrors a stream (`mirror.rs`): the seq live cursors start at, set once
    /// the stream's position is known. Cursors opened before wait for it.
    positioned: std::sync::OnceLock<u64>,
    /// Whether this log waits for [`Log::position`] before cursors get a start.
    mirrors: AtomicBool,
}

impl Log {
    /// An empty log whose first message gets `next_seq` (1 for a fresh endpoint).
    pub fn new(cfg: &ReplayConfig, next_seq: u64) -> Arc<Log> {
        Self::restored(cfg, next_seq, Vec::new())
    }

    /// A log holding `entries` (seq, kind, received_at, payload; oldest first, e.g. read back
    /// from the store) whose next message gets `next_seq`. Seqs may jump between entries (seqs
    /// leased before a restart were never used); readers skip such holes silently.
    pub fn restored(
        cfg: &ReplayConfig,
        next_seq: u64,
        entries: Vec<(u64, Kind, u64, Bytes)>,
    ) -> Arc<Log> {
        Self::restored_keyed(cfg, next_seq, entries, |_| None)
    }

    /// [`restored`](Self::restored), each entry tagged with the shared-subscription key
    /// `key_of` finds in its payload.
    pub fn restored_keyed(
        cfg: &ReplayConfig,
        next_seq: u64,
        entries: Vec<(u64, Kind, u64, Bytes)>,
        key_of: impl Fn(&[u8]) -> Option<Arc<str>>,
    ) -> Arc<Log> {
        let last = entries.last().map_or(0, |e| e.0);
        let next_seq = next_seq.max(last + 1).max(1);
        let bytes = entries.iter().map(|e| e.3.len()).sum();
        let entries = entries
            .into_iter()
            .map(|(seq, kind, received_at, data)| {
                let key = key_of(&data);
                Arc::new(Entry::new(seq, received_at, kind, data, None, key))
            })
            .collect();
        Arc::new(Log {
            window: Mutex::new(Window {
                entries,
                bytes,
                next_seq,
                visible: next_seq - 1,
                pending_bytes: 0,
            }),
            max_messages: cfg.messages.max(1),
            max_bytes: cfg.bytes.max(1),
            slow_policy: cfg.slow_subscriber,
            last_seq: watch::Sender::new(next_seq - 1),
            cursors: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            restart_hole: std::sync::OnceLock::new(),
            positioned: std::sync::OnceLock::new(),
            mirrors: AtomicBool::new(false),
        })
    }

    /// Marks seqs `from..=to` as reserved before a crash: a subscriber asking for them gets a
    /// `DAEMON_RESTART` gap rather than `REPLAY_EXPIRED`, since they may never have existed.
    pub fn set_restart_hole(&self, (from, to): (u64, u64)) {
        let _ = self.restart_hole.set((from, to));
    }

    /// The gaps for a subscriber that asked for seqs `from..=to` that are not retained:
    /// `DAEMON_RESTART` for the part reserved before a crash, `REPLAY_EXPIRED` for the rest.
    fn missing(&self, from: u64, to: u64) -> Vec<Item> {
        let gap = |from, to, reason| Item::Gap { from, to, reason };
        let Some(&(h0, h1)) = self.restart_hole.get() else {
            return vec![gap(from, to, GapReason::ReplayExpired)];
        };
        let mut out = Vec::new();
        if from < h0 {
            out.push(gap(from, to.min(h0 - 1), GapReason::ReplayExpired));
        }
        let (a, b) = (from.max(h0), to.min(h1));
        if a <= b {
            out.push(gap(a, b, GapReason::DaemonRestart));
        }
        if to > h1 && from.max(h1 + 1) <= to {
            out.push(gap(from.max(h1 + 1), to, GapReason::ReplayExpired));
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // A panic while holding the lock cannot leave the window half-updated in a way readers
        // could misread (every mutation is a push/pop pair), so poisoning is ignored.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns the next seq to a message, retains it, and wakes subscribers.
    pub fn append(&self, kind: Kind, data: Bytes, received_at: u64) -> u64 {
        self.append_after_gap(kind, data, received_at, None)
    }

    /// [`append`](Self::append) for a message preceded by missing upstream ids.
    pub fn append_after_gap(
        &self,
        kind: Kind,
        data: Bytes,
        received_at: u64,
        upstream_gap: Option<IdBreak>,
    ) -> u64 {
        let seq = self.append_quiet(kind, data, received_at, upstream_gap, None);
        self.announce(seq);
        seq
    }

    /// [`append_after_gap`](Self::append_after_gap) without waking subscribers: a caller
    /// appending a batch wakes them once, with [`announce`](Self::announce).
    pub fn append_quiet(
        &self,
        kind: Kind,
        data: Bytes,
        received_at: u64,
        upstream_gap: Option<IdBreak>,
        key: Option<Arc<str>>,
    ) -> u64 {
        self.insert(kind, data, received_at, upstream_gap, key, true)
    }

    /// Wakes subscribers for everything visible up to `seq`.
    pub fn announce(&self, seq: u64) {
        self.last_seq.send_if_modified(|v| {
            let newer = seq > *v;
            if newer {
                *v = seq;
            }
            newer
        });
    }

    /// Assigns a seq and retains the message without showing it to readers yet: it becomes
    /// visible with [`publish_upto`](Self::publish_upto), once durably recorded.
    pub fn append_pending(
        &self,
        kind: Kind,
        data: Bytes,
        received_at: u64,
        upstream_gap: Option<IdBreak>,
        key: Option<Arc<str>>,
    ) -> u64 {
        self.insert(kind, data, received_at, upstream_gap, key, false)
    }

    /// Makes every message up to `seq` visible and wakes subscribers.
    pub fn publish_upto(&self, seq: u64) {
        let visible = {
            let mut w = self.lock();
            let old = w.visible;
            let new = old.max(seq.min(w.next_seq - 1));
            let first_pending = w.entries.len() - (w.next_seq - 1 - old) as usize;
            let became: usize = w
                .entries
                .range(first_pending..)
                .take_while(|e| e.seq <= new)
                .map(|e| e.data.len())
                .sum();
            w.pending_bytes -= became;
            w.visible = new;
            self.evict(&mut w);
            w.visible
        };
        self.last_seq.send_if_modified(|v| {
            let changed = *v != visible;
            *v = visible;
            changed
        });
    }

    /// Appends not yet visible.
    pub fn pending(&self) -> u64 {
        let w = self.lock();
        w.next_seq - 1 - w.visible
    }

    /// Waits until at most `max` appends are waiting to become visible.
    pub async fn wait_pending_at_most(&self, max: u64) {
        let mut rx = self.last_seq.subscribe();
        while self.pending() > max {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The seq the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    fn evict(&self, w: &mut Window) {
        // The bounds apply to what readers can see: entries waiting for their commit neither
        // count nor get evicted, so a slow commit cannot push visible entries out early. The
        // newest visible message is always kept, even when it alone exceeds the byte bound.
        let pending = (w.next_seq - 1 - w.visible) as usize;
        while w.entries.len() > pending + 1
            && (w.entries.len() - pending > self.max_messages
                || w.bytes - w.pending_bytes + self.cached.load(Ordering::Acquire) > self.max_bytes)
        {
            if let Some(old) = w.entries.pop_front() {
                w.bytes -= old.data.len();
                old.release(&self.cached);
            }
        }
    }

    fn insert(
        &self,
        kind: Kind,
        data: Bytes,
        received_at: u64,
        upstream_gap: Option<IdBreak>,
        key: Option<Arc<str>>,
        visible: bool,
    ) -> u64 {
        {
            let mut w = self.lock();
            let seq = w.next_seq;
            w.next_seq += 1;
            w.bytes += data.len();
            w.entries.push_back(Arc::new(Entry::new(
                seq,
                received_at,
                kind,
                data,
                upstream_gap,
                key,
            )));
            if visible {
                w.visible = seq;
            } else {
                w.pending_bytes += w.entries.back().map_or(0, |e| e.data.len());
            }
            self.evict(&mut w);
            seq
        }
    }

    /// The last seq readers can see (0 before the first message).
    pub fn last_seq(&self) -> u64 {
        self.lock().visible
    }

    /// Oldest retained seq, or the next seq when the window is empty.
    pub fn first_retained(&self) -> u64 {
        let w = self.lock();
        w.entries.front().map_or(w.next_seq, |e| e.seq)
    }

    /// `entry`'s shared `encoding`, rendered by `render` the first time any subscriber asks.
    pub fn encoding<'e>(
        &self,
        entry: &'e Entry,
        encoding: Encoding,
        render: impl FnOnce(&Entry) -> Bytes,
    ) -> &'e Bytes {
        entry.encoding(encoding, &self.cached, render)
    }

    /// Ends every cursor once it has read what is retained.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.last_seq.send_modify(|_| {});
    }

    /// Number of live cursors.
    pub fn subscribers(&self) -> usize {
        self.cursors.load(Ordering::Relaxed)
    }

    /// A cursor: `from_seq = Some(n)` replays every retained message with seq > n, `Some(0)` the
    /// whole window, `None` only what is appended from now on.
    pub fn subscribe(self: &Arc<Self>, from_seq: Option<u64>, filters: Vec<Filter>) -> Cursor {
        // Created before the position is read, so an append in between still wakes us.
        let changes = WatchStream::from_changes(self.last_seq.subscribe());
        let (next, pending_gaps, unsettled) = {
            let w = self.lock();
            if self.mirrors.load(Ordering::Acquire) && self.positioned.get().is_none() {
                // A mirror whose position is not known yet: where this cursor starts is decided
                // once it is (`Cursor::settle`).
                (w.next_seq, Vec::new(), Some(from_seq))
            } else {
                // A mirror positioned but still empty has its next message at the position.
                let live = (w.visible + 1).max(self.positioned.get().copied().unwrap_or(0));
                let (next, gaps) = self.start_of(&w, from_seq, live);
                (next, gaps, None)
            }
        };
        self.cursors.fetch_add(1, Ordering::Relaxed);
        Cursor {
            log: Arc::clone(self),
            next,
            pending_gaps,
            filters,
            keys: None,
            changes,
            ended: false,
            unsettled,
        }
    }

    /// Where a cursor asking for `from_seq` starts when `live` is the seq of the next message
    /// to arrive, and the gaps it gets first.
    fn start_of(&self, w: &Window, from_seq: Option<u64>, live: u64) -> (u64, Vec<Item>) {
        let first = w.entries.front().map_or(live, |e| e.seq);
        match from_seq {
            None => (live, Vec::new()),
            Some(0) => (first, Vec::new()),
            // Beyond the last seq (e.g. a client that kept a seq from another daemon): live.
            Some(n) if n >= live => (live, Vec::new()),
            Some(n) if n + 1 < first => (first, self.missing(n + 1, first - 1)),
            Some(n) => (n + 1, Vec::new()),
        }
    }

    /// Copies up to `max` items starting at `cursor.next` into `out`; returns the new position
    /// and, when the cursor had fallen out of the window, the missed range.
    fn read(
        &self,
        next: u64,
        filters: &[Filter],
        keys: Option<&[Arc<str>]>,
        out: &mut Vec<Item>,
        max: usize,
    ) -> Read {
        let w = self.lock();
        let first = w.entries.front().map_or(w.visible + 1, |e| e.seq);
        let mut pos = next;
        let mut missed = None;
        if pos < first {
            missed = Some((pos, first - 1));
            pos = first;
        }
        // Seqs are increasing but may have holes (after a restart), so search, don't index.
        let start = w.entries.partition_point(|e| e.seq < pos);
        let mut taken = 0;
        for e in w.entries.iter().skip(start) {
            if e.seq > w.visible {
                break;
            }
            pos = e.seq + 1;
            if let Some(b) = e.upstream_gap {
                out.push(Item::Gap {
                    from: b.from,
                    to: b.to,
                    reason: b.reason,
                });
            }
            let held = keys.is_none_or(|keys| {
                e.key
                    .as_deref()
                    .is_some_and(|k| keys.binary_search_by(|h| (**h).cmp(k)).is_ok())
            });
            if held && filter::all_match(filters, if filters.is_empty() { None } else { e.json() })
            {
                out.push(Item::Message(Arc::clone(e)));
                taken += 1;
                if taken >= max {
                    return Read { pos, missed };
                }
            }
        }
        // Everything visible was read: the position passes seqs that no entry holds (leased
        // before a restart), so whatever waits on "read up to seq N" is not held up by a hole.
        Read {
            pos: pos.max(w.visible + 1),
            missed,
        }
    }
}

struct Read {
    pos: u64,
    missed: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests;
