//! The fake Socket.IO server speaks Engine.IO v4 / Socket.IO v5 over WebSocket, pings and
//! expects pongs, acks events, and catches breaches.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::support::socketio::{Event, FakeSocketIo};
use super::{connect_ok, http_error, next_message, ws_connect, Client, PROMPT};

async fn send(client: &mut Client, text: &str) {
    client
        .send(Message::text(text))
        .await
        .expect("client sends");
}

/// The next packet that is not a ping; pings are answered on the way.
async fn next_packet(client: &mut Client) -> String {
    loop {
        match next_message(client).await {
            Message::Text(t) if t.as_str() == "2" => send(client, "3").await,
            Message::Text(t) => return t.as_str().to_owned(),
            other => panic!("expected a packet, got {other:?}"),
        }
    }
}

/// Reads (answering pings unless `pong` is false) until the server closes.
async fn until_close(client: &mut Client, pong: bool) -> Vec<String> {
    let mut packets = Vec::new();
    loop {
        match next_message(client).await {
            Message::Text(t) if t.as_str() == "2" && pong => send(client, "3").await,
            Message::Text(t) => packets.push(t.as_str().to_owned()),
            Message::Close(_) => return packets,
            other => panic!("expected a packet, got {other:?}"),
        }
    }
}

async fn connected(server: &FakeSocketIo) -> Client {
    let mut client = connect_ok(&server.url()).await;
    let open = next_packet(&mut client).await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet"))
        .expect("open packet JSON");
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(
        (open["pingInterval"].clone(), open["pingTimeout"].clone()),
        (json!(300), json!(200))
    );
    assert_eq!(open["maxPayload"], 1_000_000);
    send(&mut client, "40{\"token\":\"t\"}").await;
    let ok = next_packet(&mut client).await;
    assert!(ok.starts_with("40{\"sid\":"), "{ok}");
    client
}

#[tokio::test]
async fn socketio_heartbeats_acks_and_emits() {
    let server = FakeSocketIo::start().await;
    let mut client = connected(&server).await;
    send(&mut client, "42[\"hello\",1]").await;
    send(&mut client, "421[\"echo\",\"a\",2]").await;
    assert_eq!(next_packet(&mut client).await, "431[\"a\",2]");
    send(&mut client, "422[\"add\",1,2.5,3]").await;
    assert_eq!(next_packet(&mut client).await, "432[6.5]");
    // Two heartbeats answered keep the connection up past pingInterval + pingTimeout.
    // Nothing but pings (answered by next_packet) is expected meanwhile.
    let reader = async {
        let unexpected = next_packet(&mut client).await;
        panic!("unexpected packet {unexpected}");
    };
    tokio::select! {
        pongs = server.wait_pongs(0, 2, PROMPT) => pongs.expect("pongs"),
        never = reader => never,
    }
    server.wait_connected(1, PROMPT).await.expect("connected");
    assert_eq!(server.emit("news", &[json!({"x": 1})]).await, 1);
    assert_eq!(next_packet(&mut client).await, "42[\"news\",{\"x\":1}]");
    let hello = server.wait_events("hello", 1, PROMPT).await.expect("event");
    assert_eq!(
        hello,
        [Event {
            name: "hello".into(),
            args: vec![json!(1)],
            ack: None
        }]
    );
    let conn = server.conn(0);
    assert_eq!(
        (conn.ack_ids, conn.auth),
        (vec![1, 2], Some(json!({"token": "t"})))
    );
    assert_eq!(server.faults(), Vec::<String>::new());
}

#[tokio::test]
async fn socketio_closes_on_breaches() {
    let server = FakeSocketIo::start().await;

    let mut early = connect_ok(&server.url()).await;
    next_packet(&mut early).await;
    send(&mut early, "42[\"hello\"]").await;
    let got = until_close(&mut early, true).await;
    assert!(got[0].starts_with("44{\"message\":"), "{got:?}");

    let mut silent = connected(&server).await;
    assert!(until_close(&mut silent, false)
        .await
        .contains(&"2".to_owned()));

    let mut pinger = connected(&server).await;
    send(&mut pinger, "2").await;
    until_close(&mut pinger, true).await;

    let mut reuser = connected(&server).await;
    send(&mut reuser, "421[\"echo\"]").await;
    send(&mut reuser, "421[\"echo\"]").await;
    next_packet(&mut reuser).await;
    next_packet(&mut reuser).await;

    let mut malformed = connected(&server).await;
    send(&mut malformed, "42{\"not\":\"an array\"}").await;
    until_close(&mut malformed, true).await;

    let refused = ws_connect(server.up.url("/socket.io/?EIO=3&transport=websocket")).await;
    assert_eq!(http_error(refused).status(), 400);

    let faults = server.faults();
    let expected = [
        "before the namespace connect",
        "no pong",
        "invalid heartbeat direction",
        "ack id used again",
        "invalid payload",
        "EIO is not 4",
    ];
    assert_eq!(faults.len(), expected.len(), "{faults:?}");
    for (fault, want) in faults.iter().zip(expected) {
        assert!(fault.contains(want), "{fault:?} should say {want:?}");
    }
}
