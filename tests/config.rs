//! The config contract of SPEC §4, through the public `load_str`/`load` API.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ws_sidecar::config::{
    load, load_str, AccessConfig, AuthConfig, AuthPlacement, BackoffConfig, CloseAction, Config,
    ConfigError, Decode, EndpointConfig, GrpcConfig, HeartbeatConfig, HttpConfig, IdKind,
    LimitsConfig, ListenAddr, LogConfig, LogFormat, OutboxConfig, Principal, ProxyConfig,
    ProxyScheme, RenewMode, ReplayConfig, SlowPolicy, SocketsConfig, StoreConfig, StreamConfig,
    TlsConfig, TokenSource, UrlSource,
};
use ws_sidecar::secret::Secret;

#[path = "config/cluster.rs"]
mod cluster;
#[path = "config/discovery.rs"]
mod discovery;
#[path = "config/proxy.rs"]
mod proxy;
#[path = "config/ratelimit.rs"]
mod ratelimit;
#[path = "config/recipes.rs"]
mod recipes;
#[path = "config/warnings.rs"]
mod warnings;

const MINIMAL: &str = r#"
[endpoints.prices]
url = "wss://stream.example.com/prices"
"#;

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ok(text: &str) -> Config {
    ok_env(text, &no_env())
}

fn ok_env(text: &str, env: &HashMap<String, String>) -> Config {
    match load_str(text, Path::new("config.toml"), env) {
        Ok(config) => config,
        Err(e) => panic!("config should load, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    errors_env(text, &no_env())
}

fn errors_env(text: &str, env: &HashMap<String, String>) -> Vec<String> {
    match load_str(text, Path::new("config.toml"), env) {
        Ok(_) => panic!("config should be refused:\n{text}"),
        Err(ConfigError { errors }) => errors,
    }
}

/// MINIMAL plus `extra` lines inside `[endpoints.prices]`.
fn prices(extra: &str) -> String {
    format!("{MINIMAL}{extra}\n")
}

fn ep<'c>(config: &'c Config, name: &str) -> &'c EndpointConfig {
    config
        .endpoints
        .get(name)
        .unwrap_or_else(|| panic!("endpoint {name} missing"))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn default_endpoint(url: &str) -> EndpointConfig {
    EndpointConfig {
        url: UrlSource::Fixed(url::Url::parse(url).expect("test URL")),
        fallback_urls: vec![],
        headers: vec![],
        subprotocols: vec![],
        on_connect: vec![],
        captures: vec![],
        rules: vec![],
        max_lifetime: None,
        connect_timeout: secs(10),
        max_message_size: 16 * 1024 * 1024,
        decode: Decode::None,
        proxy: ProxyConfig::Env,
        tls: TlsConfig::default(),
        close_codes: BTreeMap::new(),
        drop: vec![],
        auth: None,
        heartbeat: HeartbeatConfig {
            ping_interval: Some(secs(20)),
            pong_timeout: secs(10),
            idle_timeout: None,
            app_ping: None,
            app_ping_interval: secs(30),
            app_ping_interval_capture: None,
        },
        backoff: BackoffConfig {
            initial: Duration::from_millis(500),
            max: secs(30),
            multiplier: 2.0,
            min_delay: Duration::from_millis(100),
            reset_after: secs(30),
            fallback_after: 3,
        },
        resume: None,
        replay: ReplayConfig {
            messages: 10_000,
            bytes: 64 * 1024 * 1024,
            persist: false,
            slow_subscriber: SlowPolicy::Skip,
        },
        outbox: OutboxConfig {
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_age: secs(3600),
            durable: true,
        },
        access: AccessConfig::default(),
        rate_limit: None,
        subscriptions: None,
        requests: None,
        framing: ws_sidecar::config::Framing::Json,
        cluster: false,
    }
}

#[test]
fn minimal_file_loads_with_every_default() {
    let config = ok(MINIMAL);
    let expected = Config {
        source: PathBuf::from("config.toml"),
        log: LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        },
        grpc: GrpcConfig {
            listen: vec![ListenAddr::Unix("/run/ws-sidecar/grpc.sock".into())],
            allow_remote: false,
        },
        stream: StreamConfig {
            path: Some("/run/ws-sidecar/stream.sock".into()),
        },
        sockets: SocketsConfig {
            mode: 0o660,
            group: None,
        },
        http: HttpConfig {
            listen: Some("127.0.0.1:9750".parse().expect("addr")),
        },
        store: StoreConfig {
            path: "/var/lib/ws-sidecar/store".into(),
        },
        limits: LimitsConfig {
            max_subscribers: 1024,
        },
        cluster: None,
        endpoints: BTreeMap::from([(
            "prices".to_owned(),
            default_endpoint("wss://stream.example.com/prices"),
        )]),
    };
    assert_eq!(config, expected);
    assert!(config.warnings().is_empty());
}

#[test]
fn systemd_directories_move_the_default_paths() {
    let vars = env(&[
        ("RUNTIME_DIRECTORY", "/run/a:/run/b"),
        ("STATE_DIRECTORY", "/var/lib/x"),
    ]);
    let config = ok_env(MINIMAL, &vars);
    assert_eq!(
        config.grpc.listen,
        [ListenAddr::Unix("/run/a/grpc.sock".into())]
    );
    assert_eq!(config.stream.path, Some("/run/a/stream.sock".into()));
    assert_eq!(config.store.path, PathBuf::from("/var/lib/x/store"));
}

#[test]
fn three_mistakes_are_all_reported() {
    let text = r#"
[log]
format = "xml"

[endpoints.prices]
url = "wss://stream.example.com/prices"
heartbeat = { ping_interval = "ten seconds" }
backoff = { multiplier = 0.5 }
"#;
    assert_eq!(
        errors(text),
        [
            r#"config.toml: log.format: invalid value "xml", expected one of text, json, journald"#,
            r#"config.toml: endpoints.prices.heartbeat.ping_interval: invalid duration "ten seconds": expected a duration like "500ms", "30s", "5m", "1h30m" (units ns, us, ms, s, m, h, d)"#,
            "config.toml: endpoints.prices.backoff.multiplier: must be at least 1.0",
        ]
    );
}

#[test]
fn bad_duration_matches_the_spec_example() {
    let text = prices("heartbeat.ping_interval = \"ten seconds\"");
    assert_eq!(
        errors(&text),
        [
            r#"config.toml: endpoints.prices.heartbeat.ping_interval: invalid duration "ten seconds": expected a duration like "500ms", "30s", "5m", "1h30m" (units ns, us, ms, s, m, h, d)"#
        ]
    );
}

#[test]
fn bad_sizes_and_durations_show_valid_examples() {
    let text =
        prices("max_message_size = \"16 MiBs\"\nconnect_timeout = 10\nreplay = { bytes = 1.5 }");
    assert_eq!(
        errors(&text),
        [
            r#"config.toml: endpoints.prices.connect_timeout: expected a duration like "500ms", "30s", "5m", "1h30m" (units ns, us, ms, s, m, h, d), found an integer"#,
            r#"config.toml: endpoints.prices.max_message_size: invalid size "16 MiBs": expected a size like "512B", "64KiB", "16MiB", "1GiB", "1MB" or a number of bytes"#,
            r#"config.toml: endpoints.prices.replay.bytes: expected a size like "512B", "64KiB", "16MiB", "1GiB", "1MB" or a number of bytes, found a float"#,
        ]
    );
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    let text = r#"
colour = "blue"
[log]
levle = "debug"
[endpoints.prices]
url = "wss://stream.example.com/prices"
heartbeat = { pingg_interval = "5s" }
auth = { token = { env = "T", vault = "x" } }
"#;
    assert_eq!(
        errors(text),
        [
            "config.toml: log.levle: unknown key, did you mean `level`?",
            "config.toml: endpoints.prices.auth.token.vault: unknown key",
            "config.toml: endpoints.prices.heartbeat.pingg_interval: unknown key, did you mean \
             `ping_interval`?",
            "config.toml: colour: unknown key",
        ]
    );
}

/// `EnvFilter` reads a bare word as a target at every level: a misspelt level would turn the
/// daemon's own log off without a word.
#[test]
fn a_misspelt_log_level_is_refused_not_read_as_a_target() {
    let with = |level: &str| {
        format!("[log]\nlevel = \"{level}\"\n[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n")
    };
    assert_eq!(
        errors(&with("warnign")),
        [
            "config.toml: log.level: invalid log level \"warnign\": expected one of trace, debug, \
          info, warn, error, off, or TARGET=LEVEL directives separated by commas, did you mean \
          `warn`?"
        ]
    );
    assert_eq!(errors(&with("info,verbose")).len(), 1);
    for fine in [
        "WARN",
        "info,ws_sidecar::upstream=debug",
        "ws_sidecar=trace",
        "off",
    ] {
        assert_eq!(ok(&with(fine)).log.level, fine);
    }
}

#[test]
fn env_overrides_a_duration_and_keeps_strings_as_written() {
    let text = r#"
[endpoints.Prices]
url = "wss://stream.example.com/prices"
headers = { X-Api-Key = { env = "KEY" }, X-Client = "file" }
auth = { token = { env = "TOKEN" } }
"#;
    let vars = env(&[
        (
            "WS_SIDECAR__ENDPOINTS__PRICES__HEARTBEAT__PING_INTERVAL",
            "5s",
        ),
        ("WS_SIDECAR__ENDPOINTS__PRICES__HEADERS__X_API_KEY", "00123"),
        ("WS_SIDECAR__ENDPOINTS__PRICES__AUTH__TOKEN", "0042"),
        ("WS_SIDECAR__LIMITS__MAX_SUBSCRIBERS", "2048"),
        ("WS_SIDECAR__GRPC__ALLOW_REMOTE", "true"),
        ("WS_SIDECAR__GRPC__LISTEN", "0.0.0.0:7750"),
        ("WS_SIDECAR_CONFIG", "/not/a/key"),
    ]);
    let config = ok_env(text, &vars);
    // The overrides reached the file's `Prices` and `X-Api-Key` although the environment
    // lowercases keys and cannot spell `-`.
    assert_eq!(config.endpoints.keys().collect::<Vec<_>>(), ["Prices"]);
    let prices = ep(&config, "Prices");
    assert_eq!(prices.heartbeat.ping_interval, Some(secs(5)));
    assert_eq!(
        prices.headers,
        [
            ("X-Api-Key".to_owned(), Secret::Plain("00123".into())),
            ("X-Client".to_owned(), Secret::Plain("file".into())),
        ]
    );
    // A string replaces the file's `{ env = "TOKEN" }` reference, digits and zeros intact.
    assert_eq!(
        prices.auth.as_ref().map(|a| &a.token),
        Some(&TokenSource::Secret(Secret::Plain("0042".into())))
    );
    assert_eq!(config.limits.max_subscribers, 2048);
    assert_eq!(
        config.grpc.listen,
        [ListenAddr::Tcp("0.0.0.0:7750".parse().expect("addr"))]
    );
}

#[test]
fn env_errors_name_the_variable() {
    let vars = env(&[("WS_SIDECAR__ENDPOINTS__PRICES__BACKOFF__MAX", "forever")]);
    assert_eq!(
        errors_env(MINIMAL, &vars),
        [
            "config.toml: endpoints.prices.backoff.max: invalid duration \"forever\": expected a \
             duration like \"500ms\", \"30s\", \"5m\", \"1h30m\" (units ns, us, ms, s, m, h, d) \
             (set by WS_SIDECAR__ENDPOINTS__PRICES__BACKOFF__MAX)"
        ]
    );
    let vars = env(&[("WS_SIDECAR__LOG__LEVL", "debug")]);
    assert_eq!(
        errors_env(MINIMAL, &vars),
        [
            "config.toml: log.levl: unknown key, did you mean `level` (WS_SIDECAR__LOG__LEVEL)? \
             (set by WS_SIDECAR__LOG__LEVL)"
        ]
    );
}

#[test]
fn misspelt_keys_get_a_suggestion_from_the_keys_valid_there() {
    let text = r#"
[grpc]
lisen = ["unix:/tmp/g.sock"]
[endpoints.prices]
url = "wss://stream.example.com/prices"
conect_timeout = "5s"
fallback-urls = []
backof = { initial = "1s" }
heartbeat = { ping_intervall = "5s", pong = "1s" }
"#;
    assert_eq!(
        errors(text),
        [
            "config.toml: grpc.lisen: unknown key, did you mean `listen`?",
            "config.toml: endpoints.prices.heartbeat.ping_intervall: unknown key, did you mean \
             `ping_interval`?",
            // Too far from every key to guess.
            "config.toml: endpoints.prices.heartbeat.pong: unknown key",
            "config.toml: endpoints.prices.backof: unknown key, did you mean `backoff`?",
            "config.toml: endpoints.prices.conect_timeout: unknown key, did you mean \
             `connect_timeout`?",
            "config.toml: endpoints.prices.fallback-urls: unknown key, did you mean \
             `fallback_urls`?",
        ]
    );
}

#[test]
fn misspelt_environment_overrides_name_their_variable() {
    // A misspelt section: the variable is named in full, not just its first part.
    let vars = env(&[("WS_SIDECAR__LOGG__LEVEL", "debug")]);
    assert_eq!(
        errors_env(MINIMAL, &vars),
        [
            "config.toml: logg: unknown key, did you mean `log` (WS_SIDECAR__LOG)? \
             (set by WS_SIDECAR__LOGG__LEVEL)"
        ]
    );
    // A misspelt endpoint name would otherwise be a new endpoint with no url.
    let vars = env(&[
        (
            "WS_SIDECAR__ENDPOINTS__PRICSE__HEARTBEAT__PING_INTERVAL",
            "5s",
        ),
        ("WS_SIDECAR__ENDPOINTS__PRICSE__CONNECT_TIMEOUT", "5s"),
    ]);
    assert_eq!(
        errors_env(MINIMAL, &vars),
        [
            "config.toml: endpoints.pricse: no endpoint of that name in the file, and the \
             environment sets no url for it, did you mean `prices`? (set by \
             WS_SIDECAR__ENDPOINTS__PRICSE__CONNECT_TIMEOUT, \
             WS_SIDECAR__ENDPOINTS__PRICSE__HEARTBEAT__PING_INTERVAL)"
        ]
    );
    // An endpoint the environment defines whole is fine.
    let vars = env(&[("WS_SIDECAR__ENDPOINTS__EXTRA__URL", "ws://extra.test/")]);
    assert_eq!(ok_env(MINIMAL, &vars).endpoints.len(), 2);
}

#[test]
fn non_loopback_grpc_needs_allow_remote() {
    let refused = format!("[grpc]\nlisten = [\"unix:/tmp/g.sock\", \"0.0.0.0:7750\"]\n{MINIMAL}");
    assert_eq!(
        errors(&refused),
        [
            "config.toml: grpc.listen[1]: 0.0.0.0:7750 is not a loopback address; \
          set grpc.allow_remote = true to listen on it"
        ]
    );
    let allowed = format!(
        "[grpc]\nlisten = [\"0.0.0.0:7750\", \"localhost:7751\", \"[::1]:7752\"]\n\
         allow_remote = true\n{MINIMAL}"
    );
    let config = ok(&allowed);
    let addr = |s: &str| ListenAddr::Tcp(s.parse::<SocketAddr>().expect("addr"));
    assert_eq!(
        config.grpc.listen,
        [
            addr("0.0.0.0:7750"),
            addr("127.0.0.1:7751"),
            addr("[::1]:7752")
        ]
    );
    assert!(config.grpc.allow_remote);
    let loopback = format!("[grpc]\nlisten = [\"localhost:7750\"]\n{MINIMAL}");
    assert_eq!(ok(&loopback).grpc.listen, [addr("127.0.0.1:7750")]);
    let none = format!("[grpc]\nlisten = []\n{MINIMAL}");
    assert_eq!(
        errors(&none),
        ["config.toml: grpc.listen: at least one listener is required"]
    );
}

#[test]
fn close_codes_parse_from_string_keys() {
    let config = ok(&prices(
        r#"close_codes = { 4001 = "reauth", 4500 = "fail", 1001 = "retry" }"#,
    ));
    assert_eq!(
        ep(&config, "prices").close_codes,
        BTreeMap::from([
            (1001, CloseAction::Retry),
            (4001, CloseAction::Reauth),
            (4500, CloseAction::Fail),
        ])
    );
    let bad = prices(r#"close_codes = { 999 = "retry", 4002 = "explode", abc = "fail" }"#);
    assert_eq!(
        errors(&bad),
        [
            "config.toml: endpoints.prices.close_codes.4002: invalid value \"explode\", \
             expected one of retry, reauth, fail",
            "config.toml: endpoints.prices.close_codes.999: close code must be an integer \
             from 1000 to 4999",
            "config.toml: endpoints.prices.close_codes.abc: close code must be an integer \
             from 1000 to 4999",
        ]
    );
}

#[test]
fn secret_reference_forms() {
    let text = prices(
        r#"
[endpoints.prices.headers]
X-Plain = "12345"
X-Env = { env = "API_KEY" }
X-File = { file = "api-key" }
X-Cmd = { command = ["pass", "show", "api"] }
[endpoints.prices.auth]
token = { oauth2 = { token_url = "https://auth.example.com/token", client_id = "me", client_secret = { env = "CS" }, scope = "read" } }
"#,
    );
    let config = ok(&text);
    let p = ep(&config, "prices");
    let header = |name: &str| {
        p.headers
            .iter()
            .find(|(h, _)| h == name)
            .map(|(_, s)| s.clone())
    };
    assert_eq!(header("X-Plain"), Some(Secret::Plain("12345".into())));
    assert_eq!(header("X-Env"), Some(Secret::Env("API_KEY".into())));
    assert_eq!(header("X-File"), Some(Secret::File("api-key".into())));
    assert_eq!(
        header("X-Cmd"),
        Some(Secret::Command(vec![
            "pass".into(),
            "show".into(),
            "api".into()
        ]))
    );
    assert_eq!(
        p.auth,
        Some(AuthConfig {
            token: TokenSource::OAuth2 {
                token_url: url::Url::parse("https://auth.example.com/token").expect("url"),
                client_id: "me".into(),
                client_secret: Secret::Env("CS".into()),
                scope: Some("read".into()),
            },
            placement: AuthPlacement::Header {
                name: "Authorization".into(),
                format: "Bearer {{token}}".into(),
            },
            max_failures: 3,
            refresh_before: secs(60),
            ttl: None,
            renew: RenewMode::Reconnect,
            renew_frame: None,
        })
    );

    let plain_token = ok(&prices("auth = { token = \"s3cret\", query = \"t\" }"));
    let auth = ep(&plain_token, "prices").auth.as_ref().expect("auth");
    assert_eq!(
        auth.token,
        TokenSource::Secret(Secret::Plain("s3cret".into()))
    );
    assert_eq!(auth.placement, AuthPlacement::Query { name: "t".into() });

    let bad = prices(
        r#"
[endpoints.prices.headers]
A = { vault = "x" }
B = { command = [] }
C = { env = "A", file = "b" }
D = 42
E = { env = "" }
"#,
    );
    assert_eq!(
        errors(&bad),
        [
            "config.toml: endpoints.prices.headers.A.vault: unknown key",
            "config.toml: endpoints.prices.headers.A: a secret reference takes exactly one of \
             env, file or command",
            "config.toml: endpoints.prices.headers.B.command: must not be empty",
            "config.toml: endpoints.prices.headers.C: a secret reference takes exactly one of \
             env, file or command",
            "config.toml: endpoints.prices.headers.D: expected a secret (a string, \
             { env = \"VAR\" }, { file = \"path\" } or { command = [\"prog\", \"arg\"] }), \
             found an integer",
            "config.toml: endpoints.prices.headers.E.env: must not be empty",
        ]
    );
}

/// config/example.toml is a start, not a working file: it is refused, naming each placeholder,
/// until they are replaced; then it loads as written.
#[test]
fn example_file_is_refused_until_its_placeholders_are_replaced() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let text = std::fs::read_to_string(&path).expect("example exists");
    assert_eq!(
        errors(&text),
        [
            "config.toml: endpoints.prices.on_connect[0]: still holds the placeholder \
             REPLACE_ME: replace it with your own value",
            "config.toml: endpoints.prices.url: stream.example.invalid is a placeholder \
             (.invalid never resolves): replace the URL with your upstream's",
        ]
    );
    let filled = text
        .replace("stream.example.invalid", "stream.example.com")
        .replace("REPLACE_ME", "trades");
    let config = ok(&filled);
    assert_eq!(config.endpoints.len(), 1);
    let prices = ep(&config, "prices");
    assert!(prices.replay.persist);
    assert!(prices.auth.is_some());
    // Also through `load`, which reads the file itself.
    let refused = load(&path).expect_err("placeholders");
    assert_eq!(refused.errors.len(), 2, "{refused}");
}

#[test]
fn placeholders_are_refused_wherever_they_are() {
    let text = prices(
        "fallback_urls = [\"wss://b.invalid./x\"]\nheaders = { X-Key = \"k-REPLACE_ME\" }\n\
         proxy = \"http://proxy.invalid:3128\"",
    );
    assert_eq!(
        errors(&text),
        [
            "config.toml: endpoints.prices.fallback_urls[0]: b.invalid is a placeholder \
             (.invalid never resolves): replace the URL with your upstream's",
            "config.toml: endpoints.prices.headers.X-Key: still holds the placeholder REPLACE_ME: \
             replace it with your own value",
            "config.toml: endpoints.prices.proxy: proxy.invalid is a placeholder (.invalid never \
             resolves): replace the URL with your upstream's",
        ]
    );
    // From the environment, the variable is named; the value never is.
    let vars = env(&[("WS_SIDECAR__ENDPOINTS__PRICES__URL", "wss://x.invalid/")]);
    assert_eq!(
        errors_env(MINIMAL, &vars),
        [
            "config.toml: endpoints.prices.url: x.invalid is a placeholder (.invalid never \
             resolves): replace the URL with your upstream's (set by \
             WS_SIDECAR__ENDPOINTS__PRICES__URL)"
        ]
    );
}

#[test]
fn unreadable_file_and_syntax_errors_name_the_file() {
    let missing = load(Path::new("/nonexistent/ws-sidecar.toml")).expect_err("no such file");
    assert_eq!(missing.errors.len(), 1);
    assert!(
        missing.errors[0].starts_with("/nonexistent/ws-sidecar.toml: cannot read file: "),
        "{missing}"
    );
    let syntax = errors("[endpoints.prices]\nurl = wss://x\n");
    assert_eq!(syntax.len(), 1);
    assert!(
        syntax[0].starts_with("config.toml: TOML syntax error at line 2, column 7: "),
        "{syntax:?}"
    );
    assert!(!syntax[0].contains('\n'));
}

#[test]
fn invalid_values_are_reported_at_their_key() {
    let cases: &[(&str, &str)] = &[
        ("", "config.toml: endpoints: at least one endpoint is required"),
        ("[endpoints]", "config.toml: endpoints: at least one endpoint is required"),
        ("[endpoints.\"a b\"]\nurl = \"ws://x\"", "config.toml: endpoints.\"a b\": invalid endpoint name"),
        ("[endpoints.p]\nsubprotocols = []", "config.toml: endpoints.p.url: required key is missing"),
        ("[endpoints.p]\nurl = \"https://x\"", "config.toml: endpoints.p.url: URL scheme must be ws or wss, not \"https\""),
        ("[endpoints.p]\nurl = \"not a url\"", "config.toml: endpoints.p.url: invalid URL: "),
        ("[endpoints.p]\nurl = \"ws://x\"\nfallback_urls = [\"ws://y\", \"ftp://z\"]", "endpoints.p.fallback_urls[1]: URL scheme must be ws or wss"),
        ("[endpoints.p]\nurl = \"ws://x\"\nproxy = \"socks4://p:1080\"", "endpoints.p.proxy: proxy scheme socks4 is not supported (use http, socks5 or socks5h)"),
        ("[endpoints.p]\nurl = \"ws://x\"\nproxy = \"https://p:3129\"", "endpoints.p.proxy: proxy scheme https is not supported (use http, socks5 or socks5h)"),
        ("[endpoints.p]\nurl = \"ws://x\"\nproxy = \"http://[broken\"", "endpoints.p.proxy: invalid proxy URL: invalid IPv6 address"),
        ("[endpoints.p]\nurl = \"ws://x\"\nproxy = \"http://p:3128/path\"", "endpoints.p.proxy: http://p:3128/path: a proxy URL is only scheme://[user:password@]host[:port]"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheaders = { \"Bad Name\" = \"v\" }", "endpoints.p.headers.\"Bad Name\": invalid header name"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheaders = { X-A = \"a\\r\\nb\" }", "endpoints.p.headers.X-A: header value must not contain CR, LF or NUL"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheaders = { Sec-WebSocket-Key = \"a\" }", "endpoints.p.headers.Sec-WebSocket-Key: set by the WebSocket handshake itself"),
        ("[endpoints.p]\nurl = \"ws://x\"\nconnect_timeout = \"0s\"", "endpoints.p.connect_timeout: must be greater than zero"),
        ("[endpoints.p]\nurl = \"ws://x\"\nmax_message_size = \"512B\"", "endpoints.p.max_message_size: must be at least 1KiB"),
        ("[endpoints.p]\nurl = \"ws://x\"\nbackoff = { initial = \"1m\" }", "endpoints.p.backoff.max: must not be less than backoff.initial"),
        ("[endpoints.p]\nurl = \"ws://x\"\nbackoff = { min_delay = \"1m\" }", "endpoints.p.backoff.min_delay: must not be more than backoff.max (30s)"),
        ("[endpoints.p]\nurl = \"ws://x\"\nbackoff = { multiplier = \"nan\" }", "endpoints.p.backoff.multiplier: NaN is not a finite number"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheartbeat = { pong_timeout = 10 }", "endpoints.p.heartbeat.pong_timeout: expected a duration like \"500ms\", \"30s\", \"5m\", \"1h30m\" (units ns, us, ms, s, m, h, d), found an integer"),
        ("[endpoints.p]\nurl = \"ws://x\"\nreplay = { messages = 0 }", "endpoints.p.replay.messages: must be at least 1"),
        ("[endpoints.p]\nurl = \"ws://x\"\nreplay = { slow_subscriber = \"wait\" }", "endpoints.p.replay.slow_subscriber: invalid value \"wait\", expected one of skip, disconnect"),
        ("[endpoints.p]\nurl = \"ws://x\"\noutbox = { max_bytes = 0 }", "endpoints.p.outbox.max_bytes: must be at least 1B"),
        ("[endpoints.p]\nurl = \"ws://x\"\noutbox = { max_age = \"0s\" }", "endpoints.p.outbox.max_age: must be greater than zero"),
        ("[endpoints.p]\nurl = \"ws://x\"\ndrop = [{ pointer = \"type\", equals = 1 }]", "endpoints.p.drop[0].pointer: invalid JSON pointer \"type\""),
        ("[endpoints.p]\nurl = \"ws://x\"\ndrop = [{ pointer = \"/type\" }]", "endpoints.p.drop[0].equals: required key is missing"),
        ("[endpoints.p]\nurl = \"ws://x\"\naccess = { publish = [\"uid:x\"] }", "endpoints.p.access.publish[0]: invalid principal \"uid:x\""),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { query = \"since\" }", "endpoints.p.resume.id_pointer: required key is missing"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", id_kind = \"uuid\" }", "endpoints.p.resume.id_kind: invalid value \"uuid\", expected one of integer, string"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheartbeat = { app_ping_interval = \"5s\" }", "endpoints.p.heartbeat.app_ping_interval: only used with app_ping, which is not set"),
        ("[endpoints.p]\nurl = \"ws://x\"\nbackoff = { fallback_after = 2 }", "endpoints.p.backoff.fallback_after: only used with fallback_urls, which are not set"),
        ("[endpoints.p]\nurl = \"ws://x\"\nfallback_urls = [\"ws://y\"]\ntls = { server_name = \"a.test\" }", "endpoints.p.tls.server_name: only used with wss:// URLs"),
        ("[endpoints.p]\nurl = \"ws://x\"\ntls = { ca_file = \"/ca.pem\" }", "endpoints.p.tls.ca_file: only used with wss:// URLs or an https:// OAuth2 token_url"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = ['{{tokn}}', 'x', '{\"a\":\"{{token}}\"}']", "endpoints.p.on_connect[2]: {{token}} needs auth.token"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = ['{\"a\":\"{{ token }}\"}']\nauth = { token = { env = \"T\" } }", "endpoints.p.on_connect[0]: write {{token}} without spaces inside the braces"),
        ("[endpoints.p]\nurl = \"ws://x/?t={{token}}\"", "endpoints.p.url: {{token}} is not filled in here, the value is used as written: the token goes in the URL with auth.query"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheaders = { X-Key = \"{{token}}\" }", "endpoints.p.headers.X-Key: {{token}} is not filled in here"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheartbeat = { app_ping = '{\"p\":\"{{last_id}}\"}' }", "endpoints.p.heartbeat.app_ping: {{last_id}} has a value only in resume.frame"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = ['{\"id\":{{capture.sid}}}']", "endpoints.p.on_connect[0]: {{capture.sid}}: there is no captures.sid to fill it in"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [{ expect = [] }]", "endpoints.p.on_connect[0].expect: must not be empty"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [{ send = \"x\", timeout = \"5s\" }]", "endpoints.p.on_connect[0].timeout: only used with expect"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [{ expect = { text = \"a\", pointer = \"/a\" } }]", "endpoints.p.on_connect[0].expect: a condition is { text } or { pointer, equals }, not both"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [{ expect = { pointer = \"/t\", equals = \"ok\" }, failure = \"never\" }]", "endpoints.p.on_connect[0].failure: invalid value \"never\", expected one of retry, reauth, fail"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [{ expect = { equals = 1 } }]", "endpoints.p.on_connect[0].expect.pointer: required key is missing"),
        ("[endpoints.p]\nurl = \"ws://x\"\nrules = [{ match = { text = \"ping\" } }]", "endpoints.p.rules[0]: a rule needs reply, drop or action"),
        ("[endpoints.p]\nurl = \"ws://x\"\nrules = [{ match = { text = \"ping\" }, action = \"reconnect_to\" }]", "endpoints.p.rules[0].url_pointer: required key is missing"),
        ("[endpoints.p]\nurl = \"ws://x\"\nrules = [{ match = { text = \"ping\" }, action = \"restart\" }]", "endpoints.p.rules[0].action: unknown action \"restart\""),
        ("[endpoints.p]\nurl = \"ws://x\"\nrules = [{ match = { text = \"ping\" }, drop = true, url_pointer = \"/u\" }]", "endpoints.p.rules[0].url_pointer: only used with action = \"reconnect_to\""),
        ("[endpoints.p]\nurl = \"ws://x\"\nrules = [{ reply = \"pong\" }]", "endpoints.p.rules[0].match: required key is missing"),
        ("[endpoints.p]\nurl = \"ws://x\"\ncaptures = { \"a-b\" = { pointer = \"/x\" } }", "a capture name holds only letters, digits and _"),
        ("[endpoints.p]\nurl = \"ws://x\"\ncaptures = { sid = { pointer = \"x\" } }", "endpoints.p.captures.sid.pointer: invalid JSON pointer"),
        ("[endpoints.p]\nurl = \"ws://x\"\ncaptures = { sid = { pointer = \"/x\", default = \"nul\" } }", "endpoints.p.captures.sid.default: must be JSON text"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = ['{\"x\":{{counter}']", "endpoints.p.on_connect[0]: {{counter is not closed: write {{counter}}"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = ['{\"x\":\"{{counter}}\"']", "endpoints.p.on_connect[0]: starts like JSON but is not JSON once filled in"),
        ("[endpoints.p]\nurl = \"ws://x\"\nrules = [{ match = { text = \"ping\" }, reply = '{\"pong\" 1}' }]", "endpoints.p.rules[0].reply: starts like JSON but is not JSON"),
        ("[endpoints.p]\nurl = \"ws://x\"\nmax_lifetime = \"500ms\"", "endpoints.p.max_lifetime: must be at least 1s"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheartbeat = { ping_interval = \"never\" }", "endpoints.p.heartbeat.ping_interval"),
        ("[endpoints.p]\nurl = \"ws://x\"\nauth = { token = \"t\" }\nheaders = { X = \"{{counter}}\" }", "endpoints.p.headers.X: {{counter}} is not filled in here"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = ['{\"auth\":\"{{token}}\"}']", "endpoints.p.on_connect[0]: {{token}} needs auth.token: nothing would fill it in"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = ['x', '{\"from\":{{last_id}}}']\nauth = { token = { env = \"T\" } }", "endpoints.p.on_connect[1]: {{last_id}} has a value only in resume.frame"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", frame = '{\"t\":\"{{token}}\",\"s\":{{last_id}}}' }", "endpoints.p.resume.frame: {{token}} needs auth.token"),
        ("[endpoints.p]\nurl = \"ws://x\"\nauth = { token = { env = \"T\" }, renew = \"frame\", renew_frame = '{{last_id}}' }", "endpoints.p.auth.renew_frame: {{last_id}} has a value only in resume.frame"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", scope = \"sessions\" }", "endpoints.p.resume.scope: invalid value \"sessions\", expected one of global, connection, session"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", scope = \"session\" }", "endpoints.p.resume.session: required key is missing"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", channel_pointer = \"/stream\", query = \"since\" }", "endpoints.p.resume.query: cannot be used with channel_pointer"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", channel_pointer = \"stream\" }", "endpoints.p.resume.channel_pointer: invalid JSON pointer"),
        ("[endpoints.p]\nurl = \"ws://x\"\ncaptures.s = { pointer = \"/s\" }\nresume = { id_pointer = \"/id\", session = \"s\" }", "endpoints.p.resume.session: only used with scope = \"session\""),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", scope = \"session\", session = \"nope\" }", "endpoints.p.resume.session: there is no captures.nope"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", url = \"wss://{{token}}/\" }", "endpoints.p.resume.url: {{token}} is not filled in in a URL"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [{ send = \"x\", when = \"resuming\" }]", "endpoints.p.on_connect[0].when: needs resume with a position that outlives a connection"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [{ send = \"{{last_id}}\", when = \"new_session\" }]\nresume = { id_pointer = \"/id\" }", "endpoints.p.on_connect[0].send: {{last_id}} has a value only in resume.frame"),
        ("[endpoints.p]\nurl = \"ws://x\"\nheartbeat = { app_ping = \"p\", app_ping_interval = { capture = \"hb\" } }", "endpoints.p.heartbeat.app_ping_interval.capture: there is no captures.hb"),
        ("[endpoints.p]\nurl = \"ws://x\"\nresume = { id_pointer = \"/id\", scope = \"connection\", query = \"since\" }", "endpoints.p.resume.query: cannot be used with scope = \"connection\""),
        ("[endpoints.p]\nurl = \"ws://x\"\nauth = { token = \"t\", renew = \"frame\" }", "endpoints.p.auth.renew_frame: required key is missing"),
        ("[endpoints.p]\nurl = \"ws://x\"\nauth = { token = \"t\", header = \"X\", query = \"t\" }", "endpoints.p.auth.query: set either header or query, not both"),
        ("[endpoints.p]\nurl = \"ws://x\"\nauth = { token = \"t\", format = \"Token\" }", "endpoints.p.auth.format: must contain {{token}}"),
        ("[endpoints.p]\nurl = \"ws://x\"\nauth = { token = \"t\" }\nheaders = { authorization = \"x\" }", "endpoints.p.headers.authorization: conflicts with auth.header"),
        ("[endpoints.p]\nurl = \"ws://x\"\non_connect = [\"{{tokn}}\"]", "endpoints.p.on_connect[0]: unknown placeholder {{tokn}}"),
        ("[endpoints.p]\nurl = \"ws://x\"\ntls = { client_cert = \"/c.pem\" }", "endpoints.p.tls: client_cert and client_key must be set together"),
        ("[log]\nformat = \"yaml\"\n[endpoints.p]\nurl = \"ws://x\"", "log.format: invalid value \"yaml\", expected one of text, json, journald"),
        ("[grpc]\nlisten = [\"tcp://1.2.3.4\"]\n[endpoints.p]\nurl = \"ws://x\"", "grpc.listen[0]: invalid listen address \"tcp://1.2.3.4\""),
        ("[sockets]\nmode = \"0999\"\n[endpoints.p]\nurl = \"ws://x\"", "sockets.mode: invalid mode \"0999\""),
        ("[http]\nlisten = \"nowhere\"\n[endpoints.p]\nurl = \"ws://x\"", "http.listen: invalid address \"nowhere\""),
        ("[limits]\nmax_subscribers = \"many\"\n[endpoints.p]\nurl = \"ws://x\"", "limits.max_subscribers: invalid integer \"many\""),
        ("[stream]\npath = \"/run/g.sock\"\n[grpc]\nlisten = [\"unix:/run/g.sock\"]\n[endpoints.p]\nurl = \"ws://x\"", "stream.path: is also a grpc.listen socket"),
        ("log = 1\n[endpoints.p]\nurl = \"ws://x\"", "config.toml: log: expected a table, found an integer"),
    ];
    for (text, expected) in cases {
        let found = errors(text);
        assert!(
            found.iter().any(|e| e.contains(expected)),
            "for {text:?} expected an error containing {expected:?}, got {found:#?}"
        );
        assert!(
            found.iter().all(|e| e.starts_with("config.toml: ")),
            "{found:#?}"
        );
    }
}

#[test]
fn a_bad_pointer_in_a_condition_is_one_error() {
    let found = errors(
        "[endpoints.p]\nurl = \"ws://x\"\nrules = [{ match = { pointer = \"type\", equals = \"x\" }, drop = true }]",
    );
    assert_eq!(
        found,
        ["config.toml: endpoints.p.rules[0].match.pointer: invalid JSON pointer \"type\": must be \"\" or start with /"],
        "not also \"pointer: required key is missing\""
    );
}

#[test]
fn scalar_forms_and_disabling() {
    let text = r#"
[stream]
path = ""
[http]
listen = ""
[sockets]
mode = 0o600
[endpoints.p]
url = "ws://x"
heartbeat = { idle_timeout = "0s" }
resume = { id_pointer = "/id", id_kind = "string" }
access = { subscribe = ["uid:0", "gid:10", "user:alice", "group:ops"], publish = [] }
drop = [{ pointer = "/a", equals = { b = [1, 2.5, true] } }]
"#;
    let config = ok(text);
    assert_eq!(config.stream.path, None);
    assert_eq!(config.http.listen, None);
    assert_eq!(config.sockets.mode, 0o600);
    let p = ep(&config, "p");
    assert_eq!(p.heartbeat.idle_timeout, None);
    assert_eq!(p.resume.as_ref().map(|r| r.id_kind), Some(IdKind::String));
    assert_eq!(
        p.access.subscribe,
        Some(vec![
            Principal::Uid(0),
            Principal::Gid(10),
            Principal::User("alice".into()),
            Principal::Group("ops".into()),
        ])
    );
    assert_eq!(p.access.publish, Some(vec![]));
    assert_eq!(p.drop[0].equals, serde_json::json!({ "b": [1, 2.5, true] }));
}

#[test]
fn decode_takes_each_format_and_refuses_others() {
    for (name, want) in [
        ("none", Decode::None),
        ("gzip", Decode::Gzip),
        ("zlib", Decode::Zlib),
        ("deflate-raw", Decode::DeflateRaw),
        ("zlib-stream", Decode::ZlibStream),
        ("zstd-stream", Decode::ZstdStream),
    ] {
        let config = ok(&prices(&format!("decode = \"{name}\"")));
        assert_eq!(ep(&config, "prices").decode, want);
        assert_eq!(want.name(), name);
    }
    assert_eq!(ep(&ok(MINIMAL), "prices").decode, Decode::None);
    assert!(!ok(MINIMAL).summary().contains("decode"));
    let summary = ok(&prices("decode = \"zlib-stream\"")).summary();
    assert!(
        summary.contains("decode") && summary.contains("zlib-stream (binary frames)"),
        "check-config shows it:\n{summary}"
    );
    assert_eq!(
        errors(&prices("decode = \"brotli\"")),
        [
            "config.toml: endpoints.prices.decode: invalid value \"brotli\", expected one of \
          none, gzip, zlib, deflate-raw, zlib-stream, zstd-stream"
        ]
    );
}
