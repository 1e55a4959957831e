//! The fake Phoenix socket answers as Phoenix does and records every breach.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{connect_ok, http_error, next_message, ws_connect, Client, PROMPT};
use crate::support::phoenix::FakePhoenix;
use crate::support::with_timeout;

async fn send(client: &mut Client, v: Value) {
    client
        .send(Message::text(v.to_string()))
        .await
        .expect("client sends");
}

async fn recv(client: &mut Client) -> Value {
    match next_message(client).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("JSON from the fake"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn ok(join_ref: Value, r: &str, topic: &str, response: Value) -> Value {
    json!([join_ref, r, topic, "phx_reply", {"status": "ok", "response": response}])
}

#[tokio::test]
async fn phoenix_joins_replies_broadcasts_and_leaves() {
    let phx = FakePhoenix::start().await;
    let mut client = connect_ok(&phx.url()).await;
    send(&mut client, json!(["1", "1", "room:a", "phx_join", {}])).await;
    assert_eq!(
        recv(&mut client).await,
        ok(json!("1"), "1", "room:a", json!({}))
    );
    send(&mut client, json!(["2", "2", "private:x", "phx_join", {}])).await;
    assert_eq!(
        recv(&mut client).await,
        json!(["2", "2", "private:x", "phx_reply",
            {"status": "error", "response": {"reason": "unauthorized"}}])
    );
    send(&mut client, json!([null, "3", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        recv(&mut client).await,
        ok(Value::Null, "3", "phoenix", json!({}))
    );
    send(&mut client, json!(["1", "4", "room:a", "ping", {"n": 7}])).await;
    assert_eq!(
        recv(&mut client).await,
        ok(json!("1"), "4", "room:a", json!({"pong": {"n": 7}}))
    );

    phx.wait_joined(0, "room:a", PROMPT).await.expect("joined");
    let sent = phx
        .broadcast("room:a", "new_msg", json!({"body": "hi"}))
        .await;
    assert_eq!(sent, 1);
    assert_eq!(
        recv(&mut client).await,
        json!([null, null, "room:a", "new_msg", {"body": "hi"}])
    );
    assert_eq!(phx.broadcast("private:x", "new_msg", json!({})).await, 0);

    send(&mut client, json!(["1", "5", "room:a", "phx_leave", {}])).await;
    assert_eq!(
        recv(&mut client).await,
        ok(json!("1"), "5", "room:a", json!({}))
    );
    assert_eq!(
        recv(&mut client).await,
        json!(["1", "1", "room:a", "phx_close", {}])
    );
    assert_eq!(phx.broadcast("room:a", "new_msg", json!({})).await, 0);

    let conn = phx.conn(0);
    assert_eq!(conn.joins, ["room:a"]);
    assert_eq!(conn.refused, ["private:x"]);
    assert_eq!(conn.leaves, ["room:a"]);
    assert!(conn.joined.is_empty());
    assert_eq!(conn.refs, ["1", "2", "3", "4", "5"].map(|r| json!(r)));
    assert_eq!((conn.heartbeats, conn.broadcasts), (1, 1));
    assert_eq!(conn.frames.len(), 5);
    assert_eq!(phx.faults(), Vec::<String>::new());
}

#[tokio::test]
async fn phoenix_records_breaches_and_answers_them_as_phoenix_does() {
    let phx = FakePhoenix::start().await;
    let mut client = connect_ok(&phx.url()).await;
    send(&mut client, json!(["1", "1", "room:a", "phx_join", {}])).await;
    recv(&mut client).await;

    // A second join replaces the channel: its reply, then the old join's phx_close.
    send(&mut client, json!(["2", "2", "room:a", "phx_join", {}])).await;
    assert_eq!(
        recv(&mut client).await,
        ok(json!("2"), "2", "room:a", json!({}))
    );
    assert_eq!(
        recv(&mut client).await,
        json!(["1", "1", "room:a", "phx_close", {}])
    );
    send(&mut client, json!(["9", "3", "room:b", "new_msg", {}])).await;
    assert_eq!(
        recv(&mut client).await,
        json!([null, "3", "room:b", "phx_reply",
            {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    // A reused ref is still answered, and recorded.
    send(&mut client, json!([null, "3", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        recv(&mut client).await,
        ok(Value::Null, "3", "phoenix", json!({}))
    );

    let faults = phx.faults();
    assert_eq!(faults.len(), 3, "{faults:?}");
    assert!(faults[0].contains("joined room:a twice"), "{faults:?}");
    assert!(faults[1].contains("unjoined room:b"), "{faults:?}");
    assert!(faults[2].contains("ref \"3\" used twice"), "{faults:?}");
    phx.wait_joined(0, "room:a", PROMPT)
        .await
        .expect("rejoined");
    assert_eq!(phx.conn(0).joined["room:a"], json!("2"));

    // Not a V2 array: Phoenix's socket crashes on the decode and the connection closes.
    send(&mut client, json!({"topic": "room:a", "event": "x"})).await;
    match next_message(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011),
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(phx.faults().len(), 4);
}

#[tokio::test]
async fn phoenix_closes_a_connection_that_stops_heartbeating() {
    let timeout = Duration::from_millis(600);
    let phx = FakePhoenix::start_with_timeout(timeout).await;
    let mut client = connect_ok(&phx.url()).await;
    // Heartbeats every 150 ms keep the connection past the 600 ms timeout.
    let mut every = tokio::time::interval(Duration::from_millis(150));
    for n in 0..6 {
        every.tick().await;
        let r = format!("hb{n}");
        send(&mut client, json!([null, r, "phoenix", "heartbeat", {}])).await;
        assert_eq!(
            recv(&mut client).await,
            ok(Value::Null, &r, "phoenix", json!({}))
        );
    }
    assert!(phx.faults().is_empty(), "{:?}", phx.faults());
    match next_message(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close, got {other:?}"),
    }
    let faults = phx.faults();
    assert_eq!(faults.len(), 1);
    assert!(faults[0].contains("no heartbeat"), "{faults:?}");
    assert_eq!(phx.conn(0).heartbeats, 6);
}

#[tokio::test]
async fn phoenix_refuses_other_paths_and_drop_all_resets() {
    let phx = FakePhoenix::start().await;
    let v1 = ws_connect(phx.up.url("/socket/websocket?vsn=1.0.0")).await;
    assert_eq!(http_error(v1).status(), 400);
    let elsewhere = ws_connect(phx.up.url("/live/websocket?vsn=2.0.0")).await;
    assert_eq!(http_error(elsewhere).status(), 404);
    assert_eq!(phx.faults().len(), 2, "{:?}", phx.faults());
    assert_eq!(phx.connections(), 0);

    let mut first = connect_ok(&phx.url()).await;
    send(&mut first, json!(["1", "1", "room:a", "phx_join", {}])).await;
    recv(&mut first).await;
    assert_eq!(phx.drop_all().await, 1);
    let after = with_timeout(PROMPT, first.next()).await;
    assert!(
        matches!(after, None | Some(Err(_))),
        "expected the connection cut, got {after:?}"
    );
    phx.wait_until(PROMPT, "connection 0 ended", |c| !c[0].open)
        .await
        .expect("ended");

    let mut second = connect_ok(&phx.url()).await;
    phx.wait_connections(2, PROMPT).await.expect("second");
    assert!(
        phx.conn(1).joined.is_empty(),
        "joins die with the connection"
    );
    send(&mut second, json!(["1", "1", "room:a", "phx_join", {}])).await;
    recv(&mut second).await;
    phx.wait_joined(1, "room:a", PROMPT).await.expect("joined");
    assert_eq!(phx.broadcast("room:a", "e", json!({})).await, 1);
    assert_eq!(phx.faults().len(), 2);
}
