//! The fake JSON-RPC node answers per JSON-RPC 2.0 and geth pub/sub, and catches an id reused
//! while in flight.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::support::jsonrpc::FakeNode;
use super::{connect_ok, next_message, Client, PROMPT};

async fn send(client: &mut Client, v: Value) {
    client
        .send(Message::text(v.to_string()))
        .await
        .expect("client sends");
}

async fn next_json(client: &mut Client) -> Value {
    match next_message(client).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("the node sends JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

fn req(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test]
async fn jsonrpc_node_answers_requests_and_streams_new_heads() {
    let node = FakeNode::start().await;
    let mut client = connect_ok(&node.url()).await;
    send(&mut client, req(json!(1), "echo", json!(["late", 300]))).await;
    send(&mut client, req(json!(2), "echo", json!(["early"]))).await;
    assert_eq!(
        next_json(&mut client).await["id"],
        2,
        "replies come out of order"
    );
    let late = next_json(&mut client).await;
    assert_eq!(
        late,
        json!({"jsonrpc": "2.0", "id": 1, "result": ["late", 300]})
    );
    send(&mut client, req(json!("s-3"), "eth_blockNumber", json!([]))).await;
    assert_eq!(next_json(&mut client).await["result"], "0x100");
    send(&mut client, req(json!(4), "nope", json!([]))).await;
    assert_eq!(next_json(&mut client).await["error"]["code"], -32601);

    send(
        &mut client,
        req(json!(5), "eth_subscribe", json!(["newHeads"])),
    )
    .await;
    let sub = next_json(&mut client).await["result"].clone();
    assert!(
        sub.as_str()
            .is_some_and(|s| s.starts_with("0x") && s.len() == 34),
        "{sub}"
    );
    node.wait_subscriptions("newHeads", 1, PROMPT)
        .await
        .expect("live");
    assert_eq!(node.new_head().await, 0x101);
    let note = next_json(&mut client).await;
    assert_eq!(note["method"], "eth_subscription");
    assert_eq!(note["params"]["subscription"], sub);
    assert_eq!(note["params"]["result"]["number"], "0x101");

    send(&mut client, req(json!(6), "eth_unsubscribe", json!([sub]))).await;
    assert_eq!(next_json(&mut client).await["result"], true);
    assert!(node.subscriptions(0).is_empty());
    // A batch: replies in an array, the notification (no id) left out.
    send(
        &mut client,
        json!([req(json!(7), "echo", json!([1])), {"jsonrpc": "2.0", "method": "echo"}]),
    )
    .await;
    let replies = next_json(&mut client).await;
    assert_eq!(replies, json!([{"jsonrpc": "2.0", "id": 7, "result": [1]}]));
    assert_eq!(node.faults(), Vec::<String>::new());
    assert_eq!(node.id_order_faults(0), Vec::<String>::new());
    assert_eq!(node.ids(0).len(), 7);
}

#[tokio::test]
async fn jsonrpc_node_records_breaches() {
    let node = FakeNode::start().await;
    let mut client = connect_ok(&node.url()).await;
    send(&mut client, req(json!(7), "slow", json!([]))).await;
    send(&mut client, req(json!(7), "echo", json!([]))).await;
    assert_eq!(next_json(&mut client).await["id"], 7);
    send(
        &mut client,
        json!({"jsonrpc": "1.0", "id": 8, "method": "echo"}),
    )
    .await;
    let invalid = next_json(&mut client).await;
    assert_eq!(
        (invalid["id"].clone(), invalid["error"]["code"].clone()),
        (Value::Null, json!(-32600))
    );
    client
        .send(Message::text("{oops"))
        .await
        .expect("client sends");
    assert_eq!(next_json(&mut client).await["error"]["code"], -32700);
    send(
        &mut client,
        req(json!(9), "eth_unsubscribe", json!(["0x1"])),
    )
    .await;
    assert_eq!(next_json(&mut client).await["error"]["code"], -32000);
    let faults = node.faults();
    assert_eq!(faults.len(), 4, "{faults:?}");
    assert!(
        faults[0].contains("id 7 reused while in flight"),
        "{faults:?}"
    );
    assert!(!node.id_order_faults(0).is_empty(), "7 came twice");
}

#[tokio::test]
async fn jsonrpc_subscriptions_die_with_their_connection() {
    let node = FakeNode::start().await;
    let mut first = connect_ok(&node.url()).await;
    send(
        &mut first,
        req(json!(1), "eth_subscribe", json!(["newHeads"])),
    )
    .await;
    let old = next_json(&mut first).await["result"].clone();
    assert_eq!(node.drop_all().await, 1);
    node.wait_subscriptions("newHeads", 0, PROMPT)
        .await
        .expect("none");
    let mut second = connect_ok(&node.url()).await;
    send(
        &mut second,
        req(json!(1), "eth_subscribe", json!(["newHeads"])),
    )
    .await;
    let new = next_json(&mut second).await["result"].clone();
    assert_ne!(old, new, "a new connection gets a new subscription id");
    send(
        &mut second,
        req(
            json!(2),
            "eth_subscribe",
            json!(["logs", {"address": "0xAB"}]),
        ),
    )
    .await;
    next_json(&mut second).await;
    node.wait_subscriptions("logs", 1, PROMPT)
        .await
        .expect("live");
    node.new_head().await;
    assert_eq!(next_json(&mut second).await["params"]["subscription"], new);
    assert_eq!(
        node.new_log(json!({"address": "0xab", "data": "0x"})).await,
        1
    );
    assert_eq!(node.new_log(json!({"address": "0xcd"})).await, 0);
    assert_eq!(node.connections(), 2);
    assert_eq!(node.subscriptions(0).len(), 0);
    assert_eq!(node.faults(), Vec::<String>::new());
}
