//! Hostile local clients, gRPC side: requests over the size limit, bytes that are not HTTP/2.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::start_daemon;
use crate::support::{FakeUpstream, Reply};
use crate::{endpoint, within, Bystander, T};

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
    let calm = Bystander::upstream().await;
    let d =
        start_daemon(&(endpoint("feed", &up.url("/feed"), "") + &Bystander::config(&calm))).await;
    let mut by = Bystander::attach(calm, &d).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let ep = d.endpoint("feed");
    let mut c = d.grpc().await;

    let err = c
        .publish(publish(vec![b'x'; 17 * MIB]))
        .await
        .expect_err("17 MiB publish");
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
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
