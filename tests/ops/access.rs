//! Access lists by peer credentials: a uid that is not listed is refused on gRPC and NDJSON,
//! a listed one is served, and TCP is refused wherever a list is set.

use serde_json::json;
use tonic::Code;
use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

use crate::support::daemon::{next_event, start_daemon, subscribe};
use crate::support::{FakeUpstream, Reply};
use crate::{my_ids, T};

fn publish(endpoint: &str) -> proto::PublishRequest {
    proto::PublishRequest {
        endpoint: endpoint.into(),
        data: "hi".into(),
        ..Default::default()
    }
}

fn sub(endpoint: &str) -> proto::SubscribeRequest {
    proto::SubscribeRequest {
        endpoint: endpoint.into(),
        from_seq: None,
        filters: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unlisted_uids_and_tcp_peers_are_refused() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (uid, gid) = my_ids();
    let other = uid + 4242;
    let url = up.url("/");
    let d = start_daemon(&format!(
        "[grpc]\nlisten = [\"127.0.0.1:0\"]\n\
         [endpoints.locked]\nurl = \"{url}\"\n\
         [endpoints.locked.access]\nsubscribe = [\"uid:{other}\"]\npublish = [\"uid:{other}\"]\n\
         [endpoints.mine]\nurl = \"{url}\"\n\
         [endpoints.mine.access]\nsubscribe = [\"uid:{uid}\"]\npublish = [\"gid:{gid}\"]\n\
         [endpoints.open]\nurl = \"{url}\"\n"
    ))
    .await;

    // gRPC over the Unix socket.
    let mut c = d.grpc().await;
    let denied = |r: Result<_, tonic::Status>, what: &str| match r {
        Ok(_) => panic!("{what} was allowed"),
        Err(s) => {
            assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
            assert!(s.message().contains(&format!("uid {uid}")), "{s:?}");
        }
    };
    denied(c.subscribe(sub("locked")).await.map(|_| ()), "subscribe");
    denied(c.publish(publish("locked")).await.map(|_| ()), "publish");
    let reconnect = proto::ReconnectRequest {
        endpoint: "locked".into(),
    };
    denied(c.reconnect(reconnect).await.map(|_| ()), "reconnect");
    // Status stays open to anyone who reaches the socket.
    let all = c
        .get_status(proto::GetStatusRequest { endpoint: None })
        .await
        .expect("status");
    assert_eq!(all.into_inner().endpoints.len(), 3);
    // Listed by uid (subscribe) and by gid (publish): served.
    let mut s = subscribe(&mut c, "mine", None).await;
    next_event(&mut s, T).await;
    c.publish(publish("mine"))
        .await
        .expect("publish allowed by gid");

    // NDJSON over its Unix socket.
    let mut n = d.ndjson().await;
    n.send(json!({"op": "subscribe", "endpoint": "locked"}))
        .await;
    let e = n.recv(T).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "permission_denied", "{e}");
    n.send(json!({"op": "publish", "endpoint": "locked", "data": "x", "id": "p1"}))
        .await;
    let e = n.recv(T).await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("permission_denied"), &json!("p1")),
        "{e}"
    );
    n.send(json!({"op": "publish", "endpoint": "mine", "data": "x", "id": "p2"}))
        .await;
    let ack = n.recv(T).await;
    assert_eq!(
        (&ack["type"], &ack["id"]),
        (&json!("ack"), &json!("p2")),
        "{ack}"
    );
    n.send(json!({"op": "subscribe", "endpoint": "mine"})).await;
    let st = n.recv(T).await;
    assert_eq!(st["type"], "state", "{st}");

    // TCP has no peer credentials: refused where a list is set, even for a listed uid.
    let tcp = d.grpc_tcp.expect("tcp listener");
    let mut t = client::connect(&Target::Tcp(tcp.to_string()))
        .await
        .expect("tcp connect");
    let s = t
        .subscribe(sub("mine"))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("Unix socket"), "{s:?}");
    let s = t.publish(publish("mine")).await.expect_err("refused");
    assert_eq!(s.code(), Code::PermissionDenied);
    let mut open = subscribe(&mut t, "open", None).await;
    next_event(&mut open, T).await;
    t.publish(publish("open"))
        .await
        .expect("open endpoint over TCP");
    d.stop().await;
}
