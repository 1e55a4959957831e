//! The guarantee README "Running a fleet" gives for `replicas = 3`: on a three-node JetStream
//! cluster, losing one NATS node (SIGKILL, as a crashed host) loses no message and repeats
//! none, for the subscribers of every daemon.

use std::time::Duration;

use ws_sidecar::cluster::slot::Role;

use crate::support::daemon::{subscribe, TestDaemon};
use crate::support::nats::NatsCluster;
use crate::support::ticks::TickOptions;
use crate::support::upstream::FakeUpstream;

/// A daemon named `name` on every node of `nats`, its endpoint `ticks` clustered with three
/// replicas and resumed by `?since=`.
async fn host(nats: &NatsCluster, up: &FakeUpstream, name: &str) -> TestDaemon {
    let toml = format!(
        "[endpoints.ticks]\nurl = \"{}\"\n[endpoints.ticks.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n[endpoints.ticks.resume]\nid_pointer = \"/id\"\nquery = \"since\"\n",
        up.url("/feed")
    );
    let mut cfg = crate::support::daemon::parse_config(&toml);
    let mut cluster = crate::cluster_config(&nats.nodes[0], name);
    cluster.servers = nats.urls();
    cluster.replicas = 3;
    cluster.lease_ttl = Duration::from_secs(3);
    cfg.cluster = Some(cluster);
    if let Some(ep) = cfg.endpoints.get_mut("ticks") {
        ep.cluster = true;
    }
    crate::support::daemon::start_with(cfg).await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_three_replicas_losing_a_nats_node_loses_and_repeats_nothing() {
    let Some(mut nats) = NatsCluster::start("with_three_replicas", 3).await else {
        return;
    };
    let up = FakeUpstream::start_ticking(TickOptions {
        interval: Duration::from_millis(5),
        ..TickOptions::default()
    })
    .await;
    let a = host(&nats, &up, "host-a").await;
    crate::wait_role(&a, "ticks", Role::Leader).await;
    let b = host(&nats, &up, "host-b").await;
    crate::wait_role(&b, "ticks", Role::Follower).await;
    let mut on_a = subscribe(&mut a.grpc().await, "ticks", Some(0)).await;
    let mut on_b = subscribe(&mut b.grpc().await, "ticks", Some(0)).await;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    crate::take_ticks(&mut on_b, &mut got_b, 100).await;
    // The node leading the endpoint's stream: its loss means a new stream leader, and the
    // readers' consumers (one replica, on that node) are lost with it.
    let client = async_nats::connect(nats.urls().as_slice())
        .await
        .expect("connect");
    let info = async_nats::jetstream::new(client)
        .get_stream(ws_sidecar::cluster::stream_name("ticks"))
        .await
        .expect("the endpoint's stream")
        .info()
        .await
        .expect("stream info")
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a stream leader");
    let node: usize = leader
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .expect("a node name n<i>");
    assert_eq!(info.config.num_replicas, 3, "the stream has three replicas");
    nats.nodes[node].kill().await;
    let killed = std::time::Instant::now();
    // 1,000 more ticks (5 s at the feed's pace) through the loss and the re-elections.
    let through = got_b.last().map_or(0, |m| m.0) + 1000;
    crate::take_ticks(&mut on_b, &mut got_b, through).await;
    crate::take_ticks(&mut on_a, &mut got_a, through).await;
    eprintln!(
        "lost the stream's leader node: 1000 ticks through in {:?}; leader now {}",
        killed.elapsed(),
        if a.endpoint("ticks").cluster.status().role == Role::Leader {
            "host-a"
        } else {
            "host-b"
        }
    );
    for (host, got) in [("host-a", &got_a), ("host-b", &got_b)] {
        assert_eq!(got[0].0, 1, "{host}: from the first seq");
        crate::assert_ticks_contiguous(got, host);
    }
    assert_eq!(got_a, got_b, "the same ticks under the same seqs");
    a.stop().await;
    b.stop().await;
}
