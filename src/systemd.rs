//! systemd integration: `sd_notify` messages and socket activation (SPEC §14).
//!
//! [`Notifier`] sends READY, STATUS, WATCHDOG, RELOADING and STOPPING datagrams to
//! `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) with std's `UnixDatagram`; without
//! the variable every call is a no-op, so callers never check. [`start`] sends READY=1 and then
//! keeps the STATUS line and the watchdog going until shutdown, when it sends STOPPING=1.
//!
//! [`take_activation`] takes the listening sockets passed with `LISTEN_FDS`/`LISTEN_FDNAMES`;
//! `listen::bind_with` uses them instead of binding. Turning a raw fd into a listener needs
//! `unsafe` in std, which this crate forbids, so the `listenfd` crate does that part; the names
//! are mapped here.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{Endpoint, State};
use crate::health::Liveness;
use crate::registry::Registry;

/// Longest STATUS line sent; systemd shows it on one line of `systemctl status`.
const MAX_STATUS: usize = 400;
/// Longest refusal shown in the STATUS line: the first error says enough, the log has all.
const MAX_REFUSAL: usize = 200;
/// Longest reason shown per endpoint in the STATUS line.
const MAX_REASON: usize = 80;

/// Sends notifications to the service manager; cheap to clone, a no-op when not under systemd.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    /// Wakes the status loop to re-read the set of endpoints (after a reload changed it).
    endpoints_changed: Arc<Notify>,
}

struct Target {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// For log messages only.
    shown: String,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`; disabled (every call a no-op) when it is unset or unusable.
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => match Self::to(&v.to_string_lossy()) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; not notifying systemd");
                    Notifier::default()
                }
            },
            _ => Notifier::default(),
        }
    }

    /// A notifier for the socket at `path`, or the abstract socket `name` given as `@name`.
    pub fn to(path: &str) -> io::Result<Notifier> {
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if path.starts_with('/') {
            SocketAddr::from_pathname(path)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} is neither an absolute path nor @abstract"),
            ));
        };
        let sock = UnixDatagram::unbound()?;
        // A full or stuck receiver must never stall the daemon.
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                sock,
                addr,
                shown: path.to_owned(),
            })),
            endpoints_changed: Arc::default(),
        })
    }

    /// True when notifications go somewhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (newline-separated `KEY=value` assignments).
    pub fn send(&self, msg: &str) {
        let Some(t) = &self.target else { return };
        if let Err(e) = t.sock.send_to_addr(msg.as_bytes(), &t.addr) {
            tracing::debug!(error = %e, socket = %t.shown, "sd_notify failed");
        }
    }

    /// READY=1: every listener is bound (or a reload finished), with the current STATUS line.
    pub fn ready(&self, registry: &Registry) {
        self.send(&format!("READY=1\nSTATUS={}", self.line(registry)));
    }

    /// The STATUS line: the refused reload ([`Registry::reload_refused`]: it stays until a
    /// later reload is applied), if any, then the endpoint states.
    pub fn line(&self, registry: &Registry) -> String {
        let states = status_line(&registry.all());
        match registry.reload_refused() {
            Some(why) => {
                // One line: a newline would end the STATUS= assignment.
                let why = truncate(&why.replace('\n', " "), MAX_REFUSAL);
                truncate(&format!("reload refused: {why}; {states}"), MAX_STATUS)
            }
            None => states,
        }
    }

    /// RELOADING=1: for the SIGHUP handler, before it re-reads the config. Follow it with
    /// [`ready`](Self::ready) once the new config is in force (or was refused), then
    /// [`endpoints_changed`](Self::endpoints_changed) if endpoints were added or removed.
    pub fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=reloading configuration");
    }

    /// Tells the status loop that the registry's set of endpoints changed, so it follows the
    /// state of the new ones.
    pub fn endpoints_changed(&self) {
        self.endpoints_changed.notify_one();
    }

    /// STOPPING=1: shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// WATCHDOG=1: the liveness probe passed.
    fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// How often systemd expects WATCHDOG=1: `$WATCHDOG_USEC`, when `$WATCHDOG_PID` (if set) is us.
pub fn watchdog_timeout() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends READY=1, then keeps STATUS in step with endpoint states and, when systemd asked for a
/// watchdog, sends WATCHDOG=1 at half its timeout after each passing liveness probe. Sends
/// STOPPING=1 when `shutdown` fires.
pub fn start(
    notifier: Notifier,
    registry: Arc<Registry>,
    liveness: Liveness,
    shutdown: CancellationToken,
) {
    if !notifier.enabled() {
        return;
    }
    let status = notifier.line(&registry);
    notifier.send(&format!("READY=1\nSTATUS={status}"));
    if let Some(timeout) = watchdog_timeout() {
        tokio::spawn(watchdog_loop(
            notifier.clone(),
            liveness,
            // interval() panics on zero; systemd never asks for less than a second anyway.
            (timeout / 2).max(Duration::from_millis(10)),
            shutdown.clone(),
        ));
    }
    tokio::spawn(status_loop(notifier, registry, status, shutdown));
}

async fn watchdog_loop(
    notifier: Notifier,
    liveness: Liveness,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Half the interval for the probe leaves the other half before systemd's deadline.
        match liveness.check(every / 2).await {
            Ok(()) => notifier.watchdog(),
            Err(why) => tracing::error!(%why, "liveness probe failed; withholding WATCHDOG=1"),
        }
    }
}

async fn status_loop(
    notifier: Notifier,
    registry: Arc<Registry>,
    mut last: String,
    shutdown: CancellationToken,
) {
    loop {
        // Subscribed before the states are read, so no transition falls in between.
        let mut events = futures_util::stream::select_all(
            registry
                .all()
                .iter()
                .map(|ep| BroadcastStream::new(ep.state_events())),
        );
        loop {
            let line = notifier.line(&registry);
            if line != last {
                notifier.send(&format!("STATUS={line}"));
                last = line;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    notifier.stopping();
                    return;
                }
                _ = notifier.endpoints_changed.notified() => break,
                ev = events.next(), if !events.is_empty() => {
                    if ev.is_none() {
                        events = futures_util::stream::select_all(Vec::new());
                    }
                    // Coalesce a burst of transitions into one STATUS.
                    while let Some(Some(_)) = futures_util::FutureExt::now_or_never(events.next()) {}
                }
            }
        }
    }
}

/// One line summing endpoint states, e.g. `3 endpoints: 2 connected, 1 backoff (orders: pong
/// timeout)`; endpoints in `backoff` or `failed` are named with their reason.
pub fn status_line(endpoints: &[Arc<Endpoint>]) -> String {
    const ORDER: [State; 5] = [
        State::Connected,
        State::Connecting,
        State::Backoff,
        State::Failed,
        State::Closed,
    ];
    let states: Vec<_> = endpoints.iter().map(|ep| (ep, ep.state())).collect();
    let counts: Vec<String> = ORDER
        .iter()
        .filter_map(|st| {
            let n = states.iter().filter(|(_, s)| s.state == *st).count();
            (n > 0).then(|| format!("{n} {}", st.as_str()))
        })
        .collect();
    let troubled: Vec<String> = states
        .iter()
        .filter(|(_, s)| matches!(s.state, State::Backoff | State::Failed))
        .map(|(ep, s)| {
            // The retry delay changes every time; the cause is what an operator needs.
            let reason = s.reason.split("; retrying in ").next().unwrap_or("");
            format!("{}: {}", ep.name, truncate(reason, MAX_REASON))
        })
        .collect();
    let n = endpoints.len();
    let mut line = format!(
        "{n} endpoint{}: {}",
        if n == 1 { "" } else { "s" },
        if counts.is_empty() {
            "none".to_owned()
        } else {
            counts.join(", ")
        }
    );
    if !troubled.is_empty() {
        line.push_str(&format!(" ({})", troubled.join(", ")));
    }
    // STATUS= ends at a newline, so none may be inside.
    truncate(&line.replace('\n', " "), MAX_STATUS)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Listening sockets systemd passed, by name.
#[derive(Debug, Default)]
pub struct Activation {
    /// `grpc`: Unix or TCP.
    pub grpc: Vec<PassedGrpc>,
    /// `stream`: the NDJSON socket.
    pub stream: Option<std::os::unix::net::UnixListener>,
    /// `http`: metrics and health.
    pub http: Option<std::net::TcpListener>,
}

/// A passed gRPC socket.
#[derive(Debug)]
pub enum PassedGrpc {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// Takes the sockets passed by socket activation, if any (`LISTEN_PID` must be this process).
/// Call it before starting threads: it removes `LISTEN_PID` and `LISTEN_FDS` from the
/// environment so child processes do not see them.
pub fn take_activation() -> Result<Option<Activation>, String> {
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let names: Vec<&str> = names.split(':').collect();
    let mut out = Activation::default();
    for i in 0..fds.len() {
        let fd = 3 + i;
        let name = names.get(i).copied().unwrap_or("");
        let err = |e: io::Error| format!("socket activation: fd {fd} ({name:?}): {e}");
        match name {
            "grpc" => match fds.take_unix_listener(i) {
                Ok(Some(l)) => out.grpc.push(PassedGrpc::Unix(l)),
                _ => match fds.take_tcp_listener(i) {
                    Ok(Some(l)) => out.grpc.push(PassedGrpc::Tcp(l)),
                    Ok(None) => {}
                    Err(_) => {
                        return Err(format!(
                            "socket activation: fd {fd} (\"grpc\") is neither a Unix nor a TCP \
                             stream socket"
                        ))
                    }
                },
            },
            "stream" if out.stream.is_some() => {
                return Err("socket activation: more than one socket named \"stream\"".into())
            }
            "stream" => out.stream = fds.take_unix_listener(i).map_err(err)?,
            "http" if out.http.is_some() => {
                return Err("socket activation: more than one socket named \"http\"".into())
            }
            "http" => out.http = fds.take_tcp_listener(i).map_err(err)?,
            _ => {
                return Err(format!(
                "socket activation: fd {fd} is named {name:?}; expected \"grpc\", \"stream\" or \
                     \"http\" (set FileDescriptorName= in the socket unit)"
            ))
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    fn endpoint(name: &str) -> Arc<Endpoint> {
        let cfg = crate::config::load_str(
            &format!("[endpoints.{name}]\nurl = \"ws://127.0.0.1:9/\"\n"),
            std::path::Path::new("t.toml"),
            &Default::default(),
        )
        .expect("valid config");
        let ec = cfg.endpoints[name].clone();
        Endpoint::new(name.into(), ec, None, Default::default())
    }

    #[test]
    fn status_line_counts_and_names_the_troubled() {
        let (a, b, c) = (endpoint("a"), endpoint("orders"), endpoint("z"));
        a.set_state(State::Connected, "connected to x");
        b.set_state(State::Backoff, "pong timeout; retrying in 1.2s");
        c.set_state(State::Connected, "connected to y");
        assert_eq!(
            status_line(&[a, b, c]),
            "3 endpoints: 2 connected, 1 backoff (orders: pong timeout)"
        );
        let d = endpoint("d");
        assert_eq!(status_line(&[d]), "1 endpoint: 1 connecting");
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let a = endpoint("a");
        a.set_state(State::Failed, "é".repeat(200));
        let line = status_line(&[a]);
        assert!(line.len() < 200, "{line}");
        assert!(line.ends_with("…)"), "{line}");
    }

    #[test]
    fn notifies_a_datagram_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::to(path.to_str().expect("utf-8 path")).expect("notifier");
        n.stopping();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).expect("datagram");
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ws-sidecar-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        Notifier::to(&format!("@{name}"))
            .expect("notifier")
            .send("WATCHDOG=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("datagram");
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn relative_notify_paths_are_refused() {
        assert!(Notifier::to("notify.sock").is_err());
        assert!(!Notifier::default().enabled());
    }
}
