//! Starts the real daemon in-process on temp Unix sockets, with helpers to reach it over gRPC
//! and NDJSON and to wait for endpoint states.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use ws_sidecar::client::{self, Target};
use ws_sidecar::config::{self, Config, ListenAddr};
use ws_sidecar::endpoint::{Endpoint, State, StateEvent};
use ws_sidecar::proto::sidecar_client::SidecarClient;
use ws_sidecar::proto::{self, event::Event as Ev};
use ws_sidecar::registry::Registry;

/// A daemon running inside the test process.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub grpc_path: PathBuf,
    pub stream_path: PathBuf,
    /// The TCP gRPC listener, when the config asked for one (e.g. `127.0.0.1:0`).
    pub grpc_tcp: Option<std::net::SocketAddr>,
    /// The HTTP listener, when the config asked for `http.listen = "127.0.0.1:0"`.
    pub http: Option<std::net::SocketAddr>,
    pub registry: Arc<Registry>,
    /// Applies a new config as SIGHUP would.
    pub reloader: ws_sidecar::reload::Reloader,
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<bool>>,
}

/// Parses `toml` (endpoint sections and limits; sockets are put in a temp dir).
pub fn parse_config(toml: &str) -> Config {
    let env = std::collections::HashMap::new();
    match config::load_str(toml, Path::new("test.toml"), &env) {
        Ok(c) => c,
        Err(e) => panic!("test config is invalid:\n{e}"),
    }
}

/// Starts the daemon with `toml`, its gRPC and NDJSON sockets in a fresh temp dir.
pub async fn start_daemon(toml: &str) -> TestDaemon {
    start_with(parse_config(toml)).await
}

/// Starts the daemon with a parsed config, its sockets in a fresh temp dir.
pub async fn start_with(cfg: Config) -> TestDaemon {
    start_in(cfg, tempfile::tempdir().expect("temp dir")).await
}

/// Starts the daemon with a parsed config, its sockets and store in `dir` (a restart keeps it).
pub async fn start_in(mut cfg: Config, dir: tempfile::TempDir) -> TestDaemon {
    let grpc_path = dir.path().join("run/grpc.sock");
    let stream_path = dir.path().join("run/stream.sock");
    let tcp: Vec<ListenAddr> = cfg
        .grpc
        .listen
        .iter()
        .filter(|l| matches!(l, ListenAddr::Tcp(_)))
        .cloned()
        .collect();
    cfg.grpc.listen = vec![ListenAddr::Unix(grpc_path.clone())];
    cfg.grpc.listen.extend(tcp);
    cfg.stream.path = Some(stream_path.clone());
    cfg.store.path = dir.path().join("store");
    // Port 0 means the test wants HTTP; anything else (the default 9750) would collide.
    cfg.http.listen = cfg.http.listen.filter(|a| a.port() == 0);
    let listeners = ws_sidecar::listen::bind(&cfg)
        .await
        .expect("bind listeners");
    let grpc_tcp = listeners.grpc_tcp_addr();
    let http = listeners.http_addr();
    let store = ws_sidecar::store::Store::open(&cfg.store.path).expect("open store");
    let shutdown = CancellationToken::new();
    let cluster = match &cfg.cluster {
        Some(c) => Some(
            ws_sidecar::cluster::Node::connect(c)
                .await
                .expect("cluster client"),
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
    .expect("start daemon");
    let registry = Arc::clone(&daemon.registry);
    let reloader = daemon.reloader.clone();
    let task = tokio::spawn(daemon.run_until_stopped());
    TestDaemon {
        reloader,
        dir,
        grpc_path,
        stream_path,
        grpc_tcp,
        http,
        registry,
        shutdown,
        task: Some(task),
    }
}

impl TestDaemon {
    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Arc<Endpoint> {
        self.registry.get(name).expect("endpoint exists")
    }

    /// Waits (bounded) until endpoint `name` is in `state`; returns that state event.
    pub async fn wait_state(&self, name: &str, state: State, within: Duration) -> StateEvent {
        let ep = self.endpoint(name);
        match tokio::time::timeout(within, ep.wait_state(|s| s.state == state)).await {
            Ok(ev) => ev,
            Err(_) => panic!(
                "endpoint {name} not {} within {within:?}; it is {:?}",
                state.as_str(),
                ep.state()
            ),
        }
    }

    /// A gRPC client over the Unix socket.
    pub async fn grpc(&self) -> SidecarClient<tonic::transport::Channel> {
        client::connect(&Target::Unix(self.grpc_path.clone()))
            .await
            .expect("grpc connect")
    }

    /// An NDJSON connection.
    pub async fn ndjson(&self) -> Ndjson {
        let s = UnixStream::connect(&self.stream_path)
            .await
            .expect("ndjson connect");
        let (r, w) = s.into_split();
        Ndjson {
            lines: BufReader::new(r).lines(),
            w,
        }
    }

    /// Stops the daemon and checks it stopped within its grace period.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let clean = tokio::time::timeout(Duration::from_secs(6), t)
                .await
                .expect("daemon stops within 6 s")
                .expect("daemon task");
            assert!(clean, "daemon needed more than its grace period");
        }
    }
}

impl TestDaemon {
    /// Stops the daemon as [`TestDaemon::stop`] does, then starts it again with `cfg` on the
    /// same store and sockets, as a service restart would.
    pub async fn restart(mut self, cfg: Config) -> TestDaemon {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        self.stop().await;
        start_in(cfg, dir).await
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A line-oriented NDJSON client.
pub struct Ndjson {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pub w: tokio::net::unix::OwnedWriteHalf,
}

impl Ndjson {
    /// Sends one raw line (a newline is added).
    pub async fn send_line(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).await.expect("write");
        self.w.write_all(b"\n").await.expect("write");
    }

    /// Sends a JSON request.
    pub async fn send(&mut self, v: serde_json::Value) {
        self.send_line(&v.to_string()).await;
    }

    /// Next line as JSON, bounded in time.
    pub async fn recv(&mut self, within: Duration) -> serde_json::Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .expect("ndjson line in time")
            .expect("read")
            .expect("connection open");
        serde_json::from_str(&line).expect("daemon sends JSON")
    }

    /// Next line whose `type` is `ty`, skipping others.
    pub async fn recv_type(&mut self, ty: &str, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv(left).await;
            if v["type"] == ty {
                return v;
            }
        }
    }
}

/// Subscribes over gRPC and returns the event stream.
pub async fn subscribe(
    c: &mut SidecarClient<tonic::transport::Channel>,
    endpoint: &str,
    from_seq: Option<u64>,
) -> tonic::Streaming<proto::Event> {
    c.subscribe(proto::SubscribeRequest {
        endpoint: endpoint.into(),
        from_seq,
        filters: vec![],
    })
    .await
    .expect("subscribe accepted")
    .into_inner()
}

/// Holds `keys` of `endpoint` over gRPC (`Attach`) and returns the event stream.
pub async fn attach(
    c: &mut SidecarClient<tonic::transport::Channel>,
    endpoint: &str,
    keys: &[&str],
) -> tonic::Streaming<proto::Event> {
    c.attach(proto::AttachRequest {
        endpoint: endpoint.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        params: String::new(),
        from_seq: None,
    })
    .await
    .expect("attach accepted")
    .into_inner()
}

/// Next event, bounded in time.
pub async fn next_event(s: &mut tonic::Streaming<proto::Event>, within: Duration) -> Ev {
    tokio::time::timeout(within, s.message())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("stream open")
        .event
        .expect("event set")
}

/// Next message event (skipping state changes), bounded in time; panics on a gap.
pub async fn next_message(
    s: &mut tonic::Streaming<proto::Event>,
    within: Duration,
) -> proto::Message {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(s, left).await {
            Ev::Message(m) => return m,
            Ev::State(_) | Ev::Key(_) => continue,
            Ev::Gap(g) => panic!("unexpected gap {g:?}"),
        }
    }
}

/// The state name of a StateChange.
pub fn state_name(s: &proto::StateChange) -> String {
    proto::State::try_from(s.state)
        .map(|st| st.as_str_name().to_ascii_lowercase())
        .unwrap_or_default()
}
