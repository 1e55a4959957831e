//! The daemon under test: the real `ws-sidecar` binary as a child process, so the RSS measured
//! is its own, with its config, store, sockets and log in the soak's temp dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

/// A running daemon.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    /// The gRPC Unix socket.
    pub grpc: Target,
    /// The loopback TCP gRPC listener.
    pub grpc_tcp: Target,
    /// The NDJSON socket.
    pub stream: PathBuf,
    /// Its stderr, for a look after a failed run.
    pub log: PathBuf,
}

/// The endpoints the soak configures: name, proxy address, resume settings.
pub struct EndpointSpec {
    pub name: &'static str,
    pub url: String,
    pub resume: &'static str,
    pub extra: &'static str,
    /// Give it a `requests` table, so that publishes can wait for the feed's answer.
    pub requests: bool,
}

/// The `requests` table of a `--confirmed` run. The feed's own messages carry integer ids at
/// `/id` too: the prefix keeps the daemon's ids apart from them, and `reply` takes only the
/// feed's answers as replies.
const REQUESTS: &str = "id = \"/id\"\nids = { prefix = \"sc-\" }\n\
                        reply = { pointer = \"/result\", equals = \"ok\" }\n";

/// The daemon binary cargo built for this bench, copied into `dir` so that a rebuild during the
/// run (say from another checkout sharing the target dir) cannot swap it underneath.
pub fn locate(explicit: Option<PathBuf>, dir: &Path) -> anyhow::Result<PathBuf> {
    let built = explicit.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ws-sidecar")));
    let copy = dir.join("ws-sidecar");
    std::fs::copy(&built, &copy)
        .with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

/// A loopback port free right now (the daemon binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn config(dir: &Path, grpc_port: u16, endpoints: &[EndpointSpec]) -> String {
    let d = dir.display();
    let mut c = format!(
        "[log]\nlevel = \"info\"\n\
         [grpc]\nlisten = [\"unix:{d}/grpc.sock\", \"127.0.0.1:{grpc_port}\"]\n\
         [stream]\npath = \"{d}/stream.sock\"\n\
         [http]\nlisten = \"\"\n\
         [store]\npath = \"{d}/store\"\n\
         [limits]\nmax_subscribers = 64\n"
    );
    for e in endpoints {
        c.push_str(&format!(
            "\n[endpoints.{name}]\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n{extra}\
             heartbeat = {{ ping_interval = \"1s\", pong_timeout = \"1s\" }}\n\
             backoff = {{ initial = \"100ms\", max = \"1s\", min_delay = \"50ms\" }}\n\
             resume = {{ {resume} }}\n\
             replay = {{ messages = {replay}{persist} }}\n\
             outbox = {{ max_age = \"{max_age}s\" }}\n",
            max_age = crate::OUTBOX_MAX_AGE.as_secs(),
            name = e.name,
            url = e.url,
            extra = e.extra,
            resume = e.resume,
            replay = crate::REPLAY_MESSAGES,
            persist = if e.name == "gamma" {
                ", persist = true"
            } else {
                ""
            },
        ));
        if e.requests {
            c.push_str(&format!("[endpoints.{}.requests]\n{REQUESTS}", e.name));
        }
    }
    c
}

impl Daemon {
    /// Writes the config into `dir` and starts `bin run` on it; returns once gRPC answers.
    pub async fn start(bin: &Path, dir: &Path, endpoints: &[EndpointSpec]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let cfg_path = dir.join("config.toml");
        std::fs::write(&cfg_path, config(dir, port, endpoints))
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
        let log = dir.join("daemon.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("daemon exited at once")?;
        let mut d = Daemon {
            child,
            pid,
            grpc: Target::Unix(dir.join("grpc.sock")),
            grpc_tcp: Target::Tcp(format!("127.0.0.1:{port}")),
            stream: dir.join("stream.sock"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = d.child.try_wait()? {
                bail!("daemon exited during start ({st}); see {}", d.log.display());
            }
            if d.status().await.is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon not answering gRPC after 30 s; see {}",
                    d.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GetStatus for every endpoint, over the Unix socket.
    pub async fn status(&self) -> anyhow::Result<Vec<proto::EndpointStatus>> {
        let mut c = client::connect(&self.grpc).await?;
        let r = c
            .get_status(proto::GetStatusRequest { endpoint: None })
            .await?;
        Ok(r.into_inner().endpoints)
    }

    /// Resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// What the RSS is made of: anonymous (heap) and file-backed pages, plus the store's size on
    /// disk, to tell a growing heap from a growing database.
    pub fn memory_detail(&self, dir: &Path) -> String {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
        };
        let store = std::fs::metadata(dir.join("store")).map_or(0, |m| m.len());
        // Open descriptors and threads: a leaked connection or task shows here first.
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count());
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .map_or("?", str::trim);
        format!(
            "anon {} + file {} MiB, store {:.1} MiB, {fds} fds, {threads} threads",
            field("RssAnon:"),
            field("RssFile:"),
            store as f64 / (1024.0 * 1024.0)
        )
    }

    /// `Some(description)` once the daemon has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    /// SIGTERM, then waits up to 10 s; returns the exit status text and how long it took.
    pub async fn stop(mut self) -> (String, Duration) {
        let t0 = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if !matches!(sent, Ok(s) if s.success()) {
            let _ = self.child.start_kill();
            return ("could not send SIGTERM; killed".into(), t0.elapsed());
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(st)) => (st.to_string(), t0.elapsed()),
            Ok(Err(e)) => (format!("wait failed: {e}"), t0.elapsed()),
            Err(_) => {
                let _ = self.child.start_kill();
                (
                    "still running 10 s after SIGTERM; killed".into(),
                    t0.elapsed(),
                )
            }
        }
    }
}
