//! Which `{{…}}` placeholders a config value may hold.
//!
//! - `{{token}}`: the current credential, wherever `auth` gives one (`auth.format`, every frame).
//! - `{{last_id}}`: the last upstream id delivered, in `resume.frame` only (it is sent once an id
//!   is known).
//! - `{{counter}}`: 1, 2, 3… per connection, one value per frame that holds it (ids that must
//!   increase, e.g. Home Assistant's); frames only.
//! - `{{now_ms}}`: the wall clock in Unix milliseconds when the frame is sent.
//! - `{{capture.NAME}}`: a value captured from an inbound message (`captures.NAME`); frames only.
//!
//! Anything else that looks like a placeholder would go upstream as written, a setting that does
//! nothing, so it is refused here, with what to do instead.

use std::collections::BTreeSet;

use config::Value;

use super::value::string;

/// The placeholders a value may hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowed<'a> {
    /// `{{token}}`: only where `auth` gives one.
    pub token: bool,
    /// `{{last_id}}`: only in `resume.frame`.
    pub last_id: bool,
    /// `{{counter}}` and `{{capture.NAME}}` of these names: in frames, not in headers.
    pub frame: Option<&'a BTreeSet<String>>,
    /// `{{key}}`, `{{params}}`, `{{id}}`, `{{sub_id}}`, `{{request_id}}`: in the frames of
    /// `subscriptions` and `requests.stream.cancel`.
    pub share: bool,
}

impl Allowed<'_> {
    /// In a header: the token at most.
    pub const HEADER: Allowed<'static> = Allowed {
        token: true,
        last_id: false,
        frame: None,
        share: false,
    };
}

/// A template holding only the placeholders `allowed`; a frame template that is JSON (starts
/// with `{` or `[`) must stay JSON once filled in.
pub(super) fn template(allowed: Allowed<'_>) -> impl Fn(&Value) -> Result<String, String> + '_ {
    move |v| {
        let s = string(v)?;
        check(&s, allowed)?;
        if let Some(names) = allowed.frame {
            json_when_filled(&s, names)?;
        }
        Ok(s)
    }
}

/// Fills a JSON frame template with stand-in values, as the daemon would, and parses it: a
/// missing quote or brace would otherwise only show when the upstream refuses the frame.
fn json_when_filled(s: &str, captures: &BTreeSet<String>) -> Result<(), String> {
    use crate::dialogue::capture::Captures;
    use crate::dialogue::template::{frame, Values};
    if !s.trim_start().starts_with(['{', '[']) {
        return Ok(());
    }
    let token = crate::secret::SecretString::new("token".into());
    let last_id = crate::upstream::resume::UpstreamId::Int(1);
    let counter = std::sync::atomic::AtomicU64::new(0);
    let stand_ins: Vec<(String, String)> = captures
        .iter()
        .map(|n| (n.clone(), "\"x\"".to_owned()))
        .collect();
    let captures = Captures::restored(&stand_ins);
    let params = serde_json::json!({"x": 1});
    let id = serde_json::json!(1);
    let share = crate::dialogue::template::ShareValues {
        key: Some("key"),
        params: Some(&params),
        id: Some(&id),
        sub_id: Some(&id),
        request_id: Some(&id),
    };
    let values = Values {
        token: Some(&token),
        last_id: Some(&last_id),
        counter: Some(&counter),
        captures: Some(&captures),
        share: Some(&share),
    };
    let filled = frame(s, values).map_err(|e| e.to_string())?;
    serde_json::from_str::<serde_json::Value>(filled.expose())
        .map(|_| ())
        .map_err(|e| {
            format!("starts like JSON but is not JSON once filled in ({e}); a frame that is not JSON must not start with {{ or [")
        })
}

/// Refuses a placeholder `s` may not hold.
pub(super) fn check(s: &str, allowed: Allowed<'_>) -> Result<(), String> {
    for name in placeholders(s)? {
        match name {
            "token" if allowed.token => {}
            "token" => return Err("{{token}} needs auth.token: nothing would fill it in".into()),
            "last_id" if allowed.last_id => {}
            "last_id" => {
                return Err("{{last_id}} has a value only in resume.frame, which is sent once an id is known".into())
            }
            "now_ms" => {}
            "counter" if allowed.frame.is_some() => {}
            "counter" => return Err("{{counter}} is only filled in in frames".into()),
            "key" | "params" | "id" | "sub_id" | "request_id" if allowed.share => {}
            "key" | "params" | "id" | "sub_id" | "request_id" => {
                return Err(format!(
                    "{{{{{name}}}}} is only filled in in the frames of subscriptions and requests.stream.cancel"
                ))
            }
            other => match (other.strip_prefix("capture."), allowed.frame) {
                (Some(c), Some(names)) if names.contains(c) => {}
                (Some(c), Some(_)) => {
                    return Err(format!(
                        "{{{{capture.{c}}}}}: there is no captures.{c} to fill it in"
                    ))
                }
                (Some(_), None) => return Err("captured values are only filled in in frames".into()),
                (None, _) if allowed.share => {
                    return Err(format!(
                        "unknown placeholder {{{{{other}}}}}: these frames know {{{{key}}}}, {{{{params}}}}, {{{{id}}}}, {{{{sub_id}}}}, {{{{request_id}}}}, {{{{token}}}}, {{{{counter}}}}, {{{{now_ms}}}} and {{{{capture.NAME}}}}"
                    ))
                }
                (None, _) => {
                    return Err(format!(
                        "unknown placeholder {{{{{other}}}}}: templates know {{{{token}}}}, {{{{last_id}}}}, {{{{counter}}}}, {{{{now_ms}}}} and {{{{capture.NAME}}}}"
                    ))
                }
            },
        }
    }
    Ok(())
}

/// A URL template: only captured values fill it (pasted as they are).
pub(super) fn url_template(
    captures: &BTreeSet<String>,
) -> impl Fn(&Value) -> Result<String, String> + '_ {
    move |v| {
        let s = string(v)?;
        for name in placeholders(&s)? {
            match name.strip_prefix("capture.") {
                Some(c) if captures.contains(c) => {}
                Some(c) => {
                    return Err(format!(
                        "{{{{capture.{c}}}}}: there is no captures.{c} to fill it in"
                    ))
                }
                None => {
                    return Err(format!(
                        "{{{{{name}}}}} is not filled in in a URL: only {{{{capture.NAME}}}} is"
                    ))
                }
            }
        }
        Ok(s)
    }
}

/// Refuses a placeholder in a value that is used as written; `instead` says what to use.
pub(super) fn literal(s: &str, instead: &str) -> Result<(), String> {
    match placeholders(s)?.first() {
        Some(name) => Err(format!(
            "{{{{{name}}}}} is not filled in here, the value is used as written: {instead}"
        )),
        None => Ok(()),
    }
}

/// The `{{word}}` placeholders of `s`, as the renderer reads them; `{{ word }}` is refused,
/// since the renderer would send it as written.
fn placeholders(s: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            let word: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            if !word.is_empty() {
                return Err(format!("{{{{{word} is not closed: write {{{{{word}}}}}"));
            }
            break;
        };
        rest = &after[end + 2..];
        let raw = &after[..end];
        let name = raw.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            continue;
        }
        if name != raw {
            return Err(format!(
                "write {{{{{name}}}}} without spaces inside the braces"
            ));
        }
        names.push(name);
    }
    Ok(names)
}
