//! Duplicates across a make-before-break switch (credential renewal, `max_lifetime`, an
//! upstream's "reconnect" message) where the upstream gives no id to compare: the messages the
//! old connection delivered after the new one was ready may come again on the new one. Their
//! payload hashes are remembered until the switch, and the new connection's first messages that
//! match one are dropped.
//!
//! A short window, not a history: checking stops at the first of [`CHECK_FOR`] after the
//! switch, twice as many messages as were remembered, or every remembered one seen. A payload
//! repeated legitimately within that window (the same heartbeat text twice) is dropped once per
//! remembered copy — the price of deduplicating without ids; with `resume` ids the ids decide.

use std::collections::HashMap;
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
pub struct Overlap(Phase);

impl Overlap {
    /// The replacement is ready: remember what the old connection still delivers.
    pub fn remember_from_now(&mut self) {
        self.0 = Phase::Remembering(HashMap::new(), 0);
    }

    /// The old connection delivered a message with this payload hash.
    pub fn delivered(&mut self, hash: u64) {
        if let Phase::Remembering(seen, n) = &mut self.0 {
            if *n < MAX_REMEMBERED {
                *seen.entry(hash).or_default() += 1;
                *n += 1;
            }
        }
    }

    /// Whether anything is remembered or checked (hashing is needed).
    pub fn is_active(&self) -> bool {
        !matches!(self.0, Phase::Idle)
    }

    /// The switch happened at `now`: check the new connection's messages.
    pub fn switched(&mut self, now: Instant) {
        self.0 = match std::mem::take(&mut self.0) {
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
        self.0 = Phase::Idle;
    }

    /// True when a message on the new connection is one the old one delivered already.
    pub fn is_resend(&mut self, hash: u64, now: Instant) -> bool {
        let Phase::Checking { seen, left, until } = &mut self.0 else {
            return false;
        };
        if now >= *until {
            self.0 = Phase::Idle;
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
            self.0 = Phase::Idle;
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
