//! Network faults through the chaos proxy: aborts at random byte positions, links that deliver
//! a byte at a time or slowly, and an upstream that stops reading while we publish.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto::event::Event as Ev;
use ws_sidecar::proto::{self, sidecar_client::SidecarClient};

use crate::support::daemon::{next_event, next_message, start_daemon, state_name, subscribe};
use crate::support::{since_param, tick_id, tick_message, ChaosProxy, FakeUpstream, Mode, Reply};
use crate::{endpoint, heavy, seed, until, with_bystander, within, T};

/// A resumable feed: every connection gets tick ids from `?since=N` + 1 (or 1) up to `last`,
/// as fast as the socket takes them.
async fn resumable_feed(last: u64) -> FakeUpstream {
    FakeUpstream::start_with_handler(
        |_, _| Reply::Accept,
        move |conn| {
            tokio::spawn(async move {
                let from = since_param(conn.uri()).map_or(1, |since| since + 1);
                for id in from..=last {
                    if conn.send_text(&tick_message(id)).await.is_err() {
                        return;
                    }
                }
            });
        },
    )
    .await
}

fn resume_section(name: &str) -> String {
    format!("[endpoints.{name}.resume]\nid_pointer = \"/id\"\nquery = \"since\"\n")
}

#[tokio::test]
async fn aborts_at_random_byte_positions_lose_and_duplicate_nothing() {
    let seed = seed("random aborts", 0x5eed_0007);
    let (last, cuts) = if heavy() { (50_000, 400) } else { (2_000, 40) };
    let up = resumable_feed(last).await;
    let proxy = ChaosProxy::start(up.addr()).await;
    // Each of the first `cuts` connections is reset at its own seeded byte position: a third of
    // them inside the daemon's handshake request (always longer than 150 bytes), the rest anywhere in the upstream's bytes
    // (inside the 101 response, a frame header or a payload).
    proxy.set_plan(move |index, link| {
        if index >= cuts {
            return;
        }
        let mut rng = fastrand::Rng::with_seed(seed ^ index as u64);
        if rng.u8(0..3) == 0 {
            link.to_upstream.shape.reset_after = Some(rng.u64(0..150));
        } else {
            link.to_client.shape.reset_after = Some(rng.u64(0..6_000));
        }
    });
    let (d, mut by) =
        with_bystander(&(endpoint("feed", &proxy.url("/feed"), "") + &resume_section("feed")))
            .await;
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "feed", Some(0)).await;

    let mut next = 1u64;
    let mut reasons = std::collections::BTreeSet::new();
    let deadline = Duration::from_secs(if heavy() { 600 } else { 40 });
    within(deadline, "every id delivered", async {
        while next <= last {
            match next_event(&mut s, T).await {
                Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
                Ev::Message(m) => {
                    let text = std::str::from_utf8(&m.data).expect("ticks are text");
                    assert_eq!(tick_id(text), Some(next), "ids in order, none twice");
                    assert_eq!(m.seq, next, "seqs contiguous");
                    next += 1;
                }
                Ev::State(st) => {
                    let name = state_name(&st);
                    assert_ne!(name, "failed", "an abort is retried: {}", st.reason);
                    if name == "backoff" {
                        assert!(st.reason.contains("retrying in"), "{}", st.reason);
                        // The delay differs every time; the cause is what a user reads.
                        reasons.insert(st.reason.split(';').next().unwrap_or("").to_owned());
                    }
                }
                Ev::Gap(g) => panic!("a gap although every id was resent: {g:?}"),
            }
        }
    })
    .await;
    eprintln!(
        "random aborts: {} connections, causes seen: {reasons:#?}",
        proxy.connections()
    );
    assert!(
        proxy.connections() > cuts.min(10),
        "the faults happened: {} connections",
        proxy.connections()
    );
    assert!(!reasons.is_empty());
    by.check(&d).await;
    d.stop().await;
}

fn payload(i: usize, size: usize) -> String {
    let head = format!("{i:04}:");
    let fill = "abcdefghij".repeat(size / 10 + 1);
    (head + &fill)[..size.max(5)].to_owned()
}

/// Sends `sizes` as alternating text and binary messages, each followed by a ping, and checks
/// the subscriber gets them intact, in order, with their frame type, from seq `first_seq`.
async fn send_and_check(
    conn: &crate::support::UpConn,
    s: &mut tonic::Streaming<proto::Event>,
    sizes: &[usize],
    first_seq: u64,
) {
    let expected: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(i, n))
        .collect();
    for (i, text) in expected.iter().enumerate() {
        if i % 2 == 0 {
            conn.send_text(text).await.expect("send text");
        } else {
            conn.send_binary(text.as_bytes())
                .await
                .expect("send binary");
        }
        conn.send_ping(b"interleaved").await.expect("ping");
    }
    for (i, text) in expected.iter().enumerate() {
        let m = next_message(s, T).await;
        assert_eq!(m.seq, first_seq + i as u64);
        assert_eq!(m.data.len(), text.len(), "message {i}");
        assert!(m.data == text.as_bytes(), "message {i} arrives intact");
        let kind = if i % 2 == 0 {
            proto::Kind::Text
        } else {
            proto::Kind::Binary
        };
        assert_eq!(m.kind, kind as i32, "message {i} keeps its frame type");
    }
}

#[tokio::test]
async fn sliced_links_both_ways_deliver_everything_in_order() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let proxy = ChaosProxy::start(up.addr()).await;
    let (d, mut by) = with_bystander(
        &(endpoint("feed", &proxy.url("/feed"), "")
            + "[endpoints.feed.heartbeat]\nping_interval = \"100ms\"\npong_timeout = \"5s\"\n"),
    )
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "feed", None).await;

    // One byte per write both ways: every frame header and payload is read in pieces, pings
    // and pongs included. Sizes cross the 7-bit and 16-bit length encodings.
    proxy.update(|link| {
        link.to_client.shape.slice = Some(1);
        link.to_upstream.shape.slice = Some(1);
    });
    send_and_check(&conn, &mut s, &[0, 1, 125, 126, 127, 1000], 1).await;
    let published: Vec<String> = (0..20).map(|i| payload(i, 100 + i * 37)).collect();
    for text in &published {
        client
            .publish(proto::PublishRequest {
                endpoint: "feed".into(),
                data: text.clone().into(),
                ..Default::default()
            })
            .await
            .expect("publish accepted");
    }
    for text in &published {
        assert_eq!(&conn.recv_text().await, text);
    }
    // Large messages in 997-byte writes: the 64-bit length encoding, split at odd offsets
    // (one byte at a time costs ~60 µs a byte in a debug build).
    proxy.update(|link| link.to_client.shape.slice = Some(997));
    send_and_check(&conn, &mut s, &[65_535, 65_536, 200_000], 7).await;

    conn.wait_pings(2, T).await.expect("heartbeats still flow");
    let ep = d.endpoint("feed");
    assert_eq!(ep.stats.reconnects.load(Ordering::Relaxed), 0);
    assert_eq!(ep.state().state, State::Connected);
    by.check(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn a_throttled_link_delivers_everything_in_order_at_its_pace() {
    const RATE: u64 = 64 * 1024;
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let proxy = ChaosProxy::start(up.addr()).await;
    let (d, mut by) = with_bystander(
        &(endpoint("feed", &proxy.url("/feed"), "")
            + "[endpoints.feed.heartbeat]\nping_interval = \"200ms\"\npong_timeout = \"5s\"\n"),
    )
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    proxy.update(|link| {
        link.to_client.shape.rate = Some(RATE);
        link.to_upstream.shape.rate = Some(RATE / 4);
    });
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "feed", None).await;

    // 96 KiB down at 64 KiB/s, 24 KiB up at 16 KiB/s: about 1.5 s each way, concurrently.
    let down: Vec<String> = (0..48).map(|i| payload(i, 2048)).collect();
    let up_msgs: Vec<String> = (0..12).map(|i| payload(i, 2048)).collect();
    let started = Instant::now();
    let sender = {
        let (conn, down) = (conn.clone(), down.clone());
        tokio::spawn(async move {
            for text in &down {
                conn.send_text(text).await.expect("send");
            }
        })
    };
    let mut publisher = client.clone();
    let publishing = {
        let up_msgs = up_msgs.clone();
        tokio::spawn(async move {
            for text in up_msgs {
                publisher
                    .publish(proto::PublishRequest {
                        endpoint: "feed".into(),
                        data: text.into(),
                        ..Default::default()
                    })
                    .await
                    .expect("publish accepted");
            }
        })
    };
    for (i, text) in down.iter().enumerate() {
        let m = next_message(&mut s, T).await;
        assert_eq!(m.seq, i as u64 + 1);
        assert!(m.data == text.as_bytes(), "message {i} intact");
    }
    let took_down = started.elapsed();
    for text in &up_msgs {
        assert_eq!(&conn.recv_text().await, text);
    }
    let took_up = started.elapsed();
    sender.await.expect("sender");
    publishing.await.expect("publisher");
    // Under the rate means the throttle was really in the path; the lower bounds leave room
    // for the first write of each lane, which is not held back.
    assert!(
        took_down >= Duration::from_millis(1200),
        "down in {took_down:?}"
    );
    assert!(took_up >= Duration::from_millis(1200), "up in {took_up:?}");
    // Heartbeats queue behind the data but make it within the pong timeout.
    let ep = d.endpoint("feed");
    until(T, "a round trip measured", || {
        ep.stats.rtt_micros.load(Ordering::Relaxed) > 0
    })
    .await;
    assert_eq!(
        ep.stats.reconnects.load(Ordering::Relaxed),
        0,
        "pongs kept up"
    );
    by.check(&d).await;
    d.stop().await;
}

fn publish_req(data: Vec<u8>) -> proto::PublishRequest {
    proto::PublishRequest {
        endpoint: "feed".into(),
        data: data.into(),
        ..Default::default()
    }
}

/// Publishes 64 KiB messages (numbered in their first 8 bytes) until the outbox refuses one;
/// returns how many were acknowledged and the refusal.
async fn publish_until_full(
    client: &mut SidecarClient<tonic::transport::Channel>,
    limit: usize,
) -> (usize, tonic::Status) {
    for n in 0..limit {
        let mut data = format!("{n:08}").into_bytes();
        data.resize(64 * 1024, b'.');
        if let Err(status) = client.publish(publish_req(data)).await {
            return (n, status);
        }
    }
    panic!("{limit} publishes of 64 KiB were all accepted by a stalled upstream");
}

#[tokio::test]
async fn an_upstream_that_stops_reading_fills_a_bounded_outbox_then_gets_everything() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let proxy = ChaosProxy::start(up.addr()).await;
    let (d, mut by) = with_bystander(
        &(endpoint("feed", &proxy.url("/feed"), "")
            // No heartbeat during the stall: this test is about the outbox, not liveness.
            + "[endpoints.feed.heartbeat]\nping_interval = \"1h\"\n"
            + "[endpoints.feed.outbox]\nmax_messages = 32\nmax_bytes = \"4MiB\"\n"),
    )
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    proxy.update_existing(|link| link.to_upstream.mode = Mode::Stall);

    let mut client = d.grpc().await;
    // Kernel buffers take a few MiB before the daemon's writes block; then 32 more fit.
    let (acked, refused) = within(Duration::from_secs(60), "the outbox fills", async {
        publish_until_full(&mut client, 2_000).await
    })
    .await;
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("outbox full"),
        "{}",
        refused.message()
    );
    let ep = d.endpoint("feed");
    assert!(
        ep.outbox.depth() <= 32,
        "outbox depth {}",
        ep.outbox.depth()
    );
    // Refusals do not queue anything: a second round is refused at once, the depth unchanged.
    let depth = ep.outbox.depth();
    for _ in 0..20 {
        let again = client.publish(publish_req(vec![b'x'; 1024])).await;
        assert_eq!(
            again.expect_err("still full").code(),
            tonic::Code::ResourceExhausted
        );
    }
    assert_eq!(ep.outbox.depth(), depth);
    let mut nd = d.ndjson().await;
    nd.send(json!({"op": "publish", "endpoint": "feed", "data": "x", "id": 1}))
        .await;
    let e = nd.recv(T).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("resource_exhausted")),
        "{e}"
    );
    by.check(&d).await;

    // The upstream reads again: every acknowledged publish arrives once, in order, on the same
    // connection.
    proxy.update_existing(|link| link.to_upstream.mode = Mode::Pass);
    for n in 0..acked {
        match within(T, "held publishes arrive", conn.recv()).await {
            Some(Message::Text(t)) => assert_eq!(&t.as_str()[..8], format!("{n:08}")),
            other => panic!("publish {n}: {other:?}"),
        }
    }
    until(T, "the outbox drains", || ep.outbox.depth() == 0).await;
    assert_eq!(ep.stats.reconnects.load(Ordering::Relaxed), 0);
    eprintln!("stopped reader: {acked} publishes acknowledged before the outbox was full");
    d.stop().await;
}

#[tokio::test]
async fn an_upstream_that_never_reads_again_is_dropped_and_the_outbox_moves_on() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let proxy = ChaosProxy::start(up.addr()).await;
    let d = start_daemon(
        &(endpoint("feed", &proxy.url("/feed"), "")
            + "[endpoints.feed.heartbeat]\nping_interval = \"300ms\"\npong_timeout = \"1s\"\n"
            + "[endpoints.feed.outbox]\nmax_messages = 32\nmax_bytes = \"4MiB\"\n"),
    )
    .await;
    let _first = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let ep = d.endpoint("feed");
    let mut events = ep.state_events();
    proxy.update_existing(|link| link.to_upstream.mode = Mode::Stall);
    let mut client = d.grpc().await;
    // Until the outbox is full or 100 are in: which comes first depends on kernel buffers and
    // the heartbeat (on a busy machine the reconnect may come first); either way some
    // publishes are acknowledged while the upstream is deaf.
    let mut acked = 0usize;
    while acked < 100 {
        let mut data = format!("{acked:08}").into_bytes();
        data.resize(64 * 1024, b'.');
        match client.publish(publish_req(data)).await {
            Ok(_) => acked += 1,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => break,
            Err(e) => panic!("publish refused: {e:?}"),
        }
    }
    // The pings cannot get out either: the pong timeout ends the connection.
    let ev = within(T, "pong timeout", async {
        loop {
            let ev = events.recv().await.expect("state events");
            if ev.state == State::Backoff {
                return ev;
            }
        }
    })
    .await;
    assert!(ev.reason.contains("pong timeout"), "{}", ev.reason);
    let second = up.next_accepted_within(T).await.expect("reconnects");
    d.wait_state("feed", State::Connected, T).await;
    let mut end = publish_req(b"end".to_vec());
    end.wait = proto::Wait::Sent as i32;
    within(
        T,
        "a publish after the reconnect is sent",
        client.publish(end),
    )
    .await
    .expect("sent");
    // What was written to the dead socket went with it (SPEC §11: acknowledged means it reached
    // the upstream socket); what was not goes out on the new connection, in order, through the
    // last acknowledged publish.
    let mut tail = Vec::new();
    loop {
        match within(T, "the rest of the outbox", second.recv()).await {
            Some(Message::Text(t)) if t.as_str() == "end" => break,
            Some(Message::Text(t)) => {
                tail.push(t.as_str()[..8].parse::<usize>().expect("numbered"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    eprintln!(
        "deaf upstream: {acked} acknowledged, {} resent on the new connection",
        tail.len()
    );
    assert!(
        tail.windows(2).all(|w| w[1] == w[0] + 1),
        "in order: {tail:?}"
    );
    if let Some(last) = tail.last() {
        assert_eq!(*last, acked - 1, "through the last acknowledged publish");
    }
    assert_eq!(ep.outbox.depth(), 0);
    d.stop().await;
}
