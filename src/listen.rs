//! Binding the daemon's listeners before anything starts: gRPC (Unix and TCP), the NDJSON
//! socket and HTTP. Unix sockets go in a 0750 directory, get the configured mode and group, and replace a
//! stale socket file left by a crash (but never a live daemon's socket).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::net::{TcpListener, UnixListener};

use crate::config::{Config, ListenAddr};

/// A bound gRPC listener.
pub enum GrpcListener {
    /// The listener and the socket path to remove at exit.
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// Every listener the daemon serves, bound up front so a bind error stops startup.
pub struct Listeners {
    pub grpc: Vec<GrpcListener>,
    pub stream: Option<(UnixListener, PathBuf)>,
    /// `/metrics`, `/healthz`, `/readyz`, `/status`.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Local address of the first TCP gRPC listener (useful when bound to port 0).
    pub fn grpc_tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.grpc.iter().find_map(|l| match l {
            GrpcListener::Tcp(t) => t.local_addr().ok(),
            GrpcListener::Unix(..) => None,
        })
    }

    /// Local address of the HTTP listener (useful when bound to port 0).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Unix socket paths to remove at exit.
    pub fn socket_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .grpc
            .iter()
            .filter_map(|l| match l {
                GrpcListener::Unix(_, p) => Some(p.clone()),
                GrpcListener::Tcp(_) => None,
            })
            .collect();
        v.extend(self.stream.as_ref().map(|(_, p)| p.clone()));
        v
    }
}

/// Binds everything the config asks for.
pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
    let gid = match &cfg.sockets.group {
        Some(g) => Some(lookup_group(g)?),
        None => None,
    };
    let mut grpc = Vec::new();
    for addr in &cfg.grpc.listen {
        match addr {
            ListenAddr::Unix(path) => {
                let l = bind_unix(path, cfg.sockets.mode, gid)?;
                grpc.push(GrpcListener::Unix(l, path.clone()));
            }
            ListenAddr::Tcp(sa) => {
                let l = TcpListener::bind(sa)
                    .await
                    .with_context(|| format!("cannot listen on {sa}"))?;
                grpc.push(GrpcListener::Tcp(l));
            }
        }
    }
    let stream = match &cfg.stream.path {
        Some(path) => Some((bind_unix(path, cfg.sockets.mode, gid)?, path.clone())),
        None => None,
    };
    let http = match &cfg.http.listen {
        Some(sa) => Some(
            TcpListener::bind(sa)
                .await
                .with_context(|| format!("cannot listen on {sa}"))?,
        ),
        None => None,
    };
    Ok(Listeners { grpc, stream, http })
}

fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
        }
    }
    if path.exists() {
        // A socket that still accepts belongs to a running daemon: refuse rather than steal it.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by a running process", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot set group of {}", path.display()))?;
    }
    Ok(l)
}

/// Group name (or number) to gid, read from /etc/group: no libc call needed for this one lookup.
fn lookup_group(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .with_context(|| format!("sockets.group: unknown group {name:?}"))
}

/// Removes the socket files at exit.
pub fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}
