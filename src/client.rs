//! gRPC client side used by the CLI commands (`status`, `tail`, `send`, `request`, …), the demo
//! and tests: connects over `unix:PATH` or `HOST:PORT`, and says why when it cannot.

use std::error::Error as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::proto::sidecar_client::SidecarClient;

/// Where a client finds the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl Target {
    /// Parses `unix:PATH`, an absolute path, or `HOST:PORT`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("empty unix socket path".into());
            }
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(Target::Unix(PathBuf::from(s)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Target::Tcp(s.to_owned()))
            }
            _ => Err(format!("expected unix:PATH or HOST:PORT, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => f.write_str(a),
        }
    }
}

/// The receive windows a client grants the daemon. With HTTP/2's default, 64 KiB, a busy stream
/// stops every ~700 small messages to wait for a WINDOW_UPDATE; on a local socket fixed large
/// windows give fewer, larger writes (the fan-out bench's single-stream run, N=1 64 B, went
/// from 0.28x to 0.32x of B1, daemon CPU per message from ~1.8 to ~1.1 µs, on a loaded machine).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Opens a channel to the daemon. Over a Unix socket the HTTP/2 `:authority` is `localhost`:
/// hyper rejects a socket path there.
pub async fn connect(target: &Target) -> Result<SidecarClient<Channel>, tonic::transport::Error> {
    let local = |e: Endpoint| {
        e.initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
    };
    let channel = match target {
        Target::Tcp(addr) => {
            local(Endpoint::from_shared(format!("http://{addr}"))?)
                .connect()
                .await?
        }
        Target::Unix(path) => {
            let path = path.clone();
            local(Endpoint::from_static("http://localhost"))
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await?
        }
    };
    Ok(SidecarClient::new(channel).max_decoding_message_size(usize::MAX))
}

/// How long [`connect_checked`] waits for the daemon's first answer. A running daemon answers
/// a local call in milliseconds; one that is stopped (SIGSTOP, a full accept queue) would
/// otherwise keep a command waiting forever.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why the daemon's API could not be reached, in the words of the OS or of what answered
/// instead. tonic's own error says `transport error` for all of these alike.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// connect(2) failed; the OS says why (`No such file or directory`, `Permission denied`).
    #[error("{0}")]
    Os(io::Error),
    /// The path names something other than a socket.
    #[error("{0}, not a socket")]
    NotASocket(&'static str),
    /// A socket file nobody accepts connections on.
    #[error("{0}: nothing listens on this socket (left behind by a daemon that stopped?)")]
    Stale(io::Error),
    /// Something accepted the connection but does not speak HTTP/2 gRPC: the NDJSON stream
    /// socket, an HTTP/1 server, … The text is the protocol error it caused.
    #[error(
        "it accepts connections but does not speak the ws-sidecar gRPC API ({0}); \
         is it the NDJSON stream socket or another server?"
    )]
    NotTheApi(String),
    /// A gRPC server answered, but without the ws-sidecar service.
    #[error("a gRPC server answers, but not ws-sidecar's ({0})")]
    OtherGrpc(String),
    /// Connected, but no answer in time.
    #[error("no answer within {}", crate::fmt::duration(*.0))]
    NoAnswer(Duration),
    /// Any other failure: its innermost cause.
    #[error("{0}")]
    Other(String),
}

/// Connects like [`connect`], then makes sure the ws-sidecar API answers (a `GetStatus` call)
/// within `within`, so that a socket that is not the daemon's is told apart from a daemon that
/// refuses a request later.
pub async fn connect_checked(
    target: &Target,
    within: Duration,
) -> Result<SidecarClient<Channel>, Unreachable> {
    let attempt = async {
        let mut client = connect(target)
            .await
            .map_err(|e| connect_failure(target, &e))?;
        // The HTTP/2 handshake only fails at the first call, so one is made here.
        match client
            .get_status(crate::proto::GetStatusRequest { endpoint: None })
            .await
        {
            Ok(_) => Ok(client),
            Err(status) => Err(answer_failure(&status)),
        }
    };
    tokio::time::timeout(within, attempt)
        .await
        .unwrap_or(Err(Unreachable::NoAnswer(within)))
}

/// Classifies a failed connect from the OS error at the bottom of tonic's error chain and, for
/// a Unix socket, what the path names: Linux answers `Connection refused` alike for a regular
/// file and for a socket nobody listens on.
fn connect_failure(target: &Target, e: &tonic::transport::Error) -> Unreachable {
    let Some(os) = io_cause(e) else {
        return Unreachable::Other(innermost(e));
    };
    if let Target::Unix(path) = target {
        if let Some(kind) = not_a_socket(path) {
            return Unreachable::NotASocket(kind);
        }
        if os.kind() == io::ErrorKind::ConnectionRefused {
            return Unreachable::Stale(copy(os));
        }
    }
    Unreachable::Os(copy(os))
}

/// Classifies a failed first call. A status made by the client itself (it carries the
/// transport error as its source) means the peer broke the HTTP/2 exchange; one the peer sent
/// means a gRPC server without our service.
fn answer_failure(status: &tonic::Status) -> Unreachable {
    match status.source() {
        Some(cause) => Unreachable::NotTheApi(innermost(cause)),
        None if status.code() == tonic::Code::Unimplemented => {
            Unreachable::OtherGrpc(status.message().to_owned())
        }
        None => Unreachable::Other(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The innermost cause of `e`: the most specific of tonic's and hyper's nested errors (the
/// outer ones say `transport error`, `http2 error`).
pub fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut next = Some(e);
    let mut found = None;
    while let Some(e) = next {
        // The innermost one: an `io::Error` may wrap another error of its own.
        if let Some(io) = e.downcast_ref::<io::Error>() {
            found = Some(io);
        }
        next = e.source();
    }
    found
}

/// What `path` is when it exists and is not a socket.
fn not_a_socket(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_socket() {
        None
    } else if t.is_file() {
        Some("a regular file")
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a named pipe")
    } else {
        Some("a device")
    }
}

/// `io::Error` is not `Clone`; the OS code (or kind and text) is all it carries here.
fn copy(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Renders a subscription event as the JSON object `tail` prints (same shape as NDJSON lines).
pub fn event_json(ev: &crate::proto::Event) -> serde_json::Value {
    use crate::proto::{event::Event as E, GapReason, Kind, State};
    use base64::Engine as _;
    use serde_json::json;
    match &ev.event {
        Some(E::Message(m)) => {
            let text = (m.kind == Kind::Text as i32)
                .then(|| std::str::from_utf8(&m.data).ok())
                .flatten();
            let (data, binary) = match text {
                Some(s) => (s.to_owned(), false),
                None => (
                    base64::engine::general_purpose::STANDARD.encode(&m.data),
                    true,
                ),
            };
            json!({"type": "message", "endpoint": m.endpoint, "seq": m.seq,
                   "received_at_unix_nanos": m.received_at_unix_nanos, "data": data, "binary": binary})
        }
        Some(E::Gap(g)) => {
            let reason = GapReason::try_from(g.reason).map_or("UNKNOWN", |r| r.as_str_name());
            json!({"type": "gap", "endpoint": g.endpoint, "from_seq": g.from_seq,
                   "to_seq": g.to_seq, "reason": reason})
        }
        Some(E::State(s)) => {
            let state = State::try_from(s.state).map_or("unknown".to_owned(), |st| {
                st.as_str_name().to_ascii_lowercase()
            });
            json!({"type": "state", "endpoint": s.endpoint, "state": state,
                   "reason": s.reason, "at_unix_nanos": s.at_unix_nanos})
        }
        Some(E::Key(k)) => {
            let state = crate::proto::KeyState::try_from(k.state)
                .map_or("unknown".to_owned(), |st| {
                    st.as_str_name().to_ascii_lowercase()
                });
            let mut v =
                json!({"type": "key", "endpoint": k.endpoint, "key": k.key, "state": state});
            if !k.reason.is_empty() {
                v["reason"] = k.reason.clone().into();
            }
            v
        }
        None => json!({"type": "unknown"}),
    }
}
