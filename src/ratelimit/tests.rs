//! The window logic on tokio's paused clock: turns, what counts, what is recorded.

use super::*;

fn cfg(messages: usize, per_ms: u64, control_frames: bool) -> Option<RateLimitConfig> {
    Some(RateLimitConfig {
        messages,
        per: Duration::from_millis(per_ms),
        control_frames,
    })
}

/// Takes `n` turns of `class` one after the other, each frame "written" at once; returns when
/// each turn came, relative to the start.
async fn turns(limit: &RateLimit, class: Class, n: usize) -> Vec<Duration> {
    let start = Instant::now();
    let mut at = Vec::new();
    for _ in 0..n {
        let permit = limit.acquire(class).await;
        at.push(start.elapsed());
        drop(permit);
    }
    at
}

/// The most frames found within any window of length `per` (`per` excluded).
fn most_in_a_window(times: &[Duration], per: Duration) -> usize {
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + per)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn off_never_waits() {
    let limit = RateLimit::new(None);
    assert_eq!(turns(&limit, Class::Data, 1000).await.last(), Some(&ms(0)));
    assert!(!limit.is_on());
    assert_eq!(limit.throttled(), 0);
}

#[tokio::test(start_paused = true)]
async fn at_most_messages_in_any_window_plus_the_margin() {
    let limit = RateLimit::new(cfg(3, 1000, false));
    let at = turns(&limit, Class::Data, 10).await;
    // Three at once, then each waits for the frame three back to be a window (1 s + 5 %) old.
    assert_eq!(
        at,
        [0, 0, 0, 1050, 1050, 1050, 2100, 2100, 2100, 3150].map(ms)
    );
    assert_eq!(most_in_a_window(&at, ms(1000)), 3);
    // Only the first of each group waited; the others found the window already moved.
    assert_eq!(limit.throttled(), 3);
    assert_eq!(limit.waited(), ms(3150));
}

#[tokio::test(start_paused = true)]
async fn no_double_burst_at_a_window_edge() {
    // A token bucket refilled at 3/s lets 3 go at 0.99 s and 3 more at 1.0 s. The window does
    // not: after an idle spell, the three frames of 0.99 s hold the next ones until 2.04 s.
    let limit = RateLimit::new(cfg(3, 1000, false));
    tokio::time::sleep(ms(990)).await;
    let at = turns(&limit, Class::Data, 6).await;
    assert_eq!(at, [0, 0, 0, 1050, 1050, 1050].map(ms));
}

#[tokio::test(start_paused = true)]
async fn spacing_comes_from_when_frames_were_written() {
    let limit = RateLimit::new(cfg(1, 1000, false));
    let permit = limit.acquire(Class::Data).await;
    // The write took 300 ms: the window starts when it ended, not when the turn came.
    tokio::time::sleep(ms(300)).await;
    drop(permit);
    let start = Instant::now();
    drop(limit.acquire(Class::Data).await);
    assert_eq!(start.elapsed(), ms(1050));
}

#[tokio::test(start_paused = true)]
async fn a_wait_given_up_records_nothing() {
    let limit = RateLimit::new(cfg(1, 1000, false));
    drop(limit.acquire(Class::Data).await);
    // A frame gives up its wait half way (its connection ended): it was never sent.
    let gave_up = tokio::time::timeout(ms(500), limit.acquire(Class::Data)).await;
    assert!(gave_up.is_err());
    let start = Instant::now();
    drop(limit.acquire(Class::Data).await);
    assert_eq!(
        start.elapsed(),
        ms(550),
        "due 1050 ms after the first frame"
    );
    drop(limit.acquire(Class::Data).await);
    assert_eq!(start.elapsed(), ms(1600), "one window after the second");
}

#[tokio::test(start_paused = true)]
async fn turns_are_first_come_first_served_across_holders() {
    // Two connections of one endpoint (a make-before-break switch): one window between them.
    let limit = std::sync::Arc::new(RateLimit::new(cfg(2, 100, false)));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let limit = std::sync::Arc::clone(&limit);
        tasks.push(tokio::spawn(
            async move { turns(&limit, Class::Data, 4).await },
        ));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    assert_eq!(most_in_a_window(&all, ms(100)), 2, "{all:?}");
    assert_eq!(all.last(), Some(&ms(525)), "12 frames, 2 per 105 ms");
}

#[tokio::test(start_paused = true)]
async fn control_frames_wait_only_when_asked_and_close_never() {
    let limit = RateLimit::new(cfg(2, 1000, false));
    assert_eq!(turns(&limit, Class::Data, 2).await, [ms(0), ms(0)]);
    assert_eq!(turns(&limit, Class::Control, 5).await.last(), Some(&ms(0)));
    assert_eq!(turns(&limit, Class::Close, 1).await, [ms(0)]);
    limit.pong_sent();
    // Neither the pings nor the pong counted: the third data frame waits for the first.
    assert_eq!(turns(&limit, Class::Data, 1).await, [ms(1050)]);
}

#[tokio::test(start_paused = true)]
async fn with_control_frames_one_slot_is_kept_for_pongs() {
    let limit = RateLimit::new(cfg(3, 1000, true));
    // Two of three for the daemon's own frames, pings included.
    let at = turns(&limit, Class::Control, 3).await;
    assert_eq!(at, [0, 0, 1050].map(ms));
    // The upstream pings: the pong goes at once and is counted.
    tokio::time::sleep(ms(100)).await;
    limit.pong_sent();
    // Window now holds the ping at 1050 ms and the pong at 1150 ms: the next frame waits
    // for the ping to age, the one after for the pong.
    let at = turns(&limit, Class::Data, 2).await;
    assert_eq!(at, [ms(950), ms(1050)], "relative to 1150 ms");
    assert_eq!(limit.longest_ping_wait(), ms(2100));
}

#[tokio::test(start_paused = true)]
async fn a_pong_recorded_during_a_wait_pushes_the_turn_further() {
    let limit = std::sync::Arc::new(RateLimit::new(cfg(2, 1000, true)));
    drop(limit.acquire(Class::Data).await);
    let waiting = {
        let limit = std::sync::Arc::clone(&limit);
        tokio::spawn(async move {
            let start = Instant::now();
            drop(limit.acquire(Class::Data).await);
            start.elapsed()
        })
    };
    tokio::time::sleep(ms(1000)).await;
    limit.pong_sent();
    // Due at 1050 ms, but the pong at 1000 ms now fills the window until 2050 ms.
    assert_eq!(waiting.await.expect("task"), ms(2050));
}

#[tokio::test(start_paused = true)]
async fn settings_change_keeps_the_history() {
    let limit = RateLimit::new(cfg(2, 1000, false));
    drop(turns(&limit, Class::Data, 2).await);
    limit.configure(cfg(2, 2000, false));
    assert_eq!(turns(&limit, Class::Data, 1).await, [ms(2100)]);
    limit.configure(None);
    assert_eq!(turns(&limit, Class::Data, 5).await.last(), Some(&ms(0)));
}
