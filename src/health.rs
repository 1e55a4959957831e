//! Liveness of the running daemon, for the systemd watchdog and `/healthz`.
//!
//! A bare timer would keep pinging while the daemon is wedged. The probe instead is a task that
//! must be scheduled by the runtime, take the registry lock and every endpoint's state, log and
//! outbox locks, and report back within a deadline; and every endpoint task must still be
//! running (one that panicked leaves its endpoint frozen in its last state).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::Registry;

/// What the probe needs to see; cheap to clone.
#[derive(Clone)]
pub struct Liveness {
    registry: Arc<Registry>,
    /// The endpoint tasks; their count must not drop below the number of endpoints.
    upstreams: TaskTracker,
    /// Once cancelled, endpoint tasks end on purpose and are no longer counted.
    shutdown: CancellationToken,
}

impl Liveness {
    /// A probe over the daemon's registry and endpoint tasks.
    pub fn new(
        registry: Arc<Registry>,
        upstreams: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Liveness {
            registry,
            upstreams,
            shutdown,
        }
    }

    /// Ok when the probe made its round trip within `within`; else why not.
    pub async fn check(&self, within: Duration) -> Result<(), String> {
        let this = self.clone();
        let probe = tokio::spawn(async move { this.probe() });
        match tokio::time::timeout(within, probe).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("liveness probe failed: {e}")),
            Err(_) => Err(format!(
                "liveness probe did not complete within {}",
                crate::fmt::duration(within)
            )),
        }
    }

    fn probe(&self) -> Result<(), String> {
        let endpoints = self.registry.all();
        for ep in &endpoints {
            // Each of these takes a lock the endpoint's task or the APIs also take: a deadlock
            // or a stuck holder there makes the probe miss its deadline.
            let _ = ep.state();
            let _ = ep.log.first_retained();
            let _ = ep.outbox.depth();
        }
        let running = self.upstreams.len();
        if !self.shutdown.is_cancelled() && running < endpoints.len() {
            return Err(format!(
                "{} of {} endpoint tasks have stopped",
                endpoints.len() - running,
                endpoints.len()
            ));
        }
        Ok(())
    }
}
