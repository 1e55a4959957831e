//! Requests from every host of a fleet through the leader's one connection
//! (`src/cluster/calls.rs`), against the fake JSON-RPC node that enforces JSON-RPC 2.0 (an id
//! in flight is never reused on a connection) and records every id it saw.

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use ws_sidecar::cluster::slot::Role;
use ws_sidecar::proto;

use crate::support::daemon::TestDaemon;
use crate::support::jsonrpc::{next_reply, request, FakeNode};
use crate::support::nats::NatsServer;

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(20);

async fn host(server: &NatsServer, up: &FakeNode, name: &str) -> TestDaemon {
    let toml = format!(
        "[endpoints.node]\nurl = \"{}\"\npreset = \"jsonrpc\"\nbackoff = {{ initial = \"10ms\", max = \"40ms\", min_delay = \"10ms\" }}\n",
        up.url()
    );
    crate::clustered_daemon(server, &toml, "node", name).await
}

/// Apps on the leader and on a follower, all using ids 0..50: every reply reaches the app
/// that asked, with its own id, and the node saw one connection with unique ids.
#[tokio::test(flavor = "multi_thread")]
async fn apps_on_every_host_get_their_own_replies_through_one_connection() {
    let Some(server) = NatsServer::start("apps_on_every_host_get_their_own_replies").await else {
        return;
    };
    let up = FakeNode::start().await;
    let a = host(&server, &up, "host-a").await;
    crate::wait_role(&a, "node", Role::Leader).await;
    let b = host(&server, &up, "host-b").await;
    crate::wait_role(&b, "node", Role::Follower).await;
    let mut apps = Vec::new();
    for (app, d) in [(0u64, &a), (1, &b), (2, &b)] {
        let c = d.grpc().await;
        apps.push(tokio::spawn(async move {
            let calls = (0..50u64).map(|i| {
                let mut c = c.clone();
                async move {
                    let body = json!({"jsonrpc": "2.0", "id": i, "method": "echo",
                                      "params": [{"app": app, "n": i}, (i * 7 + app) % 20]});
                    let reply = request(&mut c, "node", body).await.expect("a reply");
                    assert_eq!(reply["id"], json!(i), "the app's own id: {reply}");
                    assert_eq!(reply["result"][0], json!({"app": app, "n": i}));
                }
            });
            futures_util::future::join_all(calls).await;
        }));
    }
    for t in apps {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("replies in time")
            .expect("app task");
    }
    assert_eq!(up.connections(), 1, "only the leader connects");
    assert_eq!(up.ids(0).len(), 150, "one request each");
    assert_eq!(up.faults(), Vec::<String>::new());
    assert_eq!(up.id_order_faults(0), Vec::<String>::new());
    assert_eq!(
        a.endpoint("node").share.in_flight(),
        0,
        "nothing left waiting"
    );
    // A confirmed publish would wait in one leader's memory: refused, saying what to use.
    let refused = b
        .grpc()
        .await
        .publish(proto::PublishRequest {
            endpoint: "node".into(),
            data: json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction"})
                .to_string()
                .into(),
            wait: proto::Wait::Confirmed as i32,
            ..Default::default()
        })
        .await
        .expect_err("wait = CONFIRMED on a clustered endpoint");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("wait = CONFIRMED") && refused.message().contains("request"),
        "{}",
        refused.message()
    );
    a.stop().await;
    b.stop().await;
}

/// A follower's app opens an `eth_subscribe` stream: it gets the heads; when it leaves, the
/// leader unsubscribes it upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_followers_stream_runs_on_the_leader_and_ends_when_its_app_leaves() {
    let Some(server) = NatsServer::start("a_followers_stream_runs_on_the_leader").await else {
        return;
    };
    let up = FakeNode::start().await;
    let a = host(&server, &up, "host-a").await;
    crate::wait_role(&a, "node", Role::Leader).await;
    let b = host(&server, &up, "host-b").await;
    crate::wait_role(&b, "node", Role::Follower).await;
    let mut c = b.grpc().await;
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
    let first = next_reply(&mut stream, WAIT).await;
    assert_eq!(first["id"], "mine");
    let sub_id = first["result"]
        .as_str()
        .expect("a subscription id")
        .to_owned();
    for _ in 0..3 {
        let n = up.new_head().await;
        let head = next_reply(&mut stream, WAIT).await;
        assert_eq!(head["params"]["subscription"], sub_id.as_str());
        assert_eq!(head["params"]["result"]["number"], format!("{n:#x}"));
    }
    drop(stream);
    up.wait_subscriptions("newHeads", 0, WAIT)
        .await
        .expect("eth_unsubscribe sent by the leader once the follower's app left");
    assert_eq!(up.faults(), Vec::<String>::new());
    a.stop().await;
    b.stop().await;
}

/// Requests a follower's apps have in flight when the leader stops fail with UNAVAILABLE
/// (never another request's reply); the next one is answered by the new leader.
#[tokio::test(flavor = "multi_thread")]
async fn requests_in_flight_at_a_failover_fail_unavailable_and_the_next_is_answered() {
    let Some(server) = NatsServer::start("requests_in_flight_at_a_failover").await else {
        return;
    };
    let up = FakeNode::start().await;
    let a = host(&server, &up, "host-a").await;
    crate::wait_role(&a, "node", Role::Leader).await;
    let b = host(&server, &up, "host-b").await;
    crate::wait_role(&b, "node", Role::Follower).await;
    let c = b.grpc().await;
    let waiting: Vec<_> = (0..5u64)
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
    up.wait_calls("slow", 5, WAIT).await.expect("all sent");
    a.stop().await;
    for w in waiting {
        let r = tokio::time::timeout(WAIT, w)
            .await
            .expect("ends in time")
            .expect("task");
        let e = r.expect_err("no reply to a request whose leader stopped");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("leader"),
            "whose words: {}",
            e.message()
        );
    }
    crate::wait_role(&b, "node", Role::Leader).await;
    let mut c = c.clone();
    let reply = request(
        &mut c,
        "node",
        json!({"jsonrpc": "2.0", "id": "x", "method": "eth_blockNumber"}),
    )
    .await
    .expect("answered by the new leader");
    assert_eq!(reply["id"], "x");
    assert_eq!(up.faults(), Vec::<String>::new());
    b.stop().await;
}

/// A host that asked for a stream and died (no cancel, no more `alive`) leaves nothing behind:
/// the leader forgets the request after `SILENCE` lease TTLs and unsubscribes it upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_asking_host_died_is_ended_by_the_leader() {
    let Some(server) = NatsServer::start("a_stream_whose_asking_host_died").await else {
        return;
    };
    let up = FakeNode::start().await;
    let a = host(&server, &up, "host-a").await;
    crate::wait_role(&a, "node", Role::Leader).await;
    // The asking host, speaking the protocol by hand.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("inbox");
    let mut h = async_nats::HeaderMap::new();
    h.insert("Ws-Sidecar-Call", "request");
    h.insert("Ws-Sidecar-Stream", "1");
    let body = json!({"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]});
    client
        .publish_with_reply_and_headers(
            ws_sidecar::cluster::calls::subject("node"),
            inbox,
            h,
            body.to_string().into(),
        )
        .await
        .expect("sent");
    let accepted = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut replies))
        .await
        .expect("an answer in time")
        .expect("inbox open");
    let kind = accepted
        .headers
        .as_ref()
        .and_then(|h| h.get("Ws-Sidecar-Call"));
    assert_eq!(kind.map(|v| v.as_str()), Some("accepted"));
    up.wait_subscriptions("newHeads", 1, WAIT)
        .await
        .expect("subscribed upstream for the asking host");
    drop(replies);
    drop(client);
    up.wait_subscriptions("newHeads", 0, WAIT)
        .await
        .expect("unsubscribed once the asking host went silent");
    a.stop().await;
}
