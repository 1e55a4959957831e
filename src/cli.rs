//! Client commands and process plumbing for the binary: logging, signals, exit codes.

pub mod request;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::exit;
use ws_sidecar::client::{self, Target};
use ws_sidecar::config::LogConfig;
use ws_sidecar::output::Stdout;
use ws_sidecar::proto;
use ws_sidecar::status::EndpointStatus;

/// `--grpc ADDR` shared by the client commands.
#[derive(clap::Args)]
pub struct TargetArg {
    /// Daemon address: unix:PATH or HOST:PORT [default: unix:$RUNTIME_DIRECTORY/grpc.sock or
    /// unix:/run/ws-sidecar/grpc.sock].
    #[arg(long, value_name = "ADDR")]
    grpc: Option<String>,
}

impl TargetArg {
    fn target(&self) -> Result<Target, u8> {
        let s = match &self.grpc {
            Some(s) => s.clone(),
            None => {
                let dir = std::env::var("RUNTIME_DIRECTORY")
                    .ok()
                    .and_then(|d| d.split(':').next().map(str::to_owned))
                    .unwrap_or_else(|| "/run/ws-sidecar".into());
                format!("unix:{dir}/grpc.sock")
            }
        };
        Target::parse(&s).map_err(|e| {
            report!("ws-sidecar: --grpc: {e}");
            exit::USAGE
        })
    }

    async fn connect(
        &self,
    ) -> Result<proto::sidecar_client::SidecarClient<tonic::transport::Channel>, u8> {
        let target = self.target()?;
        client::connect_checked(&target, client::ANSWER_WITHIN)
            .await
            .map_err(|e| {
                report!("ws-sidecar: cannot reach the daemon at {target}: {e}");
                exit::UNAVAILABLE
            })
    }
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

/// `status`: one line per endpoint, or a JSON array.
pub async fn status(target: &TargetArg, json: bool) -> u8 {
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let resp = match c
        .get_status(proto::GetStatusRequest { endpoint: None })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return refused(&s),
    };
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
    out
}

/// `tail --key`: the shared subscriptions to hold instead of subscribing to the whole feed.
pub struct Attach {
    /// Empty: a plain subscription, as without `--key`.
    pub keys: Vec<String>,
    pub params: Option<String>,
}

/// `tail`: one JSON object per event until the stream ends or nobody reads the output.
pub async fn tail(
    target: &TargetArg,
    endpoint: &str,
    from_seq: Option<u64>,
    filters: &[String],
    shared: Attach,
) -> u8 {
    if !shared.keys.is_empty() {
        return tail_keys(target, endpoint, from_seq, shared).await;
    }
    let mut parsed = Vec::new();
    for f in filters {
        let Some((pointer, equals)) = f.split_once('=') else {
            report!("ws-sidecar: --filter must be POINTER=VALUE, got {f:?}");
            return exit::USAGE;
        };
        parsed.push(proto::Filter {
            pointer: pointer.into(),
            equals: equals.into(),
        });
    }
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = proto::SubscribeRequest {
        endpoint: endpoint.into(),
        from_seq,
        filters: parsed,
    };
    match c.subscribe(req).await {
        Ok(r) => print_events(r.into_inner(), refused).await,
        Err(s) => refused(&s),
    }
}

/// `tail --key`: holds the keys with an Attach call and prints what it streams.
async fn tail_keys(
    target: &TargetArg,
    endpoint: &str,
    from_seq: Option<u64>,
    shared: Attach,
) -> u8 {
    if shared.keys.iter().any(String::is_empty) {
        report!("ws-sidecar: --key must not be empty");
        return exit::USAGE;
    }
    let params = shared.params.unwrap_or_default();
    if !params.trim().is_empty() {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&params) {
            report!("ws-sidecar: --params is not JSON: {e}");
            return exit::USAGE;
        }
    }
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = proto::AttachRequest {
        endpoint: endpoint.into(),
        keys: shared.keys,
        params,
        from_seq,
    };
    match c.attach(req).await {
        Ok(r) => print_events(r.into_inner(), request::call_refused).await,
        Err(s) => request::call_refused(&s),
    }
}

/// Prints each event as a JSON line until the stream ends, fails (`failed` says how to exit)
/// or nobody reads the output.
async fn print_events(
    mut stream: tonic::Streaming<proto::Event>,
    failed: fn(&tonic::Status) -> u8,
) -> u8 {
    let mut out = Stdout::new();
    loop {
        match stream.message().await {
            Ok(Some(ev)) => {
                if !out.line(client::event_json(&ev)) {
                    return out.exit_code(0);
                }
            }
            Ok(None) => return out.exit_code(0),
            Err(s) => return failed(&s),
        }
    }
}

/// One line of stdin: its text, or its bytes when they are not UTF-8 (a text frame cannot carry
/// them).
type InputLine = std::io::Result<Result<String, Vec<u8>>>;

/// Stdin split as `BufRead::lines` splits it (without `\n` or `\r\n`), except that a line that
/// is not UTF-8 is handed over as such instead of ending the input.
fn stdin_lines() -> impl Iterator<Item = InputLine> {
    use std::io::BufRead;
    let mut stdin = std::io::stdin().lock();
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.ends_with(b"\n") {
                    line.pop();
                    if line.ends_with(b"\r") {
                        line.pop();
                    }
                }
                Some(Ok(String::from_utf8(line).map_err(|e| e.into_bytes())))
            }
            Err(e) => Some(Err(e)),
        }
    })
}

/// `send`: publishes MESSAGE or every stdin line, printing each outbox id. Output nobody reads
/// stops nothing: the messages are the work, the ids a courtesy.
pub async fn send(
    target: &TargetArg,
    endpoint: &str,
    message: Option<String>,
    wait_sent: bool,
) -> u8 {
    let mut c = match target.connect().await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let wait = if wait_sent {
        proto::Wait::Sent
    } else {
        proto::Wait::Stored
    } as i32;
    let publish = |data: String| proto::PublishRequest {
        endpoint: endpoint.into(),
        data: data.into(),
        kind: proto::Kind::Text as i32,
        idempotency_key: String::new(),
        wait,
    };
    let messages: Box<dyn Iterator<Item = InputLine>> = match message {
        Some(m) => Box::new(std::iter::once(Ok(Ok(m)))),
        None => Box::new(stdin_lines()),
    };
    let mut out = Stdout::new();
    let mut code = 0;
    for (index, m) in messages.enumerate() {
        let m = match m {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => {
                // One bad line costs only itself; the exit code tells the script.
                report!(
                    "ws-sidecar: stdin line {} is not UTF-8, not sent",
                    index + 1
                );
                code = exit::DATAERR;
                continue;
            }
            Err(e) => {
                report!("ws-sidecar: reading stdin: {e}");
                return exit::IOERR;
            }
        };
        match c.publish(publish(m)).await {
            Ok(r) => {
                out.line(r.into_inner().outbox_id);
            }
            Err(s) => return refused(&s),
        }
    }
    out.exit_code(code)
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
        Ok(_) => 0,
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

/// The demo's `--duration`, in the config file's syntax (`10s`, `1m30s`, `500ms`).
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
