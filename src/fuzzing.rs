//! Entry points for the fuzz targets in `tests/fuzz/` (not an API: hidden from the docs).
//!
//! Each function takes fuzzer input, drives the same code the daemon runs on outside data, and
//! checks cheap properties with `assert!`, so a violated property is a crash the fuzzer keeps and
//! minimises, exactly like a panic inside the daemon code.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde_json::{json, Value};

use crate::config::{self, Config, EndpointConfig, IdKind, ResumeConfig, TokenSource};
use crate::filter::Filter;
use crate::secret::Secret;
use crate::upstream::resume::{Break, Resume, UpstreamId, Verdict};

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
    if let Some(c) = &mut cfg.cluster {
        for s in c.user.iter_mut().map(|(_, p)| p).chain(&mut c.token) {
            if s.is_plain() {
                *s = mark();
                has_secret = true;
            }
        }
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
mod ndjson;
pub use dialogue::dialogue;
pub use ndjson::ndjson;

#[cfg(test)]
mod seeds;
