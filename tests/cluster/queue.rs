//! The publish work-queue (`src/cluster/queue.rs`): pushes from several hosts, one leader
//! draining, take-overs and a server restart, against a real server.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use ws_sidecar::cluster::publish_stream_name;
use ws_sidecar::cluster::queue::{Drain, PublishQueue, QueueError, Queued};
use ws_sidecar::log::Kind;

use crate::support::with_timeout;
use crate::{connect, start};

/// Bounds every wait on the server.
const WAIT: Duration = Duration::from_secs(10);

/// The duplicate window the tests open queues with.
const WINDOW: Duration = Duration::from_secs(120);

async fn open(js: &jetstream::Context, endpoint: &str) -> PublishQueue {
    with_timeout(WAIT, PublishQueue::open(js, endpoint, 1, WINDOW))
        .await
        .expect("open the queue")
}

/// Pushes `text` as a text message with `text` as its idempotency key.
async fn push(q: &PublishQueue, text: &str) -> u64 {
    let pushed = with_timeout(
        WAIT,
        q.push(Kind::Text, Bytes::from(text.to_string()), Some(text)),
    )
    .await
    .unwrap_or_else(|e| panic!("push {text}: {e}"));
    assert!(!pushed.duplicate, "{text} is new");
    pushed.seq
}

/// The next `n` messages of `drain`.
async fn take(drain: &mut Drain, n: usize) -> Vec<Queued> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(with_timeout(WAIT, drain.next()).await.expect("next"));
    }
    got
}

fn texts(queued: &[Queued]) -> Vec<String> {
    queued
        .iter()
        .map(|q| String::from_utf8_lossy(&q.data).into_owned())
        .collect()
}

async fn ack_all(queued: Vec<Queued>) {
    for q in queued {
        with_timeout(WAIT, q.ack()).await.expect("ack");
    }
}

async fn depth(q: &PublishQueue) -> u64 {
    with_timeout(WAIT, q.depth()).await.expect("depth")
}

#[tokio::test]
async fn pushes_from_two_hosts_are_drained_in_order_per_publisher_each_once() {
    let Some((server, js)) = start("pushes_from_two_hosts_are_drained_in_order").await else {
        return;
    };
    let a = open(&js, "eu.prices").await;
    let b = open(&connect(&server).await, "eu.prices").await;
    // Two publishers at once; each awaits its pushes one by one, as an app's publishes are.
    let publisher = |q: PublishQueue, host: &'static str, kind: Kind| async move {
        for i in 0..20 {
            let key = format!("{host} {i}\n");
            let pushed = q
                .push(kind, Bytes::from(format!("{host}-{i}")), Some(&key))
                .await
                .unwrap_or_else(|e| panic!("push {host}-{i}: {e}"));
            assert!(!pushed.duplicate);
        }
    };
    with_timeout(WAIT, async {
        tokio::join!(
            publisher(a.clone(), "a", Kind::Text),
            publisher(b.clone(), "b", Kind::Binary)
        )
    })
    .await;
    assert_eq!(depth(&a).await, 40);

    let leader = open(&connect(&server).await, "eu.prices").await;
    let mut drain = with_timeout(WAIT, leader.take_over(1))
        .await
        .expect("take over");
    let got = take(&mut drain, 40).await;
    let seqs: Vec<u64> = got.iter().map(|q| q.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stream order: {seqs:?}"
    );
    for (host, kind) in [("a", Kind::Text), ("b", Kind::Binary)] {
        let mine: Vec<&Queued> = got
            .iter()
            .filter(|q| q.data.starts_with(host.as_bytes()))
            .collect();
        let want: Vec<String> = (0..20).map(|i| format!("{host}-{i}")).collect();
        let data: Vec<String> = mine
            .iter()
            .map(|q| String::from_utf8_lossy(&q.data).into_owned())
            .collect();
        assert_eq!(data, want, "host {host}: each once, in its order");
        for (i, q) in mine.iter().enumerate() {
            assert_eq!(q.kind, kind);
            // The key comes back as pushed, space and newline included.
            assert_eq!(q.idempotency_key, Some(format!("{host} {i}\n")));
        }
    }
    ack_all(got).await;
    assert_eq!(depth(&leader).await, 0, "acked messages leave the queue");
}

#[tokio::test]
async fn the_same_idempotency_key_is_stored_once() {
    let Some((_server, js)) = start("the_same_idempotency_key_is_stored_once").await else {
        return;
    };
    let q = open(&js, "prices").await;
    let first = push(&q, "order-1").await;
    // A retry, as after a PubAck that never came back.
    let retry = with_timeout(
        WAIT,
        q.push(Kind::Text, Bytes::from_static(b"order-1"), Some("order-1")),
    )
    .await
    .expect("retry");
    assert!(retry.duplicate, "the server dropped the retry");
    assert_eq!(retry.seq, first, "and names the first push's seq");
    // Without a key, the same payload is another message.
    let unkeyed = with_timeout(
        WAIT,
        q.push(Kind::Text, Bytes::from_static(b"order-1"), None),
    )
    .await
    .expect("no key");
    assert!(!unkeyed.duplicate);
    assert_eq!(depth(&q).await, 2);

    let mut drain = with_timeout(WAIT, q.take_over(1)).await.expect("take over");
    let got = take(&mut drain, 2).await;
    assert_eq!(
        got.iter()
            .map(|q| (q.seq, q.idempotency_key.clone()))
            .collect::<Vec<_>>(),
        [(first, Some("order-1".into())), (unkeyed.seq, None)]
    );
    ack_all(got).await;
    // Drained and acked, the key is still remembered within the window.
    let late = with_timeout(
        WAIT,
        q.push(Kind::Text, Bytes::from_static(b"order-1"), Some("order-1")),
    )
    .await
    .expect("late retry");
    assert!(late.duplicate, "a retry after the drain is still dropped");
    assert_eq!(depth(&q).await, 0);
}

#[tokio::test]
async fn a_take_over_redelivers_the_unacked_first_in_order_then_new_ones() {
    let Some((server, js)) = start("a_take_over_redelivers_the_unacked_first").await else {
        return;
    };
    let publisher = open(&js, "prices").await;
    for i in 1..=5 {
        push(&publisher, &format!("m{i}")).await;
    }
    let host_a = open(&connect(&server).await, "prices").await;
    let mut old = with_timeout(WAIT, host_a.take_over(7))
        .await
        .expect("a takes over");
    let mut held = take(&mut old, 3).await;
    assert_eq!(texts(&held), ["m1", "m2", "m3"]);
    with_timeout(WAIT, held.remove(0).ack())
        .await
        .expect("a acks m1");

    // Host B becomes leader (a later term) while A holds m2 and m3 unacked.
    let host_b = open(&connect(&server).await, "prices").await;
    let mut new = with_timeout(WAIT, host_b.take_over(9))
        .await
        .expect("b takes over");
    let got = take(&mut new, 4).await;
    assert_eq!(
        texts(&got),
        ["m2", "m3", "m4", "m5"],
        "unacked first, in order"
    );
    push(&publisher, "m6").await;
    let live = take(&mut new, 1).await;
    assert_eq!(texts(&live), ["m6"]);

    // A's acks no longer count, and its drain ends with the typed error. What the server had
    // handed A before the take-over (m4, m5) may still come out of its buffer, in order, and is
    // refused on ack like the rest.
    for q in held {
        match with_timeout(WAIT, q.ack()).await {
            Err(QueueError::TakenOver { term: 7, .. }) => {}
            other => panic!("a's ack after the take-over: {other:?}"),
        }
    }
    let mut buffered = Vec::new();
    let end = loop {
        match with_timeout(WAIT, old.next()).await {
            Ok(q) => buffered.push(q),
            Err(e) => break e,
        }
    };
    match &end {
        QueueError::TakenOver { term: 7, by, .. } => {
            assert!(matches!(by, Some(9) | None), "{end}");
            assert!(end
                .to_string()
                .starts_with("publish queue of prices taken over: term 7"));
        }
        other => panic!("a's drain after the take-over: {other}"),
    }
    assert!(
        texts(&buffered).iter().all(|t| t == "m4" || t == "m5"),
        "only what was delivered before: {:?}",
        texts(&buffered)
    );
    for q in buffered {
        assert!(matches!(
            with_timeout(WAIT, q.ack()).await,
            Err(QueueError::TakenOver { .. })
        ));
    }
    // And it stays ended.
    assert!(matches!(
        with_timeout(WAIT, old.next()).await,
        Err(QueueError::TakenOver { .. })
    ));
    // A late take-over by the older term is refused rather than stealing the queue back.
    match with_timeout(WAIT, host_a.take_over(7)).await {
        Err(QueueError::TakenOver {
            term: 7,
            by: Some(9),
            ..
        }) => {}
        Err(e) => panic!("expected taken over by 9, got {e}"),
        Ok(_) => panic!("term 7 took the queue back from term 9"),
    }
    ack_all(got).await;
    ack_all(live).await;
    assert_eq!(depth(&publisher).await, 0, "each message acked once");
}

#[tokio::test]
async fn an_acked_message_never_comes_back_after_a_take_over() {
    let Some((server, js)) = start("an_acked_message_never_comes_back").await else {
        return;
    };
    let q = open(&js, "prices").await;
    for i in 1..=4 {
        push(&q, &format!("m{i}")).await;
    }
    let mut first = with_timeout(WAIT, q.take_over(1)).await.expect("term 1");
    let mut got = take(&mut first, 3).await;
    // m1 and m3 acked, m2 not: a gap in the acks is not a gap in the queue.
    let m3 = got.remove(2);
    let _m2 = got.remove(1);
    ack_all(got).await;
    with_timeout(WAIT, m3.ack()).await.expect("ack m3");

    let other = open(&connect(&server).await, "prices").await;
    let mut second = with_timeout(WAIT, other.take_over(2))
        .await
        .expect("term 2");
    let again = take(&mut second, 2).await;
    assert_eq!(texts(&again), ["m2", "m4"], "m1 and m3 are gone for good");
    ack_all(again).await;
    assert_eq!(depth(&q).await, 0);

    // A third leader finds nothing to redo: the next message is a new one.
    let mut third = with_timeout(WAIT, q.take_over(3)).await.expect("term 3");
    push(&q, "m5").await;
    assert_eq!(texts(&take(&mut third, 1).await), ["m5"]);
}

#[tokio::test]
async fn an_oversized_payload_is_refused_with_a_typed_error() {
    let Some((_server, js)) = start("an_oversized_payload_is_refused").await else {
        return;
    };
    let q = open(&js, "prices").await;
    let max = js.client().max_payload();
    let big = Bytes::from(vec![b'x'; max + 1]);
    match with_timeout(WAIT, q.push(Kind::Binary, big, Some("big"))).await {
        Err(e @ QueueError::TooLarge { .. }) => {
            let QueueError::TooLarge {
                size, max: limit, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*size, *limit), (max + 1, max));
            assert_eq!(
                e.to_string(),
                format!(
                    "publish to prices refused: {} bytes of payload plus headers exceed the server's max_payload of {max} bytes",
                    max + 1
                )
            );
        }
        other => panic!("expected too large, got {other:?}"),
    }
    assert_eq!(depth(&q).await, 0, "nothing queued");
    // The key was not used up: the same key with a payload that fits is queued.
    let fits = with_timeout(
        WAIT,
        q.push(Kind::Binary, Bytes::from(vec![b'x'; max / 2]), Some("big")),
    )
    .await
    .expect("a payload that fits");
    assert!(!fits.duplicate);
}

#[tokio::test]
async fn a_message_not_pushed_by_the_queue_is_dropped_with_an_error() {
    let Some((server, js)) = start("a_message_not_pushed_by_the_queue").await else {
        return;
    };
    let q = open(&js, "prices").await;
    // Someone publishes on the subject by hand, without the kind header.
    let raw = connect(&server).await;
    with_timeout(
        WAIT,
        raw.publish("ws-sidecar-publish.prices", Bytes::from_static(b"raw")),
    )
    .await
    .expect("raw publish")
    .await
    .expect("raw publish ack");
    push(&q, "good").await;
    let mut drain = with_timeout(WAIT, q.take_over(1)).await.expect("take over");
    match with_timeout(WAIT, drain.next()).await {
        Err(e @ QueueError::Malformed { seq: 1, .. }) => assert_eq!(
            e.to_string(),
            "publish queue of prices: message 1 dropped, not a ws-sidecar publish: no Ws-Sidecar-Kind header"
        ),
        other => panic!("expected malformed, got {other:?}"),
    }
    let got = take(&mut drain, 1).await;
    assert_eq!(texts(&got), ["good"], "the drain goes on after it");
    ack_all(got).await;
    assert_eq!(depth(&q).await, 0, "the malformed message was removed");
}

#[tokio::test]
async fn open_takes_the_configured_window_and_refuses_a_foreign_stream() {
    let Some((_server, js)) = start("open_takes_the_configured_window").await else {
        return;
    };
    PublishQueue::open(&js, "prices", 1, Duration::from_secs(60))
        .await
        .expect("create");
    PublishQueue::open(&js, "prices", 1, Duration::from_secs(30))
        .await
        .expect("reopen with another window");
    let mut stream = js
        .get_stream(publish_stream_name("prices"))
        .await
        .expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));

    // A stream of the queue's name that is not a work-queue is not taken for one.
    js.create_stream(jetstream::stream::Config {
        name: publish_stream_name("other"),
        subjects: vec!["somewhere.else".into()],
        ..Default::default()
    })
    .await
    .expect("a foreign stream");
    match PublishQueue::open(&js, "other", 1, WINDOW).await {
        Err(e @ QueueError::NotWorkQueue { .. }) => assert_eq!(
            e.to_string(),
            "stream ws-sidecar-other_publish exists but is not a work-queue stream; delete it or rename the endpoint"
        ),
        other => panic!("expected not a work-queue, got {other:?}"),
    }
}

#[tokio::test]
async fn the_queue_survives_a_server_restart() {
    let Some((mut server, js)) = start("the_queue_survives_a_server_restart").await else {
        return;
    };
    let q = open(&js, "prices").await;
    for i in 1..=5 {
        push(&q, &format!("m{i}")).await;
    }
    let mut drain = with_timeout(WAIT, q.take_over(1)).await.expect("term 1");
    let mut got = take(&mut drain, 3).await;
    let _m3 = got.pop();
    ack_all(got).await;

    with_timeout(Duration::from_secs(30), server.restart()).await;
    // A fresh client once the server says it is ready: no waiting on reconnect timers.
    let q = open(&connect(&server).await, "prices").await;
    assert_eq!(
        depth(&q).await,
        3,
        "m3 (taken, unacked), m4 and m5 are still queued"
    );
    // A retry of a message still queued is still recognised.
    let retry = with_timeout(
        WAIT,
        q.push(Kind::Text, Bytes::from_static(b"m4"), Some("m4")),
    )
    .await
    .expect("retry m4");
    assert!(retry.duplicate, "m4 is not queued twice");
    push(&q, "m6").await;
    let mut drain = with_timeout(WAIT, q.take_over(2)).await.expect("term 2");
    let got = take(&mut drain, 4).await;
    assert_eq!(
        texts(&got),
        ["m3", "m4", "m5", "m6"],
        "nothing lost, nothing doubled"
    );
    ack_all(got).await;
    assert_eq!(depth(&q).await, 0);
}
