//! Binding the daemon's listeners before anything starts: gRPC (Unix and TCP), the NDJSON
//! socket and HTTP. Unix sockets go in a 0750 directory, get the configured mode and group, and
//! replace a stale socket file left by a crash (but never a live daemon's socket).
//!
//! Under socket activation the sockets systemd passed are used instead, per kind: a kind
//! systemd passed (`grpc`, `stream`, `http`) ignores its config entries; a kind it did not pass
//! is bound from the config as usual. Passed socket files belong to systemd and are not removed.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::net::{TcpListener, TcpSocket, UnixListener};

use crate::config::{Config, ListenAddr};
use crate::systemd::{Activation, PassedGrpc};

/// A bound gRPC listener.
pub enum GrpcListener {
    /// The listener and its socket path.
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// Every listener the daemon serves, bound up front so a bind error stops startup.
pub struct Listeners {
    pub grpc: Vec<GrpcListener>,
    pub stream: Option<(UnixListener, PathBuf)>,
    /// `/metrics`, `/healthz`, `/readyz`, `/status`.
    pub http: Option<TcpListener>,
    /// Socket files this daemon created, removed at exit; passed sockets are systemd's.
    owned: Vec<PathBuf>,
    /// The config keys whose sockets systemd passed instead (`grpc.listen`, `stream.path`,
    /// `http.listen`): what the file says for them is not in use.
    pub passed_keys: Vec<&'static str>,
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

    /// Where apps reach the daemon, for the start-up log line: `grpc=unix:/run/…/grpc.sock
    /// stream=/run/…/stream.sock http=127.0.0.1:9750` (a listener that is off is left out).
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .grpc
            .iter()
            .map(|l| match l {
                GrpcListener::Unix(_, p) => format!("grpc=unix:{}", p.display()),
                GrpcListener::Tcp(t) => match t.local_addr() {
                    Ok(a) => format!("grpc={a}"),
                    Err(_) => "grpc=tcp".into(),
                },
            })
            .collect();
        if let Some((_, p)) = &self.stream {
            parts.push(format!("stream={}", p.display()));
        }
        if let Some(a) = self.http_addr() {
            parts.push(format!("http={a}"));
        }
        parts.join(" ")
    }

    /// Unix socket paths to remove at exit: the ones this daemon created.
    pub fn socket_paths(&self) -> Vec<PathBuf> {
        self.owned.clone()
    }
}

/// Binds everything the config asks for.
pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
    bind_with(cfg, None).await
}

/// Like [`bind`], but each kind of socket that systemd passed is used instead of the config's.
///
/// Errors name the config key that moves the listener (`grpc.listen: cannot bind …`); socket
/// files bound before the failure are removed again.
pub async fn bind_with(cfg: &Config, passed: Option<Activation>) -> anyhow::Result<Listeners> {
    let mut owned = Vec::new();
    let passed = passed.unwrap_or_default();
    let passed_keys = [
        (GRPC.0, !passed.grpc.is_empty()),
        (STREAM.0, passed.stream.is_some()),
        (HTTP.0, passed.http.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, passed)| passed.then_some(key))
    .collect();
    let bound = bind_all(cfg, passed, &mut owned);
    if bound.is_err() {
        remove_sockets(&owned);
    }
    let (grpc, stream, http) = bound?;
    Ok(Listeners {
        grpc,
        stream,
        http,
        owned,
        passed_keys,
    })
}

/// The key that moves a listener, and how to set it, for [`moved_by`].
const GRPC: (&str, &str) = ("grpc.listen", "to another socket or address");
const STREAM: (&str, &str) = (
    "stream.path",
    "to another path, or to \"\" to turn the NDJSON socket off",
);
const HTTP: (&str, &str) = (
    "http.listen",
    "to another address, or to \"\" to turn the HTTP listener off",
);

/// Puts the config key in front of a bind error and says how to set it: the error is reported
/// when the defaults are in use too, where the file names no key to look for.
fn moved_by(
    (key, how): (&'static str, &'static str),
) -> impl FnOnce(anyhow::Error) -> anyhow::Error {
    move |e| anyhow::anyhow!("{key}: {e:#}; set {key} {how}")
}

type Bound = (
    Vec<GrpcListener>,
    Option<(UnixListener, PathBuf)>,
    Option<TcpListener>,
);

fn bind_all(cfg: &Config, passed: Activation, owned: &mut Vec<PathBuf>) -> anyhow::Result<Bound> {
    let gid = match &cfg.sockets.group {
        Some(g) => Some(lookup_group(g)?),
        None => None,
    };
    let mut grpc = Vec::new();
    if !passed.grpc.is_empty() {
        for l in passed.grpc {
            grpc.push(match l {
                PassedGrpc::Unix(l) => {
                    let path = unix_path(&l);
                    GrpcListener::Unix(unix_from_std(l)?, path)
                }
                PassedGrpc::Tcp(l) => GrpcListener::Tcp(tcp_from_std(l)?),
            });
        }
    } else {
        for addr in &cfg.grpc.listen {
            match addr {
                ListenAddr::Unix(path) => {
                    let l = bind_unix(path, cfg.sockets.mode, gid).map_err(moved_by(GRPC))?;
                    owned.push(path.clone());
                    grpc.push(GrpcListener::Unix(l, path.clone()));
                }
                ListenAddr::Tcp(sa) => {
                    grpc.push(GrpcListener::Tcp(bind_tcp(sa).map_err(moved_by(GRPC))?))
                }
            }
        }
    }
    let stream = match (passed.stream, &cfg.stream.path) {
        (Some(l), _) => {
            let path = unix_path(&l);
            Some((unix_from_std(l)?, path))
        }
        (None, Some(path)) => {
            let l = bind_unix(path, cfg.sockets.mode, gid).map_err(moved_by(STREAM))?;
            owned.push(path.clone());
            Some((l, path.clone()))
        }
        (None, None) => None,
    };
    let http = match (passed.http, &cfg.http.listen) {
        (Some(l), _) => Some(tcp_from_std(l)?),
        (None, Some(sa)) => Some(bind_tcp(sa).map_err(moved_by(HTTP))?),
        (None, None) => None,
    };
    Ok((grpc, stream, http))
}

/// Connections a self-bound socket queues before the daemon accepts them: the kernel's SOMAXCONN
/// (4096 since Linux 5.4), as systemd's `Backlog=` default, rather than the 1024 tokio would
/// pick, so that every app on the host reconnecting at once after a restart is queued, not refused.
const BACKLOG: u32 = 4096;

fn bind_tcp(sa: &std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if sa.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            // As std's and tokio's bind: a restart can reuse the port while old connections
            // sit in TIME_WAIT.
            s.set_reuseaddr(true)?;
            s.bind(*sa)?;
            s.listen(BACKLOG)
        })
        .with_context(|| format!("cannot listen on {sa}"))
}

fn unix_path(l: &std::os::unix::net::UnixListener) -> PathBuf {
    l.local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_default()
}

fn unix_from_std(l: std::os::unix::net::UnixListener) -> anyhow::Result<UnixListener> {
    l.set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(l))
        .context("cannot use a Unix socket passed by systemd")
}

fn tcp_from_std(l: std::net::TcpListener) -> anyhow::Result<TcpListener> {
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .context("cannot use a TCP socket passed by systemd")
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
    let l = bind_private(path).with_context(|| format!("cannot bind {}", path.display()))?;
    // The group first, then the mode: until both are right only the owner can connect.
    // Skipped when the group is already right: the systemd unit's system-call filter denies
    // chown, and there the socket already has the daemon's group.
    let current = std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::gid(&m));
    if let Some(gid) = gid.filter(|g| current.ok() != Some(*g)) {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("sockets.group: cannot set group of {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| {
        format!(
            "sockets.mode: cannot set mode {mode:o} on {}",
            path.display()
        )
    })?;
    UnixListener::from_std(l).with_context(|| format!("cannot listen on {}", path.display()))
}

/// A listening Unix socket at `path` whose file only its owner can connect to.
///
/// bind(2) creates the file with the socket's own mode (0777 for a new socket) less the umask,
/// so a plain bind leaves group and others a moment to connect before any chmod. Narrowing the
/// socket's mode first (fchmod, reached through `File`) closes that moment whatever the umask.
fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    let file = std::fs::File::from(OwnedFd::from(socket));
    file.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    let socket = socket2::Socket::from(OwnedFd::from(file));
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    socket.listen(BACKLOG as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Group name (or number) to gid, from the same account cache access lists use.
fn lookup_group(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    crate::access::accounts()
        .gid_of(name)
        .with_context(|| format!("sockets.group: unknown group {name:?}"))
}

/// Removes the socket files at exit.
pub fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first number on the first line of a /proc file that starts with `line_prefix`.
    fn proc_number(path: &str, line_prefix: &str) -> Option<usize> {
        let text = std::fs::read_to_string(path).ok()?;
        let line = text.lines().find(|l| l.starts_with(line_prefix))?;
        line.split_whitespace().find_map(|w| w.parse().ok())
    }

    /// How many connections a listener of ours should queue here without accepting: the
    /// kernel clamps the backlog to `somaxconn`, and the test needs a descriptor per client.
    fn burst() -> usize {
        let somaxconn = proc_number("/proc/sys/net/core/somaxconn", "").unwrap_or(4096);
        let nofile = proc_number("/proc/self/limits", "Max open files").unwrap_or(1024);
        // Half the descriptors stay free for the tests running alongside in this process.
        (BACKLOG as usize).min(somaxconn).min(nofile / 2)
    }

    #[test]
    fn a_new_socket_file_admits_only_its_owner_until_its_mode_is_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let _l = bind_private(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        // A plain bind under the usual umask 022 gives 0755 here.
        assert_eq!(mode & 0o077, 0, "mode {:o}", mode & 0o777);
    }

    #[tokio::test]
    async fn the_configured_mode_is_set_whatever_the_umask_took_away() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let _l = bind_unix(&path, 0o666, None).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        std::os::unix::net::UnixStream::connect(&path).expect("connects");
    }

    #[tokio::test]
    async fn a_connection_burst_is_queued_up_to_the_backlog_not_refused() {
        let n = burst();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let unix = bind_unix(&path, 0o600, None).expect("bind unix");
        let tcp = bind_tcp(&"127.0.0.1:0".parse().expect("addr")).expect("bind tcp");
        let addr = tcp.local_addr().expect("addr");
        // Nobody accepts: every connect must find room in the accept queue. A Unix connect
        // beyond it fails at once with EAGAIN; a TCP one would hang, hence the timeout.
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let c = tokio::net::UnixStream::connect(&path).await;
            held.push(c.unwrap_or_else(|e| panic!("unix connect {i} of {n}: {e}")));
        }
        drop(held);
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let c = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .unwrap_or_else(|_| panic!("tcp connect {i} of {n} was not queued"));
            held.push(c.unwrap_or_else(|e| panic!("tcp connect {i} of {n}: {e}")));
        }
        drop((unix, tcp));
    }
}
