//! Bad input never takes the daemon or another client down: NDJSON garbage, oversize upstream
//! messages, invalid UTF-8 in text frames.

use std::time::Duration;

use serde_json::json;
use ws_sidecar::endpoint::State;

use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::frame::frame_bytes;
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn ndjson_garbage_gets_an_error_line_and_hurts_no_one() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    // A small max_message_size keeps the NDJSON line limit, which follows it, small.
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\nmax_message_size = \"64KiB\"\n",
        up.url("/")
    ))
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let max_line = ws_sidecar::api::limits::RequestLimits::for_message(64 * 1024).ndjson_line;

    let mut good = d.ndjson().await;
    good.send(json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    good.recv_type("state", T).await;

    let mut bad = d.ndjson().await;
    bad.send_line("this is not json").await;
    let e = bad.recv(T).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    bad.send(json!({"op": "dance"})).await;
    let e = bad.recv(T).await;
    assert_eq!(e["code"], "bad_request", "unknown op: {e}");
    bad.send(json!({"op": "subscribe", "endpoint": "missing"}))
        .await;
    assert_eq!(bad.recv(T).await["code"], "not_found");
    bad.send(
        json!({"op": "subscribe", "endpoint": "feed", "filters": [{"pointer": "x", "equals": 1}]}),
    )
    .await;
    assert_eq!(bad.recv(T).await["code"], "invalid_argument");
    use tokio::io::AsyncWriteExt;
    bad.w
        .write_all(b"{\"op\":\"st\xffatus\"}\n")
        .await
        .expect("write");
    assert_eq!(bad.recv(T).await["code"], "bad_request", "non-UTF-8 line");
    bad.send_line(&"x".repeat(max_line + 10)).await;
    assert_eq!(bad.recv(T).await["code"], "line_too_long");
    // Still usable after all that.
    bad.send(json!({"op": "status"})).await;
    let st = bad.recv(T).await;
    assert_eq!(st["type"], "status");
    assert_eq!(st["endpoints"][0]["name"], "feed");

    conn.send_text("after").await.expect("send");
    let m = good.recv_type("message", T).await;
    assert_eq!(m["data"], "after");
    d.stop().await;
}

#[tokio::test]
async fn oversize_and_invalid_utf8_frames_reconnect_with_a_reason() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\nmax_message_size = \"1KiB\"\n[endpoints.feed.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n",
        up.url("/")
    ))
    .await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;

    let c1 = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    c1.send_text("ok1").await.expect("send");
    assert_eq!(&next_message(&mut s, T).await.data[..], b"ok1");
    c1.send_text(&"y".repeat(2048)).await.expect("send");
    let ev = d.wait_state("feed", State::Backoff, T).await;
    assert!(
        ev.reason.contains("max_message_size"),
        "reason: {}",
        ev.reason
    );
    let close = tokio::time::timeout(T, c1.closed()).await.expect("closed");
    assert_eq!(close.map(|c| c.code), Some(1009));

    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    d.wait_state("feed", State::Connected, T).await;
    c2.send_raw_bytes(frame_bytes(0x1, true, &[b'a', 0xff, 0xfe]))
        .await
        .expect("send");
    let ev = d.wait_state("feed", State::Backoff, T).await;
    assert!(ev.reason.contains("UTF-8"), "reason: {}", ev.reason);

    let c3 = up.next_accepted_within(T).await.expect("reconnects again");
    d.wait_state("feed", State::Connected, T).await;
    c3.send_text("ok2").await.expect("send");
    let m = next_message(&mut s, T).await;
    assert_eq!(
        (&m.data[..], m.seq),
        (&b"ok2"[..], 2),
        "same subscription, seq continues"
    );
    d.stop().await;
}
