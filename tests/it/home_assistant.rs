//! The `home-assistant` preset (issue 14) against a fake Home Assistant that enforces its
//! WebSocket API: auth before anything, ids strictly increasing on a connection (the daemon's
//! pings, subscriptions and apps' commands share one counter), one `subscribe_events` per
//! event type however many apps want it, events routed by the subscription's id, results by
//! the command's id.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_stream::StreamExt;
use ws_sidecar::proto::{self, event::Event as Ev};

use crate::support::daemon::{attach, start_daemon};
use crate::support::home_assistant::FakeHomeAssistant;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "llat-secret";

/// The next event an Attach stream delivers, as JSON.
async fn next_event(s: &mut tonic::Streaming<proto::Event>) -> Value {
    loop {
        let ev = tokio::time::timeout(T, s.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("ok");
        if let Some(Ev::Message(m)) = ev.event {
            return serde_json::from_slice(&m.data).expect("JSON");
        }
    }
}

#[tokio::test]
async fn apps_share_home_assistant_subscriptions_and_its_id_space() {
    let up = FakeHomeAssistant::start(TOKEN).await;
    let d = start_daemon(&format!(
        r#"
[endpoints.home]
url = "{}"
preset = "home-assistant"
auth = {{ token = "{TOKEN}" }}
# Pings every 50 ms interleave with the apps' commands on the one id counter.
heartbeat = {{ app_ping_interval = "50ms" }}
backoff = {{ initial = "10ms", max = "40ms", min_delay = "10ms" }}
"#,
        up.url()
    ))
    .await;
    let mut c1 = d.grpc().await;
    let mut c2 = d.grpc().await;
    // A command first, so the first connection's subscription ids are not those a new
    // connection gives them (subscriptions go first there).
    let states = c1
        .request(proto::UpstreamRequest {
            endpoint: "home".into(),
            data: json!({"id": 5, "type": "get_states"}).to_string().into(),
        })
        .await
        .expect("states")
        .into_inner();
    let states: Value = serde_json::from_slice(&states.data).expect("JSON");
    assert_eq!(states["id"], 5);
    let mut a = attach(&mut c1, "home", &["state_changed"]).await;
    let mut b = attach(&mut c2, "home", &["state_changed", "call_service"]).await;
    up.wait_subscribed(0, "call_service", T)
        .await
        .expect("subscribed");
    up.wait_subscribed(0, "state_changed", T)
        .await
        .expect("subscribed");
    let first_ids = up.conn(0).by_event_type();
    assert_eq!(
        first_ids["state_changed"].len(),
        1,
        "one subscribe for two holders"
    );

    up.fire("state_changed", json!({"entity_id": "light.a"}))
        .await;
    up.fire("call_service", json!({"service": "turn_on"})).await;
    let ea = next_event(&mut a).await;
    assert_eq!(ea["event"]["event_type"], "state_changed", "{ea}");
    let sc_id = ea["id"].clone();
    let eb1 = next_event(&mut b).await;
    let eb2 = next_event(&mut b).await;
    let mut types = [
        eb1["event"]["event_type"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        eb2["event"]["event_type"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    types.sort();
    assert_eq!(types, ["call_service", "state_changed"]);

    // Commands from both apps with the same id, while pings go out: each app gets its own
    // result with its own id, and the fake saw only increasing ids.
    let calls = (0..40u64).map(|i| {
        let mut c = if i % 2 == 0 { c1.clone() } else { c2.clone() };
        async move {
            let body = json!({"id": 1, "type": "call_service", "domain": "light",
                              "service": "turn_on", "service_data": {"n": i},
                              "return_response": true});
            let r = c
                .request(proto::UpstreamRequest {
                    endpoint: "home".into(),
                    data: body.to_string().into(),
                })
                .await
                .expect("a result")
                .into_inner();
            let v: Value = serde_json::from_slice(&r.data).expect("JSON");
            assert_eq!(v["id"], 1, "{v}");
            assert_eq!(
                v["result"]["response"]["echo"]["n"], i,
                "its own result: {v}"
            );
            assert!(!r.error);
        }
    });
    tokio::time::timeout(T, futures_util::future::join_all(calls))
        .await
        .expect("results in time");

    // A restart of Home Assistant: subscribed again under new ids, apps see the first ones.
    up.drop_all().await;
    up.wait_subscribed(1, "state_changed", T)
        .await
        .expect("resubscribed");
    up.wait_subscribed(1, "call_service", T)
        .await
        .expect("resubscribed");
    up.fire("state_changed", json!({"entity_id": "light.b"}))
        .await;
    let again = loop {
        let e = next_event(&mut a).await;
        if e["event"]["data"]["entity_id"] == "light.b" {
            break e;
        }
    };
    assert_eq!(again["id"], sc_id, "the id the app first saw");
    assert_ne!(
        up.conn(1).by_event_type()["state_changed"],
        first_ids["state_changed"],
        "Home Assistant's new subscription id differs"
    );

    // B leaves: call_service is unsubscribed with its current id; state_changed stays for A.
    drop(b);
    up.wait_until(T, "call_service unsubscribed", |c| {
        c.get(1)
            .is_some_and(|c| !c.subscriptions.values().any(|t| t == "call_service"))
    })
    .await
    .expect("unsubscribed");
    assert!(up
        .conn(1)
        .subscriptions
        .values()
        .any(|t| t == "state_changed"));
    assert_eq!(up.faults(), Vec::<String>::new());
}
