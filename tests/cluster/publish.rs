//! Publishing to a clustered endpoint from any host (`src/cluster/drain.rs`): apps publish into
//! the fleet's queue, the leader sends it upstream, in order per publisher.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ws_sidecar::cluster::slot::Role;
use ws_sidecar::proto;

use crate::support::daemon::TestDaemon;
use crate::support::nats::NatsServer;
use crate::support::upstream::{FakeUpstream, Reply};

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(20);

/// An upstream that records every text frame it receives, from every connection.
async fn recording() -> (FakeUpstream, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let up = FakeUpstream::start_with_handler(
        |_, _| Reply::Accept,
        move |conn| {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                while let Some(m) = conn.recv().await {
                    // Text frames only: a close frame's reason is no message.
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = m {
                        sink.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(text.to_string());
                    }
                }
            });
        },
    )
    .await;
    (up, got)
}

async fn host(server: &NatsServer, up: &FakeUpstream, name: &str) -> TestDaemon {
    let toml = format!(
        "[endpoints.orders]\nurl = \"{}\"\n[endpoints.orders.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n",
        up.url("/orders")
    );
    crate::clustered_daemon(server, &toml, "orders", name).await
}

/// host-a leading, then host-b following.
async fn leader_and_follower(server: &NatsServer, up: &FakeUpstream) -> (TestDaemon, TestDaemon) {
    let a = host(server, up, "host-a").await;
    crate::wait_role(&a, "orders", Role::Leader).await;
    let b = host(server, up, "host-b").await;
    crate::wait_role(&b, "orders", Role::Follower).await;
    (a, b)
}

/// Publishes `{prefix}-0` … `{prefix}-{n-1}` one after another over gRPC, wait = STORED.
async fn publish_all(d: &TestDaemon, prefix: &str, n: usize) {
    let mut c = d.grpc().await;
    for i in 0..n {
        c.publish(proto::PublishRequest {
            endpoint: "orders".into(),
            data: format!("{prefix}-{i}").into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("publish {prefix}-{i}: {e}"));
    }
}

/// Waits until the upstream got `n` frames; returns them.
async fn upstream_got(got: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = got.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if now.len() >= n {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream got {} of {n}",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The indices of `prefix`'s messages in arrival order.
fn of(frames: &[String], prefix: &str) -> Vec<usize> {
    frames
        .iter()
        .filter_map(|f| f.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_from_every_host_reach_the_upstream_once_in_order_per_publisher() {
    let Some(server) = NatsServer::start("publishes_from_every_host").await else {
        return;
    };
    let (up, got) = recording().await;
    let (a, b) = leader_and_follower(&server, &up).await;
    tokio::join!(publish_all(&a, "a", 100), publish_all(&b, "b", 100));
    let frames = upstream_got(&got, 200).await;
    assert_eq!(
        of(&frames, "a"),
        (0..100).collect::<Vec<_>>(),
        "host-a's, once, in order"
    );
    assert_eq!(
        of(&frames, "b"),
        (0..100).collect::<Vec<_>>(),
        "host-b's, once, in order"
    );
    assert_eq!(frames.len(), 200, "nothing else: {frames:?}");
    assert_eq!(up.accepted(), 1, "all through the leader's one connection");
    // Only the leader knows when a message was written: SENT is refused, and says what to use.
    let refused = b
        .grpc()
        .await
        .publish(proto::PublishRequest {
            endpoint: "orders".into(),
            data: "sent?".into(),
            wait: proto::Wait::Sent as i32,
            ..Default::default()
        })
        .await
        .expect_err("wait = SENT on a clustered endpoint");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("STORED") && !refused.message().contains("request"),
        "{}",
        refused.message()
    );
    a.stop().await;
    b.stop().await;
}

/// The leader stops while a follower's app publishes: nothing acknowledged is lost, and the
/// publisher's order holds (a message the old leader wrote but had not confirmed may be
/// written again by the new one, right after: at-least-once across a failover).
#[tokio::test(flavor = "multi_thread")]
async fn publishes_acknowledged_before_a_failover_all_reach_the_upstream_in_order() {
    let Some(server) = NatsServer::start("publishes_acknowledged_before_a_failover").await else {
        return;
    };
    let (up, got) = recording().await;
    let (a, b) = leader_and_follower(&server, &up).await;
    publish_all(&b, "b", 50).await;
    a.stop().await;
    publish_all(&b, "c", 50).await;
    crate::wait_role(&b, "orders", Role::Leader).await;
    // All of c's arrived once the last one has (in order, below).
    let deadline = Instant::now() + WAIT;
    let frames = loop {
        let f = got.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if of(&f, "c").contains(&49) {
            break f;
        }
        assert!(Instant::now() < deadline, "c-49 never arrived: {f:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for prefix in ["b", "c"] {
        let seen = of(&frames, prefix);
        let mut firsts: Vec<usize> = Vec::new();
        for i in &seen {
            if !firsts.contains(i) {
                firsts.push(*i);
            }
        }
        assert_eq!(
            firsts,
            (0..50).collect::<Vec<_>>(),
            "{prefix}: all, in order: {seen:?}"
        );
    }
    b.stop().await;
}

/// A publish while NATS is down is not confirmed: the app is told it may still be queued
/// (DEADLINE_EXCEEDED, not a plain failure), and it is in fact sent once NATS is back, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_nats_did_not_confirm_says_it_may_still_be_sent() {
    let Some(mut server) = NatsServer::start("a_publish_nats_did_not_confirm").await else {
        return;
    };
    let (up, got) = recording().await;
    let (a, b) = leader_and_follower(&server, &up).await;
    publish_all(&b, "before", 1).await;
    upstream_got(&got, 1).await;
    server.stop().await;
    let refused = b
        .grpc()
        .await
        .publish(proto::PublishRequest {
            endpoint: "orders".into(),
            data: "during".into(),
            idempotency_key: "during-1".into(),
            ..Default::default()
        })
        .await
        .expect_err("NATS is down: no confirmation");
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    assert!(
        refused.message().contains("may still be queued")
            && refused.message().contains("same idempotency_key"),
        "{}",
        refused.message()
    );
    server.restart().await;
    let all = upstream_got(&got, 2).await;
    assert_eq!(all, ["before-0", "during"], "sent once NATS was back");
    a.stop().await;
    b.stop().await;
}
