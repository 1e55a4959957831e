//! The `ws-sidecar` command line (SPEC §3): the daemon, config check, demo and client commands.
//! Exit codes follow sysexits: 0 ok, 1 refused by the daemon, 64 usage, 65 input that cannot be
//! used (a stdin line `send` could not send, a `request` that is no JSON object or array), 69
//! daemon unreachable, 71 cannot bind a listener, 74 output or input failed, 75 (`run`) another
//! daemon holds the store, 78 invalid config; `request` and `tail --key` add 2, 75, 76, 78, 124
//! and 130, `send --timeout` 124 (see [`exit`]). A reader that goes away (`| head -1`) is no
//! failure: see `ws_sidecar::output`.

#![forbid(unsafe_code)]

/// `eprintln!` without its panic on a stderr nobody reads (see `ws_sidecar::output`).
macro_rules! report {
    ($($arg:tt)*) => {
        ws_sidecar::output::stderr_line(format_args!($($arg)*))
    };
}

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use ws_sidecar::config::{self, Config};

/// One resilient upstream WebSocket per endpoint, fanned out to local apps over gRPC and NDJSON.
#[derive(Parser)]
#[command(name = "ws-sidecar", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    Run {
        /// Config file [default: $WS_SIDECAR_CONFIG, else the first that exists of
        /// $XDG_CONFIG_HOME/ws-sidecar/config.toml (not for root) and /etc/ws-sidecar/config.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the config and print a summary; exit 0 if valid, 78 if not. Also resolves
    /// what it can (secret references, users and groups of access lists, TLS files) and warns
    /// about what fails.
    CheckConfig {
        /// Config file [default: as for `run`].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Treat warnings as errors: exit 78 when there is any.
        #[arg(long)]
        strict: bool,
        /// Print only errors, warnings and the verdict, not the summary of a valid file (the
        /// unit's ExecStartPre= and ExecReload= use it, to keep the journal short).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Self-contained demo: a simulated upstream that drops now and then, the daemon, and a
    /// subscriber showing resume with contiguous seqs. Ctrl-C ends it.
    Demo {
        /// Stop by itself after this long (e.g. "10s").
        #[arg(long, value_name = "DURATION")]
        duration: Option<String>,
    },
    /// One line per endpoint: state, reason, last seq, subscribers, outbox depth, reconnects,
    /// rtt (and keys=, requests= where the endpoint shares them); exit 69 when no daemon answers.
    Status {
        /// Only this endpoint (exit 1 if the daemon has none of that name).
        #[arg(value_name = "ENDPOINT")]
        endpoint: Option<String>,
        /// Print a JSON array of objects instead of lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: cli::TargetArg,
    },
    /// Subscribe to endpoints (with --key: to shared subscriptions on one) and print one JSON
    /// object per line, or with --raw the payloads only.
    Tail(cli::tail::TailArgs),
    /// Send a JSON request upstream on the endpoint's shared connection (its `requests`) and
    /// print the reply as one JSON line. Exit 0 a reply, 2 the upstream answered with an error,
    /// 1 refused, 65 not a JSON object or array, 69 no daemon, 75 the connection dropped with the
    /// request in flight (it may have reached the upstream), 78 no `requests` table, 124 no reply
    /// within `requests.timeout`, 130 Ctrl-C.
    Request {
        /// The endpoint's name in the config.
        endpoint: String,
        /// The request, e.g. '{"id":1,"method":"ping"}' (its id comes back in the reply);
        /// `-` reads it from stdin.
        #[arg(value_name = "JSON")]
        json: String,
        /// Print every reply, one line each, until the upstream's last (eth_subscribe, GraphQL
        /// subscriptions); Ctrl-C ends the stream upstream too.
        #[arg(long)]
        stream: bool,
        #[command(flatten)]
        target: cli::TargetArg,
    },
    /// Publish MESSAGE, or each line of stdin, to an endpoint's outbox; prints
    /// `stored outbox_id=N` (or `sent outbox_id=N`) per message.
    Send(cli::send::SendArgs),
    /// Force a reconnect; also leaves the `failed` state.
    Reconnect {
        /// The endpoint's name in the config.
        endpoint: String,
        #[command(flatten)]
        target: cli::TargetArg,
    },
    /// Ask the running daemon to reload its config file (as SIGHUP does) and print what
    /// changed, or why the file was refused; exit 0 accepted, 78 refused, 69 unreachable.
    Reload {
        #[command(flatten)]
        target: cli::TargetArg,
    },
    /// Forget the endpoint's stored resume position (its last upstream id), then reconnect
    /// without offering it: for an upstream whose ids started again. Needs publish access.
    ResetResume {
        /// The endpoint's name in the config.
        endpoint: String,
        #[command(flatten)]
        target: cli::TargetArg,
    },
    /// Show what waits in an endpoint's outbox (depth, bytes, oldest age); --clear drops it.
    /// Clearing needs publish access.
    Outbox(cli::outbox::OutboxArgs),
}

/// sysexits codes used by the CLI.
pub mod exit {
    /// The daemon refused the request (an unknown endpoint, say).
    pub const REFUSED: u8 = 1;
    /// A wrong command line.
    pub const USAGE: u8 = 64;
    /// Input that cannot be used: a stdin line for `send` that is not UTF-8.
    pub const DATAERR: u8 = 65;
    /// The daemon could not be reached.
    pub const UNAVAILABLE: u8 = 69;
    /// The process could not set itself up (runtime, signals, listeners).
    pub const OSERR: u8 = 71;
    /// Reading stdin or writing stdout failed (not a reader that went away).
    pub const IOERR: u8 = ws_sidecar::output::IOERR;
    /// The config is invalid.
    pub const CONFIG: u8 = 78;

    /// `request`: the upstream answered with an error (printed like any reply).
    pub const UPSTREAM_ERROR: u8 = 2;
    /// `request`: the upstream connection dropped with the request in flight, or the endpoint
    /// stopped; it may have reached the upstream. `run`: another daemon holds the store
    /// (sysexits EX_TEMPFAIL: try again later).
    pub const TEMPFAIL: u8 = 75;
    /// `request`: the daemon's reply is not JSON (sysexits EX_PROTOCOL; a daemon bug).
    pub const PROTOCOL: u8 = 76;
    /// `request`, `tail --key`: the endpoint has no `requests` (`subscriptions`) in its config,
    /// or it is `failed` (sysexits EX_CONFIG).
    pub const UNCONFIGURED: u8 = 78;
    /// `request`: no reply within the endpoint's `requests.timeout`; `send`: no answer within
    /// `--timeout`. Either may have reached the upstream. 124 is what timeout(1) exits with.
    pub const TIMEOUT: u8 = 124;
    /// `request` ended by Ctrl-C (128 + SIGINT, as a shell reports it).
    pub const INTERRUPTED: u8 = 130;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // `--help` and `--version` go to stdout, usage errors to stderr.
            if e.use_stderr() {
                let _ = e.print();
                return ExitCode::from(exit::USAGE);
            }
            let mut out = ws_sidecar::output::Stdout::new();
            out.record(e.print());
            return ExitCode::from(out.exit_code(0));
        }
    };
    // Taken before the runtime starts any thread: it edits the environment.
    let activation = match &cli.command {
        Command::Run { .. } => match ws_sidecar::systemd::take_activation() {
            Ok(a) => a,
            Err(e) => {
                report!("ws-sidecar: {e}");
                return ExitCode::from(exit::OSERR);
            }
        },
        _ => None,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report!("ws-sidecar: cannot start the runtime: {e}");
            return ExitCode::from(exit::OSERR);
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Run { config } => run(config, activation).await,
            Command::CheckConfig {
                config,
                strict,
                quiet,
            } => check_config(config, strict, quiet).await,
            Command::Demo { duration } => cli::demo(duration).await,
            Command::Status {
                endpoint,
                json,
                target,
            } => cli::status(&target, endpoint, json).await,
            Command::Tail(args) => cli::tail::tail(args).await,
            Command::Request {
                endpoint,
                json,
                stream,
                target,
            } => cli::request::request(&target, &endpoint, json, stream).await,
            Command::Send(args) => cli::send::send(args).await,
            Command::Reconnect { endpoint, target } => cli::reconnect(&target, &endpoint).await,
            Command::Reload { target } => cli::reload(&target).await,
            Command::ResetResume { endpoint, target } => {
                cli::reset_resume(&target, &endpoint).await
            }
            Command::Outbox(args) => cli::outbox::outbox(args).await,
        }
    });
    // Don't wait on stdin readers or lingering client tasks at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    // The last lines (the shutdown summary) are still queued; a stalled stderr gets a bound.
    ws_sidecar::logging::flush(std::time::Duration::from_secs(2));
    ExitCode::from(code)
}

fn config_path(arg: Option<PathBuf>) -> Result<PathBuf, u8> {
    ws_sidecar::paths::config_file(
        arg.as_deref(),
        &ws_sidecar::paths::process_env(),
        ws_sidecar::paths::system_places(),
    )
    .map_err(|e| {
        report!("ws-sidecar: {e}");
        exit::CONFIG
    })
}

fn load(arg: Option<PathBuf>) -> Result<Config, u8> {
    config::load(&config_path(arg)?).map_err(|e| {
        report!("{e}");
        exit::CONFIG
    })
}

/// `check-config`: every error and every warning (both, even when there are errors), then the
/// summary of a valid file (unless `quiet`) and its verdict.
async fn check_config(arg: Option<PathBuf>, strict: bool, quiet: bool) -> u8 {
    let path = match config_path(arg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let loaded = config::load_lenient(&path);
    for e in &loaded.errors {
        report!("{e}");
    }
    let mut warnings = Vec::new();
    if let Some(cfg) = &loaded.config {
        warnings = cfg.warnings();
        warnings.extend(config::resolve(cfg).await);
    }
    for w in &warnings {
        report!("warning: {w}");
    }
    let Some(cfg) = loaded.config.filter(|_| loaded.errors.is_empty()) else {
        return exit::CONFIG;
    };
    if strict && !warnings.is_empty() {
        report!(
            "{}: refused by --strict: {} warning{}",
            path.display(),
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" }
        );
        return exit::CONFIG;
    }
    // The verdict is the exit code; nobody reading the summary changes nothing.
    let mut out = ws_sidecar::output::Stdout::new();
    if !quiet {
        out.text(&cfg.summary());
    }
    out.line(format_args!("{}: ok", cfg.source.display()));
    out.exit_code(0)
}

/// Says a fatal start-up error once: through the log when it shows errors (under the journal
/// that gives the line its priority), else plainly on stderr.
fn fatal(msg: std::fmt::Arguments<'_>) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{msg}");
    } else {
        report!("ws-sidecar: {msg}");
    }
}

/// Files a failed start created, removed when it returns early (see `run`).
struct Leftovers {
    store: Option<PathBuf>,
    sockets: Vec<PathBuf>,
    /// Directories that did not exist before the start (the store's and the sockets'
    /// parents), deepest first; removed when empty.
    dirs: Vec<PathBuf>,
}

impl Leftovers {
    /// What a start with `cfg` may create, noted before it does.
    fn before_start(cfg: &Config) -> Leftovers {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let sockets = cfg.grpc.listen.iter().filter_map(|l| match l {
            config::ListenAddr::Unix(p) => Some(p),
            config::ListenAddr::Tcp(_) => None,
        });
        for file in sockets.chain(&cfg.stream.path).chain([&cfg.store.path]) {
            for dir in file.ancestors().skip(1).take_while(|d| !d.exists()) {
                // A relative path's last ancestor is "" (the working directory).
                if !dir.as_os_str().is_empty() && !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_path_buf());
                }
            }
        }
        // Deepest first, so a parent is empty by the time its turn comes.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        Leftovers {
            store: (!cfg.store.path.exists()).then(|| cfg.store.path.clone()),
            sockets: Vec::new(),
            dirs,
        }
    }

    /// The start succeeded: the daemon owns the files now.
    fn keep(mut self) {
        self.store = None;
        self.sockets.clear();
        self.dirs.clear();
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        ws_sidecar::listen::remove_sockets(&self.sockets);
        if let Some(p) = &self.store {
            let _ = std::fs::remove_file(p);
        }
        for d in &self.dirs {
            // remove_dir(2) refuses a directory that is not empty: nothing else is lost.
            let _ = std::fs::remove_dir(d);
        }
    }
}

async fn run(arg: Option<PathBuf>, activation: Option<ws_sidecar::systemd::Activation>) -> u8 {
    let cfg = match load(arg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Installed before anything else runs: SIGHUP's default action would end the process.
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            report!("ws-sidecar: cannot handle SIGHUP: {e}");
            return exit::OSERR;
        }
    };
    cli::init_logging(&cfg.log);
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    // A start that fails from here on removes what it created: a new, empty store file and
    // the socket files it bound.
    let mut leftovers = Leftovers::before_start(&cfg);
    let store = match ws_sidecar::store::Store::open(&cfg.store.path) {
        Ok(s) => s,
        Err(e) => {
            fatal(format_args!("{e}"));
            return match e {
                // Restartable: the other daemon may stop (systemd's Restart= retries 75, not 78).
                ws_sidecar::store::OpenError::Held { .. } => exit::TEMPFAIL,
                _ => exit::CONFIG,
            };
        }
    };
    let listeners = match ws_sidecar::listen::bind_with(&cfg, activation).await {
        Ok(l) => l,
        Err(e) => {
            fatal(format_args!("{e:#}"));
            return exit::OSERR;
        }
    };
    leftovers.sockets = listeners.socket_paths();
    let shutdown = tokio_util::sync::CancellationToken::new();
    cli::stop_on_signals(shutdown.clone());
    tracing::info!(
        endpoints = cfg.endpoints.len(),
        config = %cfg.source.display(),
        store = %cfg.store.path.display(),
        "ws-sidecar started; apps connect at {}",
        listeners.describe()
    );
    let cluster = match cfg.cluster.as_ref() {
        Some(c) => match ws_sidecar::cluster::Node::connect(c).await {
            Ok(node) => Some(node),
            Err(e) => {
                fatal(format_args!("{e}"));
                return exit::CONFIG;
            }
        },
        None => None,
    };
    let daemon = match ws_sidecar::supervisor::Daemon::start(
        cfg,
        listeners,
        Some(store),
        cluster,
        shutdown.clone(),
    ) {
        Ok(d) => d,
        Err(e) => {
            fatal(format_args!("{e}"));
            return exit::CONFIG;
        }
    };
    leftovers.keep();
    // Every listener is bound, so READY=1 can go now; the upstreams connect on their own.
    let notifier = ws_sidecar::systemd::Notifier::from_env();
    daemon.reloader.notify_via(notifier.clone());
    tokio::spawn(cli::reload_on_hangup(hangups, daemon.reloader.clone()));
    ws_sidecar::systemd::start(
        notifier,
        Arc::clone(&daemon.registry),
        daemon.liveness.clone(),
        shutdown,
    );
    daemon.run_until_stopped().await;
    0
}
