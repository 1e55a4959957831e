//! Reads one `[endpoints.NAME]` table (SPEC §4–§11); its headers and auth are read by
//! `handshake.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};

use super::dialogue::{capture_names, mark_persisted, read_captures, read_rules, read_steps};
use super::handshake::{read_auth, read_headers};
use super::load::{at_least, non_empty, one_of, positive, size_at_least};
use super::resume::read_resume;
use super::template::{literal, template, Allowed};
use super::units::format_duration;
use super::value::{boolean, duration, number, string, Node, Report, Table};
use super::{
    AccessConfig, AuthPlacement, BackoffConfig, CloseAction, EndpointConfig, FilterConfig,
    HeartbeatConfig, OutboxConfig, Principal, ProxyConfig, ProxyUrl, ReplayConfig, SlowPolicy,
    TlsConfig,
};
use crate::redact::redact_url;

pub(super) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Shortest `max_lifetime`: rotating more often would spend more time connecting than connected.
const MIN_LIFETIME: Duration = Duration::from_secs(1);

const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Reads an endpoint; `None` when it is unusable (every reason already reported).
pub(crate) fn read_endpoint(r: &mut Report, node: &Node<'_>) -> Option<EndpointConfig> {
    // A preset's settings go under the endpoint's own, then everything is read as written.
    let with_preset = super::presets::apply(r, node);
    let node = match &with_preset {
        Some(value) => &Node {
            path: node.path.clone(),
            value,
        },
        None => node,
    };
    let mut t = Table::open(r, node)?;
    // Read by `presets::apply`.
    let _ = t.get("preset");
    let url = t
        .need(r, "url")
        .and_then(|n| super::discovery::read_url(r, &n, ws_url));
    let fallback_urls = list(r, &mut t, "fallback_urls", ws_url);
    // Read first: templates everywhere may use what they capture.
    let captures = t
        .get("captures")
        .map(|n| read_captures(r, &n))
        .unwrap_or_default();
    let names = capture_names(&captures);
    let auth = t.get("auth").and_then(|n| read_auth(r, &n, &names));
    let auth_header = match auth.as_ref().map(|a| &a.placement) {
        Some(AuthPlacement::Header { name, .. }) => Some(name.as_str()),
        _ => None,
    };
    let headers = t
        .get("headers")
        .map(|n| read_headers(r, &n, auth_header))
        .unwrap_or_default();
    let subprotocols = list(r, &mut t, "subprotocols", token);
    let has_auth = auth.is_some();
    let in_frames = Allowed {
        token: has_auth,
        last_id: false,
        frame: Some(&names),
        share: false,
    };
    let on_connect = t
        .get("on_connect")
        .map(|n| read_steps(r, &n, in_frames))
        .unwrap_or_default();
    let rules = t
        .get("rules")
        .map(|n| read_rules(r, &n, in_frames))
        .unwrap_or_default();
    let max_lifetime = t.opt(r, "max_lifetime", |v| {
        let d = positive(v)?;
        if d < MIN_LIFETIME {
            return Err(format!(
                "must be at least {}: a connection needs time to be useful before it is replaced",
                format_duration(MIN_LIFETIME)
            ));
        }
        Ok(d)
    });
    let connect_timeout = t.or(r, "connect_timeout", positive, secs(10));
    let max_message_size = t.or(r, "max_message_size", size_at_least(1024), 16 << 20);
    let decode = super::decode::read_decode(r, &mut t);
    let proxy = t.or(r, "proxy", proxy_setting, ProxyConfig::Env);
    let tls_use = TlsUse {
        // A discovered URL may be wss:// (Slack's is).
        wss: url
            .iter()
            .any(|u| u.fixed().is_none_or(|u| u.scheme() == "wss"))
            || fallback_urls.iter().any(|u| u.scheme() == "wss"),
        https_token: matches!(
            auth.as_ref().map(|a| &a.token),
            Some(super::TokenSource::OAuth2 { token_url, .. }) if token_url.scheme() == "https"
        ) || matches!(&url, Some(super::UrlSource::Discover(super::Discovery::Http(h))) if h.url.scheme() == "https"),
    };
    let tls = t
        .get("tls")
        .map(|n| read_tls(r, &n, tls_use))
        .unwrap_or_default();
    let close_codes = t.get("close_codes").map(|n| read_close_codes(r, &n));
    let drop = t
        .get("drop")
        .map(|n| read_filters(r, &n))
        .unwrap_or_default();
    let s = t.section(r, "heartbeat");
    let heartbeat = read_heartbeat(r, s, in_frames);
    let s = t.section(r, "backoff");
    let fallback_after = s.has("fallback_after").then(|| s.path_of("fallback_after"));
    let backoff = read_backoff(r, s);
    if let (Some(node), true) = (fallback_after, fallback_urls.is_empty()) {
        r.at(&node, "only used with fallback_urls, which are not set");
    }
    let resume = t.get("resume").and_then(|n| read_resume(r, &n, in_frames));
    let mut captures = captures;
    mark_persisted(&mut captures, resume.as_ref(), &on_connect);
    // Steps taken only when resuming (or not) need a position that outlives a connection.
    if !resume
        .as_ref()
        .is_some_and(|r| r.scope.outlives_connection())
    {
        if let Ok(steps) = t.path_of("on_connect").value.clone().into_array() {
            for (i, (step, cfg)) in steps.iter().zip(&on_connect).enumerate() {
                if cfg.when.is_some() {
                    let node = Node {
                        path: format!("{}.on_connect[{i}].when", t.node().path),
                        value: step,
                    };
                    r.at(&node, "needs resume with a position that outlives a connection (scope \"global\" or \"session\")");
                }
            }
        }
    }
    let cluster = t.or(r, "cluster", boolean, false);
    let s = t.section(r, "replay");
    let persist_at = s.path_of("persist");
    let replay = read_replay(r, s);
    if cluster && replay.persist {
        r.at(
            &persist_at,
            "not used with cluster = true: the cluster's stream is the persisted replay; \
             remove replay.persist",
        );
    }
    let s = t.section(r, "outbox");
    let outbox = read_outbox(r, s);
    let mut s = t.section(r, "access");
    let access = AccessConfig {
        subscribe: s.get("subscribe").map(|n| n.list(r, principal)),
        publish: s.get("publish").map(|n| n.list(r, principal)),
    };
    s.finish(r);
    let rate_limit = t
        .get("rate_limit")
        .and_then(|n| super::ratelimit::read_rate_limit(r, &n));
    let framing = t.or(
        r,
        "framing",
        |v| {
            one_of(
                v,
                &[
                    ("json", super::Framing::Json),
                    ("socketio", super::Framing::SocketIo),
                ],
            )
        },
        super::Framing::Json,
    );
    let requests_written = t.has("requests");
    let requests = t
        .get("requests")
        .and_then(|n| super::share::read_requests(r, &n, in_frames));
    let subscriptions = t.get("subscriptions").and_then(|n| {
        super::share::read_subscriptions(r, &n, in_frames, requests.as_ref(), requests_written)
    });
    t.finish(r);
    Some(EndpointConfig {
        url: url?,
        fallback_urls,
        headers,
        subprotocols,
        on_connect,
        captures,
        rules,
        max_lifetime,
        connect_timeout,
        max_message_size,
        decode,
        proxy,
        tls,
        close_codes: close_codes.unwrap_or_default(),
        drop,
        auth,
        heartbeat,
        backoff,
        resume,
        replay,
        outbox,
        access,
        rate_limit,
        subscriptions,
        requests,
        framing,
        cluster,
    })
}

fn list<T>(
    r: &mut Report,
    t: &mut Table<'_>,
    key: &str,
    conv: impl Fn(&Value) -> Result<T, String>,
) -> Vec<T> {
    t.get(key).map(|n| n.list(r, conv)).unwrap_or_default()
}

/// A `ws://` or `wss://` URL. Errors show the URL only redacted: it may carry a token.
fn ws_url(v: &Value) -> Result<url::Url, String> {
    literal(
        &string(v)?,
        "the token goes in the URL with auth.query, the last id with resume.query",
    )?;
    let url = parse_url(v)?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(format!(
            "URL scheme must be ws or wss, not {:?}",
            url.scheme()
        ));
    }
    if url.fragment().is_some() {
        return Err(format!(
            "{}: a WebSocket URL cannot have a #fragment",
            redact_url(&url)
        ));
    }
    Ok(url)
}

pub(super) fn parse_url(v: &Value) -> Result<url::Url, String> {
    let url = url::Url::parse(&string(v)?).map_err(|e| format!("invalid URL: {e}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(url)
}

/// `""` (direct) or a proxy URL: `http://`, `socks5://` or `socks5h://`.
fn proxy_setting(v: &Value) -> Result<ProxyConfig, String> {
    let text = string(v)?;
    if text.is_empty() {
        return Ok(ProxyConfig::Direct);
    }
    ProxyUrl::parse(&text).map(ProxyConfig::Url)
}

/// An HTTP token (header names, subprotocols).
pub(super) fn token(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    http::HeaderName::from_bytes(s.as_bytes())
        .map(|_| s.clone())
        .map_err(|_| format!("{s:?} is not a valid HTTP token"))
}

/// Where an endpoint's `tls` settings are used: `wss://` connections, and (all but
/// `server_name`) an `https://` OAuth2 token endpoint. Set where neither exists, they would do
/// nothing, so they are refused.
#[derive(Clone, Copy)]
struct TlsUse {
    wss: bool,
    https_token: bool,
}

fn read_tls(r: &mut Report, node: &Node<'_>, used: TlsUse) -> TlsConfig {
    let Some(mut t) = Table::open(r, node) else {
        return TlsConfig::default();
    };
    let path = |v: &Value| non_empty(v).map(PathBuf::from);
    let tls = TlsConfig {
        ca_file: t.opt(r, "ca_file", path),
        client_cert: t.opt(r, "client_cert", path),
        client_key: t.opt(r, "client_key", path),
        server_name: t.opt(r, "server_name", |v| {
            let name = string(v)?;
            rustls::pki_types::ServerName::try_from(name.as_str())
                .map_err(|_| format!("{name:?} is not a valid DNS name or IP address"))?;
            Ok(name)
        }),
    };
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        r.at(t.node(), "client_cert and client_key must be set together");
    }
    if tls.server_name.is_some() && !used.wss {
        r.at(
            &t.path_of("server_name"),
            "only used with wss:// URLs (an https token endpoint is verified against its own host)",
        );
    }
    if !used.wss && !used.https_token {
        let set = [
            ("ca_file", tls.ca_file.is_some()),
            ("client_cert", tls.client_cert.is_some()),
            ("client_key", tls.client_key.is_some()),
        ];
        for (key, _) in set.into_iter().filter(|(_, set)| *set) {
            r.at(
                &t.path_of(key),
                "only used with wss:// URLs or an https:// OAuth2 token_url, and there are none",
            );
        }
    }
    t.finish(r);
    tls
}

/// TOML table keys are strings, so `{ 4001 = "reauth" }` arrives with the key `"4001"`.
fn read_close_codes(r: &mut Report, node: &Node<'_>) -> BTreeMap<u16, CloseAction> {
    let mut codes = BTreeMap::new();
    let Some(mut t) = Table::open(r, node) else {
        return codes;
    };
    for (key, node) in t.entries() {
        let action = node.to(r, |v| {
            one_of(
                v,
                &[
                    ("retry", CloseAction::Retry),
                    ("reauth", CloseAction::Reauth),
                    ("fail", CloseAction::Fail),
                ],
            )
        });
        match key.parse::<u16>() {
            Ok(code) if (1000..=4999).contains(&code) => {
                if let Some(action) = action {
                    codes.insert(code, action);
                }
            }
            _ => r.at(&node, "close code must be an integer from 1000 to 4999"),
        }
    }
    t.finish(r);
    codes
}

fn read_filters(r: &mut Report, node: &Node<'_>) -> Vec<FilterConfig> {
    let mut filters = Vec::new();
    for item in node.items(r) {
        let Some(mut t) = Table::open(r, &item) else {
            continue;
        };
        let pointer = t.required(r, "pointer", pointer);
        let equals = t.need(r, "equals").and_then(|n| n.to(r, to_json));
        t.finish(r);
        if let (Some(pointer), Some(equals)) = (pointer, equals) {
            filters.push(FilterConfig { pointer, equals });
        }
    }
    filters
}

/// An RFC 6901 JSON pointer: `""` or `/`-separated, with `~` only in `~0` and `~1`.
pub(super) fn pointer(v: &Value) -> Result<String, String> {
    let p = string(v)?;
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!(
            "invalid JSON pointer {p:?}: must be \"\" or start with /"
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "invalid JSON pointer {p:?}: ~ must be followed by 0 or 1"
            ));
        }
    }
    Ok(p)
}

pub(super) fn to_json(v: &Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match &v.kind {
        ValueKind::Nil => J::Null,
        ValueKind::Boolean(b) => J::Bool(*b),
        ValueKind::I64(n) => J::from(*n),
        ValueKind::U64(n) => J::from(*n),
        ValueKind::I128(_) | ValueKind::U128(_) => J::from(super::value::integer::<i64>(v)?),
        ValueKind::Float(x) => serde_json::Number::from_f64(*x)
            .map(J::Number)
            .ok_or_else(|| format!("{x} cannot be represented in JSON"))?,
        ValueKind::String(s) => J::String(s.clone()),
        ValueKind::Array(items) => J::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        ValueKind::Table(map) => J::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

fn principal(v: &Value) -> Result<Principal, String> {
    let s = string(v)?;
    let bad = || format!("invalid principal {s:?}: expected uid:N, gid:N, user:NAME or group:NAME");
    let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
    let id = || rest.parse::<u32>().map_err(|_| bad());
    match kind {
        "uid" => id().map(Principal::Uid),
        "gid" => id().map(Principal::Gid),
        "user" if !rest.is_empty() => Ok(Principal::User(rest.into())),
        "group" if !rest.is_empty() => Ok(Principal::Group(rest.into())),
        _ => Err(bad()),
    }
}

fn read_heartbeat(r: &mut Report, mut t: Table<'_>, in_frames: Allowed<'_>) -> HeartbeatConfig {
    let hb = HeartbeatConfig {
        ping_interval: t.or(r, "ping_interval", off_or_positive, Some(secs(20))),
        pong_timeout: t.or(r, "pong_timeout", positive, secs(10)),
        idle_timeout: t.opt(r, "idle_timeout", duration).filter(|d| !d.is_zero()),
        app_ping: t.opt(r, "app_ping", |v| {
            non_empty(v)?;
            template(in_frames)(v)
        }),
        app_ping_interval: match t.get("app_ping_interval") {
            Some(n) if matches!(n.value.kind, ValueKind::Table(_)) => secs(30),
            Some(n) => n.to(r, positive).unwrap_or(secs(30)),
            None => secs(30),
        },
        app_ping_interval_capture: t
            .path_of("app_ping_interval")
            .value
            .clone()
            .into_table()
            .ok()
            .and_then(|_| read_interval_capture(r, &t.path_of("app_ping_interval"), in_frames)),
    };
    if hb.app_ping.is_none() && t.has("app_ping_interval") {
        r.at(
            &t.path_of("app_ping_interval"),
            "only used with app_ping, which is not set",
        );
    }
    t.finish(r);
    hb
}

/// `app_ping_interval = { capture = "NAME", unit = "ms" }`: the interval is a number captured
/// from an inbound message (Discord's Hello), in `unit`.
fn read_interval_capture(
    r: &mut Report,
    node: &Node<'_>,
    in_frames: Allowed<'_>,
) -> Option<(String, Duration)> {
    let mut t = Table::open(r, node)?;
    let name = t.required(r, "capture", |v| {
        let name = string(v)?;
        match in_frames.frame {
            Some(names) if names.contains(&name) => Ok(name),
            _ => Err(format!(
                "there is no captures.{name} to take the interval from"
            )),
        }
    });
    let unit = t.or(
        r,
        "unit",
        |v| one_of(v, &[("ms", millis(1)), ("s", secs(1))]),
        millis(1),
    );
    t.finish(r);
    Some((name?, unit))
}

/// `"off"`, or a positive duration.
fn off_or_positive(v: &Value) -> Result<Option<Duration>, String> {
    if matches!(&v.kind, ValueKind::String(s) if s == "off") {
        return Ok(None);
    }
    positive(v).map(Some)
}

fn read_backoff(r: &mut Report, mut t: Table<'_>) -> BackoffConfig {
    let errors_before = r.errors.len();
    let b = BackoffConfig {
        initial: t.or(r, "initial", positive, millis(500)),
        max: t.or(r, "max", positive, secs(30)),
        multiplier: t.or(
            r,
            "multiplier",
            |v| {
                let m = number(v)?;
                if m < 1.0 {
                    return Err("must be at least 1.0".into());
                }
                Ok(m)
            },
            2.0,
        ),
        min_delay: t.or(r, "min_delay", duration, millis(100)),
        reset_after: t.or(r, "reset_after", duration, secs(30)),
        fallback_after: t.or(r, "fallback_after", at_least(1u32), 3),
    };
    // Comparing against a default that stands in for an invalid value would only add noise.
    if r.errors.len() == errors_before {
        if b.max < b.initial {
            r.at(
                &t.path_of("max"),
                format!(
                    "must not be less than backoff.initial ({})",
                    format_duration(b.initial)
                ),
            );
        }
        if b.min_delay > b.max {
            r.at(
                &t.path_of("min_delay"),
                format!(
                    "must not be more than backoff.max ({})",
                    format_duration(b.max)
                ),
            );
        }
    }
    t.finish(r);
    b
}

fn read_replay(r: &mut Report, mut t: Table<'_>) -> ReplayConfig {
    let replay = ReplayConfig {
        messages: t.or(r, "messages", at_least(1usize), 10_000),
        bytes: t.or(r, "bytes", size_at_least(1), 64 << 20),
        persist: t.or(r, "persist", boolean, false),
        slow_subscriber: t.or(
            r,
            "slow_subscriber",
            |v| {
                one_of(
                    v,
                    &[
                        ("skip", SlowPolicy::Skip),
                        ("disconnect", SlowPolicy::Disconnect),
                    ],
                )
            },
            SlowPolicy::Skip,
        ),
    };
    t.finish(r);
    replay
}

fn read_outbox(r: &mut Report, mut t: Table<'_>) -> OutboxConfig {
    let outbox = OutboxConfig {
        max_messages: t.or(r, "max_messages", at_least(1usize), 100_000),
        max_bytes: t.or(r, "max_bytes", size_at_least(1), 256 << 20),
        max_age: t.or(r, "max_age", positive, secs(3600)),
        durable: t.or(r, "durable", boolean, true),
    };
    t.finish(r);
    outbox
}
