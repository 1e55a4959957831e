//! Backoff (SPEC §8): attempt times against a refusing upstream follow full jitter within bounds
//! and never go below the floor; the attempt count resets after `reset_after` (paused time).

use std::time::Duration;

use ws_sidecar::backoff::Backoff;
use ws_sidecar::config::BackoffConfig;

use crate::support::daemon::start_daemon;
use crate::support::{FakeUpstream, Reply};

#[tokio::test]
async fn attempts_follow_full_jitter_within_bounds() {
    let up = FakeUpstream::start_with(|_, _| Reply::DropTcp).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.backoff]\ninitial = \"40ms\"\nmax = \"320ms\"\nmultiplier = 2.0\nmin_delay = \"30ms\"\n",
        up.url("/")
    ))
    .await;
    let n = 9;
    let attempts = up
        .wait_attempts(n, Duration::from_secs(20))
        .await
        .expect("attempts");
    let floor = Duration::from_millis(30);
    // What the daemon adds around the sleep: a failed local handshake and scheduling.
    let slack = Duration::from_millis(150);
    let mut gaps = Vec::new();
    for i in 1..n {
        let gap = attempts[i].at - attempts[i - 1].at;
        let cap = Duration::from_millis((40u64 << (i - 1)).min(320)).max(floor);
        assert!(gap >= floor, "attempt {i}: {gap:?} is below the floor");
        assert!(
            gap <= cap + slack,
            "attempt {i}: {gap:?} exceeds cap {cap:?} + slack"
        );
        gaps.push(gap);
    }
    // Full jitter: the later (capped) delays are not all the same.
    let later = &gaps[4..];
    let (min, max) = (later.iter().min(), later.iter().max());
    assert!(min != max, "delays should vary: {gaps:?}");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn attempt_count_resets_after_reset_after() {
    let cfg = BackoffConfig {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
        multiplier: 2.0,
        min_delay: Duration::from_millis(100),
        reset_after: Duration::from_secs(30),
        fallback_after: 3,
    };
    let mut b = Backoff::new(cfg);
    let now = || tokio::time::Instant::now().into_std();
    for _ in 0..6 {
        let d = b.after_failure(None, fastrand::f64());
        tokio::time::sleep(d).await;
    }
    assert_eq!(b.cap(), Duration::from_secs(30));
    b.on_connected(now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Up for 10 s only: still counted as a failure, still capped high.
    let d = b.after_disconnect(now(), None, 0.5);
    assert!(d >= Duration::from_millis(100));
    assert_eq!(b.attempt(), 7);
    b.on_connected(now());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let d = b.after_disconnect(now(), None, 0.5);
    assert_eq!(
        d,
        Duration::ZERO,
        "first reconnect after a healthy connection is immediate"
    );
    assert_eq!(b.attempt(), 0);
    assert_eq!(b.cap(), Duration::from_millis(500));
    let d = b.after_failure(None, 1.0);
    assert!(d <= Duration::from_millis(500) && d >= Duration::from_millis(100));
}
