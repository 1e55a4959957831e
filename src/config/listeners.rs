//! Where the daemon listens (SPEC §4 `[grpc]`, `[stream]`, `[sockets]`, `[http]`): listen
//! addresses (`unix:PATH`, `IP:PORT`, `localhost:PORT`; TCP only on loopback unless
//! `grpc.allow_remote`), socket paths within `sun_path`'s 108 bytes, socket modes, and `""` for
//! a listener that is off. Defaults come from [`crate::paths::Dirs`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use config::{Value, ValueKind};

use super::value::{boolean, integer, string, Report, Table};
use super::{GrpcConfig, ListenAddr, StreamConfig};
use crate::paths::Dirs;

pub(super) fn read_grpc(r: &mut Report, mut t: Table<'_>, d: &Dirs) -> GrpcConfig {
    let allow_remote = t.or(r, "allow_remote", boolean, false);
    let mut listen = Vec::new();
    match t.get("listen") {
        None => listen.push(ListenAddr::Unix(d.runtime.join("grpc.sock"))),
        Some(node) => {
            let items = node.items(r);
            if items.is_empty() && matches!(node.value.kind, ValueKind::Array(_)) {
                r.at(&node, "at least one listener is required");
            }
            for item in items {
                match item.to(r, |v| listen_addr(v, allow_remote)) {
                    Some(addr) if listen.contains(&addr) => r.at(&item, "duplicate listener"),
                    Some(addr) => listen.push(addr),
                    None => {}
                }
            }
        }
    }
    t.finish(r);
    GrpcConfig {
        listen,
        allow_remote,
    }
}

pub(super) fn read_stream(
    r: &mut Report,
    mut t: Table<'_>,
    d: &Dirs,
    grpc: &GrpcConfig,
) -> StreamConfig {
    let default = Some(d.runtime.join("stream.sock"));
    let path = t.or(r, "path", optional(unix_path), default);
    if let Some(p) = &path {
        if grpc.listen.contains(&ListenAddr::Unix(p.clone())) {
            r.at(&t.path_of("path"), "is also a grpc.listen socket");
        }
    }
    t.finish(r);
    StreamConfig { path }
}

/// `unix:PATH`, `IP:PORT` or `localhost:PORT`; TCP must be loopback unless `allow_remote`.
fn listen_addr(v: &Value, allow_remote: bool) -> Result<ListenAddr, String> {
    let s = string(v)?;
    if let Some(path) = s.strip_prefix("unix:") {
        return unix_path(path).map(ListenAddr::Unix);
    }
    let addr = tcp_addr_str(&s).ok_or_else(|| {
        format!("invalid listen address {s:?}: expected unix:PATH, IP:PORT or localhost:PORT")
    })?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "{addr} is not a loopback address; set grpc.allow_remote = true to listen on it"
        ));
    }
    Ok(ListenAddr::Tcp(addr))
}

pub(super) fn tcp_addr(s: &str) -> Result<SocketAddr, String> {
    tcp_addr_str(s)
        .ok_or_else(|| format!("invalid address {s:?}: expected IP:PORT or localhost:PORT"))
}

fn tcp_addr_str(s: &str) -> Option<SocketAddr> {
    match s.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        None => s.parse().ok(),
    }
}

/// `sun_path` holds 108 bytes including the terminating NUL on Linux.
const MAX_UNIX_PATH: usize = 107;

fn unix_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("socket path is empty".into());
    }
    if path.len() > MAX_UNIX_PATH {
        return Err(format!(
            "socket path is {} bytes, longer than the {MAX_UNIX_PATH} a Unix socket allows",
            path.len()
        ));
    }
    Ok(PathBuf::from(path))
}

/// A string where `""` means "disabled" and anything else goes through `parse`.
pub(super) fn optional<T>(
    parse: impl Fn(&str) -> Result<T, String>,
) -> impl Fn(&Value) -> Result<Option<T>, String> {
    move |v| {
        let s = string(v)?;
        if s.is_empty() {
            Ok(None)
        } else {
            parse(&s).map(Some)
        }
    }
}

/// An octal string (`"0660"`, `"0o660"`) or an integer taken as the mode number itself, which is
/// what TOML's `0o660` literal produces.
pub(super) fn mode(v: &Value) -> Result<u32, String> {
    let mode = match &v.kind {
        ValueKind::String(s) => {
            let digits = s.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8).map_err(|_| {
                format!("invalid mode {s:?}: expected an octal string such as \"0660\"")
            })?
        }
        _ => integer(v)?,
    };
    if mode > 0o7777 {
        return Err(format!("mode {mode:o} (octal) is larger than 7777"));
    }
    Ok(mode)
}
