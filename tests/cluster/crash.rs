//! Clustered daemons as real processes (the built binary, each with its own temp dir, config
//! file, store and sockets), so a leader can die of SIGKILL mid-stream as a host would.

use std::path::Path;
use std::time::{Duration, Instant};

use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

use crate::support::daemon::{next_message, subscribe};
use crate::support::nats::NatsServer;
use crate::support::process::{crash, grpc_addr, spawn_daemon, stop, wait_ready, Spawned};
use crate::support::ticks::{tick_id, TickOptions};
use crate::support::upstream::FakeUpstream;

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(20);

/// The fleet's lease TTL.
const TTL: Duration = Duration::from_secs(1);

/// Starts a daemon process named `name` in `dir`, its endpoint `ticks` clustered.
fn spawn_host(dir: &Path, server: &NatsServer, up: &FakeUpstream, name: &str) -> Spawned {
    let sections = format!(
        "[cluster]\nnats = \"{}\"\nname = \"{name}\"\nlease_ttl = \"{}s\"\n\
         [endpoints.ticks]\nurl = \"{}\"\ncluster = true\n\
         [endpoints.ticks.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n\
         [endpoints.ticks.resume]\nid_pointer = \"/id\"\nquery = \"since\"\n",
        server.url(),
        TTL.as_secs(),
        up.url("/feed")
    );
    let child = spawn_daemon(dir, &sections);
    wait_ready(dir);
    child
}

async fn grpc(dir: &Path) -> proto::sidecar_client::SidecarClient<tonic::transport::Channel> {
    let target = Target::parse(&grpc_addr(dir)).expect("address");
    client::connect(&target).await.expect("daemon reachable")
}

/// The endpoint's role as the daemon in `dir` reports it over gRPC.
async fn role(dir: &Path) -> String {
    let status = grpc(dir)
        .await
        .get_status(proto::GetStatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    status
        .endpoints
        .iter()
        .find(|e| e.name == "ticks")
        .and_then(|e| e.cluster.as_ref())
        .map(|c| c.role.clone())
        .unwrap_or_default()
}

async fn wait_role(dir: &Path, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = role(dir).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "role {got:?}, never {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL the leader mid-stream: the follower takes over within the lease TTL plus one
/// connect (with the server's expiry of the key), its subscriber goes on with no hole and no
/// duplicate, and the upstream resumes from the last id in the stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_is_replaced_within_the_ttl_without_hole_or_duplicate() {
    let Some(server) = NatsServer::start("a_killed_leader_is_replaced").await else {
        return;
    };
    let up = FakeUpstream::start_ticking(TickOptions {
        interval: Duration::from_millis(5),
        ..TickOptions::default()
    })
    .await;
    let (dir_a, dir_b) = (crate::support::temp_dir(), crate::support::temp_dir());
    let a = spawn_host(dir_a.path(), &server, &up, "host-a");
    wait_role(dir_a.path(), "leader").await;
    let b = spawn_host(dir_b.path(), &server, &up, "host-b");
    wait_role(dir_b.path(), "follower").await;
    let mut on_b = subscribe(&mut grpc(dir_b.path()).await, "ticks", None).await;
    let mut got = Vec::new();
    while got.len() < 50 {
        let m = next_message(&mut on_b, WAIT).await;
        got.push((
            m.seq,
            tick_id(&String::from_utf8_lossy(&m.data)).expect("a tick"),
        ));
    }
    let killed = Instant::now();
    crash(a);
    wait_role(dir_b.path(), "leader").await;
    let attempts = up
        .wait_attempts(2, WAIT)
        .await
        .expect("a second connection");
    let took = attempts[1].at.saturating_duration_since(killed);
    eprintln!("failover: the new leader connected {took:?} after the kill");
    assert!(
        took < TTL + Duration::from_secs(3),
        "failover within the TTL plus a connect: took {took:?}"
    );
    assert!(
        attempts[1].target.contains("since="),
        "resumed from the stream's last id: {}",
        attempts[1].target
    );
    let through = got.last().map_or(0, |m| m.0) + 100;
    while got.last().is_none_or(|m| m.0 < through) {
        let m = next_message(&mut on_b, WAIT).await;
        got.push((
            m.seq,
            tick_id(&String::from_utf8_lossy(&m.data)).expect("a tick"),
        ));
    }
    for w in got.windows(2) {
        assert_eq!(
            (w[1].0, w[1].1),
            (w[0].0 + 1, w[0].1 + 1),
            "a hole or a duplicate between {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    stop(b);
}
