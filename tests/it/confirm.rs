//! Confirmed publishes (issue 14) against the fake JSON-RPC node: a publish with
//! `wait = CONFIRMED` returns once the node answered it, survives a connection reset right
//! after its write and a daemon restart (it is sent again, and answered once), and is refused
//! clearly where nothing could confirm it.

use std::time::Duration;

use serde_json::{json, Value};
use tonic::Code;
use ws_sidecar::proto::{self, sidecar_client::SidecarClient};

use crate::support::daemon::{parse_config, start_daemon, start_with};
use crate::support::jsonrpc::FakeNode;
use crate::support::with_timeout;
use crate::support::FakeUpstream;

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

fn echo(n: u64) -> Value {
    json!({"jsonrpc": "2.0", "method": "echo", "params": [{"n": n}]})
}

async fn publish(
    c: &mut SidecarClient<tonic::transport::Channel>,
    endpoint: &str,
    data: Vec<u8>,
    kind: proto::Kind,
) -> Result<u64, tonic::Status> {
    let r = c
        .publish(proto::PublishRequest {
            endpoint: endpoint.into(),
            data: data.into(),
            kind: kind as i32,
            idempotency_key: String::new(),
            wait: proto::Wait::Confirmed as i32,
        })
        .await?;
    Ok(r.into_inner().outbox_id)
}

async fn confirm_depth(c: &mut SidecarClient<tonic::transport::Channel>) -> u64 {
    let st = c
        .get_status(proto::GetStatusRequest {
            endpoint: Some("node".into()),
        })
        .await
        .expect("status")
        .into_inner();
    st.endpoints[0].confirm_depth
}

/// The node resets the connection as the publish arrives (the frame was written, the reply
/// never comes): the publish is sent again on the next connection, answered there once, and
/// only then does the call return.
#[tokio::test]
async fn a_confirmed_publish_survives_a_reset_right_after_its_write() {
    let up = FakeNode::start().await;
    up.drop_on_next("echo");
    let d = start_daemon(&config(&up.url(), "")).await;
    let mut c = d.grpc().await;
    let body = echo(1).to_string().into_bytes();
    let id = with_timeout(T, publish(&mut c, "node", body, proto::Kind::Text))
        .await
        .expect("confirmed");
    assert_eq!(id, 1);
    assert!(up.connections() >= 2, "the first connection was reset");
    assert_eq!(
        up.frames(0)
            .iter()
            .filter(|f| f["method"] == "echo")
            .count(),
        1
    );
    let answered: usize = (1..up.connections())
        .map(|i| {
            up.frames(i)
                .iter()
                .filter(|f| f["method"] == "echo")
                .count()
        })
        .sum();
    assert_eq!(answered, 1, "sent once on the next connection");
    assert_eq!(confirm_depth(&mut c).await, 0);
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// Unanswered when the daemon stops, the publish is read back from the store and sent again
/// after the restart; once answered it is gone from the store (a second restart sends
/// nothing).
#[tokio::test]
async fn a_confirmed_publish_survives_a_daemon_restart() {
    let up = FakeNode::start().await;
    up.mute("echo", true);
    let toml = config(&up.url(), "");
    let d = start_daemon(&toml).await;
    let mut c = d.grpc().await;
    let body = echo(7).to_string().into_bytes();
    let waiting =
        tokio::spawn(async move { publish(&mut c, "node", body, proto::Kind::Text).await });
    up.wait_calls("echo", 1, T).await.expect("sent once");
    let mut c = d.grpc().await;
    assert_eq!(confirm_depth(&mut c).await, 1);
    drop(c);
    up.mute("echo", false);
    let d = d.restart(parse_config(&toml)).await;
    // The first call ended with the daemon; the entry did not.
    let _ = with_timeout(T, waiting).await;
    up.wait_calls("echo", 2, T)
        .await
        .expect("sent again after the restart");
    let mut c = d.grpc().await;
    with_timeout(T, async {
        while confirm_depth(&mut c).await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let d = d.restart(parse_config(&toml)).await;
    // A request after the restart shows the connection is up; the echo was not sent a third time.
    let mut c = d.grpc().await;
    let reply = c
        .request(proto::UpstreamRequest {
            endpoint: "node".into(),
            data: json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"})
                .to_string()
                .into(),
        })
        .await
        .expect("reply");
    drop(reply);
    assert_eq!(up.received("echo"), 2, "answered once, never sent again");
    assert_eq!(confirm_depth(&mut c).await, 0);
    assert_eq!(up.faults(), Vec::<String>::new());
}

/// NDJSON `"wait":"confirmed"` acks once the node answered.
#[tokio::test]
async fn ndjson_wait_confirmed_acks_after_the_reply() {
    let up = FakeNode::start().await;
    up.drop_on_next("echo");
    let d = start_daemon(&config(&up.url(), "")).await;
    let mut n = d.ndjson().await;
    n.send(
        json!({"op": "publish", "endpoint": "node", "data": echo(3).to_string(),
                  "wait": "confirmed", "id": "p1"}),
    )
    .await;
    let ack = n.recv_type("ack", T).await;
    assert_eq!(ack["id"], "p1");
    assert_eq!(
        up.received("echo"),
        2,
        "reset once, answered on the next connection"
    );
    n.send(
        json!({"op": "publish", "endpoint": "node", "data": "not json",
                  "wait": "confirmed", "id": "p2"}),
    )
    .await;
    let err = n.recv_type("error", T).await;
    assert_eq!(
        (err["code"].as_str(), &err["id"]),
        (Some("invalid_argument"), &json!("p2"))
    );
}

/// Refusals: no `requests` table, data that cannot carry an id, binary data, a full confirm
/// queue; and a publish nobody answers within `outbox.max_age` ends with DEADLINE_EXCEEDED.
#[tokio::test]
async fn confirmed_publish_refusals_and_expiry() {
    let plain = FakeUpstream::start().await;
    let up = FakeNode::start().await;
    up.mute("echo", true);
    let toml = format!(
        "{}\n[endpoints.plain]\nurl = \"{}\"\n",
        config(
            &up.url(),
            "outbox = { max_messages = 1, max_age = \"400ms\" }"
        ),
        plain.url("/")
    );
    let d = start_with(parse_config(&toml)).await;
    let mut c = d.grpc().await;
    let body = || echo(1).to_string().into_bytes();
    let e = publish(&mut c, "plain", body(), proto::Kind::Text)
        .await
        .expect_err("no requests table");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for bad in [&b"not json"[..], b"42", b"\"text\""] {
        let e = publish(&mut c, "node", bad.to_vec(), proto::Kind::Text)
            .await
            .expect_err("not a JSON object");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = publish(&mut c, "node", body(), proto::Kind::Binary)
        .await
        .expect_err("binary");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut first = c.clone();
    let waiting =
        tokio::spawn(async move { publish(&mut first, "node", body(), proto::Kind::Text).await });
    up.wait_calls("echo", 1, T).await.expect("sent");
    let e = publish(&mut c, "node", body(), proto::Kind::Text)
        .await
        .expect_err("queue full");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let e = with_timeout(T, waiting)
        .await
        .expect("task")
        .expect_err("never answered");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert_eq!(confirm_depth(&mut c).await, 0, "the expired entry left");
}
