//! Clustered daemons as real processes (the built binary, each with its own temp dir, config
//! file, store and sockets), so a leader can die of SIGKILL mid-stream as a host would.

use std::path::Path;
use std::time::{Duration, Instant};

use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

use crate::support::daemon::subscribe;
use crate::support::nats::NatsServer;
use crate::support::process::{crash, grpc_addr, spawn_daemon, stop, wait_ready, Spawned};
use crate::support::ticks::TickOptions;
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
    status(dir)
        .await
        .cluster
        .map(|c| c.role)
        .unwrap_or_default()
}

/// The endpoint's status as the daemon in `dir` reports it over gRPC.
async fn status(dir: &Path) -> proto::EndpointStatus {
    let status = grpc(dir)
        .await
        .get_status(proto::GetStatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    status
        .endpoints
        .into_iter()
        .find(|e| e.name == "ticks")
        .expect("endpoint ticks")
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

/// SIGKILL the leader of three mid-stream: one follower takes over within the lease TTL plus
/// one connect (with the server's expiry of the key), the other keeps following, subscribers on
/// both go on with no hole and no duplicate and see the same ticks under the same seqs, and
/// the upstream resumes from the last id in the stream; never two connections at once.
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
    let dirs = [(); 3].map(|_| crate::support::temp_dir());
    let a = spawn_host(dirs[0].path(), &server, &up, "host-a");
    wait_role(dirs[0].path(), "leader").await;
    let b = spawn_host(dirs[1].path(), &server, &up, "host-b");
    let c = spawn_host(dirs[2].path(), &server, &up, "host-c");
    wait_role(dirs[1].path(), "follower").await;
    wait_role(dirs[2].path(), "follower").await;
    let mut on_b = subscribe(&mut grpc(dirs[1].path()).await, "ticks", None).await;
    let mut on_c = subscribe(&mut grpc(dirs[2].path()).await, "ticks", None).await;
    let (mut got_b, mut got_c) = (Vec::new(), Vec::new());
    crate::take_ticks(&mut on_b, &mut got_b, 1).await;
    let through = got_b[0].0 + 50;
    crate::take_ticks(&mut on_b, &mut got_b, through).await;
    let killed = Instant::now();
    crash(a);
    let new_leader = loop {
        let (rb, rc) = (role(dirs[1].path()).await, role(dirs[2].path()).await);
        match (rb.as_str(), rc.as_str()) {
            ("leader", "follower") => break 1,
            ("follower", "leader") => break 2,
            ("leader", "leader") => panic!("two leaders"),
            _ => {}
        }
        assert!(killed.elapsed() < WAIT, "no new leader: {rb}, {rc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The survivor that follows names its new leader, in status and in its state's reason.
    let (leader, follower) = [(1, 2), (2, 1)][new_leader - 1];
    let leader_name = ["host-a", "host-b", "host-c"][leader];
    loop {
        let st = status(dirs[follower].path()).await;
        let named = st.cluster.as_ref().map(|c| c.leader.as_str()) == Some(leader_name);
        if named && st.reason == format!("following {leader_name} through NATS") {
            break;
        }
        assert!(
            killed.elapsed() < WAIT,
            "the follower still says {:?} / {:?}",
            st.cluster,
            st.reason
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = up
        .wait_attempts(2, WAIT)
        .await
        .expect("a second connection");
    let took = attempts[1].at.saturating_duration_since(killed);
    eprintln!("failover: host {new_leader} connected {took:?} after the kill");
    assert!(
        took < TTL + Duration::from_secs(3),
        "failover within the TTL plus a connect: took {took:?}"
    );
    assert!(
        attempts[1].target.contains("since="),
        "resumed from the stream's last id: {}",
        attempts[1].target
    );
    let through = got_b.last().map_or(0, |m| m.0) + 100;
    crate::take_ticks(&mut on_b, &mut got_b, through).await;
    crate::take_ticks(&mut on_c, &mut got_c, through).await;
    crate::assert_ticks_contiguous(&got_b, "host-b");
    crate::assert_ticks_contiguous(&got_c, "host-c");
    let first_c = got_c[0].0;
    let same: Vec<_> = got_b.iter().filter(|m| m.0 >= first_c).collect();
    assert_eq!(
        same,
        got_c.iter().take(same.len()).collect::<Vec<_>>(),
        "the same ticks under the same seqs on both survivors"
    );
    assert_eq!(
        up.attempts().len(),
        2,
        "100 ticks later, still one new connection: the survivor that follows never connects"
    );
    stop(b);
    stop(c);
}
