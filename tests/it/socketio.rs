//! The `socketio` preset (issue 14) against a fake Socket.IO v5 / Engine.IO v4 server that
//! enforces the protocols: the namespace connect before any event, a pong to every server ping
//! within pingTimeout, unique ack ids per connection. Apps receive each event as its decoded
//! array; a request is an event with an ack id of the daemon's, its reply the ack's arguments.

use std::time::Duration;

use serde_json::{json, Value};
use ws_sidecar::proto;

use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::socketio::{FakeSocketIo, SioOptions};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn socketio_events_reach_apps_as_arrays_and_acks_reach_the_sender() {
    let up = FakeSocketIo::start_with(SioOptions {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(150),
        auth: None,
    })
    .await;
    let d = start_daemon(&format!(
        r#"
[endpoints.sio]
url = "{}"
preset = "socketio"
backoff = {{ initial = "10ms", max = "40ms", min_delay = "10ms" }}
"#,
        up.url()
    ))
    .await;
    up.wait_connected(1, T).await.expect("namespace connected");
    let mut c = d.grpc().await;
    let mut feed = subscribe(&mut c, "sio", None).await;
    up.emit("chat", &[json!({"text": "hi"})]).await;
    let m = next_message(&mut feed, T).await;
    let v: Value = serde_json::from_slice(&m.data).expect("JSON");
    assert_eq!(v, json!(["chat", {"text": "hi"}]), "the event as its array");

    // Two apps ask at once; each gets its own ack.
    let ask = |args: Value| {
        let mut c = c.clone();
        async move {
            let r = c
                .request(proto::UpstreamRequest {
                    endpoint: "sio".into(),
                    data: args.to_string().into(),
                })
                .await
                .expect("acknowledged")
                .into_inner();
            serde_json::from_slice::<Value>(&r.data).expect("JSON")
        }
    };
    let (sum, echo) = tokio::join!(ask(json!(["add", 2, 3])), ask(json!(["echo", "x", 1])));
    assert_eq!(sum, json!([5]));
    assert_eq!(echo, json!(["x", 1]));

    // Several ping intervals pass: every ping was answered, nothing was a breach.
    up.wait_pongs(0, 5, T).await.expect("pongs");
    assert_eq!(up.connections(), 1, "never closed for a missing pong");
    let conn = up.conn(0);
    assert_eq!(conn.ack_ids.len(), 2);
    assert_ne!(conn.ack_ids[0], conn.ack_ids[1]);
    assert_eq!(up.faults(), Vec::<String>::new());
}
