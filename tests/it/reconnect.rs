//! Connection loss: TCP reset mid-stream, a blackholed path found by heartbeats, idle timeout.
//! Subscribers keep one stream throughout.

use std::time::{Duration, Instant};

use ws_sidecar::endpoint::State;
use ws_sidecar::proto::event::Event as Ev;

use crate::support::daemon::{next_event, next_message, start_daemon, state_name, subscribe};
use crate::support::{ChaosProxy, FakeUpstream, Mode, Reply};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn reset_mid_stream_reconnects_and_subscribers_keep_their_stream() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n[endpoints.feed.backoff]\ninitial = \"50ms\"\nmin_delay = \"20ms\"\n",
        up.url("/feed")
    ))
    .await;
    let c1 = up.next_accepted_within(T).await.expect("first connection");
    d.wait_state("feed", State::Connected, T).await;
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "feed", None).await;
    match next_event(&mut s, T).await {
        Ev::State(st) => assert_eq!(state_name(&st), "connected"),
        other => panic!("stream must start with the current state, got {other:?}"),
    }
    for i in 1..=5 {
        c1.send_text(&format!("a{i}")).await.expect("send");
    }
    for i in 1..=5u64 {
        assert_eq!(next_message(&mut s, T).await.seq, i);
    }

    c1.reset().await.expect("reset");
    let c2 = up.next_accepted_within(T).await.expect("reconnection");
    for i in 1..=5 {
        c2.send_text(&format!("b{i}")).await.expect("send");
    }

    let mut states = Vec::new();
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        match next_event(&mut s, T).await {
            Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
            Ev::State(st) => states.push((state_name(&st), st.reason)),
            Ev::Message(m) => {
                assert_eq!(&m.data[..], format!("b{}", seqs.len() + 1).as_bytes());
                seqs.push(m.seq)
            }
            Ev::Gap(g) => panic!("unexpected gap {g:?}"),
        }
    }
    assert_eq!(
        seqs,
        vec![6, 7, 8, 9, 10],
        "seq continues on the same stream"
    );
    let names: Vec<&str> = states.iter().map(|(n, _)| n.as_str()).collect();
    let b = names
        .iter()
        .position(|n| *n == "backoff")
        .expect("a backoff state event");
    let c = names
        .iter()
        .rposition(|n| *n == "connected")
        .expect("a connected state event");
    assert!(b < c, "backoff before connected: {states:?}");
    assert!(
        states.iter().all(|(_, r)| !r.is_empty()),
        "every transition has a reason: {states:?}"
    );
    assert_eq!(
        d.endpoint("feed")
            .stats
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    d.stop().await;
}

#[tokio::test]
async fn blackholed_connection_is_detected_by_pong_timeout() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let proxy = ChaosProxy::start(up.addr()).await;
    let (ping, pong) = (300u64, 300u64);
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n[endpoints.feed.heartbeat]\nping_interval = \"{ping}ms\"\npong_timeout = \"{pong}ms\"\n[endpoints.feed.backoff]\ninitial = \"50ms\"\nmin_delay = \"20ms\"\n",
        proxy.url("/feed")
    ))
    .await;
    let _c1 = up.next_accepted_within(T).await.expect("first connection");
    d.wait_state("feed", State::Connected, T).await;

    // Only the live connection: the reconnection must get through.
    proxy.set_mode_existing(Mode::Blackhole);
    let cut = Instant::now();
    let ev = d.wait_state("feed", State::Backoff, T).await;
    let took = cut.elapsed();
    assert!(ev.reason.contains("pong timeout"), "reason: {}", ev.reason);
    assert!(
        took <= Duration::from_millis(ping + pong + 400),
        "dead connection found after {took:?}, bound is ping_interval + pong_timeout + slack"
    );

    let _c2 = up
        .next_accepted_within(T)
        .await
        .expect("reconnects once the path is back");
    d.wait_state("feed", State::Connected, T).await;
    d.stop().await;
}

#[tokio::test]
async fn silent_upstream_hits_idle_timeout() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n[endpoints.feed.heartbeat]\nping_interval = \"30s\"\nidle_timeout = \"400ms\"\n",
        up.url("/feed")
    ))
    .await;
    let _c1 = up.next_accepted_within(T).await.expect("connection");
    let connected = d.wait_state("feed", State::Connected, T).await;
    let ev = d.wait_state("feed", State::Backoff, T).await;
    assert!(ev.reason.contains("idle timeout"), "reason: {}", ev.reason);
    let after = Duration::from_nanos(ev.at - connected.at);
    assert!(
        after >= Duration::from_millis(380) && after <= Duration::from_millis(900),
        "idle timeout fired after {after:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn shutdown_closes_upstream_with_1001() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n",
        up.url("/feed")
    ))
    .await;
    let c = up.next_accepted_within(T).await.expect("connection");
    d.wait_state("feed", State::Connected, T).await;
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "feed", None).await;
    let _ = next_event(&mut s, T).await;
    d.stop().await;
    let close = tokio::time::timeout(T, c.closed())
        .await
        .expect("upstream sees the close")
        .expect("a close frame");
    assert_eq!(close.code, 1001);
    // The subscriber gets the final state and the stream ends.
    let mut last = None;
    while let Ok(Some(ev)) = tokio::time::timeout(T, s.message()).await.expect("bounded") {
        last = ev.event;
    }
    match last {
        Some(Ev::State(st)) => assert_eq!(state_name(&st), "closed"),
        other => panic!("last event should be the closed state, got {other:?}"),
    }
}
