//! Starts and stops everything: one task per endpoint and one per listener, under a
//! CancellationToken and TaskTracker, with a bounded grace period at shutdown.
//!
//! Shutdown order: upstreams close first (code 1001), so their final `closed` state reaches
//! subscribers; then the logs close, which ends every subscription; then the servers finish.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::health::Liveness;
use crate::listen::{self, Listeners};
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::stall::Stalls;
use crate::store::{Restored, Store, StoreError};

/// Time allowed for everything to stop after the shutdown signal (SPEC §14: exit within 5 s).
pub const GRACE: Duration = Duration::from_millis(4500);

/// A running daemon: what tests and `demo` need to reach it.
pub struct Daemon {
    pub registry: Arc<Registry>,
    /// The probe behind the systemd watchdog and `/healthz`.
    pub liveness: Liveness,
    /// Applies a reloaded config (SIGHUP, the `Reload` RPC).
    pub reloader: Reloader,
    shutdown: CancellationToken,
    upstreams: TaskTracker,
    servers: TaskTracker,
    sockets: Vec<std::path::PathBuf>,
    store: Option<Store>,
}

impl Daemon {
    /// Restores every endpoint from `store`, starts it, and serves the given listeners until
    /// `shutdown` is cancelled. Without a store everything stays in memory. Clustered
    /// endpoints go through `cluster` (required when the config has any).
    pub fn start(
        cfg: Config,
        listeners: Listeners,
        store: Option<Store>,
        cluster: Option<crate::cluster::Node>,
        shutdown: CancellationToken,
    ) -> Result<Daemon, StoreError> {
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        for (name, ec) in &cfg.endpoints {
            let restored = match &store {
                Some(s) => s.restore(name, crate::store::RestoreLimits::of(ec))?,
                None => Restored::default(),
            };
            endpoints.push(Endpoint::new(
                name.clone(),
                ec.clone(),
                store.clone(),
                restored,
            ));
        }
        let registry = Registry::new(endpoints, cfg.limits.max_subscribers);
        let upstreams = TaskTracker::new();
        let stalls = Stalls::default();
        let limits = api::limits::RequestLimits::for_config(&cfg);
        let reloader = Reloader::start(
            cfg,
            Arc::clone(&registry),
            store.clone(),
            upstreams.clone(),
            shutdown.clone(),
            stalls.clone(),
            cluster,
        );
        reloader.sockets_passed_for(listeners.passed_keys.clone());
        upstreams.close();

        let servers = TaskTracker::new();
        let sockets = listeners.socket_paths();
        let (reporter, _) = tonic_health::server::health_reporter();
        servers.spawn(api::grpc::run_health(
            Arc::clone(&registry),
            reporter.clone(),
            shutdown.clone(),
        ));
        for l in listeners.grpc {
            let (registry, reloader, reporter, token) = (
                Arc::clone(&registry),
                reloader.clone(),
                reporter.clone(),
                shutdown.clone(),
            );
            servers.spawn(async move {
                let max = limits.grpc_request;
                if let Err(e) = api::grpc::serve(l, max, registry, reloader, reporter, token).await
                {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            });
        }
        if let Some((l, _)) = listeners.stream {
            servers.spawn(api::stream::serve(
                l,
                Arc::clone(&registry),
                limits.ndjson_line,
                shutdown.clone(),
            ));
        }
        let liveness = Liveness::new(Arc::clone(&registry), upstreams.clone(), shutdown.clone());
        if let Some(l) = listeners.http {
            servers.spawn(api::http::serve(
                l,
                Arc::clone(&registry),
                liveness.clone(),
                shutdown.clone(),
            ));
        }
        servers.spawn(stalls.watch(shutdown.clone()));
        servers.close();
        Ok(Daemon {
            reloader,
            liveness,
            registry,
            shutdown,
            upstreams,
            servers,
            sockets,
            store,
        })
    }

    /// Waits for the shutdown signal, then stops everything within [`GRACE`]. Returns false when
    /// the grace period ran out.
    pub async fn run_until_stopped(self) -> bool {
        self.shutdown.cancelled().await;
        tracing::info!("shutting down");
        let deadline = tokio::time::Instant::now() + GRACE;
        let upstreams_done = tokio::time::timeout_at(
            deadline - Duration::from_millis(1500),
            self.upstreams.wait(),
        )
        .await
        .is_ok();
        if upstreams_done {
            // Nothing appends any more: the exact last seqs can be recorded. Otherwise the next
            // start treats this stop as a crash.
            let record = futures_util::future::join_all(
                self.registry
                    .all()
                    .into_iter()
                    .map(|ep| async move { ep.record_clean_stop().await }),
            );
            if tokio::time::timeout_at(deadline - Duration::from_millis(1000), record)
                .await
                .is_err()
            {
                tracing::warn!("the last seqs were not recorded in time");
            }
        }
        for ep in self.registry.all() {
            ep.log.close();
            ep.share.stop_confirm_waiters();
        }
        let servers_done = tokio::time::timeout_at(deadline, self.servers.wait())
            .await
            .is_ok();
        listen::remove_sockets(&self.sockets);
        // Commit whatever is still queued (e.g. outbox deletions) before the process ends.
        if let Some(store) = self.store {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let closing = tokio::task::spawn_blocking(move || store.close());
            if tokio::time::timeout(left, closing).await.is_err() {
                tracing::warn!("store did not finish its last commit in time");
            }
        }
        if !(upstreams_done && servers_done) {
            tracing::warn!(
                upstreams_done,
                servers_done,
                "grace period of {} ran out; exiting anyway",
                crate::fmt::duration(GRACE)
            );
        }
        upstreams_done && servers_done
    }
}
