//! The leader's pipelined appends (`src/cluster/append.rs`) against a real server: many in
//! flight, landing complete and in order, through a server restart, with an oversized message
//! dropped before it gets a seq, and a fenced writer storing nothing after the fence.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use ws_sidecar::cluster::slot::{Leading, Slot};
use ws_sidecar::cluster::stream::{Appended, EndpointStream, Meta, Retention};

use crate::start;
use crate::support::proxy::{ChaosProxy, Mode};
use crate::support::with_timeout;

/// Bounds every wait on the server.
const WAIT: Duration = Duration::from_secs(30);

fn payload(n: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}"))
}

/// A term of `term` writing `stream` from `next`, its lease good for longer than any test.
fn leading(stream: &EndpointStream, term: u64, next: u64) -> Leading {
    Leading::new(
        stream.writer(term),
        next,
        Instant::now() + Duration::from_secs(600),
        CancellationToken::new(),
    )
}

/// Reads `first..=last` back and checks each payload with `want(seq)`.
async fn assert_stream(
    stream: &EndpointStream,
    first: u64,
    last: u64,
    want: impl Fn(u64) -> Bytes,
) {
    assert_eq!(
        stream.bounds().await.expect("bounds"),
        (first, last),
        "nothing more, nothing less"
    );
    let mut reader = stream.read_from(first).await.expect("read");
    for seq in first..=last {
        let e = with_timeout(WAIT, reader.next()).await.expect("next");
        assert_eq!(e.seq, seq);
        assert_eq!(e.payload, want(seq), "seq {seq}");
    }
}

#[tokio::test]
async fn a_burst_is_pipelined_and_lands_complete_and_in_order() {
    let Some((_server, js)) = start("a_burst_is_pipelined").await else {
        return;
    };
    let stream = EndpointStream::open(&js, "burst", 1, &Retention::default())
        .await
        .expect("open");
    let (slot, l) = (Slot::new(true), leading(&stream, 4, 1));
    for n in 1..=2000 {
        let seq = with_timeout(
            WAIT,
            l.submit(&slot, payload(n), Some(&n.to_string()), &Meta::default()),
        )
        .await;
        assert_eq!(seq, Some(n), "seqs are given in submit order");
    }
    with_timeout(WAIT, l.settled()).await;
    assert!(l.why().is_none(), "the term goes on: {:?}", l.why());
    assert!(
        l.peak_in_flight() > 1,
        "appends were pipelined: at most {} in flight",
        l.peak_in_flight()
    );
    assert!(l.peak_in_flight() <= ws_sidecar::cluster::append::WINDOW);
    assert_eq!(l.in_flight(), 0);
    let appends = slot.appends.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(appends, 2000, "every append acked and timed once");
    assert_eq!(
        slot.status().lag,
        2000,
        "the stream is at 2000, nothing read yet"
    );
    assert_stream(&stream, 1, 2000, payload).await;
    let tail = stream.tail().await.expect("tail").expect("not empty");
    assert_eq!(tail.upstream_id.as_deref(), Some("2000"));
}

#[tokio::test]
async fn an_oversized_message_is_dropped_before_it_gets_a_seq() {
    let Some((_server, js)) = start("an_oversized_message_is_dropped").await else {
        return;
    };
    let stream = EndpointStream::open(&js, "big", 1, &Retention::default())
        .await
        .expect("open");
    let (slot, l) = (Slot::new(true), leading(&stream, 1, 1));
    let max = js.client().max_payload();
    let meta = Meta::default();
    let big = Bytes::from(vec![b'x'; max]);
    let (l, slot_ref, meta_ref) = (&l, &slot, &meta);
    let submit = move |p: Bytes| with_timeout(WAIT, l.submit(slot_ref, p, None, meta_ref));
    assert_eq!(submit(payload(1)).await, Some(1));
    assert_eq!(
        submit(big.clone()).await,
        None,
        "over max_payload with its headers"
    );
    assert_eq!(
        submit(payload(2)).await,
        Some(2),
        "the seq went to the next message"
    );
    // The check counts what the server counts: a message of exactly max_payload is stored,
    // one byte more is not.
    let empty = stream
        .writer(1)
        .prepare(3, Bytes::new(), None, &meta, true)
        .size();
    let exactly = big.slice(..max - empty);
    assert_eq!(
        stream
            .writer(1)
            .prepare(3, exactly.clone(), None, &meta, true)
            .size(),
        max
    );
    assert_eq!(
        submit(big.slice(..max - empty + 1)).await,
        None,
        "one byte over"
    );
    assert_eq!(
        submit(exactly.clone()).await,
        Some(3),
        "exactly max_payload"
    );
    assert_eq!(submit(payload(4)).await, Some(4));
    with_timeout(WAIT, l.settled()).await;
    assert!(l.why().is_none(), "nothing stalled the term: {:?}", l.why());
    assert_eq!(
        slot.too_large.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "both drops counted"
    );
    assert_stream(&stream, 1, 4, |seq| match seq {
        3 => exactly.clone(),
        4 => payload(4),
        n => payload(n),
    })
    .await;
}

/// A zombie whose first append in flight is fenced must not store the ones behind it, whose
/// expected last seq is the fenced one and so matches once the new leader wrote it.
#[tokio::test]
async fn a_fenced_writer_stores_nothing_after_the_fence() {
    let Some((_server, js)) = start("a_fenced_writer_stores_nothing").await else {
        return;
    };
    let stream = EndpointStream::open(&js, "prices", 1, &Retention::default())
        .await
        .expect("open");
    // The new leader (term 12) wrote seq 1 before the zombie (term 10) woke up.
    let leader = stream.writer(12);
    let landed = leader
        .append(1, Bytes::from_static(b"leader 1"), None)
        .await;
    assert_eq!(landed.expect("leader's 1"), Appended::Stored);
    let (slot, zombie) = (Slot::new(true), leading(&stream, 10, 1));
    let meta = Meta::default();
    // Both are written to the same connection before any ack is read.
    let one = zombie.submit(&slot, Bytes::from_static(b"zombie 1"), None, &meta);
    assert_eq!(with_timeout(WAIT, one).await, Some(1));
    let two = zombie.submit(&slot, Bytes::from_static(b"zombie 2"), None, &meta);
    assert_eq!(with_timeout(WAIT, two).await, Some(2));
    with_timeout(WAIT, zombie.lost.cancelled()).await;
    let why = zombie.why().unwrap_or_default();
    assert!(why.starts_with("fenced: seq 1 of prices"), "{why}");
    // The zombie's seq 2 reached the server before this: it was refused, so seq 2 is free.
    let next = leader
        .append(2, Bytes::from_static(b"leader 2"), None)
        .await;
    assert_eq!(next.expect("leader's 2"), Appended::Stored);
    assert_stream(&stream, 1, 2, |seq| Bytes::from(format!("leader {seq}"))).await;
}

/// Appends in flight while the server restarts are sent again from the first one not
/// confirmed, in order; what had landed comes back a duplicate.
#[tokio::test]
async fn appends_in_flight_across_a_server_restart_land_once_and_in_order() {
    let Some((mut server, js)) = start("appends_in_flight_across_a_server_restart").await else {
        return;
    };
    let stream = EndpointStream::open(&js, "prices", 1, &Retention::default())
        .await
        .expect("open");
    let (slot, l) = (Slot::new(true), leading(&stream, 2, 1));
    let meta = Meta::default();
    for n in 1..=300 {
        assert_eq!(l.submit(&slot, payload(n), None, &meta).await, Some(n));
    }
    server.restart().await;
    for n in 301..=600 {
        let seq = with_timeout(WAIT, l.submit(&slot, payload(n), None, &meta)).await;
        assert_eq!(seq, Some(n));
    }
    with_timeout(WAIT, l.settled()).await;
    assert!(l.why().is_none(), "the term goes on: {:?}", l.why());
    assert_stream(&stream, 1, 600, payload).await;
}

/// Appends written into a dead connection never reach the server: their acks time out, and
/// the first of them and every one after it go again, in order, once the client reconnected.
#[tokio::test]
async fn appends_lost_on_a_dead_connection_go_again_from_the_first_in_order() {
    let Some(server) =
        crate::support::nats::NatsServer::start("appends_lost_on_a_dead_connection").await
    else {
        return;
    };
    let port: u16 = server
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the server's port");
    let proxy = ChaosProxy::start(([127, 0, 0, 1], port).into()).await;
    let client = async_nats::connect(format!("nats://{}", proxy.addr()))
        .await
        .expect("connect through the proxy");
    // Acks time out in half a second instead of five.
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(client);
    let stream = EndpointStream::open(&js, "prices", 1, &Retention::default())
        .await
        .expect("open");
    let (slot, l) = (Slot::new(true), leading(&stream, 2, 1));
    let meta = Meta::default();
    for n in 1..=100 {
        assert_eq!(l.submit(&slot, payload(n), None, &meta).await, Some(n));
    }
    with_timeout(WAIT, l.settled()).await;
    // The path dies silently: these are written, and lost.
    proxy.set_mode_existing(Mode::Blackhole);
    for n in 101..=200 {
        assert_eq!(l.submit(&slot, payload(n), None, &meta).await, Some(n));
    }
    assert!(l.in_flight() > 0, "nothing can have been acked");
    // The client notices once the connection is reset, and reconnects through the proxy.
    proxy.cut_all().await;
    for n in 201..=300 {
        let seq = with_timeout(WAIT, l.submit(&slot, payload(n), None, &meta)).await;
        assert_eq!(seq, Some(n));
    }
    with_timeout(WAIT, l.settled()).await;
    assert!(l.why().is_none(), "the term goes on: {:?}", l.why());
    assert_stream(&stream, 1, 300, payload).await;
    assert_eq!(
        slot.appends.load(std::sync::atomic::Ordering::Relaxed),
        300,
        "each acked once"
    );
}

/// A restart when the last message is older than the duplicate window does not stall the
/// chain (`Nats-Expected-Last-Msg-Id`). nats-server 2.15.1 recovers the last message id then;
/// servers that rebuild it only from the messages inside the window refuse the next chained
/// append, which then goes again fenced by its seq alone (`AppendError::Unchained`).
#[tokio::test]
async fn a_server_that_forgot_the_last_message_id_does_not_stall_the_term() {
    let Some((mut server, js)) = start("a_server_that_forgot_the_last_message_id").await else {
        return;
    };
    let retention = Retention {
        duplicate_window: Duration::from_millis(200),
        ..Retention::default()
    };
    let stream = EndpointStream::open(&js, "prices", 1, &retention)
        .await
        .expect("open");
    let (slot, l) = (Slot::new(true), leading(&stream, 2, 1));
    let meta = Meta::default();
    assert_eq!(l.submit(&slot, payload(1), None, &meta).await, Some(1));
    with_timeout(WAIT, l.settled()).await;
    // Waiting the window out is the point here.
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.restart().await;
    for n in 2..=5 {
        let seq = with_timeout(WAIT, l.submit(&slot, payload(n), None, &meta)).await;
        assert_eq!(seq, Some(n));
    }
    with_timeout(WAIT, l.settled()).await;
    assert!(l.why().is_none(), "the term goes on: {:?}", l.why());
    assert_stream(&stream, 1, 5, payload).await;
}

/// Upstream ids and keys come from the upstream's messages: a line break, a blank at either
/// end or a `%` in them travels as it is, and never reaches async-nats raw (which panics on a
/// line break in a header value).
#[tokio::test]
async fn upstream_ids_and_keys_travel_intact_whatever_they_hold() {
    let Some((_server, js)) = start("upstream_ids_and_keys_travel_intact").await else {
        return;
    };
    let stream = EndpointStream::open(&js, "odd", 1, &Retention::default())
        .await
        .expect("open");
    let (slot, l) = (Slot::new(true), leading(&stream, 1, 1));
    let odd = [" a\r\nb ", "50%25 é\t", ""];
    for (n, text) in (1..).zip(odd) {
        let meta = Meta {
            key: Some(text.into()),
            ..Meta::default()
        };
        let seq = with_timeout(WAIT, l.submit(&slot, payload(n), Some(text), &meta)).await;
        assert_eq!(seq, Some(n));
    }
    with_timeout(WAIT, l.settled()).await;
    let mut reader = stream.read_from(1).await.expect("read");
    for text in odd {
        let e = with_timeout(WAIT, reader.next()).await.expect("next");
        assert_eq!(e.upstream_id.as_deref(), Some(text), "seq {}", e.seq);
        assert_eq!(e.meta.key.as_deref(), Some(text), "seq {}", e.seq);
    }
    let tail = stream.tail().await.expect("tail").expect("not empty");
    assert_eq!(tail.upstream_id.as_deref(), Some(""));
}
