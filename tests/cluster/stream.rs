//! The fenced log (`src/cluster/stream.rs`): one stream per endpoint against a real server.

use std::time::Duration;

use bytes::Bytes;
use ws_sidecar::cluster::stream::{
    AppendError, Appended, EndpointStream, Entry, Meta, ReadError, Retention, Tail,
};
use ws_sidecar::log::{GapReason, IdBreak, Kind};

use crate::support::with_timeout;
use crate::{connect, start};

/// Bounds every wait on the server.
const WAIT: Duration = Duration::from_secs(10);

fn payload(seq: u64) -> Bytes {
    Bytes::from(format!("{{\"tick\":{seq}}}"))
}

fn id(seq: u64) -> String {
    format!("up-{seq}")
}

#[tokio::test]
async fn appends_land_at_the_endpoint_seqs_from_a_first_seq_above_one() {
    let Some((_server, js)) = start("appends_land_at_the_endpoint_seqs").await else {
        return;
    };
    let s = EndpointStream::open(&js, "eu.prices", 1000, &Retention::default())
        .await
        .expect("open");
    assert_eq!(
        s.bounds().await.expect("bounds"),
        (1000, 999),
        "empty, next is 1000"
    );
    let w = s.writer(7);
    for seq in 1000..1005 {
        let landed = with_timeout(WAIT, w.append(seq, payload(seq), Some(&id(seq)))).await;
        assert_eq!(landed.expect("append"), Appended::Stored, "seq {seq}");
    }
    assert_eq!(s.bounds().await.expect("bounds"), (1000, 1004));
    // Skipping a seq is the caller's bug, and says so.
    match w.append(1006, payload(1006), None).await {
        Err(AppendError::OutOfOrder { last: 1004, .. }) => {}
        other => panic!("expected out of order, got {other:?}"),
    }
    // Reopening (another host, another next seq) uses the stream as it is.
    let again = EndpointStream::open(
        &connect(&_server).await,
        "eu.prices",
        1,
        &Retention::default(),
    )
    .await
    .expect("reopen");
    assert_eq!(again.bounds().await.expect("bounds"), (1000, 1004));
}

#[tokio::test]
async fn a_retry_after_a_lost_ack_is_deduplicated() {
    let Some((_server, js)) = start("a_retry_after_a_lost_ack_is_deduplicated").await else {
        return;
    };
    let s = EndpointStream::open(&js, "prices", 40, &Retention::default())
        .await
        .expect("open");
    let w = s.writer(3);
    assert_eq!(
        w.append(40, payload(40), Some("a")).await.expect("first"),
        Appended::Stored
    );
    // The same append again, as after an ack that never came back.
    assert_eq!(
        w.append(40, payload(40), Some("a")).await.expect("retry"),
        Appended::Duplicate
    );
    assert_eq!(
        s.bounds().await.expect("bounds"),
        (40, 40),
        "the stream did not advance"
    );
    assert_eq!(
        w.append(41, payload(41), None).await.expect("next"),
        Appended::Stored
    );
    // An earlier seq retried late is still recognised as the writer's own.
    assert_eq!(
        w.append(40, payload(40), Some("a")).await.expect("late"),
        Appended::Duplicate
    );
    assert_eq!(s.bounds().await.expect("bounds"), (40, 41));
}

#[tokio::test]
async fn a_retry_past_the_duplicate_window_is_still_recognised() {
    let Some((_server, js)) = start("a_retry_past_the_duplicate_window").await else {
        return;
    };
    let retention = Retention {
        duplicate_window: Duration::from_millis(200),
        ..Retention::default()
    };
    let s = EndpointStream::open(&js, "prices", 1, &retention)
        .await
        .expect("open");
    let w = s.writer(3);
    assert_eq!(
        w.append(1, payload(1), None).await.expect("first"),
        Appended::Stored
    );
    // Waiting the window out is the point here; whether the server has forgotten the id yet or
    // not, the answer is the same.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        w.append(1, payload(1), None).await.expect("retry"),
        Appended::Duplicate
    );
    assert_eq!(s.bounds().await.expect("bounds"), (1, 1));
}

#[tokio::test]
async fn a_zombie_appending_a_taken_seq_is_fenced() {
    let Some((server, js)) = start("a_zombie_appending_a_taken_seq_is_fenced").await else {
        return;
    };
    let s = EndpointStream::open(&js, "prices", 500, &Retention::default())
        .await
        .expect("open");
    let zombie_side = EndpointStream::open(
        &connect(&server).await,
        "prices",
        500,
        &Retention::default(),
    )
    .await
    .expect("open on the zombie");
    let zombie = zombie_side.writer(10);
    assert_eq!(
        zombie
            .append(500, payload(500), Some("z"))
            .await
            .expect("old leader"),
        Appended::Stored
    );
    // The new leader (a later term) goes on from the tail; the old one, unaware, tries its next.
    let leader = s.writer(12);
    assert_eq!(
        leader
            .append(501, payload(501), Some("l"))
            .await
            .expect("new leader"),
        Appended::Stored
    );
    // Same seq, so the same `<endpoint>:<seq>` prefix of the message id: not a duplicate.
    match zombie
        .append(501, Bytes::from_static(b"stale"), Some("z2"))
        .await
    {
        Err(e @ AppendError::Fenced { .. }) => {
            let AppendError::Fenced {
                seq,
                term,
                other_term,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*seq, *term, *other_term), (501, 10, Some(12)));
            let text = e.to_string();
            assert!(text.starts_with("fenced: seq 501 of prices"), "{text}");
            assert!(text.contains("another leader"), "{text}");
        }
        other => panic!("the zombie must be fenced, got {other:?}"),
    }
    assert_eq!(s.bounds().await.expect("bounds"), (500, 501));
    let tail = s.tail().await.expect("tail").expect("not empty");
    assert_eq!(
        tail.upstream_id.as_deref(),
        Some("l"),
        "the leader's message stayed"
    );
}

#[tokio::test]
async fn a_reader_gets_seqs_payloads_and_upstream_ids_in_order() {
    let Some((_server, js)) = start("a_reader_gets_seqs_payloads_and_upstream_ids").await else {
        return;
    };
    let s = EndpointStream::open(&js, "prices", 20, &Retention::default())
        .await
        .expect("open");
    let w = s.writer(1);
    for seq in 20..25 {
        let up = (seq % 2 == 0).then(|| id(seq));
        w.append(seq, payload(seq), up.as_deref())
            .await
            .expect("append");
    }
    let mut reader = s.read_from(22).await.expect("read from 22");
    let mut got = Vec::new();
    for _ in 22..25 {
        got.push(with_timeout(WAIT, reader.next()).await.expect("next"));
    }
    // Live: appended after the reader caught up.
    w.append(25, payload(25), Some("up-25"))
        .await
        .expect("append 25");
    got.push(with_timeout(WAIT, reader.next()).await.expect("live"));
    let want: Vec<Entry> = (22..26)
        .map(|seq| Entry {
            seq,
            payload: payload(seq),
            upstream_id: (seq % 2 == 0 || seq == 25).then(|| id(seq)),
            meta: Default::default(),
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn kind_receipt_time_key_and_id_break_travel_with_the_message() {
    let Some((_server, js)) = start("kind_receipt_time_key_and_id_break").await else {
        return;
    };
    let s = EndpointStream::open(&js, "book", 1, &Retention::default())
        .await
        .expect("open");
    let w = s.writer(1);
    let meta = Meta {
        binary: true,
        received_at: 1_764_000_000_123_456_789,
        key: Some("btcusdt@depth".into()),
        gap: Some(IdBreak {
            from: 41,
            to: 43,
            reason: GapReason::UpstreamGap,
        }),
    };
    w.append_with(
        1,
        Bytes::from_static(&[0, 159, 146, 150]),
        Some("44"),
        &meta,
    )
    .await
    .expect("append");
    w.append(2, payload(2), None).await.expect("plain");
    let mut reader = s.read_from(1).await.expect("read");
    let first = with_timeout(WAIT, reader.next()).await.expect("first");
    assert_eq!(first.meta, meta);
    assert_eq!(first.meta.kind(), Kind::Binary);
    assert_eq!(first.upstream_id.as_deref(), Some("44"));
    let second = with_timeout(WAIT, reader.next()).await.expect("second");
    assert_eq!(
        second.meta,
        Meta::default(),
        "nothing said: text, no key, no break"
    );
    assert_eq!(second.meta.kind(), Kind::Text);
}

#[tokio::test]
async fn an_expired_seq_says_which_is_first_available() {
    let Some((_server, js)) = start("an_expired_seq_says_which_is_first_available").await else {
        return;
    };
    let retention = Retention {
        max_messages: Some(3),
        ..Retention::default()
    };
    let s = EndpointStream::open(&js, "prices", 50, &retention)
        .await
        .expect("open");
    let w = s.writer(1);
    for seq in 50..60 {
        w.append(seq, payload(seq), Some(&id(seq)))
            .await
            .expect("append");
    }
    assert_eq!(
        s.bounds().await.expect("bounds"),
        (57, 59),
        "the limit dropped 50..=56"
    );
    match s.read_from(52).await {
        Err(e @ ReadError::Expired { .. }) => {
            let ReadError::Expired {
                requested,
                first_available,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*requested, *first_available), (52, 57));
            assert_eq!(
                e.to_string(),
                "seq 52 of prices expired; first available is 57"
            );
        }
        Err(e) => panic!("expected expired, got {e}"),
        Ok(_) => panic!("expected expired, got a reader"),
    }
    // The first available seq itself is readable.
    let mut reader = s.read_from(57).await.expect("read from 57");
    assert_eq!(
        with_timeout(WAIT, reader.next()).await.expect("next").seq,
        57
    );
    // A reader that lags behind the limit is told, not skipped ahead silently.
    let mut slow = s.read_from(58).await.expect("read from 58");
    assert_eq!(with_timeout(WAIT, slow.next()).await.expect("58").seq, 58);
    for seq in 60..66 {
        w.append(seq, payload(seq), None).await.expect("append");
    }
    // A reader never skips: either it had the seqs already (the ordered consumer's pending
    // pulls deliver each append at once, so it usually has), or it says which one expired.
    let mut next = 59;
    while next < 66 {
        match with_timeout(WAIT, slow.next()).await {
            Ok(entry) => {
                assert_eq!(entry.seq, next, "contiguous, or an error");
                next += 1;
            }
            Err(ReadError::Expired {
                requested,
                first_available,
                ..
            }) => {
                assert_eq!((requested, first_available), (next, 63));
                break;
            }
            Err(e) => panic!("expected a message or an expired seq, got {e}"),
        }
    }
}

#[tokio::test]
async fn the_last_upstream_id_is_read_back_from_the_stream() {
    let Some((server, js)) = start("the_last_upstream_id_is_read_back").await else {
        return;
    };
    let s = EndpointStream::open(&js, "prices", 7, &Retention::default())
        .await
        .expect("open");
    assert_eq!(s.tail().await.expect("tail"), None, "empty");
    let w = s.writer(1);
    w.append(7, payload(7), Some("u-7")).await.expect("append");
    w.append(8, payload(8), Some("u-8")).await.expect("append");
    // What a new leader on another host resumes from.
    let other = EndpointStream::open(&connect(&server).await, "prices", 1, &Retention::default())
        .await
        .expect("open on another host");
    assert_eq!(
        other.tail().await.expect("tail"),
        Some(Tail {
            seq: 8,
            upstream_id: Some("u-8".into())
        })
    );
}

#[tokio::test]
async fn the_stream_survives_a_server_restart() {
    let Some((mut server, js)) = start("the_stream_survives_a_server_restart").await else {
        return;
    };
    let s = EndpointStream::open(&js, "prices", 100, &Retention::default())
        .await
        .expect("open");
    let w = s.writer(1);
    for seq in 100..103 {
        w.append(seq, payload(seq), Some(&id(seq)))
            .await
            .expect("append");
    }
    server.restart().await;
    // A fresh client once the server says it is ready: no waiting on reconnect timers.
    let s = EndpointStream::open(&connect(&server).await, "prices", 1, &Retention::default())
        .await
        .expect("reopen");
    assert_eq!(
        s.tail().await.expect("tail"),
        Some(Tail {
            seq: 102,
            upstream_id: Some(id(102))
        })
    );
    let w = s.writer(1);
    assert_eq!(
        w.append(103, payload(103), None).await.expect("append"),
        Appended::Stored
    );
}

#[tokio::test]
async fn a_message_over_the_servers_max_payload_is_refused_at_once_and_says_so() {
    let Some((_server, js)) = start("a_message_over_the_servers_max_payload").await else {
        return;
    };
    let s = EndpointStream::open(&js, "big", 1, &Retention::default())
        .await
        .expect("open");
    let w = s.writer(1);
    // nats-server's default max_payload is 1 MB.
    let big = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    match with_timeout(WAIT, w.append(1, big, None)).await {
        Err(e @ AppendError::TooLarge { .. }) => {
            let AppendError::TooLarge { seq, size, max, .. } = &e else {
                unreachable!()
            };
            let headers = size - 2 * 1024 * 1024;
            assert!(*seq == 1 && headers > 0 && headers < 200, "{e:?}");
            assert_eq!(*max, js.client().max_payload());
            assert_eq!(
                e.to_string(),
                format!("a message of {size} bytes (payload and headers) for big seq 1 exceeds the NATS server's max_payload of {max} bytes; raise max_payload in the nats-server config (up to 64 MB)")
            );
        }
        other => panic!("want TooLarge, got {other:?}"),
    }
    // The seq stays free for the next message.
    assert_eq!(
        w.append(1, payload(1), None).await.expect("small"),
        Appended::Stored
    );
}
