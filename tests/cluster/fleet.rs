//! Daemons sharing clustered endpoints through one real nats-server (`src/cluster/role.rs`):
//! each daemon runs in this process with its own temp dir, store and sockets, as separate
//! hosts would; the fake upstream counts their connections.

use std::time::Duration;

use ws_sidecar::config::{ClusterConfig, ClusterRetention};
use ws_sidecar::proto;

use crate::support::daemon::{next_message, parse_config, start_with, subscribe, TestDaemon};
use crate::support::nats::NatsServer;
use crate::support::ticks::{tick_id, TickOptions};
use crate::support::upstream::FakeUpstream;

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(20);

/// The lease TTL of these fleets: the shortest JetStream allows, so failovers are quick.
const TTL: Duration = Duration::from_secs(1);

fn cluster(server: &NatsServer, name: &str) -> ClusterConfig {
    ClusterConfig {
        servers: vec![server.url()],
        name: name.to_string(),
        user: None,
        token: None,
        tls_ca: None,
        tls_client: None,
        require_tls: false,
        lease_ttl: TTL,
        replicas: 1,
        retention: ClusterRetention {
            max_messages: None,
            max_bytes: None,
            max_age: None,
            duplicate_window: Duration::from_secs(120),
        },
    }
}

/// A daemon named `name` whose endpoint `ticks` is clustered, resuming `up` by `?since=`.
async fn host(server: &NatsServer, up: &FakeUpstream, name: &str) -> TestDaemon {
    let toml = format!(
        "[endpoints.ticks]\nurl = \"{}\"\n[endpoints.ticks.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n[endpoints.ticks.resume]\nid_pointer = \"/id\"\nquery = \"since\"\n",
        up.url("/feed")
    );
    let mut cfg = parse_config(&toml);
    cfg.cluster = Some(cluster(server, name));
    if let Some(ep) = cfg.endpoints.get_mut("ticks") {
        ep.cluster = true;
    }
    start_with(cfg).await
}

/// The next `n` messages as (seq, tick id), failing on any gap.
async fn take(s: &mut tonic::Streaming<proto::Event>, n: usize) -> Vec<(u64, u64)> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let m = next_message(s, WAIT).await;
        let text = String::from_utf8_lossy(&m.data).into_owned();
        got.push((
            m.seq,
            tick_id(&text).unwrap_or_else(|| panic!("not a tick: {text}")),
        ));
    }
    got
}

/// Seqs and ids both go up by one from message to message.
fn assert_contiguous(got: &[(u64, u64)], what: &str) {
    for w in got.windows(2) {
        assert_eq!(
            (w[1].0, w[1].1),
            (w[0].0 + 1, w[0].1 + 1),
            "{what}: a hole or a duplicate between {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

async fn role(d: &TestDaemon) -> String {
    d.endpoint("ticks")
        .cluster
        .status()
        .role
        .as_str()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_hold_one_upstream_connection_and_deliver_the_same_seqs() {
    let Some(server) = NatsServer::start("two_daemons_hold_one_upstream_connection").await else {
        return;
    };
    let up = FakeUpstream::start_ticking(TickOptions {
        interval: Duration::from_millis(5),
        ..TickOptions::default()
    })
    .await;
    let a = host(&server, &up, "host-a").await;
    let b = host(&server, &up, "host-b").await;
    let mut on_a = subscribe(&mut a.grpc().await, "ticks", Some(0)).await;
    let mut on_b = subscribe(&mut b.grpc().await, "ticks", Some(0)).await;
    let got_a = take(&mut on_a, 200).await;
    let got_b = take(&mut on_b, 200).await;
    assert_eq!(
        got_a, got_b,
        "both hosts deliver the same seqs and payloads"
    );
    assert_contiguous(&got_a, "host-a");
    assert_eq!(got_a[0].0, 1, "the stream starts at seq 1: {got_a:?}");
    assert_eq!(up.accepted(), 1, "one upstream connection for the fleet");
    let roles = [role(&a).await, role(&b).await];
    assert!(
        roles.contains(&"leader".to_string()) && roles.contains(&"follower".to_string()),
        "one leader, one follower: {roles:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_leader_hands_over_and_every_subscriber_continues_without_hole_or_duplicate() {
    let Some(server) = NatsServer::start("a_stopped_leader_hands_over").await else {
        return;
    };
    let up = FakeUpstream::start_ticking(TickOptions {
        interval: Duration::from_millis(5),
        ..TickOptions::default()
    })
    .await;
    let a = host(&server, &up, "host-a").await;
    let b = host(&server, &up, "host-b").await;
    let mut on_b = subscribe(&mut b.grpc().await, "ticks", None).await;
    let before = take(&mut on_b, 50).await;
    assert_eq!(role(&a).await, "leader");
    a.stop().await;
    let after = take(&mut on_b, 100).await;
    let all: Vec<_> = before.into_iter().chain(after).collect();
    assert_contiguous(&all, "host-b across the failover");
    assert_eq!(role(&b).await, "leader");
    let attempts = up.attempts();
    assert_eq!(attempts.len(), 2, "one connection per leader: {attempts:?}");
    let second = &attempts[1];
    assert!(
        second.target.contains("since="),
        "the new leader resumes from the stream's last id: {}",
        second.target
    );
    b.stop().await;
}
