//! Reconnect delays: exponential with full jitter, a floor after failures, and a reset once a
//! connection has proved healthy (SPEC §8).
//!
//! The policy is pure (it is handed instants and a random source), so its bounds are tested
//! exactly; the upstream loop does the sleeping.

use std::time::{Duration, Instant};

use crate::config::BackoffConfig;

/// Per-endpoint backoff state: how many consecutive failures, and when the current connection
/// came up.
#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    /// Consecutive failed attempts (or short-lived connections) since the last reset.
    attempt: u32,
    /// When the live connection was established; `None` while disconnected.
    connected_at: Option<Instant>,
}

impl Backoff {
    /// A fresh policy with attempt count 0.
    pub fn new(cfg: BackoffConfig) -> Self {
        Backoff {
            cfg,
            attempt: 0,
            connected_at: None,
        }
    }

    /// Consecutive failures counted so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Upper bound of the jitter range for the current attempt count:
    /// `min(max, initial × multiplier^attempt)`.
    pub fn cap(&self) -> Duration {
        let factor = self.cfg.multiplier.powi(self.attempt.min(64) as i32);
        let secs = self.cfg.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.cfg.max.as_secs_f64() {
            self.cfg.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Records that a connection is up.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// Delay before the next attempt after a failed connection attempt; `retry_after` (from an
    /// HTTP `Retry-After`) is a minimum. `unit` is a random number in `[0, 1)`.
    pub fn after_failure(&mut self, retry_after: Option<Duration>, unit: f64) -> Duration {
        self.connected_at = None;
        let delay = self.jittered(unit).max(self.cfg.min_delay);
        self.attempt = self.attempt.saturating_add(1);
        delay.max(retry_after.unwrap_or_default())
    }

    /// Delay after an established connection was lost at `now`. A connection that stayed up for
    /// `reset_after` resets the count and may reconnect at once; a short-lived one counts as a
    /// failure so a flapping upstream still backs off.
    pub fn after_disconnect(
        &mut self,
        now: Instant,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Duration {
        let healthy = self
            .connected_at
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.reset_after);
        if healthy {
            self.attempt = 0;
            self.connected_at = None;
            return retry_after.unwrap_or_default();
        }
        self.after_failure(retry_after, unit)
    }

    /// Forgets all failures, e.g. after an operator's `Reconnect`.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.connected_at = None;
    }

    fn jittered(&self, unit: f64) -> Duration {
        self.cap().mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            min_delay: Duration::from_millis(100),
            reset_after: Duration::from_secs(30),
            fallback_after: 3,
        }
    }

    #[test]
    fn full_jitter_stays_within_cap_and_above_floor() {
        let mut b = Backoff::new(cfg());
        for attempt in 0..20u32 {
            let cap = b.cap();
            let expected_cap = (0.5 * 2f64.powi(attempt as i32)).min(30.0);
            assert!(
                (cap.as_secs_f64() - expected_cap).abs() < 1e-9,
                "attempt {attempt}"
            );
            let d = b.after_failure(None, fastrand::f64());
            assert!(d <= cap.max(Duration::from_millis(100)), "{d:?} > {cap:?}");
            assert!(d >= Duration::from_millis(100), "{d:?} below floor");
        }
    }

    #[test]
    fn zero_jitter_is_lifted_to_floor_and_top_reaches_cap() {
        let mut b = Backoff::new(cfg());
        assert_eq!(b.after_failure(None, 0.0), Duration::from_millis(100));
        // attempt 1: cap 1s
        assert_eq!(
            b.after_failure(None, 0.999_999_999),
            Duration::from_secs(1).mul_f64(0.999_999_999)
        );
    }

    #[test]
    fn retry_after_is_a_minimum() {
        let mut b = Backoff::new(cfg());
        let d = b.after_failure(Some(Duration::from_secs(2)), 0.5);
        assert_eq!(d, Duration::from_secs(2));
    }

    #[test]
    fn healthy_connection_resets_attempts() {
        let mut b = Backoff::new(cfg());
        for _ in 0..5 {
            b.after_failure(None, 0.5);
        }
        assert_eq!(b.attempt(), 5);
        let t0 = Instant::now();
        b.on_connected(t0);
        // Lost before reset_after: still counts as a failure.
        let d = b.after_disconnect(t0 + Duration::from_secs(29), None, 0.5);
        assert_eq!(b.attempt(), 6);
        assert!(d >= Duration::from_millis(100));
        b.on_connected(t0 + Duration::from_secs(30));
        let d = b.after_disconnect(t0 + Duration::from_secs(61), None, 0.5);
        assert_eq!(
            d,
            Duration::ZERO,
            "first reconnect after a healthy connection is immediate"
        );
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.cap(), Duration::from_millis(500));
    }
}
