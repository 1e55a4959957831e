//! The daemon, in this process on its own multi-thread runtime (threads named "daemon").

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use ws_sidecar::client::Target;
use ws_sidecar::endpoint::State;

pub struct Daemon {
    pub rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    pub uds: Target,
    pub tcp: Target,
    pub ndjson: PathBuf,
    registry: std::sync::Arc<ws_sidecar::registry::Registry>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<bool>,
    names: Vec<String>,
}

/// Starts a daemon whose endpoints are `bench` (first URL), `bench1`, `bench2`, … with a replay
/// window of `replay` messages, so flat-out subscribers are never skipped past the window.
pub fn start(base: &Path, urls: &[String], replay: u64) -> Result<Daemon, String> {
    start_with(base, urls, replay, "", "")
}

/// [`start`] with `global` appended to the config's top-level tables (e.g. a `[cluster]`) and
/// `endpoint` to every endpoint's table (e.g. `cluster = true`); `benches/cluster.rs` uses it.
#[allow(dead_code)]
pub fn start_with(
    base: &Path,
    urls: &[String],
    replay: u64,
    global: &str,
    endpoint: &str,
) -> Result<Daemon, String> {
    let dir = tempfile::Builder::new()
        .prefix("fanout-")
        .tempdir_in(base)
        .map_err(|e| format!("temp dir: {e}"))?;
    let d = dir.path();
    let mut toml = format!(
        r#"
[log]
level = "error"
[grpc]
listen = ["unix:{d}/grpc.sock", "127.0.0.1:0"]
[stream]
path = "{d}/stream.sock"
[http]
listen = ""
[store]
path = "{d}/store"
[limits]
max_subscribers = 8192
"#,
        d = d.display()
    );
    toml.push_str(global);
    let mut names = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let name = if i == 0 {
            crate::subs::ENDPOINT.to_owned()
        } else {
            format!("{}{i}", crate::subs::ENDPOINT)
        };
        toml.push_str(&format!(
            r#"
[endpoints.{name}]
url = "{url}"
{endpoint}
[endpoints.{name}.heartbeat]
ping_interval = "60s"
pong_timeout = "30s"
[endpoints.{name}.backoff]
initial = "10ms"
max = "100ms"
min_delay = "10ms"
[endpoints.{name}.replay]
messages = {replay}
bytes = "4GiB"
"#
        ));
        names.push(name);
    }
    let crate::common::InProcess {
        rt,
        shutdown,
        task,
        registry,
        tcp,
    } = crate::common::start_daemon(&toml, "fanout.toml")?;
    let tcp = tcp.ok_or("no TCP gRPC listener")?;
    Ok(Daemon {
        rt,
        uds: Target::Unix(d.join("grpc.sock")),
        tcp: Target::Tcp(tcp.to_string()),
        ndjson: d.join("stream.sock"),
        _dir: dir,
        registry,
        shutdown,
        task,
        names,
    })
}

impl Daemon {
    /// Waits until every endpoint is connected to the upstream.
    pub fn wait_connected(&self, within: Duration) -> Result<(), String> {
        self.rt.block_on(async {
            for n in &self.names {
                let ep = self.registry.get(n).ok_or("no endpoint")?;
                tokio::time::timeout(within, ep.wait_state(|s| s.state == State::Connected))
                    .await
                    .map_err(|_| format!("endpoint {n} not connected within {within:?}"))?;
            }
            Ok(())
        })
    }

    /// The daemon's endpoints (`benches/cluster.rs`; fanout.rs does not use it).
    #[allow(dead_code)]
    pub fn registry(&self) -> &std::sync::Arc<ws_sidecar::registry::Registry> {
        &self.registry
    }

    pub fn stop(self) -> Result<(), String> {
        self.shutdown.cancel();
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(6), self.task).await });
        self.rt.shutdown_timeout(Duration::from_secs(2));
        match r {
            Ok(Ok(true)) => Ok(()),
            other => Err(format!("daemon did not stop cleanly: {other:?}")),
        }
    }
}
