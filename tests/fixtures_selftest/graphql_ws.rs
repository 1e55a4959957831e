//! The fake graphql-transport-ws server runs operations per PROTOCOL.md and closes with the
//! specified code on each breach.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::support::graphql_ws::{FakeGraphql, SUBPROTOCOL};
use super::{connect_ok, next_message, with_timeout, ws_connect, Client, PROMPT};

async fn connect(server: &FakeGraphql) -> Client {
    let mut request = server.url().into_client_request().expect("a request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        SUBPROTOCOL.parse().expect("a header value"),
    );
    let (client, response) = with_timeout(PROMPT, ws_connect(request))
        .await
        .expect("handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(SUBPROTOCOL.as_bytes())
    );
    client
}

async fn send(client: &mut Client, v: Value) {
    client
        .send(Message::text(v.to_string()))
        .await
        .expect("client sends");
}

async fn next_json(client: &mut Client) -> Value {
    match next_message(client).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("the server sends JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The close code and reason the server ended the connection with.
async fn close_of(client: &mut Client) -> (u16, String) {
    match next_message(client).await {
        Message::Close(Some(frame)) => (frame.code.into(), frame.reason.as_str().to_owned()),
        other => panic!("expected a close, got {other:?}"),
    }
}

fn subscribe(id: &str, query: &str) -> Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": query}})
}

#[tokio::test]
async fn graphql_ws_runs_streams_queries_and_errors() {
    let server = FakeGraphql::start().await;
    let mut client = connect(&server).await;
    send(
        &mut client,
        json!({"type": "connection_init", "payload": {}}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "connection_ack"})
    );
    send(&mut client, json!({"type": "ping", "payload": {"n": 1}})).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "pong", "payload": {"n": 1}})
    );

    send(&mut client, subscribe("a", "subscription { ticks }")).await;
    server.wait_streams(1, PROMPT).await.expect("stream runs");
    assert_eq!(server.tick().await, 1);
    assert_eq!(
        next_json(&mut client).await,
        json!({"id": "a", "type": "next", "payload": {"data": {"ticks": 1}}})
    );
    send(&mut client, subscribe("b", "query { one }")).await;
    assert_eq!(next_json(&mut client).await["payload"]["data"]["one"], 1);
    assert_eq!(
        next_json(&mut client).await,
        json!({"id": "b", "type": "complete"})
    );
    send(&mut client, subscribe("c", "query { boom }")).await;
    let error = next_json(&mut client).await;
    assert_eq!(
        (error["id"].clone(), error["type"].clone()),
        (json!("c"), json!("error"))
    );
    assert!(error["payload"][0]["message"].is_string(), "{error}");

    send(&mut client, json!({"id": "a", "type": "complete"})).await;
    server
        .wait_streams(0, PROMPT)
        .await
        .expect("stream stopped");
    server.tick().await;
    send(&mut client, json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "pong"}),
        "no tick after complete"
    );
    // The id of a finished operation may be used again.
    send(&mut client, subscribe("a", "subscription { ticks }")).await;
    server.wait_streams(1, PROMPT).await.expect("stream runs");
    server.complete_ticks().await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"id": "a", "type": "complete"})
    );
    assert_eq!(server.subscribe_ids(0), ["a", "b", "c", "a"]);
    assert_eq!(server.faults(), Vec::<String>::new());
}

#[tokio::test]
async fn graphql_ws_closes_with_the_specified_codes() {
    let server = FakeGraphql::start_with_init_timeout(Duration::from_millis(200)).await;
    let init = json!({"type": "connection_init"});
    let cases: Vec<(Vec<Value>, u16, &str)> = vec![
        (
            vec![subscribe("a", "subscription { ticks }")],
            4401,
            "Unauthorized",
        ),
        (
            vec![init.clone(), init.clone()],
            4429,
            "Too many initialisation requests",
        ),
        (
            vec![
                init.clone(),
                subscribe("a", "subscription { ticks }"),
                subscribe("a", "subscription { ticks }"),
            ],
            4409,
            "Subscriber for a already exists",
        ),
        (
            vec![init.clone(), json!({"type": "next", "id": "x"})],
            4400,
            "",
        ),
        (
            vec![init.clone(), json!({"id": "x", "type": "subscribe"})],
            4400,
            "",
        ),
        (vec![], 4408, "Connection initialisation timeout"),
    ];
    let n = cases.len();
    for (messages, code, reason) in cases {
        let mut client = connect(&server).await;
        for m in messages {
            send(&mut client, m).await;
        }
        let (got, why) = loop {
            match next_message(&mut client).await {
                Message::Close(Some(frame)) => {
                    break (u16::from(frame.code), frame.reason.as_str().to_owned())
                }
                Message::Text(_) => continue,
                other => panic!("expected a close, got {other:?}"),
            }
        };
        assert_eq!(got, code, "{why}");
        if !reason.is_empty() {
            assert_eq!(why, reason);
        }
    }
    let mut plain = connect_ok(&server.url()).await;
    assert_eq!(close_of(&mut plain).await.0, 4406, "no subprotocol offered");
    assert_eq!(server.faults().len(), n + 1, "{:?}", server.faults());
}
