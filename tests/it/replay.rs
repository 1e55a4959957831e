//! Replay (SPEC §10): `from_seq` continuation, expired ranges, slow subscribers.

use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto::event::Event as Ev;
use ws_sidecar::proto::GapReason;

use crate::support::daemon::{next_event, next_message, start_daemon, subscribe, TestDaemon};
use crate::support::{flood, FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn from_seq_inside_and_before_the_window() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n[endpoints.feed.replay]\nmessages = 20\n",
        up.url("/")
    ))
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let ep = d.endpoint("feed");
    for i in 1..=10 {
        conn.send_text(&format!("m{i}")).await.expect("send");
    }
    tokio::time::timeout(T, async {
        while ep.log.last_seq() < 10 {
            tokio::task::yield_now().await
        }
    })
    .await
    .expect("10 messages logged");

    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", Some(4)).await;
    for seq in 5..=10u64 {
        let m = next_message(&mut s, T).await;
        assert_eq!((m.seq, &m.data[..]), (seq, format!("m{seq}").as_bytes()));
    }
    conn.send_text("m11").await.expect("send");
    assert_eq!(
        next_message(&mut s, T).await.seq,
        11,
        "then the live stream"
    );

    for i in 12..=40 {
        conn.send_text(&format!("m{i}")).await.expect("send");
    }
    tokio::time::timeout(T, async {
        while ep.log.last_seq() < 40 {
            tokio::task::yield_now().await
        }
    })
    .await
    .expect("40 messages logged");
    let mut s = subscribe(&mut c, "feed", Some(5)).await;
    let mut gap = None;
    loop {
        match next_event(&mut s, T).await {
            Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
            Ev::State(_) => continue,
            Ev::Gap(g) => gap = Some(g),
            Ev::Message(m) => {
                assert_eq!(m.seq, 21, "continues at the oldest retained message");
                break;
            }
        }
    }
    let g = gap.expect("a gap before the first message");
    assert_eq!((g.from_seq, g.to_seq), (6, 20));
    assert_eq!(g.reason, GapReason::ReplayExpired as i32);
    for seq in 22..=40u64 {
        assert_eq!(next_message(&mut s, T).await.seq, seq);
    }
    d.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_gets_slow_subscriber_and_slows_no_one() {
    let (_up, d, conn) = connected_feed("messages = 6000\n").await;

    let mut c1 = d.grpc().await;
    let mut stalled = subscribe(&mut c1, "feed", None).await;
    let mut c2 = d.grpc().await;
    let mut reader = subscribe(&mut c2, "feed", None).await;

    // Far more than the HTTP/2 windows and buffers can hold for the stalled client.
    const N: u64 = 30_000;
    let (_flood, pace) = flood::paced(conn, N, 3_000);
    let started = std::time::Instant::now();
    for seq in 1..=N {
        let m = next_message(&mut reader, T).await;
        assert_eq!(m.seq, seq, "the reading subscriber loses nothing");
        pace.read(seq);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "reader took {took:?}");

    // Now the stalled one reads: what its buffers held, then a SLOW_SUBSCRIBER gap, then the
    // retained tail, with nothing out of order.
    let mut last = 0u64;
    let mut gap = None;
    while last < N {
        match next_event(&mut stalled, T).await {
            Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
            Ev::State(_) => {}
            Ev::Gap(g) => {
                assert_eq!(g.reason, GapReason::SlowSubscriber as i32);
                assert_eq!(
                    g.from_seq,
                    last + 1,
                    "gap starts right after what was delivered"
                );
                last = g.to_seq;
                gap = Some(g);
            }
            Ev::Message(m) => {
                assert_eq!(m.seq, last + 1, "no hole without a gap event");
                last = m.seq;
            }
        }
    }
    assert!(
        gap.is_some(),
        "the stalled subscriber was told it missed messages"
    );
    d.stop().await;
}

/// Polls until the daemon holds `n` subscriber slots.
async fn wait_subscribers(d: &TestDaemon, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + T;
    while d.registry.subscribers() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} subscribers, expected {n}",
            d.registry.subscribers()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A daemon whose endpoint `feed` (replay settings `replay`) is connected to a fake upstream,
/// and that upstream connection. The upstream is returned to keep it listening.
async fn connected_feed(replay: &str) -> (FakeUpstream, TestDaemon, UpConn) {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n[endpoints.feed.replay]\n{replay}",
        up.url("/")
    ))
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    (up, d, conn)
}

const DISCONNECT: &str = "messages = 1000\nslow_subscriber = \"disconnect\"\n";

#[tokio::test]
async fn grpc_disconnect_policy_ends_a_lagging_stream_with_resource_exhausted() {
    let (_up, d, conn) = connected_feed(DISCONNECT).await;
    let mut c1 = d.grpc().await;
    let mut stalled = subscribe(&mut c1, "feed", None).await;
    let mut c2 = d.grpc().await;
    let mut reader = subscribe(&mut c2, "feed", None).await;
    // 30 MB: far more than the sockets and HTTP/2 windows of the stalled client hold.
    const N: u64 = 30_000;
    let (_flood, pace) = flood::paced(conn, N, 500);
    for seq in 1..=N {
        assert_eq!(
            next_message(&mut reader, T).await.seq,
            seq,
            "the reader loses nothing"
        );
        pace.read(seq);
    }
    // The stalled client reads now: what its buffers held, in order, then the end of the stream
    // with RESOURCE_EXHAUSTED — never a hole.
    let mut last = 0u64;
    let status = loop {
        match tokio::time::timeout(T, stalled.message())
            .await
            .expect("in time")
        {
            Ok(Some(ev)) => match ev.event {
                Some(Ev::Message(m)) => {
                    assert_eq!(m.seq, last + 1, "no hole before the disconnect");
                    last = m.seq;
                }
                Some(Ev::Gap(g)) => panic!("disconnect policy must not skip: {g:?}"),
                _ => {}
            },
            Ok(None) => panic!("stream ended without a status after seq {last}"),
            Err(status) => break status,
        }
    };
    assert!(last < N, "the stalled client could not have kept up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("slow subscriber"), "{status:?}");
    wait_subscribers(&d, 1, "the disconnected subscriber's slot is released").await;
    d.stop().await;
}

#[tokio::test]
async fn ndjson_disconnect_policy_hangs_up_on_a_client_that_stopped_reading() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (_up, d, conn) = connected_feed(DISCONNECT).await;
    let mut client = tokio::net::UnixStream::connect(&d.stream_path)
        .await
        .expect("connect");
    client
        .write_all(b"{\"op\":\"subscribe\",\"endpoint\":\"feed\"}\n")
        .await
        .expect("subscribe");
    wait_subscribers(&d, 1, "subscribed").await;
    let _flood = flood::unpaced(conn, 30_000);
    // The client reads nothing; the daemon, blocked writing to it, must still let it go once
    // it fell out of the window.
    wait_subscribers(&d, 0, "a client that stopped reading is disconnected").await;
    let mut reader = BufReader::new(client);
    let mut last = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = tokio::time::timeout(T, reader.read_until(b'\n', &mut buf))
            .await
            .expect("in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            // read_until stops short of a newline only at EOF: the hang-up landed in the middle
            // of a line the kernel had half accepted, and a client drops that fragment.
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json line");
        match v["type"].as_str() {
            Some("message") => {
                let seq = v["seq"].as_u64().expect("seq");
                assert_eq!(seq, last + 1, "no hole before the hang-up");
                last = seq;
            }
            Some("state") => {}
            Some("error") => assert_eq!(v["code"], "slow_subscriber", "{line}"),
            other => panic!("unexpected line {other:?}: {line}"),
        }
    }
    assert!(
        last > 0 && last < 30_000,
        "read {last} messages before the end"
    );
    d.stop().await;
}
