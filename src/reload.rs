//! Hot reload (SPEC §4): re-read the config file the daemon started with and apply it, the same
//! way for SIGHUP and the `Reload` RPC ([`Reloader::reload_file`]).
//!
//! An invalid file changes nothing: the errors are logged, returned to the caller, and the
//! systemd STATUS line says `reload refused: <first error>` until a reload succeeds. A valid one
//! is applied ([`Reloader::apply`]): endpoints whose settings did not change keep their
//! connection, subscribers and seq. Changed ones restart their upstream task with the new
//! settings on the same log and outbox, so subscribers stay and seqs continue. Removed ones
//! close upstream (1001), give subscribers a final `closed` state and end their streams. New
//! ones start. `log.level` applies at once. What only takes effect at a restart (listeners, the
//! store, limits, `log.format`, an endpoint's `replay` and `outbox` sizes) is left as it runs
//! and named, key by key, in the report; such a change alone reconnects nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::limits::RequestLimits;
use crate::config::{Config, EndpointConfig};
use crate::endpoint::{Endpoint, State};
use crate::registry::Registry;
use crate::stall::Stalls;
use crate::store::{Restored, Store, StoreError};
use crate::systemd::Notifier;

/// How long a stopping upstream task may take before the reload goes on without it.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Keys that differ but only take effect at a restart, e.g. `http.listen` or
    /// `endpoints.prices.replay.messages`; they are left as they run.
    pub need_restart: Vec<String>,
    /// Settings applied in place, reconnecting nothing: `log.level = "debug"`.
    pub applied: Vec<String>,
    /// What the operator should know about the new settings (a `log.level` that `RUST_LOG`
    /// overrides).
    pub warnings: Vec<String>,
}

/// The answer to "reload the config file": whether it was accepted, and what it changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The file read.
    pub config: PathBuf,
    /// False when the file was refused (nothing changed) or the reload could not finish.
    pub accepted: bool,
    /// Why it was refused: the config errors, one `<file>: <key>: <problem>` line each.
    pub errors: Vec<String>,
    /// The new file's warnings (secrets in clear…) and the report's.
    pub warnings: Vec<String>,
    /// What changed; empty when refused.
    pub report: ReloadReport,
}

/// A running endpoint task.
struct Task {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

struct Applied {
    /// What is in force now: the endpoints of the last reload (with their startup replay and
    /// outbox sizes), `log.level` of the last reload, the rest from startup.
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
    /// The fleet connection, when `[cluster]` is configured.
    cluster: Option<crate::cluster::Node>,
    /// Also serialises [`Reloader::apply`].
    state: tokio::sync::Mutex<Applied>,
    /// Serialises [`Reloader::reload_file`], so RELOADING=1 … READY=1 pairs never interleave.
    reloading: tokio::sync::Mutex<()>,
    /// Where READY/STATUS go; set by the daemon's `run` (tests may leave it unset).
    notifier: OnceLock<Notifier>,
    /// The API request limits the listeners were started with.
    limits: RequestLimits,
    /// Listener keys whose sockets systemd passed (see [`Reloader::sockets_passed_for`]).
    passed: std::sync::Mutex<Vec<&'static str>>,
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
        cluster: Option<crate::cluster::Node>,
    ) -> Reloader {
        let mut tasks = HashMap::new();
        for ep in registry.all() {
            tasks.insert(
                ep.name.clone(),
                spawn(&upstreams, &shutdown, &stalls, cluster.as_ref(), ep),
            );
        }
        Reloader {
            inner: Arc::new(Inner {
                limits: RequestLimits::for_config(&config),
                passed: std::sync::Mutex::new(Vec::new()),
                registry,
                store,
                upstreams,
                shutdown,
                stalls,
                cluster,
                state: tokio::sync::Mutex::new(Applied { config, tasks }),
                reloading: tokio::sync::Mutex::new(()),
                notifier: OnceLock::new(),
            }),
        }
    }

    /// Notes the listener keys (`grpc.listen`, `stream.path`, `http.listen`) whose sockets
    /// systemd passed: a reload that changes one reports it as ignored, since only the socket
    /// unit moves that socket, rather than as waiting for a restart that would not apply it
    /// either.
    pub fn sockets_passed_for(&self, keys: Vec<&'static str>) {
        *self.inner.passed.lock().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Sends reload notifications (RELOADING=1, READY=1, the STATUS line) through `notifier`.
    /// Only the first call counts.
    pub fn notify_via(&self, notifier: Notifier) {
        let _ = self.inner.notifier.set(notifier);
    }

    /// Re-reads the file the daemon started with and applies it: what SIGHUP and the `Reload`
    /// RPC both do. An invalid file changes nothing, is logged, and leaves `reload refused: <first
    /// error>` in the STATUS line until a reload succeeds.
    pub async fn reload_file(&self) -> ReloadOutcome {
        let inner = &*self.inner;
        let _one_at_a_time = inner.reloading.lock().await;
        let path = inner.state.lock().await.config.source.clone();
        let notifier = inner.notifier.get().cloned().unwrap_or_default();
        tracing::info!(config = %path.display(), "reloading the config");
        notifier.reloading();
        let mut outcome = ReloadOutcome {
            config: path.clone(),
            ..ReloadOutcome::default()
        };
        match crate::config::load(&path) {
            Err(e) => {
                for line in &e.errors {
                    tracing::error!("reload refused, running config unchanged: {line}");
                }
                outcome.errors = e.errors;
            }
            Ok(cfg) => {
                outcome.warnings = cfg.warnings();
                for w in &outcome.warnings {
                    tracing::warn!("{w}");
                }
                match self.apply(cfg).await {
                    Ok(report) => {
                        outcome.accepted = true;
                        outcome.warnings.extend(report.warnings.iter().cloned());
                        outcome.report = report;
                    }
                    Err(e) => {
                        tracing::error!("reload incomplete: {e}");
                        outcome.errors = vec![format!("reload incomplete: {e}")];
                    }
                }
            }
        }
        inner
            .registry
            .set_reload_refused(outcome.errors.first().cloned());
        notifier.ready(&inner.registry);
        notifier.endpoints_changed();
        outcome
    }

    /// Applies `new`. Fails only when a new endpoint cannot be restored from the store; the
    /// endpoints handled before that stay applied.
    pub async fn apply(&self, new: Config) -> Result<ReloadReport, StoreError> {
        let inner = &*self.inner;
        let mut st = inner.state.lock().await;
        let mut report = ReloadReport {
            need_restart: global_restart_keys(&st.config, &new),
            ..ReloadReport::default()
        };
        let passed = inner
            .passed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        report.need_restart.retain(|key| {
            let from_systemd = passed.contains(&key.as_str());
            if from_systemd {
                report.warnings.push(format!(
                    "{}: {key}: ignored, systemd passes this socket: change its socket unit",
                    new.source.display()
                ));
            }
            !from_systemd
        });
        if RequestLimits::for_config(&new) != inner.limits {
            // The listeners sized their request limits from the largest one when they started.
            report
                .need_restart
                .push("API request size (the largest endpoints.*.max_message_size)".into());
        }
        if st.config.log.level != new.log.level {
            match crate::logging::set_level(&new.log.level) {
                Ok(()) | Err(crate::logging::LevelError::NotInitialised) => {
                    st.config.log.level = new.log.level.clone();
                    tracing::info!(level = %new.log.level, "log.level applied");
                    report
                        .applied
                        .push(format!("log.level = {:?}", new.log.level));
                }
                Err(e) => report.warnings.push(format!(
                    "{}: log.level: not applied: {e}",
                    new.source.display()
                )),
            }
        }
        let old_endpoints = st.config.endpoints.clone();

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
        let mut in_force = BTreeMap::new();
        for (name, cfg) in &new.endpoints {
            match old_endpoints.get(name) {
                Some(running) => {
                    report.need_restart.extend(
                        endpoint_restart_keys(running, cfg)
                            .into_iter()
                            .map(|k| format!("{}.{k}", crate::config::endpoint_path(name))),
                    );
                    let effective = with_startup_sizes(cfg, running);
                    if effective == *running {
                        report.unchanged.push(name.clone());
                    } else {
                        if let Some(ep) = inner.registry.get(name) {
                            ep.set_restarting(true);
                            stop(st.tasks.remove(name)).await;
                            ep.set_config(effective.clone());
                            ep.set_restarting(false);
                            ep.set_state(State::Connecting, "config changed: reconnecting");
                            let task = spawn(
                                &inner.upstreams,
                                &inner.shutdown,
                                &inner.stalls,
                                inner.cluster.as_ref(),
                                ep,
                            );
                            st.tasks.insert(name.clone(), task);
                        }
                        report.changed.push(name.clone());
                    }
                    in_force.insert(name.clone(), effective);
                }
                None => {
                    let restored = match &inner.store {
                        Some(s) => s.restore(name, crate::store::RestoreLimits::of(cfg))?,
                        None => Restored::default(),
                    };
                    let ep =
                        Endpoint::new(name.clone(), cfg.clone(), inner.store.clone(), restored);
                    inner.registry.insert(Arc::clone(&ep));
                    let task = spawn(
                        &inner.upstreams,
                        &inner.shutdown,
                        &inner.stalls,
                        inner.cluster.as_ref(),
                        ep,
                    );
                    st.tasks.insert(name.clone(), task);
                    report.added.push(name.clone());
                    in_force.insert(name.clone(), cfg.clone());
                }
            }
        }
        st.config.endpoints = in_force;
        for w in &report.warnings {
            tracing::warn!("{w}");
        }
        if !report.need_restart.is_empty() {
            tracing::warn!(
                keys = ?report.need_restart,
                "changed in the config file; take effect at the next restart"
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

/// The keys outside `endpoints` that differ and wait for a restart (`log.level` does not).
fn global_restart_keys(old: &Config, new: &Config) -> Vec<String> {
    [
        ("grpc.listen", old.grpc.listen != new.grpc.listen),
        (
            "grpc.allow_remote",
            old.grpc.allow_remote != new.grpc.allow_remote,
        ),
        ("stream.path", old.stream.path != new.stream.path),
        ("sockets.mode", old.sockets.mode != new.sockets.mode),
        ("sockets.group", old.sockets.group != new.sockets.group),
        ("http.listen", old.http.listen != new.http.listen),
        ("store.path", old.store.path != new.store.path),
        (
            "limits.max_subscribers",
            old.limits.max_subscribers != new.limits.max_subscribers,
        ),
        ("log.format", old.log.format != new.log.format),
        ("cluster", old.cluster != new.cluster),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(key, _)| key.to_owned())
    .collect()
}

/// An endpoint's keys that differ and wait for a restart: the log and the outbox are sized
/// when the endpoint starts.
fn endpoint_restart_keys(old: &EndpointConfig, new: &EndpointConfig) -> Vec<&'static str> {
    let (r, nr, o, no) = (&old.replay, &new.replay, &old.outbox, &new.outbox);
    [
        ("replay.messages", r.messages != nr.messages),
        ("replay.bytes", r.bytes != nr.bytes),
        ("replay.persist", r.persist != nr.persist),
        (
            "replay.slow_subscriber",
            r.slow_subscriber != nr.slow_subscriber,
        ),
        ("outbox.max_messages", o.max_messages != no.max_messages),
        ("outbox.max_bytes", o.max_bytes != no.max_bytes),
        ("outbox.max_age", o.max_age != no.max_age),
        ("outbox.durable", o.durable != no.durable),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(key, _)| key)
    .collect()
}

/// `new` with the replay and outbox settings `running` has, which stay until a restart.
fn with_startup_sizes(new: &EndpointConfig, running: &EndpointConfig) -> EndpointConfig {
    EndpointConfig {
        replay: running.replay.clone(),
        outbox: running.outbox.clone(),
        ..new.clone()
    }
}

fn spawn(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    stalls: &Stalls,
    cluster: Option<&crate::cluster::Node>,
    ep: Arc<Endpoint>,
) -> Task {
    let token = shutdown.child_token();
    let handle = match (ep.config().cluster, cluster) {
        (true, Some(node)) => tracker.spawn(crate::cluster::role::run(
            ep,
            node.clone(),
            token.clone(),
            stalls.clone(),
        )),
        // A reload turned `cluster` on in a daemon started without `[cluster]` (which waits
        // for a restart): running it alone would hold a second upstream connection.
        (true, None) => {
            ep.set_state(
                crate::endpoint::State::Failed,
                "cluster = true needs the [cluster] section the daemon started with; restart it",
            );
            let stop = token.clone();
            tracker.spawn(async move {
                stop.cancelled().await;
                if !ep.is_restarting() {
                    ep.set_state(crate::endpoint::State::Closed, "shutting down");
                }
            })
        }
        (false, _) => tracker.spawn(crate::upstream::run(ep, token.clone(), stalls.clone())),
    };
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
