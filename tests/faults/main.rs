//! The fault suite (issue 7): a hostile or broken upstream and network, and hostile local
//! clients, against the daemon in-process over real sockets. Every test checks three things:
//! the daemon stays up, the endpoint under attack recovers or fails with a clear reason, and a
//! second endpoint (a [`Bystander`]) with its subscribers does not notice.
//!
//! Random faults use a seeded RNG: the seed is printed, and `WS_SIDECAR_FAULT_SEED=N` replays
//! it. `WS_SIDECAR_HEAVY=1` turns on the larger variants (more iterations, more connections).

#[path = "../support/mod.rs"]
mod support;

mod clients;
mod crowd;
mod frames;
mod grpc_clients;
mod handshake;
mod handshake_101;
mod network;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto;
use ws_sidecar::proto::sidecar_client::SidecarClient;

use support::daemon::{next_message, subscribe, Ndjson, TestDaemon};
use support::{FakeUpstream, Reply, UpConn};

/// Bound on anything that should happen promptly; only reached when something is wrong.
pub const T: Duration = Duration::from_secs(10);

/// Name of the bystander endpoint.
pub const CALM: &str = "calm";

/// True when the heavy variants should run (`WS_SIDECAR_HEAVY=1`).
pub fn heavy() -> bool {
    std::env::var("WS_SIDECAR_HEAVY").is_ok_and(|v| v == "1")
}

/// The seed for a test's random faults: `WS_SIDECAR_FAULT_SEED` if set, else `default`, so CI
/// runs are repeatable. Printed so a failure can be replayed.
pub fn seed(test: &str, default: u64) -> u64 {
    let seed = std::env::var("WS_SIDECAR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("{test}: seed {seed} (replay with WS_SIDECAR_FAULT_SEED={seed})");
    seed
}

/// An endpoint section with millisecond backoff, so faults play out quickly. `extra` holds
/// top-level endpoint keys (one per line); further `[endpoints.NAME.*]` tables may follow.
pub fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[endpoints.{name}]\nurl = \"{url}\"\n{extra}\n[endpoints.{name}.backoff]\ninitial = \"20ms\"\nmax = \"100ms\"\nmin_delay = \"10ms\"\n"
    )
}

/// A second endpoint with its own upstream, one gRPC and one NDJSON subscriber. A fault on
/// another endpoint must not cost it a reconnect, a message, or a seq.
pub struct Bystander {
    up: FakeUpstream,
    conn: UpConn,
    /// Kept so the subscription's channel outlives nothing but the test.
    _client: SidecarClient<tonic::transport::Channel>,
    grpc: tonic::Streaming<proto::Event>,
    ndjson: Ndjson,
    sent: u64,
}

impl Bystander {
    /// Its upstream; start it before the daemon, whose config needs its URL.
    pub async fn upstream() -> FakeUpstream {
        FakeUpstream::start_with(|_, _| Reply::Accept).await
    }

    /// The config section for the bystander endpoint.
    pub fn config(up: &FakeUpstream) -> String {
        // Small, so the API request limits follow the endpoints of the test at hand.
        endpoint(CALM, &up.url("/calm"), "max_message_size = \"64KiB\"")
    }

    /// Waits for the bystander to connect and subscribes on both APIs.
    pub async fn attach(up: FakeUpstream, d: &TestDaemon) -> Bystander {
        let conn = up
            .next_accepted_within(T)
            .await
            .expect("the bystander endpoint connects");
        d.wait_state(CALM, State::Connected, T).await;
        let mut client = d.grpc().await;
        let grpc = subscribe(&mut client, CALM, None).await;
        let mut ndjson = d.ndjson().await;
        ndjson
            .send(json!({"op": "subscribe", "endpoint": CALM}))
            .await;
        let first = ndjson.recv_type("state", T).await;
        assert_eq!(first["state"], "connected", "{first}");
        Bystander {
            up,
            conn,
            _client: client,
            grpc,
            ndjson,
            sent: 0,
        }
    }

    /// One message through the bystander: both subscribers get it with the next seq, its
    /// endpoint never left its first connection, and the daemon still answers GetStatus.
    pub async fn check(&mut self, d: &TestDaemon) {
        self.sent += 1;
        let text = format!("calm-{}", self.sent);
        self.conn
            .send_text(&text)
            .await
            .expect("the bystander upstream sends");
        let m = next_message(&mut self.grpc, T).await;
        assert_eq!((m.seq, &m.data[..]), (self.sent, text.as_bytes()));
        let m = self.ndjson.recv_type("message", T).await;
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_str()),
            (Some(self.sent), Some(&*text))
        );
        let ep = d.endpoint(CALM);
        assert_eq!(ep.state().state, State::Connected);
        assert_eq!(ep.stats.reconnects.load(Ordering::Relaxed), 0);
        assert_eq!(
            self.up.accepted(),
            1,
            "the bystander upstream saw one connection"
        );
        let status = tokio::time::timeout(
            T,
            d.grpc()
                .await
                .get_status(proto::GetStatusRequest { endpoint: None }),
        )
        .await
        .expect("GetStatus answers in time")
        .expect("GetStatus succeeds")
        .into_inner();
        assert!(
            status.endpoints.iter().any(|e| e.name == CALM),
            "{status:?}"
        );
    }
}

/// Starts a daemon with `config` plus the bystander's endpoint, and attaches the bystander.
pub async fn with_bystander(config: &str) -> (TestDaemon, Bystander) {
    let calm = Bystander::upstream().await;
    let d = support::daemon::start_daemon(&(config.to_owned() + &Bystander::config(&calm))).await;
    let by = Bystander::attach(calm, &d).await;
    (d, by)
}

/// Awaits `fut` at most `within`, panicking with `what` otherwise.
pub async fn within<F: std::future::Future>(within: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(within, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not within {within:?}"),
    }
}

/// Waits until `cond` holds, at most `limit`. For counters that change without an event to
/// await (subscriber counts, outbox depth); it checks every 10 ms.
pub async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    within(limit, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}
