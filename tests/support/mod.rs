//! Network fixtures for the integration tests, used through `mod support;`: a scriptable fake
//! upstream WebSocket server ([`upstream`]), a numbered tick feed on top of it ([`ticks`]), a
//! chaos TCP proxy ([`proxy`]), a fake Binance that enforces its send limit ([`binance`]),
//! protocol fakes written from public specs ([`jsonrpc`], [`graphql_ws`], [`socketio`], [`phoenix`],
//! [`home_assistant`]; the first three recording
//! into a [`journal`]), a real nats-server with JetStream ([`nats`]) and small helpers.
//! Everything binds 127.0.0.1 port 0 (nats-server: `-p -1`, its own pick).
//!
//! Each test binary uses a different subset, hence the blanket `allow`s.
//!
//! Paused time (`tokio::time::pause()`) and these fixtures do not mix: the paused clock jumps
//! ahead whenever the runtime is idle, and a runtime waiting on a real socket is idle, so every
//! timeout here would fire at once. Keep paused time for logic that touches no socket.
#![allow(dead_code, unused_imports)]

pub mod access;
pub mod binance;
pub mod compress;
pub mod daemon;
pub mod discord;
pub mod discovery;
pub mod flood;
pub mod frame;
pub mod graphql_ws;
pub mod home_assistant;
pub mod journal;
pub mod jsonrpc;
pub mod nats;
pub mod phoenix;
pub mod process;
pub mod proxy;
pub mod recipe;
pub mod socketio;
pub mod ticks;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::sync::watch;

pub use proxy::{ChaosProxy, Mode};
pub use ticks::{since_param, spawn_ticks, tick_id, tick_message, TickOptions};
pub use upstream::{Attempt, ClientClose, FakeUpstream, PendingConn, Reply, UpConn};

/// How long a fixture waits for something that should happen promptly when no bound is given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, panicking if it takes longer than `dur`. The panic names the caller's line, so a
/// hung test says where it hung instead of only timing out as a whole.
#[track_caller]
pub fn with_timeout<F: Future>(dur: Duration, fut: F) -> impl Future<Output = F::Output> {
    // Captured here because `#[track_caller]` does not reach into an async body.
    let caller = Location::caller();
    async move {
        match tokio::time::timeout(dur, fut).await {
            Ok(output) => output,
            Err(_) => panic!("timed out after {dur:?} at {caller}"),
        }
    }
}

/// A fresh temporary directory, removed when the guard drops. Its path under the system temp dir
/// is short enough for Unix socket paths (about 100 bytes at most).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ws-sidecar-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Waits until `counter` reaches `n`; on timeout, the count it had reached.
async fn wait_count(
    counter: &watch::Sender<usize>,
    n: usize,
    within: Duration,
) -> Result<(), usize> {
    let mut seen = counter.subscribe();
    // `counter` is borrowed, so the sender outlives the wait and `wait_for` cannot fail.
    let reached = tokio::time::timeout(within, seen.wait_for(|seen| *seen >= n))
        .await
        .is_ok_and(|reached| reached.is_ok());
    if reached {
        Ok(())
    } else {
        Err(*counter.borrow())
    }
}
