//! Hot reload (SPEC §4): apply a new, already validated config to the running daemon.
//!
//! Endpoints whose settings did not change keep their connection, subscribers and seq. Changed
//! ones restart their upstream task with the new settings on the same log and outbox, so
//! subscribers stay and seqs continue (replay and outbox sizes keep their startup values).
//! Removed ones close upstream (1001), give subscribers a final `closed` state and end their
//! streams. New ones start. Listener, store, limit and log settings need a restart: a reload
//! that changes them says so and leaves them as they are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::endpoint::{Endpoint, State};
use crate::registry::Registry;
use crate::stall::Stalls;
use crate::store::{Restored, Store, StoreError};

/// How long a stopping upstream task may take before the reload goes on without it.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Sections that differ but only take effect at a restart.
    pub need_restart: Vec<&'static str>,
}

/// A running endpoint task.
struct Task {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

struct Applied {
    /// What is applied now: the endpoints of the last reload, the rest from startup.
    config: Config,
    tasks: HashMap<String, Task>,
}

/// Starts endpoint tasks and applies reloads; cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    store: Option<Store>,
    upstreams: TaskTracker,
    shutdown: CancellationToken,
    /// Stalls of the process, for every upstream task to check its connection after.
    stalls: Stalls,
    /// Also serialises reloads.
    state: tokio::sync::Mutex<Applied>,
}

impl Reloader {
    /// Spawns an upstream task for every endpoint in `registry`, configured as in `config`.
    pub fn start(
        config: Config,
        registry: Arc<Registry>,
        store: Option<Store>,
        upstreams: TaskTracker,
        shutdown: CancellationToken,
        stalls: Stalls,
    ) -> Reloader {
        let mut tasks = HashMap::new();
        for ep in registry.all() {
            tasks.insert(ep.name.clone(), spawn(&upstreams, &shutdown, &stalls, ep));
        }
        Reloader {
            inner: Arc::new(Inner {
                registry,
                store,
                upstreams,
                shutdown,
                stalls,
                state: tokio::sync::Mutex::new(Applied { config, tasks }),
            }),
        }
    }

    /// Applies `new`. Fails only when a new endpoint cannot be restored from the store; the
    /// endpoints handled before that stay applied.
    pub async fn apply(&self, new: Config) -> Result<ReloadReport, StoreError> {
        let inner = &*self.inner;
        let mut st = inner.state.lock().await;
        let mut report = ReloadReport::default();
        let old = &st.config;
        for (section, differs) in [
            ("grpc", old.grpc != new.grpc),
            ("stream", old.stream != new.stream),
            ("sockets", old.sockets != new.sockets),
            ("http", old.http != new.http),
            ("store", old.store != new.store),
            ("limits", old.limits != new.limits),
            ("log", old.log != new.log),
        ] {
            if differs {
                report.need_restart.push(section);
            }
        }
        let old_endpoints = old.endpoints.clone();

        for name in old_endpoints
            .keys()
            .filter(|n| !new.endpoints.contains_key(*n))
        {
            if let Some(ep) = inner.registry.get(name) {
                ep.set_restarting(true);
                if stop(st.tasks.remove(name)).await {
                    ep.record_clean_stop().await;
                }
                // Out of the registry first, so whoever sees the final state also sees it gone.
                inner.registry.remove(name);
                ep.set_state(State::Closed, "removed from the config");
                ep.log.close();
            }
            report.removed.push(name.clone());
        }
        for (name, cfg) in &new.endpoints {
            match old_endpoints.get(name) {
                Some(old_cfg) if old_cfg == cfg => report.unchanged.push(name.clone()),
                Some(_) => {
                    if let Some(ep) = inner.registry.get(name) {
                        ep.set_restarting(true);
                        stop(st.tasks.remove(name)).await;
                        ep.set_config(cfg.clone());
                        ep.set_restarting(false);
                        ep.set_state(State::Connecting, "config changed: reconnecting");
                        let task = spawn(&inner.upstreams, &inner.shutdown, &inner.stalls, ep);
                        st.tasks.insert(name.clone(), task);
                    }
                    report.changed.push(name.clone());
                }
                None => {
                    let restored = match &inner.store {
                        Some(s) => s.restore(name, crate::store::RestoreLimits::of(cfg))?,
                        None => Restored::default(),
                    };
                    let ep =
                        Endpoint::new(name.clone(), cfg.clone(), inner.store.clone(), restored);
                    inner.registry.insert(Arc::clone(&ep));
                    let task = spawn(&inner.upstreams, &inner.shutdown, &inner.stalls, ep);
                    st.tasks.insert(name.clone(), task);
                    report.added.push(name.clone());
                }
            }
        }
        st.config = Config {
            endpoints: new.endpoints,
            ..st.config.clone()
        };
        for section in &report.need_restart {
            tracing::warn!(
                section,
                "changed in the config file; takes effect at the next restart"
            );
        }
        tracing::info!(
            added = ?report.added,
            changed = ?report.changed,
            removed = ?report.removed,
            unchanged = report.unchanged.len(),
            "config reloaded"
        );
        Ok(report)
    }
}

fn spawn(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    stalls: &Stalls,
    ep: Arc<Endpoint>,
) -> Task {
    let token = shutdown.child_token();
    let handle = tracker.spawn(crate::upstream::run(ep, token.clone(), stalls.clone()));
    Task { token, handle }
}

/// Stops an endpoint task; false when it did not end in time (it may still append).
async fn stop(task: Option<Task>) -> bool {
    let Some(t) = task else { return true };
    t.token.cancel();
    if tokio::time::timeout(STOP_WAIT, t.handle).await.is_err() {
        tracing::warn!("an endpoint task did not stop in time; going on without it");
        return false;
    }
    true
}
