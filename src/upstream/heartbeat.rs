//! Liveness of one connection (SPEC §7): WebSocket ping/pong with round-trip time, pong
//! timeout, idle timeout and the application-level ping.
//!
//! Pure bookkeeping over instants: the connection loop sleeps until [`Heartbeat::deadline`],
//! then acts on [`Heartbeat::poll`].

use std::time::{Duration, Instant};

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

/// Heartbeat state of one connection.
#[derive(Debug)]
pub struct Heartbeat {
    cfg: HeartbeatConfig,
    next_ping: Instant,
    /// The outstanding ping's payload and when it was sent.
    awaiting: Option<(u64, Instant)>,
    counter: u64,
    last_inbound: Instant,
    next_app_ping: Option<Instant>,
    rtt: Option<Duration>,
}

impl Heartbeat {
    /// Starts the timers of a connection established at `now`.
    pub fn new(cfg: HeartbeatConfig, now: Instant) -> Self {
        let next_app_ping = cfg.app_ping.as_ref().map(|_| now + cfg.app_ping_interval);
        Heartbeat {
            next_ping: now + cfg.ping_interval,
            awaiting: None,
            counter: 0,
            last_inbound: now,
            next_app_ping,
            rtt: None,
            cfg,
        }
    }

    /// The earliest instant at which [`poll`](Self::poll) has something to do.
    pub fn deadline(&self) -> Instant {
        let mut d = match self.awaiting {
            Some((_, sent)) => sent + self.cfg.pong_timeout,
            None => self.next_ping,
        };
        if let Some(idle) = self.cfg.idle_timeout {
            d = d.min(self.last_inbound + idle);
        }
        if let Some(app) = self.next_app_ping {
            d = d.min(app);
        }
        d
    }

    /// Due actions at `now`, most urgent first (a dead connection needs nothing else).
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        if let Some((_, sent)) = self.awaiting {
            if now >= sent + self.cfg.pong_timeout {
                return vec![Action::Dead(format!(
                    "pong timeout: no pong within {}",
                    crate::fmt::duration(self.cfg.pong_timeout)
                ))];
            }
        }
        if let Some(idle) = self.cfg.idle_timeout {
            if now >= self.last_inbound + idle {
                return vec![Action::Dead(format!(
                    "idle timeout: no frame for {}",
                    crate::fmt::duration(idle)
                ))];
            }
        }
        let mut actions = Vec::new();
        if self.awaiting.is_none() && now >= self.next_ping {
            self.counter += 1;
            self.awaiting = Some((self.counter, now));
            self.next_ping = now + self.cfg.ping_interval;
            actions.push(Action::Ping(self.counter.to_be_bytes().to_vec()));
        }
        if let Some(app) = self.next_app_ping {
            if now >= app {
                self.next_app_ping = Some(now + self.cfg.app_ping_interval);
                actions.push(Action::AppPing);
            }
        }
        actions
    }

    /// Any inbound frame proves the connection alive for the idle timer.
    pub fn on_inbound(&mut self, now: Instant) {
        self.last_inbound = now;
    }

    /// A pong; one answering our outstanding ping gives the round-trip time.
    pub fn on_pong(&mut self, payload: &[u8], now: Instant) -> Option<Duration> {
        let (id, sent) = self.awaiting?;
        if payload != id.to_be_bytes() {
            return None;
        }
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
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: idle.map(Duration::from_secs),
            app_ping: None,
            app_ping_interval: Duration::from_secs(30),
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
    fn idle_timeout_counts_any_frame() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(cfg(Some(5)), t0);
        h.on_inbound(t0 + Duration::from_secs(4));
        assert!(h.poll(t0 + Duration::from_secs(8)).is_empty());
        let a = h.poll(t0 + Duration::from_secs(9));
        assert!(matches!(&a[0], Action::Dead(r) if r.starts_with("idle timeout")));
    }
}
