//! `GetOutbox` and `ClearOutbox` over gRPC: what an operator sees, what clearing drops (only
//! what they saw), a waiting publisher told so, and a clear that holds across a restart.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::proto;

use crate::support::daemon::{parse_config, start_daemon};
use crate::support::FakeUpstream;

const T: Duration = Duration::from_secs(20);

fn publish(data: &str, key: &str, wait: proto::Wait) -> proto::PublishRequest {
    proto::PublishRequest {
        endpoint: "a".into(),
        data: data.as_bytes().to_vec().into(),
        kind: proto::Kind::Text as i32,
        idempotency_key: key.into(),
        wait: wait as i32,
    }
}

/// Messages queued while the upstream is unreachable: the operator sees them, clears those
/// they saw (a `wait = SENT` publisher gets ABORTED), one published after stays and is the
/// only one sent; after a restart the cleared ones do not come back, and a cleared message's
/// idempotency key still does not queue it again.
#[tokio::test(flavor = "multi_thread")]
async fn cleared_messages_are_gone_for_good_and_later_ones_stay() {
    // Refused (503) until the test lets the daemon connect.
    let (up, gate) = FakeUpstream::start_gated(false, 503).await;
    let toml = format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.backoff]\ninitial = \"10ms\"\nmax = \"50ms\"\nmin_delay = \"5ms\"\n",
        up.url("/a")
    );
    let d = start_daemon(&toml).await;
    let mut c = d.grpc().await;
    c.publish(publish("m1", "k1", proto::Wait::Stored))
        .await
        .expect("stored");
    let mut waiter = d.grpc().await;
    let waiting =
        tokio::spawn(async move { waiter.publish(publish("m2", "", proto::Wait::Sent)).await });
    let deadline = tokio::time::Instant::now() + T;
    let seen = loop {
        let info = c
            .get_outbox(proto::GetOutboxRequest {
                endpoint: "a".into(),
            })
            .await
            .expect("outbox")
            .into_inner();
        if info.depth == 2 {
            break info;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((seen.bytes, seen.oldest_id, seen.newest_id), (4, 1, 2));
    assert!(seen.durable);
    c.publish(publish("m3", "", proto::Wait::Stored))
        .await
        .expect("stored");

    let cleared = c
        .clear_outbox(proto::ClearOutboxRequest {
            endpoint: "a".into(),
            up_to_id: Some(seen.newest_id),
        })
        .await
        .expect("cleared")
        .into_inner();
    assert_eq!((cleared.cleared, cleared.bytes), (2, 4));
    let refused = tokio::time::timeout(T, waiting)
        .await
        .expect("the waiting publisher is answered")
        .expect("task")
        .expect_err("its message will never be sent");
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    let again = c
        .publish(publish("m1", "k1", proto::Wait::Stored))
        .await
        .expect("a known key")
        .into_inner();
    assert_eq!(
        again.outbox_id, 1,
        "the cleared message's key still answers with its id"
    );

    let d = d.restart(parse_config(&toml)).await;
    let mut c = d.grpc().await;
    let info = c
        .get_outbox(proto::GetOutboxRequest {
            endpoint: "a".into(),
        })
        .await
        .expect("outbox")
        .into_inner();
    assert_eq!(
        (info.depth, info.oldest_id),
        (1, 3),
        "only m3 survives the restart"
    );
    let again = c
        .publish(publish("m1", "k1", proto::Wait::Stored))
        .await
        .expect("a known key")
        .into_inner();
    assert_eq!(
        again.outbox_id, 1,
        "nor after the restart is it queued again"
    );

    gate.store(true, std::sync::atomic::Ordering::SeqCst);
    let conn = up.next_accepted_within(T).await.expect("connects");
    let first = tokio::time::timeout(T, conn.recv())
        .await
        .expect("a frame in time");
    assert_eq!(
        first,
        Some(Message::text("m3")),
        "only what was not cleared is sent"
    );

    let e = c
        .clear_outbox(proto::ClearOutboxRequest {
            endpoint: "nope".into(),
            up_to_id: None,
        })
        .await
        .expect_err("unknown endpoint");
    assert_eq!(e.code(), tonic::Code::NotFound);
    d.stop().await;
}
