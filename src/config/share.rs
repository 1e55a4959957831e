//! Reads how an endpoint's conversation is shared among apps: `subscriptions` (one upstream
//! subscription per key, however many apps hold it) and `requests` (ids the daemon assigns,
//! replies routed to the app that asked). `crate::share` carries them out.

use std::time::Duration;

use config::{Value, ValueKind};

use super::dialogue::read_match;
use super::endpoint::pointer;
use super::load::{one_of, positive};
use super::template::{template, Allowed};
use super::value::{boolean, integer, string, Node, Report, Table};
use super::Condition;

/// Upstream subscriptions one connection may hold by default: Binance's documented maximum of
/// streams per connection, larger than most upstreams need.
const MAX_PER_CONNECTION: usize = 1024;
/// How long a request waits for its reply by default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests waiting for a reply (or to be sent) at once, by default.
const MAX_IN_FLIGHT: usize = 10_000;

/// `endpoints.NAME.subscriptions`: the frames that subscribe a key and unsubscribe it, and how
/// an inbound message names the subscription it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionsConfig {
    /// Template sent when the first app wants a key (and again on every new connection):
    /// `{{key}}`, `{{params}}`, `{{id}}` (a fresh request id: its reply confirms or refuses).
    pub subscribe: String,
    /// Template sent when the last holder leaves: `{{key}}`, `{{params}}`, `{{id}}`, `{{sub_id}}`
    /// (the subscription's id on this connection). `None`: the upstream has no way to
    /// unsubscribe; the key stays subscribed until the connection ends.
    pub unsubscribe: Option<String>,
    /// How an inbound message names its subscription.
    pub route: Route,
    /// Where the confirmation names the subscription (JSON-RPC's `eth_subscribe` answers with
    /// the server's subscription id in `/result`). Without it, a subscription's id is the id
    /// of its subscribe request.
    pub server_id: Option<String>,
    /// A confirmation matching this is a refusal.
    pub refuse: Vec<Condition>,
    /// Subscriptions one connection may hold; one more key is refused.
    pub max: usize,
}

/// How an inbound message names the subscription it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// The key itself is in the message: at a pointer, or spelled by a template over its fields.
    Key(KeyRule),
    /// The message carries the subscription's id on this connection at this pointer (Home
    /// Assistant's events carry the subscribe command's id; JSON-RPC notifications the server's
    /// subscription id). Apps see the first id the subscription ever had there.
    Id(String),
}

/// Where a message's key comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyRule {
    /// The JSON string (or number) at this pointer.
    Pointer(String),
    /// `{{/pointer}}` placeholders filled from the message (`{{/s|lower}}` lowercased).
    Template(String),
}

/// How the daemon numbers the requests it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdStyle {
    /// 1, 2, 3… as JSON numbers, shared with `{{counter}}` so ids increase on a connection.
    Integer,
    /// The same numbers as JSON strings after a prefix (`"sc-7"`).
    Text { prefix: String },
}

/// `endpoints.NAME.requests`: ids assigned by the daemon, replies routed back.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestsConfig {
    /// Where the id lives, in requests and in replies.
    pub id: String,
    pub ids: IdStyle,
    /// Which messages carrying a known id are replies (Home Assistant's events carry the id of
    /// their subscription too). Empty: every one.
    pub reply: Vec<Condition>,
    /// A reply matching this is the upstream's error (passed through, flagged as an error).
    pub error: Vec<Condition>,
    /// How long a request waits for its (first) reply, queueing included.
    pub timeout: Duration,
    /// Requests in flight when a connection drops are sent again on the next one, rather than
    /// failed with `UNAVAILABLE`.
    pub idempotent: bool,
    /// Requests waiting at once; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_in_flight: usize,
    pub stream: ReplyStreamConfig,
    /// Requests on a held key's subscription carry the subscription's id (Phoenix: a push
    /// carries its topic's join_ref).
    pub join: Option<Join>,
}

/// `requests.join`: where a request names a key, and where its subscription's id goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub key: String,
    pub id: String,
}

/// `endpoints.NAME.requests.stream`: replies that keep coming (`eth_subscribe`, GraphQL
/// subscriptions).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplyStreamConfig {
    /// Requests that open a stream (any of these holds for the app's request), when set: a
    /// `Request` matching one is refused (its stream would never be cancelled), a
    /// `RequestStream` matching none gets its one reply and ends.
    pub opens: Vec<Vec<Condition>>,
    /// A message matching any of these ends the stream (it is delivered first); so does an
    /// error reply (`requests.error`).
    pub ends: Vec<Vec<Condition>>,
    /// The first reply names the stream at this pointer (`/result` of `eth_subscribe`) and later
    /// messages carry that name at `route`.
    pub id: Option<String>,
    pub route: Option<String>,
    /// Sent when the app ends the stream before the upstream did: `{{id}}` (a fresh id),
    /// `{{request_id}}` (the stream request's id), `{{sub_id}}` (the stream's name).
    pub cancel: Option<String>,
    /// Streams open when a connection drops are requested again on the next one (default);
    /// otherwise they end with `UNAVAILABLE`.
    pub resend: bool,
}

impl RequestsConfig {
    /// The settings with every default, for an id at `id`.
    pub fn with_id(id: &str) -> Self {
        RequestsConfig {
            id: id.to_owned(),
            ids: IdStyle::Integer,
            reply: Vec::new(),
            error: Vec::new(),
            timeout: REQUEST_TIMEOUT,
            idempotent: false,
            max_in_flight: MAX_IN_FLIGHT,
            stream: ReplyStreamConfig {
                resend: true,
                ..ReplyStreamConfig::default()
            },
            join: None,
        }
    }
}

/// `requests`, if set.
pub(super) fn read_requests(
    r: &mut Report,
    node: &Node<'_>,
    allowed: Allowed<'_>,
) -> Option<RequestsConfig> {
    let mut t = Table::open(r, node)?;
    let id = t.required(r, "id", pointer);
    let ids = t.opt(r, "ids", id_style).unwrap_or(IdStyle::Integer);
    let reply = t
        .get("reply")
        .map(|n| read_match(r, &n))
        .unwrap_or_default();
    let error = t
        .get("error")
        .map(|n| read_match(r, &n))
        .unwrap_or_default();
    let timeout = t.or(r, "timeout", positive, REQUEST_TIMEOUT);
    let idempotent = t.or(r, "idempotent", boolean, false);
    let max_in_flight = t.or(r, "max_in_flight", at_least_one, MAX_IN_FLIGHT);
    let stream = match t.get("stream") {
        Some(n) => read_stream(r, &n, allowed),
        None => Some(ReplyStreamConfig {
            resend: true,
            ..ReplyStreamConfig::default()
        }),
    };
    let join = t.get("join").and_then(|n| {
        let mut j = Table::open(r, &n)?;
        let key = j.required(r, "key", pointer);
        let id = j.required(r, "id", pointer);
        j.finish(r);
        Some(Join { key: key?, id: id? })
    });
    t.finish(r);
    Some(RequestsConfig {
        join,
        id: id?,
        ids,
        reply,
        error,
        timeout,
        idempotent,
        max_in_flight,
        stream: stream?,
    })
}

fn read_stream(r: &mut Report, node: &Node<'_>, allowed: Allowed<'_>) -> Option<ReplyStreamConfig> {
    let mut t = Table::open(r, node)?;
    let mut any_of = |t: &mut Table<'_>, key: &str| match t.get(key) {
        Some(n) => match &n.value.kind {
            ValueKind::Array(_) => n.items(r).iter().map(|i| read_match(r, i)).collect(),
            _ => vec![read_match(r, &n)],
        },
        None => Vec::new(),
    };
    let opens = any_of(&mut t, "opens");
    let ends = any_of(&mut t, "ends");
    let id = t.opt(r, "id", pointer);
    let route = t.opt(r, "route", pointer);
    if id.is_some() != route.is_some() {
        let missing = if id.is_some() { "route" } else { "id" };
        r.at(
            &t.path_of(missing),
            "stream.id and stream.route go together: the first reply names the stream at id, later messages carry the name at route",
        );
    }
    let cancel = t.opt(
        r,
        "cancel",
        template(Allowed {
            share: true,
            ..allowed
        }),
    );
    let resend = t.or(r, "resend", boolean, true);
    t.finish(r);
    Some(ReplyStreamConfig {
        opens,
        ends,
        id,
        route,
        cancel,
        resend,
    })
}

/// `subscriptions`, if set. `requests` must be set when a frame asks for `{{id}}`: its `id`
/// pointer finds the confirmation.
pub(super) fn read_subscriptions(
    r: &mut Report,
    node: &Node<'_>,
    allowed: Allowed<'_>,
    requests: Option<&RequestsConfig>,
    requests_written: bool,
) -> Option<SubscriptionsConfig> {
    let mut t = Table::open(r, node)?;
    let frames = Allowed {
        share: true,
        ..allowed
    };
    let subscribe = t.required(r, "subscribe", template(frames));
    let unsubscribe = t.opt(r, "unsubscribe", template(frames));
    for (name, frame) in [("subscribe", &subscribe), ("unsubscribe", &unsubscribe)] {
        let Some(frame) = frame else { continue };
        // An invalid requests table was reported already.
        if frame.contains("{{id}}") && requests.is_none() && !requests_written {
            r.at(
                &t.path_of(name),
                "{{id}} needs a requests table: its id pointer is where the confirmation carries the id",
            );
        }
    }
    if subscribe
        .as_deref()
        .is_some_and(|s| s.contains("{{sub_id}}"))
    {
        r.at(
            &t.path_of("subscribe"),
            "{{sub_id}} has a value only once the subscription is confirmed: use it in unsubscribe",
        );
    }
    let key = t.get("key").and_then(|n| read_key(r, &n));
    let id = t.opt(r, "id", pointer);
    let route = match (key, id) {
        (Some(k), None) => Some(Route::Key(k)),
        (None, Some(p)) => Some(Route::Id(p)),
        (Some(_), Some(_)) => {
            r.at(
                t.node(),
                "a message names its subscription by key or by id, not both",
            );
            None
        }
        (None, None) if !t.has("key") && !t.has("id") => {
            r.at(
                t.node(),
                "needs key (where a message names its key) or id (where it carries the subscription's id)",
            );
            None
        }
        (None, None) => None,
    };
    let has_id = subscribe.as_deref().is_some_and(|s| s.contains("{{id}}"));
    if matches!(route, Some(Route::Id(_))) && !has_id {
        r.at(
            &t.path_of("id"),
            "a subscription's id comes from its confirmation, found by the subscribe frame's {{id}}, which it does not have",
        );
    }
    let server_id = t.opt(r, "server_id", pointer);
    if server_id.is_some() && !has_id {
        r.at(
            &t.path_of("server_id"),
            "the confirmation is found by the subscribe frame's {{id}}, which it does not have",
        );
    }
    let refuse = t
        .get("refuse")
        .map(|n| read_match(r, &n))
        .unwrap_or_default();
    let max = t.or(r, "max_per_connection", at_least_one, MAX_PER_CONNECTION);
    t.finish(r);
    Some(SubscriptionsConfig {
        subscribe: subscribe?,
        unsubscribe,
        route: route?,
        server_id,
        refuse,
        max,
    })
}

/// `key = "/pointer"` or `key = { pointer }` or `key = { template }`.
fn read_key(r: &mut Report, node: &Node<'_>) -> Option<KeyRule> {
    if let ValueKind::String(_) = node.value.kind {
        return node.to(r, pointer).map(KeyRule::Pointer);
    }
    let mut t = Table::open(r, node)?;
    let p = t.opt(r, "pointer", pointer);
    let tpl = t.opt(r, "template", key_template);
    let out = match (p, tpl) {
        (Some(p), None) => Some(KeyRule::Pointer(p)),
        (None, Some(s)) => Some(KeyRule::Template(s)),
        (Some(_), Some(_)) => {
            r.at(t.node(), "key is a pointer or a template, not both");
            None
        }
        (None, None) if !t.has("pointer") && !t.has("template") => {
            r.at(t.node(), "key needs pointer or template");
            None
        }
        (None, None) => None,
    };
    t.finish(r);
    out
}

/// A key template: text with `{{/pointer}}` or `{{/pointer|lower}}` / `|upper` placeholders.
fn key_template(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let mut rest = s.as_str();
    let mut any = false;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{:?} is not closed with }}}}", &rest[start..]))?;
        let inner = &after[..end];
        let (ptr, case) = inner.split_once('|').unwrap_or((inner, ""));
        if !ptr.starts_with('/') {
            return Err(format!(
                "{{{{{inner}}}}}: a key template's placeholders are JSON pointers into the message ({{{{/s}}}})"
            ));
        }
        if !matches!(case, "" | "lower" | "upper") {
            return Err(format!(
                "{{{{{inner}}}}}: unknown case {case:?}, expected lower or upper"
            ));
        }
        any = true;
        rest = &after[end + 2..];
    }
    if !any {
        return Err("a key template needs at least one {{/pointer}}".into());
    }
    Ok(s)
}

/// `ids = "integer" | "string" | { prefix = "…" }`.
fn id_style(v: &Value) -> Result<IdStyle, String> {
    if let ValueKind::Table(t) = &v.kind {
        return match (t.get("prefix"), t.len()) {
            (Some(p), 1) => Ok(IdStyle::Text { prefix: string(p)? }),
            _ => Err("a table here is { prefix = \"…\" }".into()),
        };
    }
    let style = one_of(v, &[("integer", 0u8), ("string", 1)])
        .map_err(|e| format!("{e}, or {{ prefix = \"…\" }}"))?;
    Ok(match style {
        0 => IdStyle::Integer,
        _ => IdStyle::Text {
            prefix: String::new(),
        },
    })
}

fn at_least_one(v: &Value) -> Result<usize, String> {
    match integer::<usize>(v)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}
