//! Duplicates and gaps across a make-before-break switch (credential renewal, `max_lifetime`, an
//! upstream's "reconnect" message): the messages the old connection delivered after the
//! replacement began may come again on the new one. Their payload hashes are remembered until
//! the switch, and the new connection's first messages that match one are dropped.
//!
//! The switch waits for the old connection to catch up: once the replacement is open, what it
//! receives is held, and the old connection is closed only when it has delivered one of the
//! held messages (so nothing the upstream sent between the two is lost), or after a bound.
//!
//! A short window, not a history: checking stops at the first of [`CHECK_FOR`] after the
//! switch, twice as many messages as were remembered, or every remembered one seen. A payload
//! repeated legitimately within that window (the same heartbeat text twice) is dropped once per
//! remembered copy — the price of deduplicating without ids; with `resume` ids the ids decide.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Most hashes remembered for one switch.
const MAX_REMEMBERED: usize = 65_536;

/// How long after a switch the new connection's messages are checked.
const CHECK_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    /// A replacement is ready: what the old connection delivers is remembered.
    Remembering(HashMap<u64, u32>, usize),
    /// Switched: the new connection's messages are checked.
    Checking {
        seen: HashMap<u64, u32>,
        left: usize,
        until: Instant,
    },
}

/// Payload hashes around one switch.
#[derive(Debug, Default)]
pub struct Overlap {
    phase: Phase,
    /// Hashes of what the replacement has received, while the old connection catches up.
    held: HashSet<u64>,
    /// The old connection delivered something the replacement holds: it has caught up.
    caught_up: bool,
}

impl Overlap {
    /// A replacement begins: remember what the old connection still delivers.
    pub fn remember_from_now(&mut self) {
        self.phase = Phase::Remembering(HashMap::new(), 0);
        self.held.clear();
        self.caught_up = false;
    }

    /// The old connection delivered a message with this payload hash.
    pub fn delivered(&mut self, hash: u64) {
        if let Phase::Remembering(seen, n) = &mut self.phase {
            if *n < MAX_REMEMBERED {
                *seen.entry(hash).or_default() += 1;
                *n += 1;
            }
            self.caught_up |= self.held.contains(&hash);
        }
    }

    /// The replacement received a message with this payload hash while the old connection
    /// still delivers.
    pub fn held(&mut self, hash: u64) {
        if let Phase::Remembering(seen, _) = &self.phase {
            self.caught_up |= seen.contains_key(&hash);
            self.held.insert(hash);
        }
    }

    /// The replacement's feed is complete only from now (its last subscription was just made):
    /// only what it receives from here on shows that the old connection caught up.
    pub fn restart_catch_up(&mut self) {
        self.held.clear();
        self.caught_up = false;
    }

    /// Whether the old connection has delivered something the replacement holds.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Whether anything is remembered or checked (hashing is needed).
    pub fn is_active(&self) -> bool {
        !matches!(self.phase, Phase::Idle)
    }

    /// The switch happened at `now`: check the new connection's messages.
    pub fn switched(&mut self, now: Instant) {
        self.held.clear();
        self.caught_up = false;
        self.phase = match std::mem::take(&mut self.phase) {
            Phase::Remembering(seen, n) if n > 0 => Phase::Checking {
                seen,
                left: 2 * n + 16,
                until: now + CHECK_FOR,
            },
            _ => Phase::Idle,
        };
    }

    /// Nothing to compare with (the replacement failed, or a connection that is no switch).
    pub fn clear(&mut self) {
        *self = Overlap::default();
    }

    /// True when a message on the new connection is one the old one delivered already.
    pub fn is_resend(&mut self, hash: u64, now: Instant) -> bool {
        let Phase::Checking { seen, left, until } = &mut self.phase else {
            return false;
        };
        if now >= *until {
            self.phase = Phase::Idle;
            return false;
        }
        *left -= 1;
        let resend = match seen.get_mut(&hash) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    seen.remove(&hash);
                }
                true
            }
            None => false,
        };
        if seen.is_empty() || *left == 0 {
            self.phase = Phase::Idle;
        }
        resend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_old_connection_delivered_is_dropped_once_on_the_new() {
        let t0 = Instant::now();
        let mut o = Overlap::default();
        o.delivered(1);
        o.remember_from_now();
        o.delivered(2);
        o.delivered(3);
        o.delivered(3);
        o.switched(t0);
        assert!(!o.is_resend(1, t0), "before the replacement was ready");
        assert!(o.is_resend(2, t0));
        assert!(!o.is_resend(2, t0), "once");
        assert!(o.is_resend(3, t0));
        assert!(o.is_resend(3, t0), "as often as it was delivered");
        assert!(!o.is_active(), "all seen: done");
        assert!(!o.is_resend(4, t0));
    }

    #[test]
    fn the_old_connection_has_caught_up_once_it_delivered_what_the_new_one_holds() {
        let mut o = Overlap::default();
        o.remember_from_now();
        o.delivered(1);
        o.held(2);
        o.held(3);
        assert!(!o.caught_up());
        o.delivered(3);
        assert!(
            o.caught_up(),
            "the old connection delivered 3, which the new one holds"
        );
        let mut o = Overlap::default();
        o.remember_from_now();
        o.delivered(5);
        o.held(5);
        assert!(o.caught_up(), "held after the old one delivered it");
        o.switched(Instant::now());
        assert!(!o.caught_up(), "a switch starts afresh");
    }

    #[test]
    fn checking_ends_after_its_window() {
        let t0 = Instant::now();
        let mut o = Overlap::default();
        o.remember_from_now();
        o.delivered(7);
        o.switched(t0);
        assert!(!o.is_resend(7, t0 + CHECK_FOR));
        let mut o = Overlap::default();
        o.remember_from_now();
        o.delivered(7);
        o.switched(t0);
        for h in 100..118 {
            assert!(!o.is_resend(h, t0));
        }
        assert!(
            !o.is_active(),
            "2n + 16 other messages: the overlap is past"
        );
        let mut o = Overlap::default();
        o.remember_from_now();
        o.switched(t0);
        assert!(!o.is_active(), "nothing remembered, nothing to check");
    }
}
