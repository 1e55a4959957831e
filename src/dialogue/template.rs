//! The config's templates with their placeholders filled in: `{{token}}` (the current
//! credential), `{{last_id}}` (the last upstream id delivered), `{{counter}}` (1, 2, 3… per
//! connection), `{{now_ms}}` (Unix milliseconds) and `{{capture.NAME}}` (a value captured from an
//! inbound message). `config/template.rs` says where each may appear.
//!
//! One pass over the template, so a value that happens to contain `{{…}}` is never expanded
//! again. A frame template that is JSON is filled JSON-aware (see [`frame`]): inside a string
//! literal every value is escaped into the string, so `"{{token}}"` stays valid JSON whatever
//! the value holds; outside one a value goes in as JSON (`{"seq":{{last_id}}}` with a string id
//! gives `{"seq":"a1"}`). Other frames (`ping`, `AUTH {{token}}`) and headers get the text as it
//! is. `check-config` refuses a placeholder a template cannot have a value for, so rendering
//! only fails when a value is not known yet (a capture before its message came).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::secret::SecretString;
use crate::upstream::resume::UpstreamId;

use super::capture::Captures;

/// The values placeholders can take now.
#[derive(Clone, Copy, Default)]
pub struct Values<'a> {
    pub token: Option<&'a SecretString>,
    pub last_id: Option<&'a UpstreamId>,
    /// The connection's counter: each `{{counter}}` takes the next value.
    pub counter: Option<&'a AtomicU64>,
    pub captures: Option<&'a Captures>,
    /// A shared subscription's or a request's values.
    pub share: Option<&'a ShareValues<'a>>,
}

/// The values of `{{key}}`, `{{params}}`, `{{id}}`, `{{sub_id}}` and `{{request_id}}` in the
/// frames of `subscriptions` and `requests.stream.cancel`.
#[derive(Clone, Copy, Default)]
pub struct ShareValues<'a> {
    pub key: Option<&'a str>,
    pub params: Option<&'a serde_json::Value>,
    /// The id this frame is sent with (a JSON number or string).
    pub id: Option<&'a serde_json::Value>,
    /// The subscription's (or stream's) id on the connection.
    pub sub_id: Option<&'a serde_json::Value>,
    /// The id the stream's request was sent with.
    pub request_id: Option<&'a serde_json::Value>,
}

/// A placeholder without a value when a template was rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{{{{{0}}}}} has no value yet")]
pub struct Missing(pub String);

/// `template` as a text frame. A template that is JSON (it starts with `{` or `[`) gets JSON
/// values: inside a string literal a value goes in escaped as part of the string (a captured
/// object as its escaped JSON text); outside one, as a JSON value (a string quoted). Any other
/// template gets values as plain text.
pub fn frame(template: &str, v: Values<'_>) -> Result<SecretString, Missing> {
    let json = template.trim_start().starts_with(['{', '[']);
    render(template, v, json)
}

/// `template` as a header value: the token goes in as it is (a secret with a character a
/// header cannot carry is refused when the header is built).
pub fn header(template: &str, v: Values<'_>) -> Result<SecretString, Missing> {
    render(template, v, false)
}

/// A value to put in place of a placeholder.
enum Val<'a> {
    Str(&'a str),
    /// JSON text of a number, boolean, null, object or array.
    Json(String),
}

/// Where in a JSON template the renderer is.
#[derive(Default)]
struct JsonPlace {
    in_string: bool,
    escaped: bool,
}

impl JsonPlace {
    fn after(&mut self, literal: &str) {
        for c in literal.chars() {
            if self.escaped {
                self.escaped = false;
            } else if self.in_string && c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = !self.in_string;
            }
        }
    }
}

fn escaped_body(s: &str, out: &mut String) {
    let quoted = serde_json::Value::String(s.to_owned()).to_string();
    out.push_str(&quoted[1..quoted.len() - 1]);
}

fn put(val: Val<'_>, place: Option<&JsonPlace>, out: &mut String) {
    match (val, place) {
        (Val::Str(s), None) => out.push_str(s),
        (Val::Json(t), None) => out.push_str(&t),
        (Val::Str(s), Some(p)) if p.in_string => escaped_body(s, out),
        (Val::Json(t), Some(p)) if p.in_string => escaped_body(&t, out),
        (Val::Str(s), Some(_)) => {
            out.push_str(&serde_json::Value::String(s.to_owned()).to_string())
        }
        (Val::Json(t), Some(_)) => out.push_str(&t),
    }
}

fn render(template: &str, v: Values<'_>, json: bool) -> Result<SecretString, Missing> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut place = json.then(JsonPlace::default);
    let mut rest = template;
    let missing = |name: &str| Missing(name.to_owned());
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        if let Some(p) = place.as_mut() {
            p.after(&rest[..start]);
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        let val = match name {
            "token" => Val::Str(v.token.ok_or_else(|| missing(name))?.expose()),
            "last_id" => match v.last_id.ok_or_else(|| missing(name))? {
                UpstreamId::Int(n) => Val::Json(n.to_string()),
                UpstreamId::Str(s) => Val::Str(s),
            },
            "counter" => {
                let c = v.counter.ok_or_else(|| missing(name))?;
                Val::Json((c.fetch_add(1, Ordering::Relaxed) + 1).to_string())
            }
            "now_ms" => Val::Json((crate::endpoint::unix_nanos() / 1_000_000).to_string()),
            "key" => Val::Str(v.share.and_then(|s| s.key).ok_or_else(|| missing(name))?),
            "params" | "id" | "sub_id" | "request_id" => {
                let s = v.share.ok_or_else(|| missing(name))?;
                let value = match name {
                    "params" => s.params,
                    "id" => s.id,
                    "sub_id" => s.sub_id,
                    _ => s.request_id,
                };
                match value.ok_or_else(|| missing(name))? {
                    serde_json::Value::String(t) => Val::Str(t),
                    other => Val::Json(other.to_string()),
                }
            }
            _ => match name.strip_prefix("capture.") {
                Some(c) => match v.captures.and_then(|all| all.get(c)) {
                    Some(serde_json::Value::String(s)) => Val::Str(s),
                    Some(other) => Val::Json(other.to_string()),
                    None => return Err(missing(name)),
                },
                // Not a placeholder (check-config refuses unknown words): kept as written.
                None => {
                    let literal = &rest[start..start + 2 + end + 2];
                    out.push_str(literal);
                    if let Some(p) = place.as_mut() {
                        p.after(literal);
                    }
                    rest = &after[end + 2..];
                    continue;
                }
            },
        };
        put(val, place.as_ref(), &mut out);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(SecretString::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_once_and_escaped_in_frames() {
        let token = SecretString::new(r#"t"o\k{{last_id}}"#.into());
        let id = UpstreamId::Str("a\"b".into());
        let v = Values {
            token: Some(&token),
            last_id: Some(&id),
            ..Values::default()
        };
        let f = frame(
            r#"{"token":"{{token}}","from":"{{last_id}}","x":"{{other}}"}"#,
            v,
        )
        .expect("renders");
        let doc: serde_json::Value = serde_json::from_str(f.expose()).expect("valid JSON");
        assert_eq!(doc["token"], r#"t"o\k{{last_id}}"#, "not expanded twice");
        assert_eq!(doc["from"], "a\"b");
        assert_eq!(doc["x"], "{{other}}");
        let n = UpstreamId::Int(42);
        let f = frame(
            r#"{"op":6,"seq":{{last_id}}}"#,
            Values {
                last_id: Some(&n),
                ..Values::default()
            },
        );
        assert_eq!(f.expect("renders").expose(), r#"{"op":6,"seq":42}"#);
        assert_eq!(
            header("Bearer {{token}}", v).expect("renders").expose(),
            r#"Bearer t"o\k{{last_id}}"#
        );
        assert_eq!(
            frame("{{token}}", Values::default()).err(),
            Some(Missing("token".into()))
        );
        assert_eq!(
            frame("{{ unclosed", Values::default())
                .expect("kept")
                .expose(),
            "{{ unclosed"
        );
    }

    #[test]
    fn counter_now_and_captures() {
        use crate::dialogue::capture::Capturing;
        use crate::dialogue::matching::Message;
        let counter = AtomicU64::new(0);
        let mut captures = Captures::default();
        let doc = serde_json::json!({"id": "x\"y", "n": 7, "o": {"a": [1]}});
        Capturing::new(&[
            crate::config::CaptureConfig {
                name: "id".into(),
                pointer: "/id".into(),
                matches: vec![],
                default: None,
                persist: false,
            },
            crate::config::CaptureConfig {
                name: "n".into(),
                pointer: "/n".into(),
                matches: vec![],
                default: None,
                persist: false,
            },
            crate::config::CaptureConfig {
                name: "o".into(),
                pointer: "/o".into(),
                matches: vec![],
                default: None,
                persist: false,
            },
        ])
        .take(
            Message {
                text: None,
                doc: Some(&doc),
            },
            &mut captures,
        );
        let v = Values {
            counter: Some(&counter),
            captures: Some(&captures),
            ..Values::default()
        };
        let f = frame(
            r#"{"id":{{counter}},"next":{{counter}},"s":"{{capture.id}}","n":{{capture.n}},"o":{{capture.o}},"t":{{now_ms}}}"#,
            v,
        )
        .expect("renders");
        let out: serde_json::Value = serde_json::from_str(f.expose()).expect("valid JSON");
        assert_eq!(out["id"], 1);
        assert_eq!(out["next"], 2, "each use takes the next value");
        assert_eq!(out["s"], "x\"y", "a captured string is escaped, not pasted");
        assert_eq!(out["n"], 7);
        assert_eq!(out["o"], serde_json::json!({"a": [1]}));
        let now = crate::endpoint::unix_nanos() / 1_000_000;
        let t = out["t"].as_u64().expect("a number");
        assert!(t <= now && now - t < 60_000, "{t} is now in ms");
        assert_eq!(
            frame("{{capture.gone}}", v).err(),
            Some(Missing("capture.gone".into()))
        );
        // JSON-aware by place: bare values are JSON values, a string quoted; in a string an
        // object goes in as escaped text; a frame that is not JSON gets the text as it is.
        let f = frame(
            r#"{"s":{{capture.id}},"o":"{{capture.o}}","q":"a\"{{capture.id}}"}"#,
            v,
        )
        .expect("renders");
        let out: serde_json::Value = serde_json::from_str(f.expose()).expect("valid JSON");
        assert_eq!(out["s"], "x\"y");
        assert_eq!(out["o"], r#"{"a":[1]}"#);
        assert_eq!(
            out["q"], "a\"x\"y",
            "an escaped quote does not end the string"
        );
        assert_eq!(
            frame("AUTH {{capture.id}} {{capture.n}}", v)
                .expect("renders")
                .expose(),
            "AUTH x\"y 7"
        );
    }
}
