//! `decode`: compressed upstream feeds reach apps decoded, in order, once; a stream context
//! starts afresh on every connection; a decompression bomb closes the connection with 1009.
//! The fake upstreams compress the way the feeds do: a gzip member per binary frame (HTX,
//! BingX), one sync-flushed zlib stream per connection (Discord's zlib-stream).

use std::sync::atomic::Ordering;
use std::time::Duration;

use flate2::{Compress, Compression};
use ws_sidecar::endpoint::State;
use ws_sidecar::proto::Kind;

use crate::support::compress::{gzip, sync_flushed};
use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

fn trade(seq: u64) -> String {
    format!(r#"{{"ch":"market.btcusdt.trade","seq":{seq},"price":"64000.5"}}"#)
}

fn backoff() -> &'static str {
    "[endpoints.feed.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n"
}

#[tokio::test]
async fn a_gzip_feed_reaches_apps_decoded_in_order_once() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    // Resume ids and drop filters read the decoded JSON: the duplicate and the heartbeat
    // below are only recognisable once inflated.
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\ndecode = \"gzip\"\ndrop = [{{ pointer = \"/ch\", equals = \"heartbeat\" }}]\n[endpoints.feed.resume]\nid_pointer = \"/seq\"\n",
        up.url("/")
    ))
    .await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;

    for seq in 1..=20 {
        conn.send_binary(gzip(trade(seq).as_bytes()))
            .await
            .expect("send");
        if seq == 10 {
            conn.send_binary(gzip(trade(seq).as_bytes()))
                .await
                .expect("resend");
            conn.send_binary(gzip(br#"{"ch":"heartbeat"}"#))
                .await
                .expect("send");
        }
    }
    // Text frames are not compressed: they pass through as they are.
    conn.send_text(r#"{"seq":21,"note":"plain"}"#)
        .await
        .expect("send");
    for seq in 1..=20 {
        let m = next_message(&mut s, T).await;
        assert_eq!(
            (m.seq, String::from_utf8_lossy(&m.data).into_owned(), m.kind),
            (seq, trade(seq), Kind::Text as i32),
            "decoded, as text, in order, once"
        );
    }
    let m = next_message(&mut s, T).await;
    assert_eq!(
        (m.seq, &m.data[..]),
        (21, &br#"{"seq":21,"note":"plain"}"#[..])
    );
    let stats = &d.endpoint("feed").stats;
    assert_eq!(stats.duplicates_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(stats.filtered.load(Ordering::Relaxed), 1);
    d.stop().await;
}

#[tokio::test]
async fn a_corrupt_gzip_message_is_dropped_and_counted_and_the_feed_goes_on() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\ndecode = \"gzip\"\n",
        up.url("/")
    ))
    .await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;

    conn.send_binary(b"\x1f\x8b\x08\x00 not really gzip")
        .await
        .expect("send");
    conn.send_binary(gzip(trade(1).as_bytes()))
        .await
        .expect("send");
    let m = next_message(&mut s, T).await;
    assert_eq!((m.seq, &m.data[..]), (1, trade(1).as_bytes()));
    let stats = &d.endpoint("feed").stats;
    assert_eq!(stats.decode_corrupt.load(Ordering::Relaxed), 1);
    assert!(
        !conn.is_closed(),
        "one bad message does not cost the connection"
    );
    assert_eq!(up.accepted(), 1);
    d.stop().await;
}

#[tokio::test]
async fn zlib_stream_starts_a_fresh_context_on_every_connection() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\ndecode = \"zlib-stream\"\n{}",
        up.url("/"),
        backoff()
    ))
    .await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;

    let mut seq = 0;
    for _ in 0..2 {
        let conn = up.next_accepted_within(T).await.expect("connects");
        d.wait_state("feed", State::Connected, T).await;
        // As the upstream does: one compressor per connection.
        let mut z = Compress::new(Compression::default(), true);
        for _ in 0..3 {
            seq += 1;
            let packed = sync_flushed(&mut z, trade(seq).as_bytes());
            // Every other message arrives in two WebSocket messages.
            if seq % 2 == 0 {
                let half = packed.len() / 2;
                conn.send_binary(&packed[..half]).await.expect("send");
                conn.send_binary(&packed[half..]).await.expect("send");
            } else {
                conn.send_binary(&packed).await.expect("send");
            }
            let m = next_message(&mut s, T).await;
            assert_eq!((m.seq, &m.data[..]), (seq, trade(seq).as_bytes()));
        }
        conn.close(1012, "service restart").await.expect("close");
    }
    let stats = &d.endpoint("feed").stats;
    assert_eq!(stats.decode_corrupt.load(Ordering::Relaxed), 0);
    d.stop().await;
}

#[tokio::test]
async fn corrupt_zlib_stream_data_reopens_the_connection() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\ndecode = \"zlib-stream\"\n{}",
        up.url("/"),
        backoff()
    ))
    .await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    c1.send_binary(b"\x78\x9c\xff\xff\xff\xff\x00\x00\xff\xff")
        .await
        .expect("send");
    let close = tokio::time::timeout(T, c1.closed()).await.expect("closed");
    assert_eq!(close.map(|c| c.code), Some(1007));
    let ev = d.wait_state("feed", State::Backoff, T).await;
    assert!(ev.reason.contains("corrupt zlib-stream"), "{}", ev.reason);
    up.next_accepted_within(T).await.expect("reconnects");
    let stats = &d.endpoint("feed").stats;
    assert_eq!(stats.decode_corrupt.load(Ordering::Relaxed), 1);
    d.stop().await;
}

/// The acceptance point: a 1 KiB message that inflates past `max_message_size` closes the
/// connection with 1009 and a reason, seen by the upstream.
#[tokio::test]
async fn a_one_kib_bomb_closes_with_1009_and_a_reason() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\ndecode = \"gzip\"\nmax_message_size = \"64KiB\"\n{}",
        up.url("/"),
        backoff()
    ))
    .await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;

    let bomb = gzip(&vec![0u8; 960 * 1024]);
    assert!(bomb.len() <= 1024, "a 1 KiB bomb, not {} bytes", bomb.len());
    c1.send_binary(&bomb).await.expect("send");
    let close = tokio::time::timeout(T, c1.closed())
        .await
        .expect("closed")
        .expect("a close frame");
    assert_eq!(close.code, 1009, "{close:?}");
    assert!(!close.reason.is_empty(), "a reason: {close:?}");
    let ev = d.wait_state("feed", State::Backoff, T).await;
    assert!(ev.reason.contains("max_message_size"), "{}", ev.reason);
    assert_eq!(
        d.endpoint("feed")
            .stats
            .decode_too_big
            .load(Ordering::Relaxed),
        1
    );

    // The next connection delivers again, with nothing of the bomb.
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    d.wait_state("feed", State::Connected, T).await;
    c2.send_binary(gzip(trade(1).as_bytes()))
        .await
        .expect("send");
    let m = next_message(&mut s, T).await;
    assert_eq!((m.seq, &m.data[..]), (1, trade(1).as_bytes()));
    d.stop().await;
}
