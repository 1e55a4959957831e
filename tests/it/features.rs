//! Endpoint options reach the wire, and the gRPC extras answer: headers, subprotocols,
//! fallback URLs, drop and subscribe filters, RTT, app ping, connect timeout, TCP listener,
//! health, reflection, the subscriber limit.

use std::time::Duration;

use tokio_stream::StreamExt;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn headers_subprotocols_and_on_connect_reach_the_upstream() {
    let up = FakeUpstream::start_with(|_, _| Reply::AcceptWithProtocol("v2".into())).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\nheaders = {{ \"X-Trace\" = \"abc\" }}\nsubprotocols = [\"v1\", \"v2\"]\non_connect = [\"hello\"]\n",
        up.url("/feed?x=1")
    ))
    .await;
    let c = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(c.header("x-trace"), Some("abc"));
    assert_eq!(c.header("sec-websocket-protocol"), Some("v1, v2"));
    assert_eq!(c.uri().to_string(), "/feed?x=1");
    assert_eq!(c.recv_text().await, "hello");
    d.wait_state("a", State::Connected, T).await;
    d.stop().await;
}

#[tokio::test]
async fn fallback_url_after_failures_and_primary_first_after_success() {
    let primary = FakeUpstream::start_with(|i, _| {
        // Down for the first three attempts, healthy afterwards.
        if i < 3 {
            Reply::reject(503, &[])
        } else {
            Reply::Accept
        }
    })
    .await;
    let fallback = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\nfallback_urls = [\"{}\"]\n[endpoints.a.backoff]\ninitial = \"20ms\"\nmax = \"50ms\"\nmin_delay = \"10ms\"\nfallback_after = 2\n",
        primary.url("/p"),
        fallback.url("/f")
    ))
    .await;
    let fb = fallback
        .next_accepted_within(T)
        .await
        .expect("fallback used after 2 failures");
    assert_eq!(primary.attempts().len(), 2);
    let ev = d.wait_state("a", State::Connected, T).await;
    assert!(ev.reason.contains("/f"), "{}", ev.reason);
    fb.reset().await.expect("reset");
    // After a successful connection the primary is tried first again.
    primary
        .wait_attempts(3, T)
        .await
        .expect("primary retried first");
    d.stop().await;
}

#[tokio::test]
async fn drop_filters_and_subscribe_filters() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\ndrop = [{{ pointer = \"/type\", equals = \"heartbeat\" }}]\n",
        up.url("/")
    ))
    .await;
    let c = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("a", State::Connected, T).await;
    let mut client = d.grpc().await;
    let mut all = subscribe(&mut client, "a", None).await;
    let mut trades = client
        .subscribe(proto::SubscribeRequest {
            endpoint: "a".into(),
            from_seq: None,
            filters: vec![proto::Filter {
                pointer: "/type".into(),
                equals: "trade".into(),
            }],
        })
        .await
        .expect("subscribe")
        .into_inner();
    for m in [
        r#"{"type":"heartbeat"}"#,
        r#"{"type":"trade","px":1}"#,
        r#"{"type":"quote"}"#,
        "not json",
        r#"{"type":"trade","px":2}"#,
    ] {
        c.send_text(m).await.expect("send");
    }
    let seen: Vec<(u64, String)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let m = next_message(&mut all, T).await;
            v.push((m.seq, String::from_utf8_lossy(&m.data).into_owned()));
        }
        v
    };
    assert_eq!(
        seen[0],
        (1, r#"{"type":"trade","px":1}"#.to_owned()),
        "heartbeat dropped, no seq used"
    );
    assert_eq!(seen[3].0, 4);
    let t1 = next_message(&mut trades, T).await;
    let t2 = next_message(&mut trades, T).await;
    assert_eq!(
        (t1.seq, t2.seq),
        (1, 4),
        "filtered subscriber keeps the real seqs"
    );
    // `equals` written as a JSON string literal, quotes and all, selects the same messages.
    let mut quoted = client
        .subscribe(proto::SubscribeRequest {
            endpoint: "a".into(),
            from_seq: Some(0),
            filters: vec![proto::Filter {
                pointer: "/type".into(),
                equals: "\"trade\"".into(),
            }],
        })
        .await
        .expect("subscribe")
        .into_inner();
    let q1 = next_message(&mut quoted, T).await;
    let q2 = next_message(&mut quoted, T).await;
    assert_eq!(
        (q1.seq, q2.seq),
        (1, 4),
        "a quoted string matches as its text"
    );
    let bad = client
        .subscribe(proto::SubscribeRequest {
            endpoint: "a".into(),
            from_seq: None,
            filters: vec![proto::Filter {
                pointer: "type".into(),
                equals: "x".into(),
            }],
        })
        .await
        .expect_err("bad pointer");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    d.stop().await;
}

#[tokio::test]
async fn rtt_app_ping_and_status() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.heartbeat]\nping_interval = \"100ms\"\napp_ping = '{{\"op\":\"ping\"}}'\napp_ping_interval = \"150ms\"\n",
        up.url("/")
    ))
    .await;
    let c = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(c.recv_text().await, r#"{"op":"ping"}"#);
    c.wait_pings(2, T).await.expect("pings");
    let ep = d.endpoint("a");
    tokio::time::timeout(T, async {
        while ep
            .stats
            .rtt_micros
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("rtt measured");
    let mut client = d.grpc().await;
    let st = client
        .get_status(proto::GetStatusRequest {
            endpoint: Some("a".into()),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.endpoints.len(), 1);
    assert!(st.endpoints[0].rtt_micros > 0);
    assert_eq!(st.endpoints[0].state, proto::State::Connected as i32);
    let missing = client
        .get_status(proto::GetStatusRequest {
            endpoint: Some("zz".into()),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    d.stop().await;
}

#[tokio::test]
async fn connect_timeout_covers_a_handshake_that_never_completes() {
    let up = FakeUpstream::start_with(|_, _| Reply::Hang).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\nconnect_timeout = \"300ms\"\n",
        up.url("/")
    ))
    .await;
    let ev = d.wait_state("a", State::Backoff, T).await;
    assert!(ev.reason.contains("connect timeout"), "{}", ev.reason);
    d.stop().await;
}

#[tokio::test]
async fn tcp_listener_health_reflection_and_subscriber_limit() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[grpc]\nlisten = [\"127.0.0.1:0\"]\n[limits]\nmax_subscribers = 2\n[endpoints.a]\nurl = \"{}\"\n",
        up.url("/")
    ))
    .await;
    let _c = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("a", State::Connected, T).await;
    let addr = d.grpc_tcp.expect("tcp listener");
    let target = ws_sidecar::client::Target::Tcp(addr.to_string());
    let mut tcp = ws_sidecar::client::connect(&target)
        .await
        .expect("tcp connect");
    let st = tcp
        .get_status(proto::GetStatusRequest { endpoint: None })
        .await
        .expect("status");
    assert_eq!(st.into_inner().endpoints[0].name, "a");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "a"] {
        let r = tokio::time::timeout(T, async {
            loop {
                let r = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .expect("health")
                    .into_inner();
                if r.status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("serving");
        assert_eq!(r.status, 1);
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let first = resp.next().await.expect("a response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection response {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"ws_sidecar.v1.Sidecar".to_owned()),
        "{names:?}"
    );

    let mut client = d.grpc().await;
    let _s1 = subscribe(&mut client, "a", None).await;
    let _s2 = subscribe(&mut tcp, "a", None).await;
    let third = client
        .subscribe(proto::SubscribeRequest {
            endpoint: "a".into(),
            from_seq: None,
            filters: vec![],
        })
        .await
        .expect_err("limit reached");
    assert_eq!(third.code(), tonic::Code::ResourceExhausted);
    assert!(
        third.message().contains("max_subscribers"),
        "{}",
        third.message()
    );
    d.stop().await;
}
