//! Reads an endpoint's side of the conversation with its upstream: the `on_connect` steps,
//! `captures` and `rules`, and the `match` conditions they share.

use std::collections::BTreeSet;
use std::time::Duration;

use config::ValueKind;

use super::endpoint::{pointer, to_json};
use super::load::{one_of, positive};
use super::template::{template, Allowed};
use super::value::{boolean, string, Node, Report, Table};
use super::{CaptureConfig, CloseAction, Condition, RuleAction, RuleConfig, StepConfig, StepWhen};

/// How long an `on_connect` step waits for its answer by default.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// `captures`: a table of names, each `{ pointer, match }`.
pub(super) fn read_captures(r: &mut Report, node: &Node<'_>) -> Vec<CaptureConfig> {
    let Some(mut t) = Table::open(r, node) else {
        return Vec::new();
    };
    let mut captures = Vec::new();
    for (name, node) in t.entries() {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            r.at(
                &node,
                "a capture name holds only letters, digits and _ (it is used as {{capture.NAME}})",
            );
            continue;
        }
        let Some(mut c) = Table::open(r, &node) else {
            continue;
        };
        let ptr = c.required(r, "pointer", pointer);
        let matches = c
            .get("match")
            .map(|n| read_match(r, &n))
            .unwrap_or_default();
        // JSON text, since TOML has no null: `default = "null"`, `default = '"text"'`.
        let default = c.opt(r, "default", |v| {
            let text = string(v)?;
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("must be JSON text (\"null\", \"0\", '\"a string\"'): {e}"))
        });
        c.finish(r);
        if let Some(pointer) = ptr {
            captures.push(CaptureConfig {
                name,
                pointer,
                matches,
                default,
                persist: false,
            });
        }
    }
    t.finish(r);
    captures
}

/// Marks the captures a resume needs after a restart: the session capture, and those used
/// where a position is offered (`resume.url`, `resume.frame`, steps taken when resuming).
pub(super) fn mark_persisted(
    captures: &mut [CaptureConfig],
    resume: Option<&super::ResumeConfig>,
    steps: &[StepConfig],
) {
    let Some(resume) = resume.filter(|r| r.scope.outlives_connection()) else {
        return;
    };
    let resuming = steps
        .iter()
        .filter(|s| s.when == Some(StepWhen::Resuming))
        .filter_map(|s| s.send.as_deref());
    let templates: Vec<&str> = resume
        .url
        .iter()
        .chain(&resume.frame)
        .map(String::as_str)
        .chain(resuming)
        .collect();
    for c in captures.iter_mut() {
        let placeholder = format!("{{{{capture.{}}}}}", c.name);
        c.persist = resume.session.as_deref() == Some(c.name.as_str())
            || templates.iter().any(|t| t.contains(&placeholder));
    }
}

/// The names `{{capture.NAME}}` may use.
pub(super) fn capture_names(captures: &[CaptureConfig]) -> BTreeSet<String> {
    captures.iter().map(|c| c.name.clone()).collect()
}

/// `on_connect`: each element a frame template, or `{ send, expect, refuse, timeout, failure,
/// deliver }`.
pub(super) fn read_steps(r: &mut Report, node: &Node<'_>, allowed: Allowed<'_>) -> Vec<StepConfig> {
    let mut steps = Vec::new();
    for item in node.items(r) {
        if let ValueKind::String(_) = item.value.kind {
            if let Some(frame) = item.to(r, template(allowed)) {
                steps.push(StepConfig::frame(frame));
            }
            continue;
        }
        let Some(mut t) = Table::open(r, &item) else {
            continue;
        };
        let when = t.opt(r, "when", |v| {
            one_of(
                v,
                &[
                    ("resuming", StepWhen::Resuming),
                    ("new_session", StepWhen::NewSession),
                ],
            )
        });
        // A resuming step is where the position is offered: it may say which.
        let allowed = Allowed {
            last_id: when == Some(StepWhen::Resuming),
            ..allowed
        };
        let send = t.opt(r, "send", template(allowed));
        let expect = t
            .get("expect")
            .map(|n| read_match(r, &n))
            .unwrap_or_default();
        let refuse = t
            .get("refuse")
            .map(|n| read_match(r, &n))
            .unwrap_or_default();
        let waits = !expect.is_empty();
        let mut only_with_expect = |t: &mut Table<'_>, key: &str| {
            if t.has(key) && !waits {
                r.at(&t.path_of(key), "only used with expect, which is not set");
            }
        };
        only_with_expect(&mut t, "refuse");
        only_with_expect(&mut t, "timeout");
        only_with_expect(&mut t, "failure");
        only_with_expect(&mut t, "deliver");
        if send.is_none() && !waits && !t.has("send") {
            r.at(t.node(), "a step needs send, expect or both");
        }
        let step = StepConfig {
            send,
            expect,
            refuse,
            timeout: t.or(r, "timeout", positive, STEP_TIMEOUT),
            failure: t.or(r, "failure", failure_class, CloseAction::Retry),
            deliver: t.or(r, "deliver", boolean, false),
            when,
        };
        t.finish(r);
        steps.push(step);
    }
    steps
}

/// `failure`: what a refusal or a timeout means, in the words of `close_codes`.
fn failure_class(v: &config::Value) -> Result<CloseAction, String> {
    one_of(
        v,
        &[
            ("retry", CloseAction::Retry),
            ("reauth", CloseAction::Reauth),
            ("fail", CloseAction::Fail),
        ],
    )
}

/// `rules`: an array of `{ match, reply, drop, action, url_pointer }`.
pub(super) fn read_rules(r: &mut Report, node: &Node<'_>, allowed: Allowed<'_>) -> Vec<RuleConfig> {
    let mut rules = Vec::new();
    for item in node.items(r) {
        let Some(mut t) = Table::open(r, &item) else {
            continue;
        };
        let matches = t.need(r, "match").map(|n| read_match(r, &n));
        let reply = t.opt(r, "reply", template(allowed));
        let drop = t.or(r, "drop", boolean, false);
        let action = t.opt(r, "action", |v| {
            let s = string(v)?;
            match s.as_str() {
                "reconnect" | "reconnect_to" | "reset_resume" | "fail" => Ok(s),
                _ => Err(format!(
                    "unknown action {s:?}: expected reconnect, reconnect_to, reset_resume or fail"
                )),
            }
        });
        let url_pointer = t.opt(r, "url_pointer", pointer);
        let action = match (action.as_deref(), url_pointer) {
            (Some("reconnect_to"), Some(url_pointer)) => {
                Some(RuleAction::ReconnectTo { url_pointer })
            }
            (Some("reconnect_to"), None) => {
                r.at(
                    &t.path_of("url_pointer"),
                    "required key is missing (action = \"reconnect_to\" takes the URL from there)",
                );
                None
            }
            (_, Some(_)) => {
                r.at(
                    &t.path_of("url_pointer"),
                    "only used with action = \"reconnect_to\"",
                );
                None
            }
            (Some("reconnect"), None) => Some(RuleAction::Reconnect),
            (Some("reset_resume"), None) => Some(RuleAction::ResetResume),
            (Some("fail"), None) => Some(RuleAction::Fail),
            _ => None,
        };
        if reply.is_none() && !drop && action.is_none() && !t.has("action") && !t.has("reply") {
            r.at(
                t.node(),
                "a rule needs reply, drop or action: otherwise it does nothing",
            );
        }
        t.finish(r);
        if let Some(matches) = matches {
            rules.push(RuleConfig {
                matches,
                reply,
                drop,
                action,
            });
        }
    }
    rules
}

/// A `match`: one condition table or an array of them (all must hold). A condition is
/// `{ pointer, equals }`, `{ pointer }` (present) or `{ text }`.
pub(super) fn read_match(r: &mut Report, node: &Node<'_>) -> Vec<Condition> {
    let items = match &node.value.kind {
        ValueKind::Table(_) => vec![node.clone()],
        _ => node.items(r),
    };
    if items.is_empty() && matches!(&node.value.kind, ValueKind::Array(_)) {
        r.at(node, "must not be empty: it would match every message");
    }
    let mut conds = Vec::new();
    for item in items {
        let Some(mut t) = Table::open(r, &item) else {
            continue;
        };
        let ptr = t.opt(r, "pointer", pointer);
        let equals = t.get("equals").and_then(|n| n.to(r, to_json));
        let text = t.opt(r, "text", string);
        let cond = match (ptr, equals, text) {
            (Some(pointer), Some(value), None) => Some(Condition::Equals { pointer, value }),
            (Some(pointer), None, None) if !t.has("equals") => Some(Condition::Present { pointer }),
            (None, None, Some(text)) => Some(Condition::Text(text)),
            (None, Some(_), None) if !t.has("pointer") => {
                r.at(
                    &t.path_of("pointer"),
                    "required key is missing (equals compares the value there)",
                );
                None
            }
            _ if t.has("text") && (t.has("pointer") || t.has("equals")) => {
                r.at(
                    t.node(),
                    "a condition is { text } or { pointer, equals }, not both",
                );
                None
            }
            (None, None, None) if !t.has("pointer") && !t.has("text") => {
                r.at(
                    t.node(),
                    "a condition needs pointer (with or without equals) or text",
                );
                None
            }
            // An invalid value, already reported.
            _ => None,
        };
        t.finish(r);
        conds.extend(cond);
    }
    conds
}
