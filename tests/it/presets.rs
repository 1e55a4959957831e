//! Presets (issue 14) end to end against fakes written from each protocol's specification and
//! enforcing it: `graphql-transport-ws` (operation ids the daemon assigns, so apps choosing the
//! same id never collide; `complete` for a cancelled operation only; a query's trailing
//! `complete` kept from the log; streams subscribed again after a drop, once acknowledged) and
//! `phoenix` (one `phx_join` per topic however many apps hold it, broadcasts to the topic's
//! holders, pushes carrying the topic's join_ref, refused joins, `phx_leave` with the join's
//! join_ref, heartbeats within the server's timeout).

use std::time::Duration;

use serde_json::{json, Value};
use tonic::transport::Channel;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto::{self, event::Event as Ev, sidecar_client::SidecarClient};

use crate::support::daemon::{
    attach, next_event, next_message, start_daemon, subscribe, TestDaemon,
};
use crate::support::graphql_ws::FakeGraphql;
use crate::support::phoenix::FakePhoenix;

const T: Duration = Duration::from_secs(20);

type Client = SidecarClient<Channel>;

// ---------------------------------------------------------------------------------------------
// graphql-transport-ws

async fn graphql_daemon(up: &FakeGraphql) -> TestDaemon {
    start_daemon(&format!(
        r#"
[endpoints.gql]
url = "{}"
preset = "graphql-transport-ws"
backoff = {{ initial = "10ms", max = "40ms", min_delay = "10ms" }}
"#,
        up.url()
    ))
    .await
}

fn gql_subscribe(id: &str, query: &str) -> Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": query}})
}

fn upstream_request(endpoint: &str, body: &Value) -> proto::UpstreamRequest {
    proto::UpstreamRequest {
        endpoint: endpoint.into(),
        data: body.to_string().into(),
    }
}

async fn open_stream(c: &mut Client, body: &Value) -> tonic::Streaming<proto::UpstreamReply> {
    c.request_stream(upstream_request("gql", body))
        .await
        .expect("stream accepted")
        .into_inner()
}

/// The next reply of a stream, as JSON, with its reply flags.
async fn next_reply(
    s: &mut tonic::Streaming<proto::UpstreamReply>,
) -> (Value, proto::UpstreamReply) {
    let r = tokio::time::timeout(T, s.message())
        .await
        .expect("a reply in time")
        .expect("stream ok")
        .expect("stream open");
    let v = serde_json::from_slice::<Value>(&r.data).expect("a JSON reply");
    (v, r)
}

/// Waits until the fake's connection `index` runs `n` ticks streams; returns their ids.
async fn gql_streams(up: &FakeGraphql, index: usize, n: usize) -> Vec<String> {
    let seen = up
        .journal()
        .wait(T, &format!("{n} ticks stream(s) on conn {index}"), |s| {
            s.conns
                .get(index)
                .is_some_and(|c| c.open && c.state.streams.len() == n)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    seen.conns[index].state.streams.clone()
}

/// Two apps subscribe with the same operation id "1": the server sees two different ids (no
/// 4409), each app gets every tick under its own "1"; one app cancelling completes its own
/// upstream operation only, and the other keeps its ticks.
#[tokio::test]
async fn graphql_same_operation_id_from_two_apps_and_one_cancels() {
    let up = FakeGraphql::start().await;
    let d = graphql_daemon(&up).await;
    let ticks = gql_subscribe("1", "subscription { ticks }");
    let mut ca = d.grpc().await;
    let mut cb = d.grpc().await;
    let mut a = open_stream(&mut ca, &ticks).await;
    let id_a = gql_streams(&up, 0, 1).await.remove(0);
    let mut b = open_stream(&mut cb, &ticks).await;
    let both = gql_streams(&up, 0, 2).await;
    let id_b = both
        .iter()
        .find(|id| **id != id_a)
        .expect("a second, different id")
        .clone();
    assert_eq!(up.subscribe_ids(0), vec![id_a.clone(), id_b.clone()]);

    for _ in 0..3 {
        let n = up.tick().await;
        for s in [&mut a, &mut b] {
            let (v, r) = next_reply(s).await;
            assert_eq!(
                v,
                json!({"id": "1", "type": "next", "payload": {"data": {"ticks": n}}}),
                "each app's own id"
            );
            assert!(!r.error && !r.end, "{r:?}");
        }
    }

    drop(a);
    up.journal()
        .wait(T, "a complete from the client", |s| {
            !s.conns[0].state.completed.is_empty()
        })
        .await
        .expect("complete for the cancelled operation");
    let n = up.tick().await;
    let (v, _) = next_reply(&mut b).await;
    assert_eq!(v["id"], "1");
    assert_eq!(v["payload"]["data"]["ticks"], n, "B keeps its ticks");
    let conn = up.conn(0);
    assert_eq!(conn.completed, vec![id_a], "only A's operation completed");
    assert_eq!(conn.streams, vec![id_b], "B's still runs");
    assert_eq!(conn.closed_with, None);
    assert_eq!(up.faults(), Vec::<String>::new());
    assert_eq!(up.connections(), 1);
}

/// A subscription sent as a plain `Request` gets its first `next` as the reply, and the daemon
/// then completes it upstream: it would otherwise run for the connection's life, its ticks
/// reaching nobody.
#[tokio::test]
async fn graphql_subscription_sent_as_a_plain_request_is_completed_after_its_reply() {
    let up = FakeGraphql::start().await;
    let d = graphql_daemon(&up).await;
    let mut c = d.grpc().await;
    let ticks = gql_subscribe("only-one", "subscription { ticks }");
    let asked = tokio::spawn(async move { c.request(upstream_request("gql", &ticks)).await });
    let id = gql_streams(&up, 0, 1).await.remove(0);
    up.tick().await;
    let r = tokio::time::timeout(T, asked)
        .await
        .expect("in time")
        .expect("task")
        .expect("a reply")
        .into_inner();
    let v: Value = serde_json::from_slice(&r.data).expect("JSON");
    assert_eq!(v["id"], "only-one");
    up.journal()
        .wait(T, "the subscription completed by the client", |s| {
            s.conns[0].state.completed.contains(&id)
        })
        .await
        .expect("completed upstream after the reply");
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// A query is a unary request: its `next` comes back under the app's id and its trailing
/// `complete` reaches nobody (a plain Subscribe stream sees none of it); a failing query's
/// `error` is a reply flagged as an error. The server's ping is answered with a pong and the
/// pong itself is kept from the log.
#[tokio::test]
async fn graphql_query_and_error_replies_reach_only_the_asker() {
    let up = FakeGraphql::start().await;
    let d = graphql_daemon(&up).await;
    d.wait_state("gql", State::Connected, T).await;
    let mut c = d.grpc().await;
    let mut plain = subscribe(&mut c, "gql", None).await;

    let reply = c
        .request(upstream_request(
            "gql",
            &gql_subscribe("q", "query { one }"),
        ))
        .await
        .expect("a reply")
        .into_inner();
    let v: Value = serde_json::from_slice(&reply.data).expect("JSON");
    assert_eq!(
        v,
        json!({"id": "q", "type": "next", "payload": {"data": {"one": 1}}})
    );
    assert!(!reply.error && reply.end, "{reply:?}");

    let reply = c
        .request(upstream_request(
            "gql",
            &gql_subscribe("b", "query { boom }"),
        ))
        .await
        .expect("an error is a reply")
        .into_inner();
    let v: Value = serde_json::from_slice(&reply.data).expect("JSON");
    assert_eq!(v["id"], "b");
    assert_eq!(v["type"], "error");
    assert_eq!(v["payload"][0]["message"], "boom: the resolver failed");
    assert!(reply.error, "flagged as the upstream's error: {reply:?}");

    // The server answers in order: this reply comes after the first query's `complete`.
    let reply = c
        .request(upstream_request(
            "gql",
            &gql_subscribe("q2", "query { one }"),
        ))
        .await
        .expect("a reply")
        .into_inner();
    let v: Value = serde_json::from_slice(&reply.data).expect("JSON");
    assert_eq!(v["id"], "q2");

    // The server pings; the daemon answers (the preset's rule) and keeps the ping from apps.
    let (_, wire) = up.journal().open_wires().remove(0);
    wire.send_text(r#"{"type":"ping"}"#)
        .await
        .expect("ping sent");
    up.journal()
        .wait(T, "a pong", |s| {
            s.conns[0].frames.iter().any(|f| f["type"] == "pong")
        })
        .await
        .expect("the ping answered");
    wire.send_text(r#"{"marker":1}"#)
        .await
        .expect("marker sent");
    let m = next_message(&mut plain, T).await;
    let first: Value = serde_json::from_slice(&m.data).expect("JSON");
    assert_eq!(
        first,
        json!({"marker": 1}),
        "nothing of the queries or the ping reached the log before it"
    );
    assert_eq!(up.faults(), Vec::<String>::new());
    assert_eq!(d.endpoint("gql").share.in_flight(), 0);
}

/// A drop: the open stream is subscribed again on the new connection, after its
/// `connection_ack`, and its ticks keep arriving under the app's id.
#[tokio::test]
async fn graphql_stream_is_subscribed_again_after_a_drop() {
    let up = FakeGraphql::start().await;
    let d = graphql_daemon(&up).await;
    let mut c = d.grpc().await;
    let mut s = open_stream(&mut c, &gql_subscribe("1", "subscription { ticks }")).await;
    gql_streams(&up, 0, 1).await;
    let n = up.tick().await;
    let (v, _) = next_reply(&mut s).await;
    assert_eq!(v["id"], "1");
    assert_eq!(v["payload"]["data"]["ticks"], n);

    up.drop_all().await;
    gql_streams(&up, 1, 1).await;
    let frames = up.frames(1);
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(
        types.first().copied(),
        Some("connection_init"),
        "the new connection opens first: {frames:?}"
    );
    assert!(up.conn(1).acked);
    for _ in 0..3 {
        let n = up.tick().await;
        let (v, r) = next_reply(&mut s).await;
        assert_eq!(
            v,
            json!({"id": "1", "type": "next", "payload": {"data": {"ticks": n}}})
        );
        assert!(!r.end);
    }
    assert_eq!(up.faults(), Vec::<String>::new());
    assert_eq!(up.connections(), 2);
}

// ---------------------------------------------------------------------------------------------
// phoenix

/// The fake closes a connection that sends no heartbeat within this; the daemon's is set lower.
const PHX_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

async fn phoenix_daemon(up: &FakePhoenix) -> TestDaemon {
    start_daemon(&format!(
        r#"
[endpoints.phx]
url = "{}"
preset = "phoenix"
backoff = {{ initial = "10ms", max = "40ms", min_delay = "10ms" }}
heartbeat = {{ app_ping_interval = "300ms" }}
"#,
        up.url()
    ))
    .await
}

/// Reads an Attach stream until `key` is in `state`; panics on a message or another final
/// state first.
async fn wait_key(
    s: &mut tonic::Streaming<proto::Event>,
    key: &str,
    state: proto::KeyState,
) -> proto::KeyChange {
    loop {
        match next_event(s, T).await {
            Ev::Key(k) if k.key == key && k.state == state as i32 => return k,
            Ev::Key(k) if k.key == key && k.state != proto::KeyState::Pending as i32 => {
                panic!("{key} is {k:?}, not {state:?}")
            }
            Ev::Message(m) => panic!("a message before {key} was {state:?}: {m:?}"),
            _ => continue,
        }
    }
}

/// The next message of an Attach stream, as `(topic, payload)`.
async fn next_broadcast(s: &mut tonic::Streaming<proto::Event>) -> (String, Value) {
    let m = next_message(s, T).await;
    let v: Value = serde_json::from_slice(&m.data).expect("JSON");
    let topic = v[2].as_str().expect("a topic").to_owned();
    (topic, v[4].clone())
}

/// The frames connection 0 received with `event` on `topic`.
fn phx_frames(up: &FakePhoenix, topic: &str, event: &str) -> Vec<Value> {
    up.conn(0)
        .frames
        .into_iter()
        .filter(|f| f[2] == topic && f[3] == event)
        .collect()
}

/// Two apps hold "room:a", one of them "room:b" too: one phx_join per topic; each broadcast
/// reaches exactly the apps holding its topic; the app leaving sends phx_leave for "room:b"
/// only, with the join's join_ref; heartbeats keep the connection past the server's timeout.
#[tokio::test]
async fn phoenix_topics_are_joined_once_and_broadcasts_reach_their_holders() {
    let up = FakePhoenix::start_with_timeout(PHX_HEARTBEAT_TIMEOUT).await;
    let d = phoenix_daemon(&up).await;
    let mut ca = d.grpc().await;
    let mut cb = d.grpc().await;
    let mut a = attach(&mut ca, "phx", &["room:a"]).await;
    let mut b = attach(&mut cb, "phx", &["room:a", "room:b"]).await;
    wait_key(&mut a, "room:a", proto::KeyState::Subscribed).await;
    wait_key(&mut b, "room:a", proto::KeyState::Subscribed).await;
    wait_key(&mut b, "room:b", proto::KeyState::Subscribed).await;
    let mut joins = up.conn(0).joins;
    joins.sort();
    assert_eq!(joins, vec!["room:a", "room:b"], "one join per topic");

    assert_eq!(up.broadcast("room:a", "new_msg", json!({"n": 1})).await, 1);
    assert_eq!(up.broadcast("room:b", "new_msg", json!({"n": 2})).await, 1);
    assert_eq!(up.broadcast("room:a", "new_msg", json!({"n": 3})).await, 1);
    for n in [1, 3] {
        assert_eq!(
            next_broadcast(&mut a).await,
            ("room:a".to_owned(), json!({"n": n})),
            "A holds room:a only"
        );
    }
    for (topic, n) in [("room:a", 1), ("room:b", 2), ("room:a", 3)] {
        assert_eq!(
            next_broadcast(&mut b).await,
            (topic.to_owned(), json!({"n": n}))
        );
    }

    let join_ref = phx_frames(&up, "room:b", "phx_join")[0][0].clone();
    assert!(join_ref.is_string(), "a join_ref: {join_ref}");
    drop(b);
    up.wait_until(T, "room:b left", |c| !c[0].leaves.is_empty())
        .await
        .expect("phx_leave once room:b's last holder left");
    let leaves = phx_frames(&up, "room:b", "phx_leave");
    assert_eq!(leaves.len(), 1);
    assert_eq!(
        leaves[0][0], join_ref,
        "the leave carries the join's join_ref"
    );
    assert_eq!(up.broadcast("room:a", "new_msg", json!({"n": 4})).await, 1);
    assert_eq!(
        next_broadcast(&mut a).await,
        ("room:a".to_owned(), json!({"n": 4})),
        "room:a is still A's"
    );

    // Past the server's 1 s timeout on heartbeats alone.
    up.wait_until(T, "5 heartbeats", |c| c[0].heartbeats >= 5)
        .await
        .expect("heartbeats");
    let conn = up.conn(0);
    assert_eq!(conn.leaves, vec!["room:b"], "room:a is still held");
    assert!(conn.open);
    assert_eq!(up.faults(), Vec::<String>::new());
    assert_eq!(up.connections(), 1);
}

/// A push on a joined topic goes out with the topic's join_ref and a ref of the daemon's; its
/// phx_reply comes back with the app's own ref. A push on a topic nobody holds is refused
/// before it reaches the server.
#[tokio::test]
async fn phoenix_push_carries_the_join_ref_and_its_reply_the_apps_ref() {
    let up = FakePhoenix::start_with_timeout(PHX_HEARTBEAT_TIMEOUT).await;
    let d = phoenix_daemon(&up).await;
    let mut c = d.grpc().await;
    let mut a = attach(&mut c, "phx", &["room:a"]).await;
    wait_key(&mut a, "room:a", proto::KeyState::Subscribed).await;
    let join_ref = phx_frames(&up, "room:a", "phx_join")[0][0].clone();

    let push = json!([null, "my-1", "room:a", "ping", {"x": 1}]);
    let reply = c
        .request(upstream_request("phx", &push))
        .await
        .expect("a reply")
        .into_inner();
    let v: Value = serde_json::from_slice(&reply.data).expect("JSON");
    assert_eq!(
        v,
        json!([join_ref, "my-1", "room:a", "phx_reply",
               {"status": "ok", "response": {"pong": {"x": 1}}}])
    );
    assert!(!reply.error && reply.end, "{reply:?}");
    let sent = phx_frames(&up, "room:a", "ping");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][0], join_ref, "the daemon filled the join_ref");
    assert!(
        sent[0][1].is_string() && sent[0][1] != "my-1",
        "{}",
        sent[0]
    );

    let e = c
        .request(upstream_request(
            "phx",
            &json!([null, "my-2", "room:z", "ping", {}]),
        ))
        .await
        .expect_err("room:z is not joined");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(phx_frames(&up, "room:z", "ping").is_empty());
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// The join of a `private:` topic is refused: its holder sees REFUSED with the server's
/// answer, and its other topic still works.
#[tokio::test]
async fn phoenix_refused_join_leaves_the_stream_working() {
    let up = FakePhoenix::start_with_timeout(PHX_HEARTBEAT_TIMEOUT).await;
    let d = phoenix_daemon(&up).await;
    let mut c = d.grpc().await;
    let mut s = attach(&mut c, "phx", &["private:secret", "room:c"]).await;
    let mut refused = None;
    let mut subscribed = false;
    while refused.is_none() || !subscribed {
        match next_event(&mut s, T).await {
            Ev::Key(k) if k.state == proto::KeyState::Pending as i32 => {}
            Ev::Key(k)
                if k.key == "private:secret" && k.state == proto::KeyState::Refused as i32 =>
            {
                refused = Some(k)
            }
            Ev::Key(k) if k.key == "room:c" && k.state == proto::KeyState::Subscribed as i32 => {
                subscribed = true
            }
            Ev::Key(k) => panic!("unexpected {k:?}"),
            Ev::Message(m) => panic!("a message before the keys settled: {m:?}"),
            _ => {}
        }
    }
    let k = refused.expect("refused");
    assert!(
        k.reason.contains("unauthorized"),
        "the server's answer: {k:?}"
    );
    assert_eq!(up.broadcast("room:c", "new_msg", json!({"n": 1})).await, 1);
    assert_eq!(
        next_broadcast(&mut s).await,
        ("room:c".to_owned(), json!({"n": 1}))
    );
    assert_eq!(up.conn(0).refused, vec!["private:secret"]);
    let keys = d.endpoint("phx").share.keys();
    let states: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k.key.as_str(), k.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![("private:secret", "refused"), ("room:c", "subscribed")]
    );
    assert_eq!(up.faults(), Vec::<String>::new());
}
