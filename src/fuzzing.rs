//! Entry points for the fuzz targets in `tests/fuzz/` (not an API: hidden from the docs).
//!
//! Each function takes fuzzer input, drives the same code the daemon runs on outside data, and
//! checks cheap properties with `assert!`, so a violated property is a crash the fuzzer keeps and
//! minimises, exactly like a panic inside the daemon code.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, LazyLock};

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio_util::codec::{Decoder, LinesCodec};

use crate::access::Peer;
use crate::api::stream::{self, Line, Lines, Out, Request};
use crate::config::{self, Config, EndpointConfig, IdKind, ResumeConfig, TokenSource};
use crate::endpoint::{Endpoint, State};
use crate::filter::Filter;
use crate::registry::Registry;
use crate::secret::Secret;
use crate::upstream::resume::{Break, Resume, UpstreamId, Verdict};

/// Line limit for the NDJSON target: small, so the fuzzer reaches the over-long-line path with
/// inputs of a few hundred bytes instead of the daemon's 1 MiB.
const NDJSON_MAX_LINE: usize = 200;

/// Replies the NDJSON handler may send for a request line.
const REPLY_TYPES: &[&str] = &["ack", "error", "status"];

/// Endpoints the NDJSON target talks to: `e` accepts everything (tiny outbox, so a few publishes
/// fill it), `locked` has access lists, `down` is `failed`.
static NDJSON_CONFIG: LazyLock<Config> = LazyLock::new(|| {
    let text = "[endpoints.e]\nurl = 'ws://127.0.0.1:9/'\noutbox = { max_messages = 2 }\n\
                [endpoints.locked]\nurl = 'ws://127.0.0.1:9/'\n\
                access = { subscribe = ['uid:4242'], publish = ['uid:4242'] }\n\
                [endpoints.down]\nurl = 'ws://127.0.0.1:9/'\n";
    match config::load_str(text, Path::new("fuzz.toml"), &HashMap::new()) {
        Ok(c) => c,
        Err(e) => panic!("fuzz config is invalid: {e}"),
    }
});

/// Splits `input` into request lines with the daemon's line codec and handles each one against
/// a fresh registry, checking that every reply is one JSON line of a known type and that every
/// request that parses re-serialises to the same request.
pub fn ndjson(input: &[u8]) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let endpoints: Vec<Arc<Endpoint>> = NDJSON_CONFIG
        .endpoints
        .iter()
        .map(|(name, cfg)| Endpoint::new(name.clone(), cfg.clone(), None, Default::default()))
        .collect();
    for ep in &endpoints {
        for i in 0..3 {
            let data = format!(r#"{{"i":{i},"ep":"{}"}}"#, ep.name);
            ep.log
                .append_after_gap(crate::log::Kind::Text, data.into(), 0, None);
        }
        if ep.name == "down" {
            ep.set_state(State::Failed, "fuzz");
        }
    }
    let registry = Registry::new(endpoints, 4);
    let (tx, _rx) = tokio::sync::mpsc::channel::<Out>(64);
    let newlines = input.iter().filter(|b| **b == b'\n').count();
    let lines = split_lines(input);
    assert!(lines.len() <= newlines + 1, "more lines than newlines + 1");
    rt.block_on(async {
        for line in lines {
            let Line::Text(text) = line else { continue };
            assert!(
                text.len() <= NDJSON_MAX_LINE,
                "over-long line passed the codec"
            );
            assert!(!text.contains('\n'), "a line holds a newline");
            if text.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Request>(&text).ok();
            if let Some(req) = &parsed {
                check_reserialises(req);
            }
            let reply = stream::request(&text, Peer::Unknown, &registry, &tx).await;
            check_reply(parsed.as_ref(), reply);
        }
    });
}

fn split_lines(input: &[u8]) -> Vec<Line> {
    let mut codec = Lines(LinesCodec::new_with_max_length(NDJSON_MAX_LINE));
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    // Each call consumes at least one byte or ends, so this bounds a codec that would spin.
    let mut budget = input.len() + 2;
    loop {
        assert!(budget > 0, "line codec does not make progress");
        budget -= 1;
        match codec.decode(&mut buf) {
            Ok(Some(l)) => out.push(l),
            Ok(None) => break,
            Err(e) => panic!("line codec failed on in-memory input: {e}"),
        }
    }
    loop {
        assert!(budget > 0, "line codec does not make progress at EOF");
        budget -= 1;
        match codec.decode_eof(&mut buf) {
            Ok(Some(l)) => out.push(l),
            Ok(None) => break,
            Err(e) => panic!("line codec failed at EOF: {e}"),
        }
    }
    out
}

/// The request as the JSON a client would write, with every optional field that is set.
fn request_json(req: &Request) -> Value {
    match req {
        Request::Subscribe {
            endpoint,
            from_seq,
            filters,
            key,
            keys,
            params,
        } => {
            let filters: Vec<Value> = filters
                .iter()
                .map(|f| json!({"pointer": f.pointer, "equals": f.equals}))
                .collect();
            let mut v =
                json!({"op": "subscribe", "endpoint": endpoint, "filters": filters, "keys": keys});
            if let Some(n) = from_seq {
                v["from_seq"] = json!(n);
            }
            if let Some(k) = key {
                v["key"] = json!(k);
            }
            if let Some(p) = params {
                v["params"] = p.clone();
            }
            v
        }
        Request::Unsubscribe { endpoint, key } => {
            json!({"op": "unsubscribe", "endpoint": endpoint, "key": key})
        }
        Request::Call {
            endpoint,
            data,
            id,
            stream,
        } => {
            let mut v =
                json!({"op": "request", "endpoint": endpoint, "data": data, "stream": stream});
            if let Some(id) = id {
                v["id"] = id.clone();
            }
            v
        }
        Request::Cancel { id } => json!({"op": "cancel", "id": id}),
        Request::Publish {
            endpoint,
            data,
            binary,
            id,
            idempotency_key,
            wait,
        } => {
            let mut v =
                json!({"op": "publish", "endpoint": endpoint, "data": data, "binary": binary});
            if let Some(id) = id {
                v["id"] = id.clone();
            }
            if let Some(k) = idempotency_key {
                v["idempotency_key"] = json!(k);
            }
            if let Some(w) = wait {
                v["wait"] = json!(w);
            }
            v
        }
        Request::Status { endpoint } => match endpoint {
            Some(e) => json!({"op": "status", "endpoint": e}),
            None => json!({"op": "status"}),
        },
    }
}

fn check_reserialises(req: &Request) {
    let first = request_json(req);
    let text = first.to_string();
    let again = match serde_json::from_str::<Request>(&text) {
        Ok(r) => r,
        Err(e) => panic!("re-serialised request does not parse: {e}: {text}"),
    };
    assert_eq!(
        request_json(&again),
        first,
        "request changed on a round trip"
    );
}

fn check_reply(req: Option<&Request>, reply: Option<Out>) {
    let line = match reply {
        None => {
            // Only `wait = "sent"` publishes answer later, from their own task.
            let waits = matches!(req, Some(Request::Publish { wait: Some(w), .. }) if w == "sent");
            assert!(waits, "no reply for a request that does not wait");
            return;
        }
        Some(Out::Subscribe(mut sub)) => {
            assert!(
                matches!(req, Some(Request::Subscribe { .. })),
                "a subscription for a request that is not a subscribe"
            );
            let first =
                futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut *sub));
            assert!(
                matches!(
                    first,
                    Some(Some(crate::api::subscription::SubEvent::State(_)))
                ),
                "a subscription must start with the endpoint state"
            );
            return;
        }
        Some(Out::Line(line)) => line,
        // Handled by the connection's writer; the fuzzed registry has nothing shared, so a
        // request never gets this far.
        Some(Out::Call(..)) => panic!("a request started on an endpoint without requests"),
        Some(Out::Cancel(_)) => {
            assert!(
                matches!(req, Some(Request::Cancel { .. })),
                "a cancel for another request"
            );
            return;
        }
        Some(Out::Unsubscribe { .. }) => {
            assert!(
                matches!(req, Some(Request::Unsubscribe { .. })),
                "an unsubscribe for another request"
            );
            return;
        }
    };
    assert!(!line.contains('\n'), "reply spans lines: {line}");
    let v: Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => panic!("reply is not JSON ({e}): {line}"),
    };
    let kind = v["type"].as_str().unwrap_or_default();
    assert!(REPLY_TYPES.contains(&kind), "unknown reply type: {line}");
    if kind == "error" {
        assert!(v["code"].is_string() && v["message"].is_string(), "{line}");
    }
    match req {
        None => assert_eq!(
            kind, "error",
            "a line that does not parse must get an error"
        ),
        Some(Request::Status { .. }) => assert!(kind == "status" || kind == "error", "{line}"),
        Some(Request::Subscribe { .. } | Request::Call { .. }) => {
            assert_eq!(kind, "error", "{line}")
        }
        Some(Request::Unsubscribe { .. } | Request::Cancel { .. }) => {
            panic!("handled by the writer, not answered here: {line}")
        }
        Some(Request::Publish { id, .. }) => {
            assert!(kind == "ack" || kind == "error", "{line}");
            if let Some(id) = id {
                assert_eq!(&v["id"], id, "reply does not echo the request id: {line}");
            }
        }
    }
}

/// Loads `input` as a config file the way `run` and `check-config` do. Text after the first NUL
/// byte (which TOML never contains) is `KEY=VALUE` lines standing in for the environment.
/// Checks that every error is `fuzz.toml: <key path>: <problem>` (or a TOML syntax error), that
/// loading is deterministic, and that a valid config's summary and warnings never show a secret.
pub fn config(input: &[u8]) {
    let (text, env_part) = match input.iter().position(|b| *b == 0) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: HashMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let source = Path::new("fuzz.toml");
    match config::load_str(text, source, &env) {
        Err(e) => {
            assert!(!e.errors.is_empty(), "an error without a message");
            for line in &e.errors {
                check_error_line(line);
            }
            assert_eq!(config::load_str(text, source, &env), Err(e));
        }
        Ok(cfg) => {
            assert_eq!(
                config::load_str(text, source, &env).as_ref(),
                Ok(&cfg),
                "loading twice gave different configs"
            );
            check_no_secret_shown(cfg);
        }
    }
}

fn check_error_line(line: &str) {
    let Some(rest) = line.strip_prefix("fuzz.toml: ") else {
        panic!("error does not name the file: {line:?}");
    };
    if rest.starts_with("TOML syntax error") {
        return;
    }
    let key = rest.split(": ").next().unwrap_or_default();
    assert!(
        !key.is_empty() && rest.len() > key.len() + 2,
        "error does not name a key path and a problem: {line:?}"
    );
}

/// Swaps every plain secret for a marker and checks that no output a user sees contains it.
fn check_no_secret_shown(mut cfg: Config) {
    const MARK: &str = "SECRET-MARKER-9f3c";
    let mark = || Secret::Plain(MARK.into());
    let mut has_secret = false;
    for ep in cfg.endpoints.values_mut() {
        for (_, v) in &mut ep.headers {
            if v.is_plain() {
                *v = mark();
                has_secret = true;
            }
        }
        if let Some(auth) = &mut ep.auth {
            match &mut auth.token {
                TokenSource::Secret(s)
                | TokenSource::OAuth2 {
                    client_secret: s, ..
                } if s.is_plain() => {
                    *s = mark();
                    has_secret = true;
                }
                _ => {}
            }
        }
        render_resume_frame(ep);
    }
    let shown = format!("{}\n{}\n{cfg:?}", cfg.summary(), cfg.warnings().join("\n"));
    if has_secret {
        assert!(!shown.contains(MARK), "a secret is shown: {shown}");
    }
}

/// A validated resume template must render for any id without panicking.
fn render_resume_frame(ep: &EndpointConfig) {
    let Some(cfg) = &ep.resume else { return };
    let last = match cfg.id_kind {
        IdKind::Integer => UpstreamId::Int(u64::MAX),
        IdKind::String => UpstreamId::Str("\"}{{last_id}}\\".into()),
    };
    let _ = Resume::new(cfg.clone(), Some(last)).frame(Default::default());
}

/// Extracts an id at `pointer` from `doc` (JSON text) as the upstream task does, and checks it
/// against the filter semantics and the stored form.
pub fn json_pointer(pointer: &str, string_ids: bool, doc: &[u8], equals: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<Value>(doc) else {
        return;
    };
    let kind = if string_ids {
        IdKind::String
    } else {
        IdKind::Integer
    };
    let resume = Resume::new(resume_config(pointer, kind, 1, false, None), None);
    let id = resume.extract(&doc);
    let filter = Filter::new(pointer, Value::Null);
    if filter.is_err() {
        assert_eq!(id, None, "an invalid pointer {pointer:?} found an id");
    }
    if let Some(id) = &id {
        assert_eq!(UpstreamId::decode(&id.encode()).as_ref(), Some(id));
        let found = doc.pointer(pointer);
        assert!(found.is_some(), "an id where the pointer finds nothing");
        // gRPC filters carry strings: the id's text must select the message it came from.
        if let Some(found @ (Value::String(_) | Value::Number(_))) = found {
            let text = match found {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let Ok(f) = Filter::new(pointer, Value::String(text)) {
                assert!(
                    f.matches(&doc),
                    "the id's own text does not match its message"
                );
            }
        }
    }
    if let Ok(equals) = serde_json::from_slice::<Value>(equals) {
        if let Ok(f) = Filter::new(pointer, equals.clone()) {
            let m = f.matches(&doc);
            if doc.pointer(pointer) == Some(&equals) {
                assert!(m, "a filter does not match its own value");
            }
            assert!(
                !crate::filter::all_match(&[f], None),
                "non-JSON matched a filter"
            );
        }
    }
}

fn resume_config(
    pointer: &str,
    kind: IdKind,
    window: usize,
    contiguous: bool,
    frame: Option<String>,
) -> ResumeConfig {
    ResumeConfig {
        id_pointer: pointer.to_owned(),
        id_kind: kind,
        query: Some("since".into()),
        frame,
        dedup_window: window,
        contiguous,
        scope: crate::config::IdScope::Global,
        session: None,
        url: None,
        channel_pointer: None,
    }
}

/// One fuzzer-chosen resume scenario: a stream of ids, a template, and a URL query.
#[derive(Debug)]
pub struct ResumeCase<'a> {
    /// `id_kind = "string"` (uses `str_ids`) instead of integer (uses `ids`).
    pub string_ids: bool,
    /// `contiguous = true`; only meaningful with integer ids.
    pub contiguous: bool,
    /// `dedup_window`, at least 1.
    pub window: u8,
    /// Integer ids, each with its payload (a byte standing for the message's content).
    pub ids: Vec<(u64, u8)>,
    /// String ids, each with its payload.
    pub str_ids: Vec<(&'a str, u8)>,
    /// `resume.frame`, rendered as written (not validated, as the loader would).
    pub template: &'a str,
    /// `resume.query`: the parameter name.
    pub query_name: &'a str,
    /// The URL's existing query string.
    pub query: &'a str,
    /// Text around `{{last_id}}` inside a JSON string of a generated template.
    pub prefix: &'a str,
    pub suffix: &'a str,
}

/// Feeds ids through resume dedup and checks it against a model; renders the frame template
/// and the resume query for the resulting last id.
pub fn resume(c: &ResumeCase<'_>) {
    let kind = if c.string_ids {
        IdKind::String
    } else {
        IdKind::Integer
    };
    let window = usize::from(c.window).max(1);
    let contiguous = c.contiguous && !c.string_ids;
    let cfg = resume_config("/id", kind, window, contiguous, Some(c.template.into()));
    let mut r = Resume::new(cfg.clone(), None);
    assert!(
        r.frame(Default::default()).is_none(),
        "a frame before any id"
    );
    let hash = |p: u8| crate::upstream::resume::payload_hash(&[p]);
    if c.string_ids {
        // The model: the last `window` distinct ids in arrival order, with their payload.
        let mut recent: VecDeque<(&str, u8)> = VecDeque::new();
        for &(s, p) in &c.str_ids {
            let v = r.accept(UpstreamId::Str(s.to_owned()), hash(p));
            match recent.iter().position(|(id, _)| *id == s) {
                Some(i) if recent[i].1 == p => {
                    assert_eq!(v, Verdict::Duplicate, "a resend of {s:?} was delivered")
                }
                Some(i) => {
                    assert!(
                        matches!(v, Verdict::Deliver(Some(Break::Reset(..)))),
                        "{s:?} with other content: {v:?}"
                    );
                    recent[i].1 = p;
                }
                None => {
                    assert_eq!(v, Verdict::Deliver(None), "new id {s:?}");
                    recent.push_back((s, p));
                    if recent.len() > window {
                        recent.pop_front();
                    }
                }
            }
        }
    } else {
        // The model: every (id, payload) delivered since the last reset. A duplicate is only
        // ever an exact resend (nothing new is dropped), and a resend of one of the `window`
        // highest ids is always caught.
        let mut epoch: std::collections::BTreeMap<u64, u8> = std::collections::BTreeMap::new();
        let mut last: Option<u64> = None;
        for &(n, p) in &c.ids {
            let v = r.accept(UpstreamId::Int(n), hash(p));
            let remembered = epoch.keys().rev().take(window).any(|&k| k == n);
            match &v {
                Verdict::Duplicate => assert_eq!(
                    epoch.get(&n),
                    Some(&p),
                    "{n} dropped as a duplicate but never delivered with that content"
                ),
                Verdict::Deliver(Some(Break::Reset(from, to))) => {
                    assert_eq!(
                        (from, to),
                        (&UpstreamId::Int(last.unwrap_or(n)), &UpstreamId::Int(n))
                    );
                    assert!(last.is_some_and(|l| n <= l), "a reset goes back");
                    epoch.clear();
                }
                Verdict::Deliver(gap) => {
                    let want = match last {
                        Some(l) if contiguous && n > l && n - l > 1 => {
                            Some(Break::Gap(l + 1, n - 1))
                        }
                        _ => None,
                    };
                    assert_eq!(gap, &want, "gap before {n} after {last:?}");
                }
            }
            if remembered {
                let same = epoch.get(&n) == Some(&p);
                assert_eq!(v == Verdict::Duplicate, same, "{n} remembered: {v:?}");
            }
            if v != Verdict::Duplicate {
                epoch.insert(n, p);
                last = Some(match (&v, last) {
                    (Verdict::Deliver(Some(Break::Reset(..))), _) | (_, None) => n,
                    (_, Some(l)) => l.max(n),
                });
            }
        }
        assert_eq!(r.last_id(), last.map(UpstreamId::Int).as_ref());
    }
    let Some(last) = r.last_id().cloned() else {
        return;
    };
    assert_eq!(UpstreamId::decode(&last.encode()).as_ref(), Some(&last));
    let value = last.to_string();

    let frame = r
        .frame(Default::default())
        .map(|f| f.map(|f| f.expose().to_owned()));
    // With no braces but its placeholders, rendering is plain replacement (the renderer's one
    // pass otherwise decides what a run of braces means).
    let plain = |t: &str| !t.replace("{{last_id}}", "").contains(['{', '}']);
    if let UpstreamId::Int(n) = last {
        if plain(c.template) {
            assert_eq!(
                frame,
                Some(Ok(c.template.replace("{{last_id}}", &n.to_string())))
            );
        }
    }
    // A string id inside a JSON string of the template must leave the frame valid JSON, with
    // the id as the string's text.
    let raw = format!("{}{{{{last_id}}}}{}", c.prefix, c.suffix);
    if !plain(&raw) {
        return;
    }
    let template = json!({"op": "resume", "from": raw}).to_string();
    let cfg = resume_config("/id", kind, window, contiguous, Some(template));
    let frame = match Resume::new(cfg, Some(last.clone())).frame(Default::default()) {
        Some(Ok(f)) => f.expose().to_owned(),
        other => panic!("a resume frame with only {{{{last_id}}}} renders: {other:?}"),
    };
    let doc: Value = match serde_json::from_str(&frame) {
        Ok(v) => v,
        Err(e) => panic!("frame is not JSON ({e}): {frame}"),
    };
    assert_eq!(
        doc["from"],
        Value::String(raw.replace("{{last_id}}", &value))
    );

    let Ok(mut url) = url::Url::parse(&format!("ws://h/feed?{}", c.query)) else {
        return;
    };
    if c.query_name.is_empty() {
        return;
    }
    let others: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != c.query_name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut cfg = cfg_with_query(&r, c.query_name);
    cfg.frame = None;
    let r = Resume::new(cfg, Some(last));
    r.apply_query(&mut url);
    let once = url.clone();
    r.apply_query(&mut url);
    assert_eq!(url, once, "applying the resume query twice changed the URL");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let (mine, rest): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|(k, _)| k == c.query_name);
    assert_eq!(mine, vec![(c.query_name.to_owned(), value)]);
    assert_eq!(rest, others, "other query parameters changed");
}

fn cfg_with_query(r: &Resume, name: &str) -> ResumeConfig {
    let kind = match r.last_id() {
        Some(UpstreamId::Str(_)) => IdKind::String,
        _ => IdKind::Integer,
    };
    let mut cfg = resume_config("/id", kind, 1, false, None);
    cfg.query = Some(name.to_owned());
    cfg
}

mod dialogue;
pub use dialogue::dialogue;
