//! Daemons sharing clustered endpoints through one real nats-server (`src/cluster/role.rs`):
//! each daemon runs in this process with its own temp dir, store and sockets, as separate
//! hosts would; the fake upstream counts their connections.

use std::time::Duration;

use tokio_stream::StreamExt;

use ws_sidecar::cluster::lease::{Held, Leases, BUCKET};
use ws_sidecar::cluster::slot::{ClusterStatus, Role};
use ws_sidecar::cluster::stream::{AppendError, EndpointStream, Retention};
use ws_sidecar::proto;

use crate::support::daemon::{next_message, subscribe, TestDaemon};
use crate::support::nats::NatsServer;
use crate::support::ticks::{tick_id, tick_message, TickOptions};
use crate::support::upstream::FakeUpstream;

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(20);

/// The lease TTL of these fleets (`crate::cluster_config`).
const TTL: Duration = Duration::from_secs(1);

/// A tick feed every 5 ms that resumes from `?since=`.
async fn ticking() -> FakeUpstream {
    FakeUpstream::start_ticking(TickOptions {
        interval: Duration::from_millis(5),
        ..TickOptions::default()
    })
    .await
}

/// A daemon named `name` whose endpoint `ticks` is clustered, resuming `up` by `?since=`.
async fn host(server: &NatsServer, up: &FakeUpstream, name: &str) -> TestDaemon {
    host_with(server, up, name, "").await
}

/// [`host`] with more keys for the endpoint's table (`replay = …`).
async fn host_with(server: &NatsServer, up: &FakeUpstream, name: &str, keys: &str) -> TestDaemon {
    let toml = format!(
        "[endpoints.ticks]\nurl = \"{}\"\n{keys}\n[endpoints.ticks.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n[endpoints.ticks.resume]\nid_pointer = \"/id\"\nquery = \"since\"\n",
        up.url("/feed")
    );
    crate::clustered_daemon(server, &toml, "ticks", name).await
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

/// Messages as (seq, tick id) until one at `seq` or later, failing on any gap.
async fn take_through(s: &mut tonic::Streaming<proto::Event>, seq: u64) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    while got.last().is_none_or(|m: &(u64, u64)| m.0 < seq) {
        got.extend(take(s, 1).await);
    }
    got
}

/// Waits until `d` leads the endpoint.
async fn leads(d: &TestDaemon) {
    crate::wait_role(d, "ticks", Role::Leader).await;
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
    let up = ticking().await;
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
    // Metrics say the same: one leader, the leader's appends timed, both on one epoch.
    let (leader, follower) = if roles[0] == "leader" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let on_leader = ws_sidecar::metrics::render(&leader.registry);
    let on_follower = ws_sidecar::metrics::render(&follower.registry);
    assert!(on_leader.contains("ws_sidecar_cluster_leader{endpoint=\"ticks\"} 1\n"));
    assert!(on_follower.contains("ws_sidecar_cluster_leader{endpoint=\"ticks\"} 0\n"));
    let appended = on_leader
        .lines()
        .find_map(|l| {
            l.strip_prefix("ws_sidecar_cluster_append_duration_seconds_count{endpoint=\"ticks\"} ")
        })
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no append count:\n{on_leader}"));
    assert!(
        appended >= 200,
        "every message appended and timed: {appended}"
    );
    assert!(on_leader.contains("# TYPE ws_sidecar_cluster_append_duration_seconds summary"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_leader_hands_over_and_every_subscriber_continues_without_hole_or_duplicate() {
    let Some(server) = NatsServer::start("a_stopped_leader_hands_over").await else {
        return;
    };
    let up = ticking().await;
    let a = host(&server, &up, "host-a").await;
    leads(&a).await;
    let b = host(&server, &up, "host-b").await;
    let mut on_b = subscribe(&mut b.grpc().await, "ticks", None).await;
    let before = take(&mut on_b, 50).await;
    a.stop().await;
    leads(&b).await;
    // Past what host-a wrote: these come from host-b's own connection.
    let after = take_through(&mut on_b, b.endpoint("ticks").log.last_seq() + 50).await;
    let all: Vec<_> = before.into_iter().chain(after).collect();
    assert_contiguous(&all, "host-b across the failover");
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

/// A partitioned old leader: the lease was taken from it (here by a test client playing the
/// new leader) and the new leader wrote the next seq first. The old one, still connected
/// upstream, cannot append a single message; it stops leading and its status says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_lease_was_taken_cannot_append_and_says_so() {
    let Some(server) = NatsServer::start("a_leader_whose_lease_was_taken").await else {
        return;
    };
    let up = ticking().await;
    let a = host(&server, &up, "host-a").await;
    let mut on_a = subscribe(&mut a.grpc().await, "ticks", None).await;
    let before = take(&mut on_a, 20).await;
    leads(&a).await;

    // The new leader: takes the key out from under host-a and writes the next seq.
    let (js, held) = steal_lease(&server).await;
    let stream = EndpointStream::open(&js, "ticks", 1, &Retention::default())
        .await
        .expect("stream");
    let writer = stream.writer(held.term());
    let (fence_seq, fence_id) = loop {
        let tail = stream.tail().await.expect("tail").expect("not empty");
        let id: u64 = tail
            .upstream_id
            .as_deref()
            .and_then(|i| i.parse().ok())
            .expect("an upstream id");
        let payload = bytes::Bytes::from(tick_message(id + 1));
        match writer
            .append(tail.seq + 1, payload, Some(&(id + 1).to_string()))
            .await
        {
            Ok(_) => break (tail.seq + 1, id + 1),
            // host-a got there first: try the next one.
            Err(AppendError::Fenced { .. }) => continue,
            Err(e) => panic!("append: {e}"),
        }
    };

    let status = stepped_down(&a).await;
    let why = status.stepped_down.unwrap_or_default();
    assert!(why.contains("fenced"), "status says it was fenced: {why}");
    // Nothing of host-a's landed after the fence: the seq holds the new leader's message.
    let mut reader = stream.read_from(fence_seq).await.expect("read");
    let fenced = reader.next().await.expect("the fence");
    assert_eq!(fenced.payload, tick_message(fence_id).as_bytes());

    // The intruder never renews: its lease ages out, host-a leads again from the fence's id.
    leads(&a).await;
    let after = take_through(&mut on_a, a.endpoint("ticks").log.last_seq() + 40).await;
    let all: Vec<_> = before.into_iter().chain(after).collect();
    assert_contiguous(&all, "host-a across being fenced");
    assert!(
        all.contains(&(fence_seq, fence_id)),
        "the fence is delivered: {all:?}"
    );
    a.stop().await;
}

/// Plays another host that takes the `ticks` lease from whoever holds it (as a partition
/// that outlasted the TTL would let it): deletes the key and acquires it.
async fn steal_lease(server: &NatsServer) -> (async_nats::jetstream::Context, Held) {
    let js = crate::connect(server).await;
    let kv = js.get_key_value(BUCKET).await.expect("lease bucket");
    kv.delete("ticks").await.expect("delete the lease");
    let leases = Leases::open(&js, TTL).await.expect("leases");
    let held = leases
        .acquire("ticks", "intruder")
        .await
        .expect("acquire")
        .expect("vacant after the delete");
    (js, held)
}

/// Waits until `d`'s endpoint has stepped down at least once; its status then.
async fn stepped_down(d: &TestDaemon) -> ClusterStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = d.endpoint("ticks").cluster.status();
        // Once set it stays: the endpoint may already lead again (the intruder's lease is
        // short) by the time this looks.
        if s.stepped_down.is_some() {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "still leads: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A leader whose renewal is refused (someone else holds the key) closes its upstream
/// connection within one renewal period and says why; it leads again once the lease is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_loses_its_lease_steps_down_and_says_so() {
    let Some(server) = NatsServer::start("a_leader_that_loses_its_lease").await else {
        return;
    };
    let up = ticking().await;
    let a = host(&server, &up, "host-a").await;
    let mut on_a = subscribe(&mut a.grpc().await, "ticks", None).await;
    let before = take(&mut on_a, 20).await;
    let (_js, _held) = steal_lease(&server).await;
    let status = stepped_down(&a).await;
    let why = status.stepped_down.unwrap_or_default();
    assert!(
        why.contains("lost"),
        "status says the lease was lost: {why}"
    );
    // The intruder never renews: host-a takes the lease back and resumes where the stream is.
    leads(&a).await;
    let after = take_through(&mut on_a, a.endpoint("ticks").log.last_seq() + 40).await;
    let all: Vec<_> = before.into_iter().chain(after).collect();
    assert_contiguous(&all, "host-a across losing its lease");
    assert_eq!(up.accepted(), 2, "a second connection after the step-down");
    a.stop().await;
}

/// Three daemons; the nats-server restarts while messages flow. The leader cannot append or
/// renew during the outage, so it steps down; once the server is back a leader resumes from the
/// stream's last id, and every host's subscriber goes on with the same seqs, none lost or
/// repeated.
#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_come_through_a_nats_restart_with_identical_feeds() {
    let Some(mut server) = NatsServer::start("three_daemons_come_through_a_nats_restart").await
    else {
        return;
    };
    let up = ticking().await;
    let hosts = [
        host(&server, &up, "host-a").await,
        host(&server, &up, "host-b").await,
        host(&server, &up, "host-c").await,
    ];
    let mut subs = Vec::new();
    for h in &hosts {
        subs.push(subscribe(&mut h.grpc().await, "ticks", Some(0)).await);
    }
    let mut got: Vec<Vec<(u64, u64)>> = Vec::new();
    for s in &mut subs {
        got.push(take(s, 50).await);
    }
    server.restart().await;
    // Through the restart and well past it.
    let target = got[0].last().map_or(0, |m| m.0) + 200;
    for (s, g) in subs.iter_mut().zip(got.iter_mut()) {
        g.extend(take_through(s, target).await);
    }
    for (h, g) in hosts.iter().zip(&got) {
        assert_contiguous(g, &h.endpoint("ticks").name);
        assert_eq!(g[0], (1, 1), "from the first message");
    }
    let shortest = got.iter().map(Vec::len).min().unwrap_or(0);
    for g in &got[1..] {
        assert_eq!(g[..shortest], got[0][..shortest], "identical on every host");
    }
    let leaders = hosts
        .iter()
        .filter(|h| h.endpoint("ticks").cluster.status().role == Role::Leader)
        .count();
    assert_eq!(leaders, 1, "one leader after the restart");
    for h in hosts {
        h.stop().await;
    }
}

/// A host whose local window is small replays an older `from_seq` from the stream: every seq
/// from there on, once, in order, through the window and live; `from_seq = 0` from the
/// stream's oldest.
#[tokio::test(flavor = "multi_thread")]
async fn a_from_seq_older_than_the_local_window_is_read_from_the_stream() {
    let Some(server) = NatsServer::start("a_from_seq_older_than_the_local_window").await else {
        return;
    };
    let up = ticking().await;
    let a = host(&server, &up, "host-a").await;
    let mut on_a = subscribe(&mut a.grpc().await, "ticks", Some(0)).await;
    take(&mut on_a, 120).await;
    let b = host_with(&server, &up, "host-b", "replay = { messages = 10 }").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(b.endpoint("ticks").log.is_positioned()
        && b.endpoint("ticks").log.first_retained() > 20)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "host-b never filled its window"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut on_b = subscribe(&mut b.grpc().await, "ticks", Some(5)).await;
    let got = take_through(&mut on_b, b.endpoint("ticks").log.last_seq() + 20).await;
    assert_eq!(
        got[0],
        (6, 6),
        "from the seq after from_seq: {:?}",
        &got[..3]
    );
    assert_contiguous(&got, "host-b from the stream into its window");
    // `from_seq = 0`, the oldest retained, is the stream's oldest, not the window's.
    let mut oldest = subscribe(&mut b.grpc().await, "ticks", Some(0)).await;
    let got = take_through(&mut oldest, b.endpoint("ticks").log.last_seq() + 5).await;
    assert_eq!(got[0], (1, 1), "from the stream's first: {:?}", &got[..3]);
    assert_contiguous(&got, "host-b from the stream's oldest");
    a.stop().await;
    b.stop().await;
}

/// A clean stop tells a leader's and a follower's subscribers `closed` once each.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_says_closed_once() {
    let Some(server) = NatsServer::start("a_stop_says_closed_once").await else {
        return;
    };
    let up = ticking().await;
    let a = host(&server, &up, "host-a").await;
    leads(&a).await;
    let b = host(&server, &up, "host-b").await;
    for d in [a, b] {
        let mut s = subscribe(&mut d.grpc().await, "ticks", None).await;
        take(&mut s, 3).await;
        d.stop().await;
        let mut closed = 0;
        while let Ok(Some(Ok(ev))) = tokio::time::timeout(WAIT, s.next()).await {
            if let Some(proto::event::Event::State(st)) = ev.event {
                if crate::support::daemon::state_name(&st) == "closed" {
                    closed += 1;
                }
            }
        }
        assert_eq!(closed, 1, "closed once");
    }
}
