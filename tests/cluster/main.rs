//! `src/cluster/` against a real nats-server with JetStream (`tests/support/nats.rs`): one
//! server per test, each in its own temp dir, on a port it picks. Without a nats-server binary
//! every test here says so on one line and passes, except under `CI=true`.

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod fleet;
mod lease;
mod publish;
mod queue;
mod stream;

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
