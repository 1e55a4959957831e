//! Client commands and process plumbing for the binary: logging, signals, exit codes.

pub mod outbox;
pub mod request;
pub mod send;
pub mod tail;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::exit;
use ws_sidecar::client::{self, Target};
use ws_sidecar::config::LogConfig;
use ws_sidecar::output::Stdout;
use ws_sidecar::proto;
use ws_sidecar::status::EndpointStatus;

/// How a client command finds the daemon (see `ws_sidecar::paths::discover`).
#[derive(clap::Args)]
pub struct TargetArg {
    /// Daemon address: unix:PATH or HOST:PORT [default: from --config, $WS_SIDECAR_GRPC,
    /// $WS_SIDECAR_CONFIG, else the first socket that exists of: the one
    /// ~/.config/ws-sidecar/config.toml names, $RUNTIME_DIRECTORY/grpc.sock,
    /// $XDG_RUNTIME_DIR/ws-sidecar/grpc.sock, ~/.local/state/ws-sidecar/grpc.sock, the one
    /// /etc/ws-sidecar/config.toml names, /run/ws-sidecar/grpc.sock].
    #[arg(long, value_name = "ADDR")]
    grpc: Option<String>,
    /// Read the daemon's address from this config file (its first grpc.listen entry).
    #[arg(long, value_name = "FILE", conflicts_with = "grpc")]
    config: Option<std::path::PathBuf>,
}

/// A gRPC client of the daemon.
pub type Client = proto::sidecar_client::SidecarClient<tonic::transport::Channel>;

/// Connects to the daemon at `target` and checks its API answers (see
/// `client::connect_checked`); the error says why not, for the caller to word.
pub async fn reach(target: &Target) -> Result<Client, client::Unreachable> {
    client::connect_checked(target, client::ANSWER_WITHIN).await
}

impl TargetArg {
    /// The daemon's address as discovered, and how; a usage error is reported.
    pub fn found(&self) -> Result<ws_sidecar::paths::Found, u8> {
        ws_sidecar::paths::discover(
            self.grpc.as_deref(),
            self.config.as_deref(),
            &ws_sidecar::paths::process_env(),
            ws_sidecar::paths::system_places(),
        )
        .inspect(|found| {
            tracing::debug!(target = %found.target, from = %found.from, "daemon address");
        })
        .map_err(|e| {
            report!("ws-sidecar: {e}");
            exit::USAGE
        })
    }

    /// A checked connection to the daemon; failures are reported (exit 69 or 64).
    pub async fn connect(&self) -> Result<Client, u8> {
        let found = self.found()?;
        reach(&found.target).await.map_err(|e| {
            report!("ws-sidecar: {}", unreachable_message(&found, &e));
            exit::UNAVAILABLE
        })
    }
}

/// Why the daemon at `found` cannot be reached. When the search found no socket anywhere it
/// lists every place it looked, rather than only the last; a socket the user may not open
/// names the group that may.
pub fn unreachable_message(found: &ws_sidecar::paths::Found, e: &client::Unreachable) -> String {
    let os = match e {
        client::Unreachable::Os(os) => Some(os.kind()),
        _ => None,
    };
    if !found.looked.is_empty() && os == Some(std::io::ErrorKind::NotFound) {
        let places: Vec<String> = found
            .looked
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return format!(
            "no daemon found: no socket at {}; start one with `ws-sidecar run`, or pass \
             --grpc ADDR or --config FILE",
            places.join(", ")
        );
    }
    let mut msg = format!("cannot reach the daemon at {}: {e}", found.target);
    if os == Some(std::io::ErrorKind::PermissionDenied) {
        if let Some(group) = socket_group(&found.target) {
            msg.push_str(&format!(
                " (the socket is for group {group}: `sudo usermod -aG {group} $USER`, then log \
                 in again)"
            ));
        }
    }
    msg
}

/// The group owning a Unix socket, by name when the account database has it. A non-member
/// cannot even look at the socket in its 0750 directory (systemd's RuntimeDirectory=): the
/// directory's group is then the one to join.
fn socket_group(target: &Target) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let Target::Unix(path) = target else {
        return None;
    };
    let gid = match std::fs::metadata(path) {
        Ok(m) => m.gid(),
        Err(_) => std::fs::metadata(path.parent()?).ok()?.gid(),
    };
    Some(
        ws_sidecar::access::accounts()
            .group_name(gid)
            .unwrap_or_else(|| gid.to_string()),
    )
}

/// Sets up tracing from `[log]` (see `ws_sidecar::logging`).
pub fn init_logging(cfg: &LogConfig) {
    ws_sidecar::logging::init(cfg);
}

/// Cancels `token` on SIGTERM or SIGINT; a second signal exits at once. The handlers are in
/// place when this returns: a SIGTERM soon after start (systemd stopping a unit it just started,
/// a test) must not meet the default action, which ends the process without a clean stop.
pub fn stop_on_signals(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        ws_sidecar::logging::flush(std::time::Duration::from_millis(200));
        std::process::exit(130);
    });
}

fn refused(status: &tonic::Status) -> u8 {
    // A status made from a transport failure (the daemon went away) hides the cause inside.
    match std::error::Error::source(status).map(client::innermost) {
        Some(cause) if cause != status.message() => {
            report!("ws-sidecar: {}: {cause}", status.message());
        }
        _ => report!("ws-sidecar: {}", status.message()),
    }
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal => exit::UNAVAILABLE,
        _ => exit::REFUSED,
    }
}

/// `status`: one line per endpoint (or only `endpoint`'s), or a JSON array.
pub async fn status(target: &TargetArg, endpoint: Option<String>, json: bool) -> u8 {
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let resp = match c.get_status(proto::GetStatusRequest { endpoint }).await {
        Ok(r) => r.into_inner(),
        Err(s) => return refused(&s),
    };
    if let Some(why) = &resp.reload_refused {
        // On stderr, so `status --json` stays the endpoint list scripts parse.
        report!("ws-sidecar: last reload refused, the previous config runs: {why}");
    }
    let eps: Vec<EndpointStatus> = resp.endpoints.into_iter().map(Into::into).collect();
    let mut out = Stdout::new();
    if json {
        match serde_json::to_string_pretty(&eps) {
            Ok(s) => out.line(s),
            Err(e) => {
                report!("ws-sidecar: {e}");
                return exit::OSERR;
            }
        };
        return out.exit_code(0);
    }
    for e in eps {
        let rtt = if e.rtt_micros > 0 {
            format!(
                " rtt={}",
                ws_sidecar::fmt::duration(Duration::from_micros(e.rtt_micros))
            )
        } else {
            String::new()
        };
        let throttled = if e.rate_limited > 0 {
            format!(
                " rate_limited={} waited={}",
                e.rate_limited,
                ws_sidecar::fmt::duration(Duration::from_micros(e.rate_limit_wait_micros))
            )
        } else {
            String::new()
        };
        let shared = shared_figures(&e);
        let shown = out.line(format_args!(
            "{:<16} {:<10} last_seq={} subscribers={} outbox={} reconnects={}{}{}{} ({})",
            e.name,
            e.state,
            e.last_seq,
            e.subscribers,
            e.outbox_depth,
            e.reconnects,
            rtt,
            throttled,
            shared,
            e.reason
        ));
        if !shown {
            break;
        }
    }
    out.exit_code(0)
}

/// ` keys=N (M pending, R refused) requests=N timeouts=N` where an endpoint shares its
/// conversation; empty otherwise.
fn shared_figures(e: &ws_sidecar::status::EndpointStatus) -> String {
    let mut out = String::new();
    let keys = &e.upstream_subscriptions;
    if !keys.is_empty() {
        let count = |state: &str| keys.iter().filter(|k| k.state == state).count();
        out.push_str(&format!(" keys={}", keys.len()));
        let (pending, refused) = (count("pending"), count("refused"));
        if pending + refused > 0 {
            out.push_str(&format!(" ({pending} pending, {refused} refused)"));
        }
    }
    if e.requests_in_flight > 0 || e.request_timeouts > 0 {
        out.push_str(&format!(
            " requests={} timeouts={}",
            e.requests_in_flight, e.request_timeouts
        ));
    }
    if e.confirm_depth > 0 {
        out.push_str(&format!(" confirming={}", e.confirm_depth));
    }
    if let Some(c) = &e.cluster {
        out.push_str(&format!(" role={} epoch={}", c.role, c.lease_epoch));
        if c.role == "follower" && !c.leader.is_empty() {
            out.push_str(&format!(" leader={}", c.leader));
        }
        if c.stream_lag > 0 {
            out.push_str(&format!(" lag={}", c.stream_lag));
        }
        if !c.stepped_down.is_empty() {
            out.push_str(&format!(" stepped_down=\"{}\"", c.stepped_down));
        }
    }
    out
}

/// `reconnect`: asks the daemon to reconnect an endpoint.
pub async fn reconnect(target: &TargetArg, endpoint: &str) -> u8 {
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c
        .reconnect(proto::ReconnectRequest {
            endpoint: endpoint.into(),
        })
        .await
    {
        Ok(_) => {
            let mut out = Stdout::new();
            out.line(format_args!("{endpoint}: reconnecting"));
            out.exit_code(0)
        }
        Err(s) => refused(&s),
    }
}

/// `reload`: asks the daemon to reload its config file and prints the outcome: what changed on
/// stdout, or the errors that refused the file on stderr (exit 78).
pub async fn reload(target: &TargetArg) -> u8 {
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let r = match c.reload(proto::ReloadRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return refused(&s),
    };
    for w in &r.warnings {
        report!("warning: {w}");
    }
    if !r.accepted {
        for e in &r.errors {
            report!("{e}");
        }
        report!("ws-sidecar: reload refused; the daemon keeps running the config it had");
        return exit::CONFIG;
    }
    let mut out = Stdout::new();
    out.line(format_args!("reloaded {}", r.config));
    for (label, names) in [
        ("added", &r.added),
        ("changed (reconnected)", &r.changed),
        ("removed", &r.removed),
        ("unchanged", &r.unchanged),
        ("applied", &r.applied),
        ("needs a restart", &r.need_restart),
    ] {
        if !names.is_empty() {
            out.line(format_args!("  {label}: {}", names.join(", ")));
        }
    }
    out.exit_code(0)
}

/// `reset-resume`: forgets the endpoint's resume position and prints the one forgotten.
pub async fn reset_resume(target: &TargetArg, endpoint: &str) -> u8 {
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c
        .reset_resume(proto::ResetResumeRequest {
            endpoint: endpoint.into(),
        })
        .await
    {
        Ok(r) => {
            let previous = r.into_inner().previous_id;
            let mut out = Stdout::new();
            if previous.is_empty() {
                out.line(format_args!(
                    "{endpoint}: no resume position was stored; reconnecting"
                ));
            } else {
                out.line(format_args!(
                    "{endpoint}: resume position {previous} forgotten; reconnecting without it"
                ));
            }
            out.exit_code(0)
        }
        Err(s) => refused(&s),
    }
}

/// `demo`: runs until Ctrl-C, `--duration`, or until nobody reads its output.
pub async fn demo(duration: Option<String>) -> u8 {
    let limit = match duration.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            report!("ws-sidecar: --duration: {e}");
            return exit::USAGE;
        }
    };
    let token = CancellationToken::new();
    stop_on_signals(token.clone());
    if let Some(d) = limit {
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            t.cancel();
        });
    }
    let mut out = Stdout::new();
    match ws_sidecar::demo::run(token, &mut out).await {
        Ok(()) => out.exit_code(0),
        Err(e) => {
            report!("ws-sidecar demo: {e:#}");
            exit::OSERR
        }
    }
}

/// A duration option (`demo --duration`, `send --timeout`) in the config file's syntax (`10s`,
/// `1m30s`, `500ms`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    ws_sidecar::config::units::parse_duration(s)
        .ok_or_else(|| format!("invalid duration {s:?} (examples: 10s, 1m30s, 500ms)"))
}

/// Re-reads the config on every SIGHUP, as the `Reload` RPC does (see
/// `ws_sidecar::reload::Reloader::reload_file`).
pub async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: ws_sidecar::reload::Reloader,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received");
        reloader.reload_file().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every argument and option of every command says what it is for in `--help`.
    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&crate::Cli::command(), "ws-sidecar", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
