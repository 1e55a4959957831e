//! What both bench binaries share: where `target/` is, median/min/max of repetitions, the
//! daemon started in-process on its own runtime (built as `main.rs` builds it), and the publish
//! path's runs ([`publish`]).
//!
//! Lives in a subdirectory so cargo does not take it for a bench target of its own. Each bench
//! uses a subset, hence the `allow`.
#![allow(dead_code)]

pub mod publish;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// The target directory: a bench binary is `<target>/<profile>/deps/<name>-<hash>`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// CPU ns used so far by this process's live threads, grouped by thread name (`comm`): slot `i`
/// for `names[i]`, the last slot for every other thread. From /proc/self/task/*/schedstat.
pub fn cpu_ns_by_thread<const N: usize>(names: &[&str]) -> [u64; N] {
    let mut by = [0u64; N];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let g = names
            .iter()
            .position(|n| comm.trim() == *n)
            .unwrap_or(N - 1);
        by[g] += ns;
    }
    by
}

/// Median, min and max of `v` (NaNs ignored).
pub fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

/// A daemon running in the bench process, on a runtime whose threads are named `daemon` (so
/// their CPU time can be told apart in /proc/self/task).
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<bool>,
    pub registry: Arc<ws_sidecar::registry::Registry>,
    /// The first TCP gRPC listener, when the config has one.
    pub tcp: Option<std::net::SocketAddr>,
}

/// Parses `toml` (named `name` in errors) and starts the daemon with it.
pub fn start_daemon(toml: &str, name: &str) -> Result<InProcess, String> {
    let cfg = ws_sidecar::config::load_str(toml, Path::new(name), &HashMap::new())
        .map_err(|e| format!("bench config: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("daemon")
        .build()
        .map_err(|e| format!("daemon runtime: {e}"))?;
    let shutdown = CancellationToken::new();
    let (task, registry, tcp) = rt.block_on(async {
        let listeners = ws_sidecar::listen::bind(&cfg)
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let tcp = listeners.grpc_tcp_addr();
        let store = ws_sidecar::store::Store::open(&cfg.store.path).map_err(|e| e.to_string())?;
        // As main.rs does: clustered endpoints need the fleet's NATS client (benches/cluster.rs).
        let cluster = match &cfg.cluster {
            Some(c) => Some(
                ws_sidecar::cluster::Node::connect(c)
                    .await
                    .map_err(|e| format!("cluster client: {e}"))?,
            ),
            None => None,
        };
        let daemon = ws_sidecar::supervisor::Daemon::start(
            cfg,
            listeners,
            Some(store),
            cluster,
            shutdown.clone(),
        )
        .map_err(|e| e.to_string())?;
        let registry = Arc::clone(&daemon.registry);
        Ok::<_, String>((tokio::spawn(daemon.run_until_stopped()), registry, tcp))
    })?;
    Ok(InProcess {
        rt,
        shutdown,
        task,
        registry,
        tcp,
    })
}
