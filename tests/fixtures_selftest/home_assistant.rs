//! The fake Home Assistant gates on auth, enforces increasing ids and routes events by
//! subscription, recording every breach.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{connect_ok, next_message, Client, PROMPT};
use crate::support::home_assistant::{FakeHomeAssistant, HA_VERSION};
use crate::support::with_timeout;

const TOKEN: &str = "ha-test-token";

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

async fn authenticated(ha: &FakeHomeAssistant) -> Client {
    let mut client = connect_ok(&ha.url()).await;
    assert_eq!(
        recv(&mut client).await,
        json!({"type": "auth_required", "ha_version": HA_VERSION})
    );
    send(&mut client, json!({"type": "auth", "access_token": TOKEN})).await;
    assert_eq!(
        recv(&mut client).await,
        json!({"type": "auth_ok", "ha_version": HA_VERSION})
    );
    client
}

fn success(id: u64, result: Value) -> Value {
    json!({"id": id, "type": "result", "success": true, "result": result})
}

fn failure(id: Value, code: &str) -> impl Fn(&Value) -> bool {
    let code = code.to_owned();
    move |v: &Value| v["id"] == id && v["success"] == false && v["error"]["code"] == code.as_str()
}

#[tokio::test]
async fn home_assistant_answers_commands_and_routes_events() {
    let ha = FakeHomeAssistant::start(TOKEN).await;
    let mut client = authenticated(&ha).await;
    send(&mut client, json!({"id": 1, "type": "ping"})).await;
    assert_eq!(recv(&mut client).await, json!({"id": 1, "type": "pong"}));
    let subscribe = json!({"id": 2, "type": "subscribe_events", "event_type": "state_changed"});
    send(&mut client, subscribe).await;
    assert_eq!(recv(&mut client).await, success(2, Value::Null));
    send(&mut client, json!({"id": 3, "type": "subscribe_events"})).await;
    assert_eq!(recv(&mut client).await, success(3, Value::Null));
    ha.wait_subscribed(0, "*", PROMPT)
        .await
        .expect("subscribed");

    let data = json!({"entity_id": "light.kitchen"});
    assert_eq!(ha.fire("state_changed", data.clone()).await, 2);
    for id in [2, 3] {
        let event = recv(&mut client).await;
        assert_eq!(
            (&event["id"], &event["type"]),
            (&json!(id), &json!("event"))
        );
        assert_eq!(event["event"]["event_type"], "state_changed");
        assert_eq!(event["event"]["data"], data);
    }
    assert_eq!(ha.fire("call_service", json!({})).await, 1);
    assert_eq!(recv(&mut client).await["id"], 3);

    let unsubscribe = json!({"id": 4, "type": "unsubscribe_events", "subscription": 2});
    send(&mut client, unsubscribe).await;
    assert_eq!(recv(&mut client).await, success(4, Value::Null));
    assert_eq!(ha.fire("state_changed", json!({})).await, 1);
    assert_eq!(recv(&mut client).await["id"], 3);

    send(&mut client, json!({"id": 5, "type": "get_states"})).await;
    let states = recv(&mut client).await;
    assert!(states["result"].is_array(), "{states}");
    let call = json!({"id": 6, "type": "call_service", "domain": "light", "service": "turn_on",
        "service_data": {"brightness": 9}, "return_response": true});
    send(&mut client, call).await;
    let called = recv(&mut client).await;
    assert_eq!(
        (&called["id"], &called["success"]),
        (&json!(6), &json!(true))
    );
    assert!(called["result"]["context"]["id"].is_string(), "{called}");
    assert_eq!(called["result"]["response"]["echo"]["brightness"], 9);
    send(&mut client, json!({"id": 7, "type": "no_such_thing"})).await;
    assert!(failure(json!(7), "unknown_command")(
        &recv(&mut client).await
    ));

    let conn = ha.conn(0);
    assert_eq!(conn.ids, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        conn.subscribes,
        [(2, "state_changed".to_owned()), (3, "*".to_owned())]
    );
    assert_eq!(conn.unsubscribes, [2]);
    assert_eq!(conn.by_event_type(), [("*".to_owned(), vec![3])].into());
    assert_eq!(conn.events, 4);
    assert_eq!(ha.faults(), Vec::<String>::new());
}

#[tokio::test]
async fn home_assistant_refuses_ids_that_do_not_increase() {
    let ha = FakeHomeAssistant::start(TOKEN).await;
    let mut client = authenticated(&ha).await;
    send(&mut client, json!({"id": 5, "type": "ping"})).await;
    assert_eq!(recv(&mut client).await, json!({"id": 5, "type": "pong"}));
    for reused in [5, 4] {
        send(&mut client, json!({"id": reused, "type": "ping"})).await;
        assert_eq!(
            recv(&mut client).await,
            json!({"id": reused, "type": "result", "success": false, "error":
                {"code": "id_reuse", "message": "Identifier values have to increase."}})
        );
    }
    send(&mut client, json!({"id": 6, "type": "ping"})).await;
    assert_eq!(recv(&mut client).await, json!({"id": 6, "type": "pong"}));
    let unsubscribe = json!({"id": 7, "type": "unsubscribe_events", "subscription": 99});
    send(&mut client, unsubscribe).await;
    assert!(failure(json!(7), "not_found")(&recv(&mut client).await));
    send(&mut client, json!({"type": "ping"})).await;
    assert!(failure(Value::Null, "invalid_format")(
        &recv(&mut client).await
    ));

    let faults = ha.faults();
    assert_eq!(faults.len(), 4, "{faults:?}");
    assert!(faults[0].contains("id 5 after Some(5)"), "{faults:?}");
    assert!(faults[1].contains("id 4 after Some(5)"), "{faults:?}");
    assert!(faults[2].contains("no such subscription"), "{faults:?}");
    assert!(faults[3].contains("without integer id"), "{faults:?}");
    assert_eq!(ha.conn(0).ids, [5, 6, 7]);
}

#[tokio::test]
async fn home_assistant_gates_on_auth() {
    let ha = FakeHomeAssistant::start(TOKEN).await;
    // A command before auth: auth_invalid, close, and a fault.
    let mut early = connect_ok(&ha.url()).await;
    recv(&mut early).await;
    send(&mut early, json!({"id": 1, "type": "ping"})).await;
    let invalid = recv(&mut early).await;
    assert_eq!(invalid["type"], "auth_invalid", "{invalid}");
    assert!(matches!(next_message(&mut early).await, Message::Close(_)));
    assert_eq!(ha.faults().len(), 1, "{:?}", ha.faults());
    assert!(!ha.conn(0).authenticated);

    // A wrong token: auth_invalid and close, but the client broke no rule.
    let mut wrong = connect_ok(&ha.url()).await;
    recv(&mut wrong).await;
    send(&mut wrong, json!({"type": "auth", "access_token": "nope"})).await;
    assert_eq!(
        recv(&mut wrong).await,
        json!({"type": "auth_invalid", "message": "Invalid access token or password"})
    );
    assert!(matches!(next_message(&mut wrong).await, Message::Close(_)));
    assert!(ha.conn(1).auth_rejected);
    assert_eq!(ha.faults().len(), 1);
}

#[tokio::test]
async fn home_assistant_subscriptions_and_ids_die_with_the_connection() {
    let ha = FakeHomeAssistant::start(TOKEN).await;
    let mut first = authenticated(&ha).await;
    let subscribe = json!({"id": 1, "type": "subscribe_events", "event_type": "state_changed"});
    send(&mut first, subscribe.clone()).await;
    recv(&mut first).await;
    ha.wait_subscribed(0, "state_changed", PROMPT)
        .await
        .expect("subscribed");
    assert_eq!(ha.drop_all().await, 1);
    let after = with_timeout(PROMPT, first.next()).await;
    assert!(matches!(after, None | Some(Err(_))), "got {after:?}");
    ha.wait_until(PROMPT, "connection 0 ended", |c| !c[0].open)
        .await
        .expect("ended");
    assert_eq!(ha.fire("state_changed", json!({})).await, 0);
    assert!(ha.conn(0).subscriptions.is_empty());

    // Ids start again on a new connection.
    let mut second = authenticated(&ha).await;
    send(&mut second, subscribe).await;
    assert_eq!(recv(&mut second).await, success(1, Value::Null));
    ha.wait_subscribed(1, "state_changed", PROMPT)
        .await
        .expect("subscribed again");
    assert_eq!(ha.fire("state_changed", json!({})).await, 1);
    assert_eq!(recv(&mut second).await["id"], 1);
    assert_eq!(ha.faults(), Vec::<String>::new());
}
