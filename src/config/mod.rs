//! The validated configuration (SPEC §4): typed values only, every default applied.
//!
//! Loading and validation live in `load.rs` (global sections), `endpoint.rs` (one endpoint),
//! `handshake.rs` (its headers, auth and secret references), `discovery.rs` (`url` as a
//! table: the URL discovered before every attempt), `proxy.rs` (proxy URLs and
//! the proxy environment variables), `value.rs` (the error-collecting
//! field reader) and `units.rs` (the duration and size syntax);
//! `summary.rs` renders what `check-config` prints, `resolve.rs` what it finds by resolving
//! secrets, users and files, `placeholder.rs` refuses config/example.toml's placeholders. This file is the shape the rest of the daemon reads.
//! Everything here is checked before anything starts, so runtime code never re-validates.

mod cluster;
mod decode;
mod dialogue;
mod discovery;
mod endpoint;
mod handshake;
mod listeners;
mod load;
mod numbers;
mod placeholder;
mod presets;
mod proxy;
mod ratelimit;
#[cfg(test)]
mod reference;
mod resolve;
mod resume;
mod share;
mod summary;
mod template;
pub mod units;
pub(crate) mod value;

pub use cluster::{ClusterConfig, ClusterRetention};
pub use discovery::{Discovery, DiscoveryMethod, HttpDiscovery, UrlSource};
pub use load::{load, load_lenient, load_str, ConfigError, Lenient};
pub use placeholder::PLACEHOLDER;
pub use proxy::{no_proxy_exempts, ProxyConfig, ProxyEnvError, ProxyRoute, ProxyScheme, ProxyUrl};
pub use resolve::resolve;
pub use share::{
    IdStyle, Join, KeyRule, ReplyStreamConfig, RequestsConfig, Route, SubscriptionsConfig,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

/// The key path of endpoint `name` as errors and reports write it (`endpoints.prices`,
/// `endpoints."eu.prices"`).
pub fn endpoint_path(name: &str) -> String {
    value::join_key("endpoints", name)
}

/// The whole daemon configuration, after defaults and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// File the config was read from, used to prefix every error and in `check-config`.
    pub source: PathBuf,
    pub log: LogConfig,
    pub grpc: GrpcConfig,
    pub stream: StreamConfig,
    pub sockets: SocketsConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    /// `[cluster]`: the NATS JetStream shared by endpoints with `cluster = true`.
    pub cluster: Option<ClusterConfig>,
    /// Endpoints by name; a BTreeMap so summaries and status lines are in a stable order.
    pub endpoints: BTreeMap<String, EndpointConfig>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Directive string for tracing's EnvFilter; `RUST_LOG` wins over it.
    pub level: String,
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    Journald,
}

/// `[grpc]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcConfig {
    /// Where the gRPC API listens; Unix sockets and (loopback unless allowed) TCP.
    pub listen: Vec<ListenAddr>,
    /// Permits a non-loopback TCP address in `listen`.
    pub allow_remote: bool,
}

/// A listener address: `unix:/path` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// `[stream]`: the NDJSON socket.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// `None` when disabled with `path = ""`.
    pub path: Option<PathBuf>,
}

/// `[sockets]`: permissions of the Unix sockets the daemon creates itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketsConfig {
    /// Octal file mode, e.g. 0o660.
    pub mode: u32,
    pub group: Option<String>,
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// `None` when disabled with `listen = ""`.
    pub listen: Option<SocketAddr>,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub path: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Subscriptions across gRPC and NDJSON together.
    pub max_subscribers: usize,
}

/// `[endpoints.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    /// A fixed `ws(s)://` URL, or how to discover one before every attempt.
    pub url: UrlSource,
    pub fallback_urls: Vec<url::Url>,
    /// Extra handshake headers, sorted by name (the `config` crate does not keep file order);
    /// values may be secret references.
    pub headers: Vec<(String, Secret)>,
    pub subprotocols: Vec<String>,
    /// The opening dialogue after every (re)connect: frames to send, and answers to wait for
    /// before the next frame, the outbox and `connected`.
    pub on_connect: Vec<StepConfig>,
    /// Values taken from inbound messages for templates, by name.
    pub captures: Vec<CaptureConfig>,
    /// What the daemon does itself with inbound messages that match, in order.
    pub rules: Vec<RuleConfig>,
    /// Rotate the connection (make-before-break) after about this long.
    pub max_lifetime: Option<Duration>,
    pub connect_timeout: Duration,
    /// Applies to an inbound message after `decode` has inflated it.
    pub max_message_size: usize,
    /// How inbound binary messages are decompressed before anything else sees them.
    pub decode: Decode,
    pub proxy: ProxyConfig,
    pub tls: TlsConfig,
    /// Overrides of the default close-code classification.
    pub close_codes: BTreeMap<u16, CloseAction>,
    /// Messages matching any of these are not fanned out.
    pub drop: Vec<FilterConfig>,
    pub auth: Option<AuthConfig>,
    pub heartbeat: HeartbeatConfig,
    pub backoff: BackoffConfig,
    pub resume: Option<ResumeConfig>,
    pub replay: ReplayConfig,
    pub outbox: OutboxConfig,
    pub access: AccessConfig,
    /// Send rate limit; `None` (the default) sends as fast as the socket takes.
    pub rate_limit: Option<RateLimitConfig>,
    /// One upstream subscription per key, shared by the apps that want it (issue 14).
    pub subscriptions: Option<SubscriptionsConfig>,
    /// Request ids assigned by the daemon, replies routed to the app that asked.
    pub requests: Option<RequestsConfig>,
    /// How text frames are packed: plain JSON, or Socket.IO packets.
    pub framing: Framing,
    /// `cluster = true`: one upstream connection for the whole fleet sharing `[cluster]`,
    /// every message through the endpoint's JetStream stream (`crate::cluster`).
    pub cluster: bool,
}

/// `endpoints.NAME.framing`: what a text frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// The message itself (JSON or not).
    #[default]
    Json,
    /// A Socket.IO v5 packet in an Engine.IO v4 packet (`42["event",…]`): matched and routed as
    /// `{"eio":4,"sio":2,"id":…,"data":[…]}`, events delivered to apps as their array.
    SocketIo,
}

/// `endpoints.NAME.rate_limit`: at most `messages` frames sent in any window of length `per`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub messages: usize,
    pub per: Duration,
    /// The daemon's own Pings wait and count too, and one frame of every window is kept for
    /// the pongs tungstenite sends by itself.
    pub control_frames: bool,
}

/// One condition on an inbound message; a `match` list holds when all of its conditions do.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The JSON value at `pointer` equals `value` (a string also matches a number, boolean or
    /// null whose JSON text it is, as subscriber filters do).
    Equals {
        pointer: String,
        value: serde_json::Value,
    },
    /// The message is JSON with a value at `pointer`.
    Present { pointer: String },
    /// The whole message is this text (`ping`, `3`, …), JSON or not.
    Text(String),
}

/// `endpoints.NAME.on_connect[i]`: a frame to send, or a table that may also wait for an
/// answer before the next step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepConfig {
    /// Template sent when the step starts.
    pub send: Option<String>,
    /// The step ends when a message matches; empty: at once.
    pub expect: Vec<Condition>,
    /// A message matching this ends the connection attempt with `failure`.
    pub refuse: Vec<Condition>,
    /// How long `expect` is waited for.
    pub timeout: Duration,
    /// What a refusal or a timeout means for the reconnect loop.
    pub failure: CloseAction,
    /// Whether messages arriving while this step waits are fanned out (otherwise only rules and
    /// captures see them).
    pub deliver: bool,
    /// Taken only when resuming, or only when not; always when `None`.
    pub when: Option<StepWhen>,
}

/// When an `on_connect` step is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepWhen {
    /// A resume position is offered (an id is known, and the session capture has a value).
    Resuming,
    /// No position is offered: a new session starts.
    NewSession,
}

impl StepConfig {
    /// A step that only sends `frame`.
    pub fn frame(frame: impl Into<String>) -> Self {
        StepConfig {
            send: Some(frame.into()),
            expect: Vec::new(),
            refuse: Vec::new(),
            timeout: Duration::from_secs(10),
            failure: CloseAction::Retry,
            deliver: false,
            when: None,
        }
    }
}

/// `endpoints.NAME.captures.NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureConfig {
    pub name: String,
    /// Where the value is in a matching message.
    pub pointer: String,
    /// Only messages matching this are looked at; empty: every JSON message.
    pub matches: Vec<Condition>,
    /// The value before any message gave one, from JSON text (Discord's heartbeat wants `null`
    /// before the first sequence number).
    pub default: Option<serde_json::Value>,
    /// Kept in the store, since resuming needs it after a restart (set by the config loader:
    /// the session capture, and those used in `resume.url`, `resume.frame` or a resuming step).
    pub persist: bool,
}

/// `endpoints.NAME.rules[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    pub matches: Vec<Condition>,
    /// Template sent at once in answer.
    pub reply: Option<String>,
    /// Not fanned out to apps.
    pub drop: bool,
    pub action: Option<RuleAction>,
}

/// What a rule does to the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleAction {
    /// Open a new connection, then close this one.
    Reconnect,
    /// Like `Reconnect`, to the `ws://`/`wss://` URL at this pointer of the message.
    ReconnectTo { url_pointer: String },
    /// Forget the resume position (and captured values), then reconnect.
    ResetResume,
    /// Close the connection and stay `failed` until an operator's reconnect.
    Fail,
}

/// `endpoints.NAME.decode`: the compression of inbound binary messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decode {
    /// Passed through as received.
    #[default]
    None,
    /// Each message a gzip member (RFC 1952).
    Gzip,
    /// Each message a zlib stream (RFC 1950).
    Zlib,
    /// Each message raw deflate (RFC 1951), with or without a final block.
    DeflateRaw,
    /// One zlib stream per connection, each message ending with a sync flush (Discord).
    ZlibStream,
    /// One zstd stream per connection, each message flushed (Discord).
    ZstdStream,
}

/// `endpoints.NAME.tls`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// What a close code means for the reconnect loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    Retry,
    Reauth,
    Fail,
}

/// A `{pointer, equals}` filter; `equals` is any JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub pointer: String,
    pub equals: serde_json::Value,
}

/// `endpoints.NAME.auth`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub token: TokenSource,
    pub placement: AuthPlacement,
    /// Consecutive auth failures before the endpoint is `failed`.
    pub max_failures: u32,
    pub refresh_before: Duration,
    /// Lifetime of a token whose expiry cannot be read from it.
    pub ttl: Option<Duration>,
    pub renew: RenewMode,
    /// Template sent on the live connection when `renew = "frame"`.
    pub renew_frame: Option<String>,
}

/// Where a token comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    Secret(Secret),
    OAuth2 {
        token_url: url::Url,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
    },
}

/// How the token is put on the handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthPlacement {
    /// Header name and `format` template (`{{token}}`).
    Header { name: String, format: String },
    /// Query parameter name.
    Query { name: String },
}

/// How a renewed token reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewMode {
    Frame,
    Reconnect,
    /// The token only opens a connection (or starts a subscription): a live connection is
    /// never renewed nor closed at expiry; every new connection gets a fresh token.
    None,
}

/// `endpoints.NAME.heartbeat`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatConfig {
    /// `None`: no WebSocket pings (`"off"`), for upstreams that want nothing but pongs.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// Frame template sent every `app_ping_interval`.
    pub app_ping: Option<String>,
    pub app_ping_interval: Duration,
    /// Takes `app_ping_interval` from a capture instead: its name and the unit of its number
    /// (Discord's Hello gives milliseconds); no app ping until it has a value.
    pub app_ping_interval_capture: Option<(String, Duration)>,
}

/// `endpoints.NAME.backoff`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub min_delay: Duration,
    pub reset_after: Duration,
    /// Consecutive failures on one URL before the next fallback URL is tried.
    pub fallback_after: u32,
}

/// `endpoints.NAME.resume`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeConfig {
    pub id_pointer: String,
    pub id_kind: IdKind,
    /// Query parameter name that carries the last id on reconnect.
    pub query: Option<String>,
    /// Frame template sent right after connect (`{{last_id}}`).
    pub frame: Option<String>,
    /// How many recently delivered ids are remembered (with a hash of their payload) to tell a
    /// resend from new data under a reused id.
    pub dedup_window: usize,
    pub contiguous: bool,
    /// Whether ids are compared across connections or only within one.
    pub scope: IdScope,
    /// With `scope = "session"`: the capture that names the session; a new value starts a new
    /// id sequence, and a position is offered only while it has a value.
    pub session: Option<String>,
    /// Template (captures only) of the URL to resume on, instead of `url`, when a position is
    /// offered (Discord's `resume_gateway_url`).
    pub url: Option<String>,
    /// Where a message names its channel, for feeds with one id sequence per channel (Binance
    /// combined streams): ids are compared, and gaps found, within a channel.
    pub channel_pointer: Option<String>,
}

/// How far the upstream's ids are comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdScope {
    /// One sequence for the endpoint's whole life (the default); stored across restarts.
    Global,
    /// The ids start again on every connection (e.g. a per-connection sequence number).
    Connection,
    /// One sequence per upstream session, named by a captured value (`resume.session`): stored
    /// across restarts like `Global`, started afresh when the session changes.
    Session,
}

impl IdScope {
    /// Whether a position outlives a connection (and so is stored and offered).
    pub fn outlives_connection(self) -> bool {
        !matches!(self, IdScope::Connection)
    }
}

/// Type of the upstream's own message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Integer,
    String,
}

/// `endpoints.NAME.replay`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    pub messages: usize,
    pub bytes: usize,
    pub persist: bool,
    pub slow_subscriber: SlowPolicy,
}

/// What happens to a subscriber that falls behind the replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    /// A `Gap` (SLOW_SUBSCRIBER), then continue from the oldest retained message.
    Skip,
    /// End the subscription with an error.
    Disconnect,
}

/// `endpoints.NAME.outbox`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub durable: bool,
}

/// `endpoints.NAME.access`; `None` lists mean everyone who can open the socket.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessConfig {
    pub subscribe: Option<Vec<Principal>>,
    pub publish: Option<Vec<Principal>>,
}

/// One entry of an access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Uid(u32),
    Gid(u32),
    User(String),
    Group(String),
}
