//! The state changes of one endpoint over the last hour, kept by the daemon for the status page
//! (`api::status_page`): [`Endpoint::set_state`](crate::endpoint::Endpoint::set_state) records
//! every transition, the page's event feed reads them.
//!
//! Bounded twice: by age ([`WINDOW`]) and by count ([`MAX_CHANGES`]), so a flapping endpoint
//! costs a fixed amount of memory. The newest change older than the window is kept, so the
//! state at the window's start is known.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::endpoint::StateEvent;

/// How far back the history reaches.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// At most this many changes are kept per endpoint; the oldest go first.
pub const MAX_CHANGES: usize = 240;
/// Longer reasons are cut here (on a character boundary), to bound what a flapping endpoint
/// with long error texts keeps.
const MAX_REASON: usize = 240;

/// One state change, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Numbers the endpoint's changes from 1, so a reader can ask for those after the last it saw.
    #[serde(skip)]
    pub n: u64,
    pub state: &'static str,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// The recent state changes of one endpoint.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    changes: VecDeque<Change>,
    /// The number the next change gets, less one.
    last_n: u64,
}

impl History {
    /// Records a transition; forgets what fell out of the window or over the count.
    pub fn record(&self, ev: &StateEvent) {
        let mut reason = ev.reason.clone();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        let at_unix_ms = ev.at / 1_000_000;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last_n += 1;
        let n = inner.last_n;
        inner.changes.push_back(Change {
            n,
            state: ev.state.as_str(),
            reason,
            at_unix_ms,
        });
        while inner.changes.len() > MAX_CHANGES {
            inner.changes.pop_front();
        }
        inner.prune(at_unix_ms);
    }

    /// The changes of the last hour as of `now_unix_ms`, oldest first, led by the last change
    /// before the hour when one is known.
    pub fn recent(&self, now_unix_ms: u64) -> Vec<Change> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prune(now_unix_ms);
        inner.changes.iter().cloned().collect()
    }

    /// The changes numbered above `n`, oldest first (fewer when some were forgotten since).
    pub fn after(&self, n: u64) -> Vec<Change> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.changes.iter().filter(|c| c.n > n).cloned().collect()
    }
}

impl Inner {
    /// Drops changes that ended before the window: those whose successor is older than it too.
    fn prune(&mut self, now_unix_ms: u64) {
        let start = now_unix_ms.saturating_sub(WINDOW.as_millis() as u64);
        while self.changes.get(1).is_some_and(|c| c.at_unix_ms <= start) {
            self.changes.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::State;

    fn ev(state: State, reason: &str, at_ms: u64) -> StateEvent {
        StateEvent {
            state,
            reason: reason.into(),
            at: at_ms * 1_000_000,
            after_seq: 0,
        }
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn keeps_the_hour_and_the_state_it_began_in() {
        let h = History::default();
        let t0 = 10 * HOUR;
        h.record(&ev(State::Connecting, "starting", t0));
        h.record(&ev(State::Connected, "up", t0 + 10));
        h.record(&ev(State::Backoff, "closed 1011", t0 + 20));
        h.record(&ev(State::Connected, "up", t0 + HOUR / 2));
        let all = h.recent(t0 + HOUR / 2);
        assert_eq!(all.len(), 4);
        // An hour after the backoff: the backoff is the state the window begins in.
        let later = h.recent(t0 + 20 + HOUR + 1);
        let states: Vec<_> = later.iter().map(|c| c.state).collect();
        assert_eq!(states, ["backoff", "connected"]);
        // Long after: only the current state is left, it is still the one in force.
        let much_later = h.recent(t0 + 5 * HOUR);
        assert_eq!(much_later.len(), 1);
        assert_eq!(much_later[0].state, "connected");
    }

    #[test]
    fn count_is_bounded_and_numbers_keep_growing() {
        let h = History::default();
        for i in 0..(MAX_CHANGES as u64 + 50) {
            let st = if i % 2 == 0 {
                State::Connecting
            } else {
                State::Backoff
            };
            h.record(&ev(st, "flap", HOUR + i));
        }
        let kept = h.recent(HOUR + 1000);
        assert_eq!(kept.len(), MAX_CHANGES);
        assert_eq!(kept[0].n, 51);
        assert_eq!(kept.last().map(|c| c.n), Some(MAX_CHANGES as u64 + 50));
        let tail = h.after(MAX_CHANGES as u64 + 48);
        assert_eq!(tail.len(), 2);
        assert!(h.after(MAX_CHANGES as u64 + 50).is_empty());
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let h = History::default();
        let long = "é".repeat(MAX_REASON);
        h.record(&ev(State::Backoff, &long, HOUR));
        let r = &h.recent(HOUR)[0].reason;
        assert!(r.len() <= MAX_REASON + '…'.len_utf8(), "{}", r.len());
        assert!(r.ends_with('…'));
    }
}
