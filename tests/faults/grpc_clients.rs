//! Hostile local clients, gRPC side and the limits both APIs share: requests over the size
//! limit, bytes that are not HTTP/2, subscriptions with too many or too large filters, and
//! `limits.max_subscribers` across gRPC and NDJSON with slots given back when clients go.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::endpoint::State;
use ws_sidecar::filter::{MAX_EQUALS, MAX_FILTERS, MAX_POINTER};
use ws_sidecar::proto;

use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::{FakeUpstream, Reply};
use crate::{endpoint, until, with_bystander, within, T};

const MIB: usize = 1024 * 1024;

fn publish(data: Vec<u8>) -> proto::PublishRequest {
    proto::PublishRequest {
        endpoint: "feed".into(),
        data: data.into(),
        kind: proto::Kind::Binary as i32,
        ..Default::default()
    }
}

fn filters(n: usize, pointer: &str, equals: &str) -> Vec<proto::Filter> {
    let one = proto::Filter {
        pointer: pointer.into(),
        equals: equals.into(),
    };
    vec![one; n]
}

fn sub_req(filters: Vec<proto::Filter>) -> proto::SubscribeRequest {
    proto::SubscribeRequest {
        endpoint: "feed".into(),
        from_seq: None,
        filters,
    }
}

#[tokio::test]
async fn oversize_requests_and_non_grpc_bytes_are_refused_and_the_server_carries_on() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (d, mut by) = with_bystander(&(endpoint("feed", &up.url("/feed"), ""))).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let ep = d.endpoint("feed");
    let mut c = d.grpc().await;

    let err = c
        .publish(publish(vec![b'x'; 17 * MIB]))
        .await
        .expect_err("17 MiB publish");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    let err = c
        .subscribe(sub_req(filters(1, "/a", &"v".repeat(17 * MIB))))
        .await
        .expect_err("17 MiB subscribe");
    assert!(err.message().contains("too large"), "{}", err.message());
    assert_eq!(
        ep.outbox.depth(),
        0,
        "nothing of the refused publish was queued"
    );
    assert_eq!(
        d.registry.subscribers(),
        2,
        "only the bystander's subscribers"
    );

    // The same channel still works; 16 MiB (a message at the default max_message_size) fits.
    let mut full = vec![b'y'; 16 * MIB];
    full[0] = b'<';
    let mut req = publish(full.clone());
    req.wait = proto::Wait::Sent as i32;
    within(T, "a 16 MiB publish", c.publish(req))
        .await
        .expect("16 MiB accepted");
    match within(T, "upstream gets it", conn.recv()).await {
        Some(Message::Binary(b)) => assert!(b == full, "16 MiB arrive intact"),
        other => panic!("unexpected {other:?}"),
    }

    // Bytes that are not HTTP/2 on the gRPC socket: the connection is dropped, nothing else.
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        &[0u8; 4096],
    ];
    for bytes in garbage {
        let mut s = UnixStream::connect(&d.grpc_path).await.expect("connect");
        let _ = s.write_all(bytes).await;
        let mut sink = Vec::new();
        // A reset is as good as a close (hence no expect); what matters is that it ends.
        let _ = within(T, "the server hangs up", s.read_to_end(&mut sink)).await;
    }
    let st = c
        .get_status(proto::GetStatusRequest { endpoint: None })
        .await
        .expect("status after the garbage");
    assert_eq!(st.into_inner().endpoints.len(), 2);
    by.check(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn subscriptions_with_too_many_or_too_large_filters_are_refused_on_both_apis() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (d, mut by) = with_bystander(&(endpoint("feed", &up.url("/feed"), ""))).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let baseline = d.registry.subscribers();
    let mut c = d.grpc().await;

    let refused = [
        (filters(300, "/type", "trade"), "too many filters: 300"),
        (
            filters(MAX_FILTERS + 1, "/type", "trade"),
            "too many filters",
        ),
        (filters(1, &"/p".repeat(MAX_POINTER), "x"), "pointer of"),
        (
            filters(1, "/type", &"x".repeat(MAX_EQUALS)),
            "filter value of",
        ),
    ];
    for (fs, words) in refused {
        let err = c.subscribe(sub_req(fs)).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(words), "{}", err.message());
    }
    let mut nd = d.ndjson().await;
    let many: Vec<_> = (0..300)
        .map(|_| json!({"pointer": "/type", "equals": "trade"}))
        .collect();
    nd.send(json!({"op": "subscribe", "endpoint": "feed", "filters": many}))
        .await;
    let e = nd.recv(T).await;
    assert_eq!(e["code"], "invalid_argument", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too many filters: 300"),
        "{e}"
    );
    assert_eq!(d.registry.subscribers(), baseline, "refusals take no slot");

    // The most allowed still works, and filters as it should.
    let mut s = c
        .subscribe(sub_req(filters(MAX_FILTERS, "/type", "trade")))
        .await
        .expect("64 filters accepted")
        .into_inner();
    let max: Vec<_> = (0..MAX_FILTERS)
        .map(|_| json!({"pointer": "/type", "equals": "trade"}))
        .collect();
    nd.send(json!({"op": "subscribe", "endpoint": "feed", "filters": max}))
        .await;
    assert_eq!(nd.recv(T).await["type"], "state");
    conn.send_text(r#"{"type":"quote"}"#).await.expect("send");
    conn.send_text(r#"{"type":"trade"}"#).await.expect("send");
    assert_eq!(
        &next_message(&mut s, T).await.data[..],
        br#"{"type":"trade"}"#
    );
    assert_eq!(
        nd.recv_type("message", T).await["data"],
        r#"{"type":"trade"}"#
    );
    by.check(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn max_subscribers_holds_across_both_apis_and_slots_come_back() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    // No bystander here: its two subscribers would count against the budget.
    let d = start_daemon(
        &("[limits]\nmax_subscribers = 4\n".to_owned() + &endpoint("feed", &up.url("/feed"), "")),
    )
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let limit_words = "too many subscribers (limits.max_subscribers = 4)";

    let mut c = d.grpc().await;
    let g1 = subscribe(&mut c, "feed", None).await;
    let _g2 = subscribe(&mut c, "feed", None).await;
    // Two subscriptions on one NDJSON connection count twice.
    let mut nd = d.ndjson().await;
    for _ in 0..2 {
        nd.send(json!({"op": "subscribe", "endpoint": "feed"}))
            .await;
        assert_eq!(nd.recv(T).await["type"], "state");
    }
    assert_eq!(d.registry.subscribers(), 4);

    for _ in 0..10 {
        let err = c
            .subscribe(sub_req(vec![]))
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains(limit_words), "{}", err.message());
        let mut other = d.ndjson().await;
        other
            .send(json!({"op": "subscribe", "endpoint": "feed"}))
            .await;
        let e = other.recv(T).await;
        assert_eq!(e["code"], "resource_exhausted", "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains(limit_words),
            "{e}"
        );
    }
    assert_eq!(
        d.registry.subscribers(),
        4,
        "refused subscribers take no slot"
    );

    // A gRPC stream dropped (its channel stays open) gives its slot back...
    drop(g1);
    until(T, "the gRPC slot comes back", || {
        d.registry.subscribers() == 3
    })
    .await;
    let _g3 = subscribe(&mut c, "feed", None).await;
    // ...and so does an NDJSON client that goes away while nothing is being delivered.
    drop(nd);
    until(T, "the NDJSON slots come back", || {
        d.registry.subscribers() == 2
    })
    .await;
    let status = c
        .get_status(proto::GetStatusRequest {
            endpoint: Some("feed".into()),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.endpoints[0].subscribers, 2);
    // A client that only half-closes (`echo … | socat`) keeps its subscription and its slot.
    let mut nd = d.ndjson().await;
    nd.send(json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    assert_eq!(nd.recv(T).await["type"], "state");
    nd.w.shutdown().await.expect("half-close");
    conn.send_text("still there").await.expect("send");
    assert_eq!(nd.recv_type("message", T).await["data"], "still there");
    assert_eq!(d.registry.subscribers(), 3);
    d.stop().await;
}

/// An app can send what it can receive, over either API: both request limits follow the
/// largest `max_message_size` (here 20 MiB, over the 16 MiB gRPC and 1 MiB NDJSON limits the
/// daemon once had fixed), with base64's growth for NDJSON's binary data.
#[tokio::test]
async fn both_apis_take_a_publish_as_large_as_the_largest_message_they_deliver() {
    use base64::Engine;
    use ws_sidecar::api::limits::{RequestLimits, ENVELOPE};
    let b64 = base64::engine::general_purpose::STANDARD;
    let max = 20 * MIB;
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (d, mut by) = with_bystander(&endpoint(
        "feed",
        &up.url("/feed"),
        "max_message_size = \"20MiB\"",
    ))
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let mut nd = d.ndjson().await;
    nd.send(json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    nd.recv_type("state", T).await;

    // The largest message the endpoint takes reaches the NDJSON app, as base64.
    let mut full = vec![b'z'; max];
    full[0] = 0xff;
    conn.send_binary(full.clone())
        .await
        .expect("upstream sends");
    let m = nd.recv_type("message", T).await;
    let data = m["data"].as_str().expect("base64 data");
    assert!(
        b64.decode(data).expect("base64") == full,
        "delivered intact"
    );

    // ...and the app publishes it back as it got it, on one NDJSON line.
    let line =
        json!({"op": "publish", "endpoint": "feed", "binary": true, "data": data, "id": "n1"})
            .to_string();
    assert!(line.len() > 16 * MIB, "more than the old limits");
    nd.send_line(&line).await;
    let ack = nd.recv_type("ack", T).await;
    assert_eq!(ack["id"], "n1", "{ack}");
    match within(T, "upstream gets the NDJSON publish", conn.recv()).await {
        Some(Message::Binary(b)) => assert!(b == full, "arrives intact"),
        other => panic!("unexpected {other:?}"),
    }

    // The same size over gRPC.
    let mut c = d.grpc().await;
    within(T, "a 20 MiB gRPC publish", c.publish(publish(full.clone())))
        .await
        .expect("as large as max_message_size is accepted");
    match within(T, "upstream gets the gRPC publish", conn.recv()).await {
        Some(Message::Binary(b)) => assert!(b == full, "arrives intact"),
        other => panic!("unexpected {other:?}"),
    }

    // Past the envelope's room, both refuse, and say so.
    let err = c
        .publish(publish(vec![b'x'; max + ENVELOPE + 1]))
        .await
        .expect_err("over the gRPC limit");
    assert!(err.message().contains("too large"), "{}", err.message());
    let limits = RequestLimits::for_message(max);
    nd.send_line(&"x".repeat(limits.ndjson_line + 1)).await;
    let e = nd.recv_type("error", T).await;
    assert_eq!(e["code"], "line_too_long", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_message_size")),
        "the error names what sets the limit: {e}"
    );
    by.check(&d).await;
    d.stop().await;
}
