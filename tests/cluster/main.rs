//! `src/cluster/` against a real nats-server with JetStream (`tests/support/nats.rs`): one
//! server per test, each in its own temp dir, on a port it picks. Without a nats-server binary
//! every test here says so on one line and passes, except under `CI=true`.

#[path = "../support/mod.rs"]
mod support;

mod append;
mod burst;
mod crash;
mod fleet;
mod lease;
mod link;
mod publish;
mod queue;
mod replicas;
mod requests;
mod stream;
mod subscriptions;

use async_nats::jetstream;
use support::nats::NatsServer;

/// A server and a JetStream context on a client of it; `None` when there is no server binary.
async fn start(test: &str) -> Option<(NatsServer, jetstream::Context)> {
    let server = NatsServer::start(test).await?;
    let js = connect(&server).await;
    Some((server, js))
}

/// A new client connection: another "host" of the fleet.
async fn connect(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", server.url(), server.recent_log()));
    jetstream::new(client)
}

/// The `[cluster]` of a test fleet on `server`: this daemon's `name`, a 1 s lease (the shortest
/// JetStream allows, so failovers are quick), one replica, no retention limits.
fn cluster_config(server: &NatsServer, name: &str) -> ws_sidecar::config::ClusterConfig {
    ws_sidecar::config::ClusterConfig {
        servers: vec![server.url()],
        name: name.to_string(),
        user: None,
        token: None,
        tls_ca: None,
        tls_client: None,
        require_tls: false,
        lease_ttl: std::time::Duration::from_secs(1),
        replicas: 1,
        retention: ws_sidecar::config::ClusterRetention {
            max_messages: None,
            max_bytes: None,
            max_age: None,
            duplicate_window: std::time::Duration::from_secs(120),
        },
    }
}

/// An in-process daemon named `name` with the endpoints of `toml`, `endpoint` clustered.
async fn clustered_daemon(
    server: &NatsServer,
    toml: &str,
    endpoint: &str,
    name: &str,
) -> support::daemon::TestDaemon {
    let mut cfg = support::daemon::parse_config(toml);
    cfg.cluster = Some(cluster_config(server, name));
    if let Some(ep) = cfg.endpoints.get_mut(endpoint) {
        ep.cluster = true;
    }
    support::daemon::start_with(cfg).await
}

/// Waits (bounded) until `d`'s endpoint `endpoint` has `role`.
async fn wait_role(
    d: &support::daemon::TestDaemon,
    endpoint: &str,
    role: ws_sidecar::cluster::slot::Role,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while d.endpoint(endpoint).cluster.status().role != role {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{endpoint} never became {}",
            role.as_str()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Messages as (seq, tick id) into `got` until one at `through` or later; panics on a gap.
async fn take_ticks(
    s: &mut tonic::Streaming<ws_sidecar::proto::Event>,
    got: &mut Vec<(u64, u64)>,
    through: u64,
) {
    while got.last().is_none_or(|m| m.0 < through) {
        let m = support::daemon::next_message(s, std::time::Duration::from_secs(30)).await;
        got.push((
            m.seq,
            support::ticks::tick_id(&String::from_utf8_lossy(&m.data)).expect("a tick"),
        ));
    }
}

/// Seqs and tick ids both go up by one from message to message on `host`.
fn assert_ticks_contiguous(got: &[(u64, u64)], host: &str) {
    for w in got.windows(2) {
        assert_eq!(
            (w[1].0, w[1].1),
            (w[0].0 + 1, w[0].1 + 1),
            "{host}: a hole or a duplicate between {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}
