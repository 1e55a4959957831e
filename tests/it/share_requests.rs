//! Requests with replies (issue 14) against a fake JSON-RPC node that enforces JSON-RPC 2.0
//! (an id in flight is never reused on a connection) and records every id it saw: apps that
//! choose colliding ids each get their own replies, with their own ids; a drop fails what was
//! in flight (or resends it where requests are idempotent); an `eth_subscribe` stream outlives
//! a reconnect under the subscription id the app first got.

use std::time::Duration;

use serde_json::{json, Value};
use tonic::Code;
use ws_sidecar::proto;

use crate::support::daemon::start_daemon;
use crate::support::jsonrpc::{next_reply, request, FakeNode};

const T: Duration = Duration::from_secs(20);

fn config(url: &str, extra: &str) -> String {
    format!(
        r#"
[endpoints.node]
url = "{url}"
preset = "jsonrpc"
backoff = {{ initial = "10ms", max = "40ms", min_delay = "10ms" }}
{extra}
"#
    )
}

/// 1,000 concurrent requests from 10 apps, every app using ids 0..100: each reply reaches the
/// app that asked, with its own id; the node saw unique, increasing ids and no breach.
#[tokio::test]
async fn colliding_ids_from_ten_apps_each_get_their_own_replies() {
    let up = FakeNode::start().await;
    let d = start_daemon(&config(&up.url(), "")).await;
    let mut apps = Vec::new();
    for app in 0..10u64 {
        let c = d.grpc().await;
        apps.push(tokio::spawn(async move {
            let calls = (0..100u64).map(|i| {
                let mut c = c.clone();
                async move {
                    // Replies come back out of order: each waits 0-19 ms at the node.
                    let body = json!({"jsonrpc": "2.0", "id": i, "method": "echo",
                                      "params": [{"app": app, "n": i}, (i * 7 + app) % 20]});
                    let reply = request(&mut c, "node", body).await.expect("a reply");
                    assert_eq!(reply["id"], json!(i), "the app's own id: {reply}");
                    assert_eq!(
                        reply["result"][0],
                        json!({"app": app, "n": i}),
                        "its own reply"
                    );
                }
            });
            futures_util::future::join_all(calls).await;
        }));
    }
    for a in apps {
        tokio::time::timeout(T, a)
            .await
            .expect("replies in time")
            .expect("app task");
    }
    assert_eq!(up.faults(), Vec::<String>::new());
    assert_eq!(up.connections(), 1);
    let ids = up.ids(0);
    assert_eq!(ids.len(), 1000, "one request each");
    assert_eq!(up.id_order_faults(0), Vec::<String>::new());
    let share = &d.endpoint("node").share;
    assert_eq!(share.in_flight(), 0, "nothing left waiting");
}

/// Requests in flight when the connection drops end with UNAVAILABLE, never with another
/// request's reply; one asked after the reconnect is answered.
#[tokio::test]
async fn a_drop_fails_requests_in_flight_with_unavailable() {
    let up = FakeNode::start().await;
    let d = start_daemon(&config(&up.url(), "")).await;
    let c = d.grpc().await;
    let waiting: Vec<_> = (0..20u64)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                request(
                    &mut c,
                    "node",
                    json!({"jsonrpc": "2.0", "id": 1, "method": "slow", "params": [i]}),
                )
                .await
            })
        })
        .collect();
    up.wait_calls("slow", 20, T).await.expect("all sent");
    up.drop_all().await;
    for w in waiting {
        let r = tokio::time::timeout(T, w)
            .await
            .expect("ends in time")
            .expect("task");
        let e = r.expect_err("no reply to a request whose connection dropped");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    let mut c = c.clone();
    let reply = request(
        &mut c,
        "node",
        json!({"jsonrpc": "2.0", "id": "x", "method": "eth_blockNumber"}),
    )
    .await
    .expect("answered on the new connection");
    assert_eq!(reply["id"], "x");
    assert!(reply["result"].is_string(), "{reply}");
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// With `requests.idempotent = true`, a request whose connection dropped is sent again on the
/// next one and answered there.
#[tokio::test]
async fn idempotent_requests_are_resent_after_a_drop() {
    let up = FakeNode::start().await;
    let extra = "[endpoints.node.requests]\nidempotent = true";
    let d = start_daemon(&config(&up.url(), extra)).await;
    let mut c = d.grpc().await;
    let asked = tokio::spawn(async move {
        // The node answers after 2 s: long after the drop below.
        request(
            &mut c,
            "node",
            json!({"jsonrpc": "2.0", "id": 7, "method": "echo", "params": ["hi", 2000]}),
        )
        .await
    });
    up.wait_calls("echo", 1, T).await.expect("sent");
    up.drop_all().await;
    up.wait_calls("echo", 2, T)
        .await
        .expect("sent again on the new connection");
    let reply = tokio::time::timeout(T, asked)
        .await
        .expect("in time")
        .expect("task")
        .expect("answered");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["result"], json!(["hi", 2000]));
    let stats = &d.endpoint("node").share.stats;
    assert_eq!(stats.resent.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// No reply within `requests.timeout`: DEADLINE_EXCEEDED, and the late reply (none here) would
/// be nobody's.
#[tokio::test]
async fn a_request_without_a_reply_times_out() {
    let up = FakeNode::start().await;
    let extra = "[endpoints.node.requests]\ntimeout = \"300ms\"";
    let d = start_daemon(&config(&up.url(), extra)).await;
    let mut c = d.grpc().await;
    let e = request(
        &mut c,
        "node",
        json!({"jsonrpc": "2.0", "id": 1, "method": "slow"}),
    )
    .await
    .expect_err("no reply");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert_eq!(d.endpoint("node").share.in_flight(), 0, "forgotten");
}

/// `eth_subscribe` as a stream: after a reconnect the node names the subscription anew, and
/// the app keeps receiving heads under the id it first got.
#[tokio::test]
async fn eth_subscribe_survives_a_reconnect_under_its_first_id() {
    let up = FakeNode::start().await;
    let d = start_daemon(&config(&up.url(), "")).await;
    let mut c = d.grpc().await;
    let mut stream = c
        .request_stream(proto::UpstreamRequest {
            endpoint: "node".into(),
            data:
                json!({"jsonrpc":"2.0","id":"mine","method":"eth_subscribe","params":["newHeads"]})
                    .to_string()
                    .into(),
        })
        .await
        .expect("accepted")
        .into_inner();
    let first = next_reply(&mut stream, T).await;
    assert_eq!(first["id"], "mine");
    let sub_id = first["result"]
        .as_str()
        .expect("a subscription id")
        .to_owned();
    let n = up.new_head().await;
    let head = next_reply(&mut stream, T).await;
    assert_eq!(head["params"]["subscription"], sub_id.as_str());
    assert_eq!(head["params"]["result"]["number"], format!("{n:#x}"));

    up.drop_all().await;
    up.wait_subscriptions("newHeads", 1, T)
        .await
        .expect("subscribed again on the new connection");
    let renamed = up.subscriptions(1);
    assert_ne!(renamed[0].id, sub_id, "the node gave a new id");
    let n = up.new_head().await;
    let head = next_reply(&mut stream, T).await;
    assert_eq!(
        head["params"]["subscription"],
        sub_id.as_str(),
        "the app still sees its first id"
    );
    assert_eq!(head["params"]["result"]["number"], format!("{n:#x}"));

    // The app leaves: the node is told.
    drop(stream);
    up.wait_subscriptions("newHeads", 0, T)
        .await
        .expect("eth_unsubscribe sent for the current id");
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// The same operations over NDJSON: `request` lines get `reply` lines under the line's id with
/// the app's own id in the data; a stream (`"stream": true`) sends reply lines until it is
/// cancelled, and `cancel` ends it upstream; an error comes back as an `error` line.
#[tokio::test]
async fn ndjson_requests_streams_and_cancel() {
    let up = FakeNode::start().await;
    let extra = "[endpoints.node.requests]\ntimeout = \"500ms\"";
    let d = start_daemon(&config(&up.url(), extra)).await;
    let mut n = d.ndjson().await;
    n.send(json!({"op": "request", "endpoint": "node", "id": "my-1",
                  "data": {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["a"]}}))
        .await;
    // `data` may also be JSON text, as `send` reads it.
    n.send(json!({"op": "request", "endpoint": "node", "id": "my-2",
                  "data": r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":["b"]}"#}))
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(n.recv_type("reply", T).await);
    }
    got.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0]["id"], "my-1");
    assert_eq!(got[0]["data"]["id"], 1, "the app's own id inside");
    assert_eq!(got[0]["data"]["result"], json!(["a"]));
    assert_eq!(got[0]["end"], true);
    assert_eq!(got[1]["data"]["result"], json!(["b"]));

    n.send(
        json!({"op": "request", "endpoint": "node", "id": "heads", "stream": true,
                  "data": {"jsonrpc": "2.0", "id": 9, "method": "eth_subscribe",
                           "params": ["newHeads"]}}),
    )
    .await;
    let opened = n.recv_type("reply", T).await;
    assert_eq!(opened["id"], "heads");
    assert_eq!(opened["end"], false);
    up.new_head().await;
    let head = n.recv_type("reply", T).await;
    assert_eq!(
        head["data"]["params"]["subscription"],
        opened["data"]["result"]
    );
    n.send(json!({"op": "cancel", "id": "heads"})).await;
    assert_eq!(n.recv_type("cancelled", T).await["id"], "heads");
    up.wait_subscriptions("newHeads", 0, T)
        .await
        .expect("eth_unsubscribe sent");

    n.send(json!({"op": "request", "endpoint": "node", "id": 3,
                  "data": {"jsonrpc": "2.0", "id": 1, "method": "slow"}}))
        .await;
    let e = n.recv_type("error", T).await;
    assert_eq!(e["id"], 3);
    assert_eq!(e["code"], "deadline_exceeded");
    n.send(json!({"op": "request", "endpoint": "nope", "id": 4, "data": {}}))
        .await;
    assert_eq!(n.recv_type("error", T).await["code"], "not_found");
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// A request with no place for the daemon's id (`requests.id = "/id"` in an array) is refused
/// at once with INVALID_ARGUMENT, as is one that is not JSON; nothing reaches the node.
#[tokio::test]
async fn a_request_without_a_place_for_the_id_is_refused() {
    let up = FakeNode::start().await;
    let d = start_daemon(&config(&up.url(), "")).await;
    let mut c = d.grpc().await;
    for body in [&b"[1,2]"[..], b"not json", b"\"text\""] {
        let e = c
            .request(proto::UpstreamRequest {
                endpoint: "node".into(),
                data: body.to_vec().into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // The node is asked something that works, so its frames can be counted after the refusals.
    request(
        &mut c,
        "node",
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}),
    )
    .await
    .expect("answered");
    assert_eq!(
        up.ids(0).len(),
        1,
        "only the valid request reached the node"
    );
}

/// `requests.stream.opens` (the jsonrpc preset: `eth_subscribe`): a plain request that would open
/// a stream is refused (nothing would ever end it upstream); a stream request that opens none gets
/// its one reply and ends, and nothing is cancelled; an error reply ends a stream.
#[tokio::test]
async fn requests_that_open_streams_are_told_apart() {
    let up = FakeNode::start().await;
    let d = start_daemon(&config(&up.url(), "")).await;
    let mut c = d.grpc().await;
    let e = request(
        &mut c,
        "node",
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}),
    )
    .await
    .expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("RequestStream"), "{e:?}");

    let stream = |body: Value| {
        let mut c = c.clone();
        async move {
            c.request_stream(proto::UpstreamRequest {
                endpoint: "node".into(),
                data: body.to_string().into(),
            })
            .await
            .expect("accepted")
            .into_inner()
        }
    };
    let mut one = stream(json!({"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber"})).await;
    let r = tokio::time::timeout(T, one.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("a reply");
    assert!(r.end, "one reply, the last");
    let after = tokio::time::timeout(T, one.message())
        .await
        .expect("in time");
    assert!(matches!(after, Ok(None)), "the stream ended: {after:?}");

    let mut refused = stream(json!({"jsonrpc": "2.0", "id": 3, "method": "eth_subscribe",
                                    "params": ["noSuchKind"]}))
    .await;
    let r = tokio::time::timeout(T, refused.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("a reply");
    assert!(r.error && r.end, "the node's error ends the stream: {r:?}");
    let frames: Vec<Value> = up.frames(0);
    assert!(
        !frames.iter().any(|f| f["method"] == "eth_unsubscribe"),
        "nothing to cancel: {frames:?}"
    );
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// A request that times out while the endpoint has no connection says it was never sent.
#[tokio::test]
async fn a_timeout_says_when_the_request_was_never_sent() {
    let toml = config(
        "ws://127.0.0.1:1/",
        "[endpoints.node.requests]\ntimeout = \"300ms\"",
    );
    let d = start_daemon(&toml).await;
    let mut c = d.grpc().await;
    let e = request(
        &mut c,
        "node",
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}),
    )
    .await
    .expect_err("no connection");
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("never sent"), "{e:?}");
}
