//! `tail`: one or more endpoints' streams printed as JSON lines or as bare payloads, optionally
//! followed across daemon restarts from the last seq printed.

use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use tonic::Code;

use super::{refused, request, Client, TargetArg};
use crate::exit;
use ws_sidecar::output::Stdout;
use ws_sidecar::proto::{self, event::Event as Ev};

/// `tail`'s arguments.
#[derive(clap::Args)]
pub struct TailArgs {
    /// The endpoints to print (their names in the config); with several, every line says which
    /// one it came from (JSON: its "endpoint"; --raw: the name and a tab first).
    #[arg(value_name = "ENDPOINT", required = true)]
    endpoints: Vec<String>,
    /// Replay every retained message with seq > N first (0: from the oldest retained). Past the
    /// endpoint's last seq, a note on stderr says so and only new messages come.
    #[arg(long, value_name = "N")]
    from_seq: Option<u64>,
    /// Only messages whose JSON value at POINTER equals VALUE (repeatable; all must match):
    /// a string's text (quotes optional: /type=trade or /type='"trade"'), or a number, true,
    /// false or null as JSON.
    #[arg(long, value_name = "POINTER=VALUE", conflicts_with = "key")]
    filter: Vec<String>,
    /// Hold the shared upstream subscription KEY (the endpoint's `subscriptions`, e.g.
    /// btcusdt@trade) and print only its messages, plus a {"type":"key"} line each time its
    /// state changes (repeatable; one endpoint only).
    #[arg(long, value_name = "KEY")]
    key: Vec<String>,
    /// JSON for {{params}} in the subscribe frame of a key no other app holds yet.
    #[arg(long, value_name = "JSON", requires = "key")]
    params: Option<String>,
    /// Print only the payloads, one per line: text as it came, binary as base64. Gaps and
    /// refused keys are reported on stderr; state changes are not shown.
    #[arg(long)]
    raw: bool,
    /// Like --raw, but every payload is written exactly as received, binary ones as their bytes,
    /// with nothing added between them (no newline): for one message (`--count 1 > file`) or a
    /// feed that frames itself. One endpoint only.
    #[arg(long, conflicts_with = "raw")]
    raw_bytes: bool,
    /// Survive daemon restarts and broken streams: reconnect with backoff and resume after the
    /// last seq printed, so nothing is printed twice; what the daemon no longer has is reported
    /// as a gap. Notes about it go to stderr.
    #[arg(long)]
    follow: bool,
    /// Exit 0 once N messages were printed (all endpoints together).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    target: TargetArg,
}

/// How messages are printed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One JSON object per event.
    Json,
    /// Payloads, one per line; binary as base64.
    Raw,
    /// Payloads as their bytes, nothing added.
    Bytes,
}

/// `tail`: prints every endpoint's events until the streams end (never, with `--follow`), `--count`
/// messages were printed, or nobody reads the output.
pub async fn tail(args: TailArgs) -> u8 {
    let mode = match (args.raw, args.raw_bytes) {
        (_, true) => Mode::Bytes,
        (true, _) => Mode::Raw,
        _ => Mode::Json,
    };
    let several = args.endpoints.len() > 1;
    if several && mode == Mode::Bytes {
        report!("ws-sidecar: --raw-bytes takes one endpoint: its payloads carry no name");
        return exit::USAGE;
    }
    if several && !args.key.is_empty() {
        report!("ws-sidecar: --key takes one endpoint: keys belong to an endpoint's config");
        return exit::USAGE;
    }
    let what = match What::parse(&args) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let found = match args.target.found() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let target = found.target.clone();
    // One connection for the first subscriptions: an address that is wrong fails here, once.
    let client = match super::reach(&target).await {
        Ok(c) => c,
        Err(e) => {
            report!("ws-sidecar: {}", super::unreachable_message(&found, &e));
            return exit::UNAVAILABLE;
        }
    };
    let feeds = args.endpoints.iter().map(|name| Feed {
        endpoint: name.clone(),
        what: what.clone(),
        target: target.clone(),
        client: Some(client.clone()),
        stream: None,
        position: args.from_seq,
        user_from: args.from_seq,
        follow: args.follow,
        backoff: retry_backoff(),
        lost: None,
    });
    let streams = feeds.map(|f| {
        futures_util::stream::unfold(f, |mut f| async move {
            let step = f.next().await?;
            Some((step, f))
        })
        .boxed()
    });
    let mut all = futures_util::stream::select_all(streams);
    let mut printer = Printer {
        out: Stdout::new(),
        mode,
        several,
        printed: 0,
    };
    while let Some(step) = all.next().await {
        match step {
            Step::Event(ev) => {
                if !printer.print(&ev) {
                    return printer.out.exit_code(0);
                }
                if args.count.is_some_and(|n| printer.printed >= n) {
                    return printer.out.exit_code(0);
                }
            }
            Step::Failed(code) => return code,
        }
    }
    printer.out.exit_code(0)
}

/// What each endpoint's stream asks for: the whole feed (filtered) or shared keys.
#[derive(Clone)]
enum What {
    Feed(Vec<proto::Filter>),
    Keys { keys: Vec<String>, params: String },
}

impl What {
    fn parse(args: &TailArgs) -> Result<What, u8> {
        if !args.key.is_empty() {
            if args.key.iter().any(String::is_empty) {
                report!("ws-sidecar: --key must not be empty");
                return Err(exit::USAGE);
            }
            let params = args.params.clone().unwrap_or_default();
            if !params.trim().is_empty() {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&params) {
                    report!("ws-sidecar: --params is not JSON: {e}");
                    return Err(exit::USAGE);
                }
            }
            return Ok(What::Keys {
                keys: args.key.clone(),
                params,
            });
        }
        let mut parsed = Vec::new();
        for f in &args.filter {
            let Some((pointer, equals)) = f.split_once('=') else {
                report!("ws-sidecar: --filter must be POINTER=VALUE, got {f:?}");
                return Err(exit::USAGE);
            };
            // Unquoted here too, for a daemon from before it did so itself.
            let equals = ws_sidecar::filter::equals_text(equals);
            parsed.push(proto::Filter {
                pointer: pointer.into(),
                equals,
            });
        }
        Ok(What::Feed(parsed))
    }

    /// The exit code for a refusal: `tail --key` tells a missing `subscriptions` apart.
    fn refused(&self, status: &tonic::Status) -> u8 {
        match self {
            What::Feed(_) => refused(status),
            What::Keys { .. } => request::call_refused(status),
        }
    }
}

/// What one endpoint's stream yields to the printer.
enum Step {
    Event(proto::Event),
    /// The command ends with this code (the failure is already reported).
    Failed(u8),
}

/// Why a stream could not be had or went away.
enum Lost {
    /// Worth another try with `--follow` (the daemon restarting, a broken connection).
    Retry(String),
    /// The daemon refused; the command ends with this code.
    Fatal(u8),
}

/// One endpoint's stream, opened again after a loss when following.
struct Feed {
    endpoint: String,
    what: What,
    target: ws_sidecar::client::Target,
    /// The connection to (re)use; dropped after a loss so the next attempt connects afresh.
    client: Option<Client>,
    stream: Option<tonic::Streaming<proto::Event>>,
    /// The from_seq of the next subscription: the user's, then the last seq printed.
    position: Option<u64>,
    /// `--from-seq` as given, to word the past-the-end note.
    user_from: Option<u64>,
    follow: bool,
    backoff: ws_sidecar::backoff::Backoff,
    /// Why the stream was lost, while reconnecting: noted on stderr once per new reason.
    lost: Option<String>,
}

impl Feed {
    async fn next(&mut self) -> Option<Step> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match self.open().await {
                    Ok(s) => {
                        if self.lost.take().is_some() {
                            let after = self
                                .position
                                .map_or(String::new(), |p| format!(", resuming after seq {p}"));
                            report!("ws-sidecar: {}: reconnected{after}", self.endpoint);
                        }
                        self.backoff.on_connected(std::time::Instant::now());
                        self.stream = Some(s);
                    }
                    Err(Lost::Fatal(code)) => return Some(Step::Failed(code)),
                    Err(Lost::Retry(why)) if !self.follow => {
                        report!("ws-sidecar: {}: {why}", self.endpoint);
                        return Some(Step::Failed(exit::UNAVAILABLE));
                    }
                    Err(Lost::Retry(why)) => {
                        let delay = self.backoff.after_failure(None, fastrand::f64());
                        self.note_lost(why, delay);
                        tokio::time::sleep(delay).await;
                    }
                }
                continue;
            };
            let why = match stream.message().await {
                Ok(Some(ev)) => {
                    self.advance(&ev);
                    return Some(Step::Event(ev));
                }
                Ok(None) if !self.follow => return None,
                Ok(None) => "the daemon ended the stream".to_owned(),
                Err(s) => match self.classify(&s) {
                    Lost::Retry(why) if self.follow => why,
                    Lost::Retry(_) => return Some(Step::Failed(self.what.refused(&s))),
                    Lost::Fatal(code) => return Some(Step::Failed(code)),
                },
            };
            self.stream = None;
            self.client = None;
            let delay =
                self.backoff
                    .after_disconnect(std::time::Instant::now(), None, fastrand::f64());
            self.note_lost(why, delay);
            tokio::time::sleep(delay).await;
        }
    }

    fn note_lost(&mut self, why: String, delay: Duration) {
        if self.lost.as_deref() != Some(why.as_str()) {
            report!(
                "ws-sidecar: {}: {why}; reconnecting (next try in {})",
                self.endpoint,
                ws_sidecar::fmt::duration(delay)
            );
            self.lost = Some(why);
        }
    }

    /// Remembers how far the output got, so a new subscription starts right after it.
    fn advance(&mut self, ev: &proto::Event) {
        let seen = match &ev.event {
            Some(Ev::Message(m)) => m.seq,
            // Local seqs the daemon no longer has: resuming must not report them twice.
            Some(Ev::Gap(g)) if is_local_gap(g) => g.to_seq,
            _ => return,
        };
        self.position = Some(self.position.map_or(seen, |p| p.max(seen)));
    }

    /// Subscribes (or attaches) from the current position, noting on stderr when that position
    /// is past the endpoint's last seq.
    async fn open(&mut self) -> Result<tonic::Streaming<proto::Event>, Lost> {
        let mut client = match self.client.take() {
            Some(c) => c,
            None => super::reach(&self.target).await.map_err(|e| {
                Lost::Retry(format!("cannot reach the daemon at {}: {e}", self.target))
            })?,
        };
        if self.follow || self.position.is_some_and(|p| p > 0) {
            let last = self.last_seq(&mut client).await?;
            match self.position {
                // Following a live tail: "live" is pinned to a seq, so a restart loses nothing.
                None => self.position = Some(last),
                Some(p) if p > last => {
                    let note = if self.user_from == Some(p) {
                        format!("--from-seq {p} is past the last seq ({last}): nothing to replay")
                    } else {
                        format!(
                            "the daemon's last seq ({last}) is below seq {p}, printed before (was \
                             its store replaced?)"
                        )
                    };
                    report!(
                        "ws-sidecar: {}: {note}; printing new messages as they come",
                        self.endpoint
                    );
                }
                Some(_) => {}
            }
        }
        let opened = match &self.what {
            What::Feed(filters) => {
                client
                    .subscribe(proto::SubscribeRequest {
                        endpoint: self.endpoint.clone(),
                        from_seq: self.position,
                        filters: filters.clone(),
                    })
                    .await
            }
            What::Keys { keys, params } => {
                client
                    .attach(proto::AttachRequest {
                        endpoint: self.endpoint.clone(),
                        keys: keys.clone(),
                        params: params.clone(),
                        from_seq: self.position,
                    })
                    .await
            }
        };
        self.client = Some(client);
        opened
            .map(tonic::Response::into_inner)
            .map_err(|s| self.classify(&s))
    }

    /// The endpoint's last seq, from its status.
    async fn last_seq(&self, client: &mut Client) -> Result<u64, Lost> {
        let status = client
            .get_status(proto::GetStatusRequest {
                endpoint: Some(self.endpoint.clone()),
            })
            .await
            .map_err(|s| self.classify(&s))?;
        Ok(status
            .into_inner()
            .endpoints
            .first()
            .map_or(0, |e| e.last_seq))
    }

    /// A refusal ends the command; the daemon going away (or letting a slow reader go) is worth
    /// another try when following.
    fn classify(&self, s: &tonic::Status) -> Lost {
        let transport = std::error::Error::source(s).is_some();
        let retry = transport
            || matches!(
                s.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
                    | Code::ResourceExhausted
            );
        if retry && self.follow {
            let why = match std::error::Error::source(s).map(ws_sidecar::client::innermost) {
                Some(cause) => format!("stream lost: {cause}"),
                None => format!("stream lost: {}", s.message()),
            };
            Lost::Retry(why)
        } else {
            Lost::Fatal(self.what.refused(s))
        }
    }
}

/// A gap in the endpoint's own seqs (not the upstream's ids).
fn is_local_gap(g: &proto::Gap) -> bool {
    !matches!(
        proto::GapReason::try_from(g.reason),
        Ok(proto::GapReason::UpstreamGap | proto::GapReason::UpstreamReset)
    )
}

/// Backoff between reconnect attempts: quick at first (a restart takes a moment), then every
/// few seconds at most.
fn retry_backoff() -> ws_sidecar::backoff::Backoff {
    ws_sidecar::backoff::Backoff::new(ws_sidecar::config::BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(5),
        multiplier: 2.0,
        min_delay: Duration::from_millis(50),
        reset_after: Duration::from_secs(10),
        fallback_after: u32::MAX,
    })
}

/// Writes events as the mode says and counts the messages written.
struct Printer {
    out: Stdout,
    mode: Mode,
    /// Several endpoints: raw lines start with the endpoint's name.
    several: bool,
    printed: u64,
}

impl Printer {
    /// False once nobody reads the output.
    fn print(&mut self, ev: &proto::Event) -> bool {
        if self.mode == Mode::Json {
            if matches!(ev.event, Some(Ev::Message(_))) {
                self.printed += 1;
            }
            return self.out.line(ws_sidecar::client::event_json(ev));
        }
        match &ev.event {
            Some(Ev::Message(m)) => {
                self.printed += 1;
                if self.mode == Mode::Bytes {
                    return self.out.bytes(&m.data);
                }
                let text = (m.kind == proto::Kind::Text as i32)
                    .then(|| std::str::from_utf8(&m.data).ok())
                    .flatten();
                let payload = match text {
                    Some(t) => std::borrow::Cow::Borrowed(t),
                    None => base64::engine::general_purpose::STANDARD
                        .encode(&m.data)
                        .into(),
                };
                if self.several {
                    self.out.line(format_args!("{}\t{payload}", m.endpoint))
                } else {
                    self.out.line(payload)
                }
            }
            Some(Ev::Gap(g)) => {
                let reason =
                    proto::GapReason::try_from(g.reason).map_or("UNKNOWN", |r| r.as_str_name());
                let what = if is_local_gap(g) {
                    "seqs"
                } else {
                    "upstream ids"
                };
                report!(
                    "ws-sidecar: {}: gap: {what} {}-{} not delivered ({reason})",
                    g.endpoint,
                    g.from_seq,
                    g.to_seq
                );
                true
            }
            Some(Ev::Key(k)) if k.state == proto::KeyState::Refused as i32 => {
                report!(
                    "ws-sidecar: {}: key {} refused: {}",
                    k.endpoint,
                    k.key,
                    k.reason
                );
                true
            }
            _ => true,
        }
    }
}
