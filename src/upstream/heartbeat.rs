//! Liveness of one connection (SPEC §7): WebSocket ping/pong with round-trip time, pong
//! timeout, idle timeout and the application-level ping.
//!
//! Pure bookkeeping over instants: the connection loop sleeps until [`Heartbeat::deadline`],
//! then acts on [`Heartbeat::poll`].
//!
//! Any inbound frame is evidence of life: a ping waits for its pong `pong_timeout` past the
//! later of when it was sent and the last frame received, so a pong queued behind a stream of
//! messages (or read late because the daemon did not run) is not taken for a dead connection.
//! A link where nothing arrives at all is still found within `ping_interval + pong_timeout`.
//!
//! A ping may wait for its turn under the endpoint's send rate limit. Its pong is awaited
//! `pong_timeout` after the writer actually wrote it (and the round trip is measured from
//! there); one not written yet gets the limiter's longest wait on top, so a writer that is
//! stuck is still found (see [`Heartbeat::with_writes`]).
//!
//! A timer that fires late means the daemon did not run (frozen, starved, the host asleep):
//! whatever arrived meanwhile may not have been read yet (after SIGCONT, Linux ends the I/O
//! driver's `epoll_wait` with EINTR, so readiness comes one turn later than the timers). Timeouts
//! are then judged only after a short [`GRACE`], never on the late wake-up itself.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::HeartbeatConfig;

/// What the connection loop must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a WebSocket Ping with this payload.
    Ping(Vec<u8>),
    /// Send the configured application ping frame.
    AppPing,
    /// The connection is dead; the reason names the timer.
    Dead(String),
}

/// How long timeouts wait after a late wake-up, for what arrived meanwhile to be read: many
/// turns of the runtime, far below any timeout worth configuring.
pub const GRACE: Duration = Duration::from_millis(250);

/// How late a timer may fire before the daemon is taken to have not run.
pub const LATE: Duration = Duration::from_millis(100);

/// Heartbeat state of one connection.
#[derive(Debug)]
pub struct Heartbeat {
    cfg: HeartbeatConfig,
    /// `None` with `ping_interval = "off"`.
    next_ping: Option<Instant>,
    /// Stands for "never" in [`deadline`](Self::deadline).
    never: Instant,
    /// The outstanding ping's id (its payload) and when it was due.
    awaiting: Option<(u64, Instant)>,
    counter: u64,
    last_inbound: Instant,
    next_app_ping: Option<Instant>,
    rtt: Option<Duration>,
    /// After a late wake-up, no timeout is judged before this.
    grace_until: Option<Instant>,
    /// The payload of the last ping the writer wrote and when; `None` when pings are taken as
    /// written the moment they are due.
    written: Option<watch::Receiver<Option<(Bytes, Instant)>>>,
    /// How long a ping may wait for its turn before it is written.
    write_wait: Duration,
}

impl Heartbeat {
    /// Starts the timers of a connection established at `now`.
    pub fn new(cfg: HeartbeatConfig, now: Instant) -> Self {
        // An interval still to be captured starts the app pings when it comes.
        let next_app_ping = cfg
            .app_ping
            .as_ref()
            .filter(|_| cfg.app_ping_interval_capture.is_none())
            .map(|_| now + cfg.app_ping_interval);
        Heartbeat {
            next_ping: cfg.ping_interval.map(|i| now + i),
            never: now + Duration::from_secs(365 * 24 * 3600),
            awaiting: None,
            counter: 0,
            last_inbound: now,
            next_app_ping,
            rtt: None,
            grace_until: None,
            written: None,
            write_wait: Duration::ZERO,
            cfg,
        }
    }

    /// Pings are written by another task, up to `longest_wait` after they are due (their turn
    /// under the send rate limit): `written` tells when each one was. The pong timeout and the
    /// round-trip time count from that write.
    pub fn with_writes(
        mut self,
        written: watch::Receiver<Option<(Bytes, Instant)>>,
        longest_wait: Duration,
    ) -> Self {
        self.written = Some(written);
        self.write_wait = longest_wait;
        self
    }

    /// When the ping with this id was written, if it was (or is taken to be).
    fn written_at(&self, id: u64, due: Instant) -> Option<Instant> {
        let Some(rx) = &self.written else {
            return Some(due);
        };
        let last = rx.borrow();
        let (payload, at) = last.as_ref()?;
        (payload[..] == id.to_be_bytes()).then_some(*at)
    }

    /// The earliest instant at which [`poll`](Self::poll) has something to do.
    pub fn deadline(&self) -> Instant {
        let grace = |t: Instant| self.grace_until.map_or(t, |g| t.max(g));
        let mut d = match self.pong_deadline() {
            Some(at) => grace(at),
            None => self.next_ping.unwrap_or(self.never),
        };
        if let Some(idle) = self.cfg.idle_timeout {
            d = d.min(grace(self.last_inbound + idle));
        }
        if let Some(app) = self.next_app_ping {
            d = d.min(app);
        }
        d
    }

    /// When the outstanding ping's pong is overdue.
    fn pong_deadline(&self) -> Option<Instant> {
        let (id, due) = self.awaiting?;
        let from = match self.written_at(id, due) {
            Some(at) => at,
            None => due + self.write_wait,
        };
        Some(from.max(self.last_inbound) + self.cfg.pong_timeout)
    }

    /// Due actions at `now`, most urgent first (a dead connection needs nothing else).
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        if self.grace_until.is_some_and(|g| now < g) {
            return self.due_pings(now);
        }
        self.grace_until = None;
        if self.pong_deadline().is_some_and(|at| now >= at) {
            return vec![Action::Dead(format!(
                "pong timeout: no pong and no other frame within {}",
                crate::fmt::duration(self.cfg.pong_timeout)
            ))];
        }
        if let Some(idle) = self.cfg.idle_timeout {
            if now >= self.last_inbound + idle {
                return vec![Action::Dead(format!(
                    "idle timeout: no frame for {}",
                    crate::fmt::duration(idle)
                ))];
            }
        }
        self.due_pings(now)
    }

    /// The daemon did not run until `now` (a timer fired late, or a stall was seen): judge no
    /// timeout before [`GRACE`] has passed, so what arrived meanwhile is read first.
    pub fn on_late_wake(&mut self, now: Instant) {
        self.grace_until = Some(now + GRACE);
    }

    /// Whether a timer due at `due` that fires at `now` fired late enough to mean the daemon
    /// did not run.
    pub fn is_late(due: Instant, now: Instant) -> bool {
        now.saturating_duration_since(due) > LATE
    }

    fn due_pings(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let due = self.next_ping.zip(self.cfg.ping_interval);
        if let (None, Some((at, interval))) = (self.awaiting, due) {
            if now >= at {
                self.counter += 1;
                self.awaiting = Some((self.counter, now));
                self.next_ping = Some(now + interval);
                actions.push(Action::Ping(self.counter.to_be_bytes().to_vec()));
            }
        }
        if let Some(app) = self.next_app_ping {
            if now >= app {
                self.next_app_ping = Some(now + self.cfg.app_ping_interval);
                actions.push(Action::AppPing);
            }
        }
        actions
    }

    /// A ping right now, unless one is outstanding or pings are off: after the process stalled
    /// or the host slept, the connection is checked at once instead of at the next interval.
    pub fn check_now(&mut self, now: Instant) -> Option<Action> {
        if self.awaiting.is_some() || self.next_ping.is_none() {
            return None;
        }
        self.next_ping = Some(now);
        self.poll(now)
            .into_iter()
            .find(|a| matches!(a, Action::Ping(_)))
    }

    /// The app ping interval became known (or changed), at `now`: the next app ping is due an
    /// interval from now.
    pub fn set_app_ping_interval(&mut self, interval: Duration, now: Instant) {
        if self.cfg.app_ping.is_none()
            || (self.next_app_ping.is_some() && self.cfg.app_ping_interval == interval)
        {
            return;
        }
        self.cfg.app_ping_interval = interval;
        self.next_app_ping = Some(now + interval);
    }

    /// Any inbound frame proves the connection alive, for the idle and the pong timers.
    pub fn on_inbound(&mut self, now: Instant) {
        self.last_inbound = now;
    }

    /// A pong; one answering our outstanding ping gives the round-trip time.
    pub fn on_pong(&mut self, payload: &[u8], now: Instant) -> Option<Duration> {
        let (id, due) = self.awaiting?;
        if payload != id.to_be_bytes() {
            return None;
        }
        let sent = self.written_at(id, due).unwrap_or(due);
        self.awaiting = None;
        let rtt = now.saturating_duration_since(sent);
        self.rtt = Some(rtt);
        Some(rtt)
    }

    /// Last measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(idle: Option<u64>) -> HeartbeatConfig {
        HeartbeatConfig {
            ping_interval: Some(Duration::from_secs(20)),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: idle.map(Duration::from_secs),
            app_ping: None,
            app_ping_interval: Duration::from_secs(30),
            app_ping_interval_capture: None,
        }
    }

    #[test]
    fn ping_pong_measures_rtt() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(cfg(None), t0);
        assert_eq!(h.deadline(), t0 + Duration::from_secs(20));
        assert!(h.poll(t0 + Duration::from_secs(5)).is_empty());
        let a = h.poll(t0 + Duration::from_secs(20));
        let Action::Ping(p) = &a[0] else {
            panic!("expected ping, got {a:?}")
        };
        assert_eq!(h.on_pong(b"other", t0 + Duration::from_secs(21)), None);
        let rtt = h.on_pong(p, t0 + Duration::from_millis(20_150));
        assert_eq!(rtt, Some(Duration::from_millis(150)));
        assert_eq!(h.deadline(), t0 + Duration::from_secs(40));
    }

    #[test]
    fn dead_within_interval_plus_timeout() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(cfg(None), t0);
        h.poll(t0 + Duration::from_secs(20));
        assert_eq!(h.deadline(), t0 + Duration::from_secs(30));
        let a = h.poll(t0 + Duration::from_secs(30));
        assert!(matches!(&a[0], Action::Dead(r) if r.starts_with("pong timeout")));
    }

    #[test]
    fn frames_after_the_ping_defer_the_pong_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = Heartbeat::new(cfg(None), t0);
        h.poll(t0 + s(20));
        // Messages keep arriving: the pong may be queued behind them.
        h.on_inbound(t0 + s(25));
        assert_eq!(h.deadline(), t0 + s(35));
        assert!(h.poll(t0 + s(30)).is_empty(), "alive: a frame came 5 s ago");
        let a = h.poll(t0 + s(35));
        assert!(matches!(&a[0], Action::Dead(r) if r.starts_with("pong timeout")));
    }

    #[test]
    fn a_late_wake_up_judges_nothing_before_the_grace() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = Heartbeat::new(cfg(Some(5)), t0);
        h.on_inbound(t0 + s(19));
        assert!(matches!(h.poll(t0 + s(20))[..], [Action::Ping(_)]));
        // Frozen from 21 s to 40 s: pong and idle deadlines passed meanwhile.
        let woke = t0 + s(40);
        assert!(Heartbeat::is_late(h.deadline(), woke));
        h.on_late_wake(woke);
        assert!(
            h.poll(woke).is_empty(),
            "nothing judged on the late wake-up"
        );
        assert_eq!(h.deadline(), woke + GRACE);
        // The pong read meanwhile settles it.
        let ping = 1u64.to_be_bytes();
        assert!(h.on_pong(&ping, woke + Duration::from_millis(10)).is_some());
        h.on_inbound(woke + Duration::from_millis(10));
        assert!(
            !h.poll(woke + GRACE)
                .iter()
                .any(|a| matches!(a, Action::Dead(_))),
            "alive"
        );
        // Without an answer, the grace ends in a timeout.
        let mut h = Heartbeat::new(cfg(None), t0);
        h.poll(t0 + s(20));
        h.on_late_wake(woke);
        let a = h.poll(woke + GRACE);
        assert!(matches!(&a[0], Action::Dead(r) if r.starts_with("pong timeout")));
    }

    #[test]
    fn check_now_pings_unless_a_ping_is_outstanding() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = Heartbeat::new(cfg(None), t0);
        assert!(matches!(h.check_now(t0 + s(3)), Some(Action::Ping(_))));
        assert_eq!(
            h.deadline(),
            t0 + s(13),
            "its pong is due pong_timeout later"
        );
        assert_eq!(h.check_now(t0 + s(4)), None, "one ping at a time");
    }

    #[test]
    fn pings_off_sends_none_but_the_idle_timeout_still_holds() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = Heartbeat::new(
            HeartbeatConfig {
                ping_interval: None,
                ..cfg(Some(10))
            },
            t0,
        );
        assert_eq!(h.deadline(), t0 + s(10));
        assert!(h.poll(t0 + s(9)).is_empty());
        assert_eq!(h.check_now(t0 + s(9)), None, "not even after a stall");
        h.on_inbound(t0 + s(9));
        assert!(h.poll(t0 + s(18)).is_empty());
        assert!(matches!(&h.poll(t0 + s(19))[0], Action::Dead(r) if r.starts_with("idle timeout")));
    }

    #[test]
    fn a_ping_waiting_for_its_turn_is_timed_from_its_write() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let (tx, rx) = watch::channel(None);
        let mut h = Heartbeat::new(cfg(None), t0).with_writes(rx, s(4));
        let a = h.poll(t0 + s(20));
        let Action::Ping(p) = &a[0] else {
            panic!("expected ping, got {a:?}")
        };
        // Not written yet: pong_timeout plus the longest wait for a turn.
        assert_eq!(h.deadline(), t0 + s(34));
        assert!(h.poll(t0 + s(31)).is_empty(), "still waiting for its turn");
        tx.send_replace(Some((Bytes::from(p.clone()), t0 + s(23))));
        assert_eq!(h.deadline(), t0 + s(33), "due pong_timeout after the write");
        assert!(h.poll(t0 + s(32)).is_empty());
        let rtt = h.on_pong(p, t0 + s(23) + ms(40));
        assert_eq!(
            rtt,
            Some(ms(40)),
            "round trip from the write, not from when it was due"
        );

        // Another ping's write does not count for this one; a stuck writer is still found.
        let a = h.poll(t0 + s(44));
        assert!(matches!(&a[..], [Action::Ping(_)]), "{a:?}");
        assert_eq!(h.deadline(), t0 + s(58));
        let a = h.poll(t0 + s(58));
        assert!(matches!(&a[0], Action::Dead(r) if r.starts_with("pong timeout")));
    }

    #[test]
    fn idle_timeout_counts_any_frame() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(cfg(Some(5)), t0);
        h.on_inbound(t0 + Duration::from_secs(4));
        assert!(h.poll(t0 + Duration::from_secs(8)).is_empty());
        let a = h.poll(t0 + Duration::from_secs(9));
        assert!(matches!(&a[0], Action::Dead(r) if r.starts_with("idle timeout")));
    }
}
