//! Publish and the outbox (SPEC §11): queued while down, sent in order after the on_connect
//! frames once connected; a full outbox refuses.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::start_daemon;
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

fn publish(endpoint: &str, data: &str) -> proto::PublishRequest {
    proto::PublishRequest {
        endpoint: endpoint.into(),
        data: data.to_owned().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn published_while_down_arrive_in_order_after_on_connect() {
    let (up, up_now) = FakeUpstream::start_gated(false, 503).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\non_connect = ['{{\"op\":\"sub\",\"ch\":1}}', 'hello']\n[endpoints.feed.backoff]\ninitial = \"50ms\"\nmax = \"200ms\"\nmin_delay = \"20ms\"\n",
        up.url("/")
    ))
    .await;
    d.wait_state("feed", State::Backoff, T).await;

    let mut c = d.grpc().await;
    for i in 1..=5u64 {
        let r = c
            .publish(publish("feed", &format!("p{i}")))
            .await
            .expect("queued");
        assert_eq!(r.into_inner().outbox_id, i);
    }
    let mut nd = d.ndjson().await;
    nd.send(json!({"op": "publish", "endpoint": "feed", "data": "p6", "id": "c1"}))
        .await;
    let ack = nd.recv_type("ack", T).await;
    assert_eq!(ack["id"], "c1");
    assert_eq!(ack["outbox_id"], 6);
    assert_eq!(d.endpoint("feed").outbox.depth(), 6);

    up_now.store(true, Ordering::SeqCst);
    let conn = up.next_accepted_within(T).await.expect("connects");
    let mut got = Vec::new();
    while got.len() < 8 {
        match tokio::time::timeout(T, conn.recv())
            .await
            .expect("frames arrive")
        {
            Some(Message::Text(t)) => got.push(t.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            r#"{"op":"sub","ch":1}"#,
            "hello",
            "p1",
            "p2",
            "p3",
            "p4",
            "p5",
            "p6"
        ]
    );
    let ep = d.endpoint("feed");
    tokio::time::timeout(T, async {
        while ep.outbox.depth() > 0 {
            tokio::task::yield_now().await
        }
    })
    .await
    .expect("entries leave the outbox once flushed");

    // wait = SENT returns once written.
    let mut req = publish("feed", "p7");
    req.wait = proto::Wait::Sent as i32;
    c.publish(req).await.expect("sent");
    match tokio::time::timeout(T, conn.recv()).await.expect("frame") {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), "p7"),
        other => panic!("unexpected {other:?}"),
    }
    d.stop().await;
}

#[tokio::test]
async fn full_outbox_is_resource_exhausted() {
    let up = FakeUpstream::start_with(|_, _| Reply::reject(503, &[])).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n[endpoints.feed.outbox]\nmax_messages = 3\n",
        up.url("/")
    ))
    .await;
    let mut c = d.grpc().await;
    for i in 0..3 {
        c.publish(publish("feed", &format!("m{i}")))
            .await
            .expect("room");
    }
    let err = c
        .publish(publish("feed", "m3"))
        .await
        .expect_err("outbox full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let err = c
        .publish(publish("nope", "m"))
        .await
        .expect_err("unknown endpoint");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut key = publish("feed", "k");
    key.idempotency_key = "dup".into();
    let err = c.publish(key).await.expect_err("still full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    d.stop().await;
}
