//! A burst through a fleet (`src/cluster/append.rs` wired into the upstream loop): the
//! leader's appends are pipelined, and a follower's subscriber still gets every message once,
//! in order, under the leader's seqs; an oversized one is dropped without costing a seq.

use std::time::Duration;

use ws_sidecar::cluster::slot::Role;

use crate::support::daemon::{next_message, subscribe, TestDaemon};
use crate::support::upstream::{FakeUpstream, Reply};

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(30);

/// Messages in the burst.
const BURST: u64 = 2000;

fn message(n: u64) -> String {
    format!("{{\"n\":{n}}}")
}

async fn host(
    server: &crate::support::nats::NatsServer,
    up: &FakeUpstream,
    name: &str,
) -> TestDaemon {
    let toml = format!(
        "[endpoints.burst]\nurl = \"{}\"\n[endpoints.burst.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n",
        up.url("/feed")
    );
    crate::clustered_daemon(server, &toml, "burst", name).await
}

async fn role_is(d: &TestDaemon, role: Role) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while d.endpoint("burst").cluster.status().role != role {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became {}",
            role.as_str()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_reaches_a_follower_complete_and_in_order() {
    let Some(server) = crate::support::nats::NatsServer::start("a_burst_reaches_a_follower").await
    else {
        return;
    };
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let a = host(&server, &up, "host-a").await;
    role_is(&a, Role::Leader).await;
    let conn = up
        .next_accepted_within(WAIT)
        .await
        .expect("the leader connects");
    let b = host(&server, &up, "host-b").await;
    role_is(&b, Role::Follower).await;
    let mut on_b = subscribe(&mut b.grpc().await, "burst", Some(0)).await;

    // As fast as the socket takes them: the upstream loop reads on while appends are in flight.
    for n in 1..=BURST {
        conn.send_text(&message(n)).await.expect("send");
    }
    // Between two ordinary ones, one the server's max_payload (1 MB) cannot take.
    conn.send_text(&"x".repeat(1_500_000)).await.expect("send");
    conn.send_text(&message(BURST + 1)).await.expect("send");

    for n in 1..=BURST + 1 {
        let m = next_message(&mut on_b, WAIT).await;
        let text = String::from_utf8_lossy(&m.data);
        assert_eq!(
            (m.seq, text.as_ref()),
            (n, message(n).as_str()),
            "seq {n} on the follower: no hole, no duplicate, in order"
        );
    }
    let leader = a.endpoint("burst");
    assert_eq!(
        leader
            .cluster
            .too_large
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let metrics = ws_sidecar::metrics::render(&a.registry);
    assert!(
        metrics.contains(
            "ws_sidecar_dropped_messages_total{endpoint=\"burst\",reason=\"stream_max_payload\"} 1\n"
        ),
        "{metrics}"
    );
    assert_eq!(leader.cluster.status().role, Role::Leader, "still leading");
    assert_eq!(up.accepted(), 1, "one upstream connection for the fleet");
    a.stop().await;
    b.stop().await;
}
