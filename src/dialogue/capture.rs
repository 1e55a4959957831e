//! Values captured from inbound messages (`captures.NAME`), for `{{capture.NAME}}` in
//! templates: a session id from a welcome message, a ping's payload to echo, an envelope id to
//! acknowledge. Kept per endpoint across connections (a resume needs the last session's id);
//! each new matching message replaces the value.

use std::collections::BTreeMap;

use serde_json::Value;

use super::matching::{Match, Message};
use crate::config::CaptureConfig;

/// Longest captured value kept, as JSON text: a capture is an id or a URL, not a payload, and
/// every frame that uses it carries a copy.
pub const MAX_VALUE: usize = 64 * 1024;

/// One compiled capture.
#[derive(Debug, Clone)]
struct Capture {
    name: String,
    pointer: String,
    when: Match,
    persist: bool,
    default: Option<Value>,
}

/// What to capture, compiled once per endpoint run.
#[derive(Debug, Clone, Default)]
pub struct Capturing(Vec<Capture>);

impl Capturing {
    /// Compiles the endpoint's `captures`.
    pub fn new(cfg: &[CaptureConfig]) -> Self {
        Capturing(
            cfg.iter()
                .map(|c| Capture {
                    name: c.name.clone(),
                    pointer: c.pointer.clone(),
                    when: Match::new(&c.matches),
                    persist: c.persist,
                    default: c.default.clone(),
                })
                .collect(),
        )
    }

    /// True when nothing is captured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Gives every capture that has no value yet its configured `default`.
    pub fn seed(&self, into: &mut Captures) {
        for c in &self.0 {
            if let (Some(d), false) = (&c.default, into.0.contains_key(&c.name)) {
                into.0.insert(c.name.clone(), d.clone());
            }
        }
    }

    /// Takes every configured value `m` holds into `into`; returns the names of those that
    /// changed and must be kept in the store (see [`CaptureConfig::persist`]), and whether any
    /// changed at all. A value longer than [`MAX_VALUE`] is not taken (logged): the old one
    /// stays.
    pub fn take(&self, m: Message<'_>, into: &mut Captures) -> Changed {
        let mut changed = Changed::default();
        let Some(doc) = m.doc else { return changed };
        for c in &self.0 {
            if !c.when.is_empty() && !c.when.holds(m) {
                continue;
            }
            let Some(v) = doc.pointer(&c.pointer) else {
                continue;
            };
            if crate::filter::json_len(v) > MAX_VALUE {
                tracing::warn!(capture = %c.name, max = MAX_VALUE, "captured value too long; keeping the previous one");
                continue;
            }
            // In place when the name is known: a capture that changes with every message (a
            // sequence number) costs no allocation for its name.
            match into.0.get_mut(&c.name) {
                Some(old) if old == v => continue,
                Some(old) => *old = v.clone(),
                None => {
                    into.0.insert(c.name.clone(), v.clone());
                }
            }
            changed.any = true;
            if c.persist {
                changed.to_store.push((c.name.clone(), v.to_string()));
            }
        }
        changed
    }
}

/// What one message changed among the captured values.
#[derive(Debug, Default, PartialEq)]
pub struct Changed {
    /// Some value changed.
    pub any: bool,
    /// (name, value as JSON text) of the changed values the store keeps.
    pub to_store: Vec<(String, String)>,
}

/// The values captured so far, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Captures(BTreeMap<String, Value>);

impl Captures {
    /// The value captured under `name`, if any yet.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// Forgets every value (a session that must start again).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The values the store kept: (name, JSON text); one that does not parse is left out.
    pub fn restored(kept: &[(String, String)]) -> Self {
        Captures(
            kept.iter()
                .filter_map(|(n, v)| Some((n.clone(), serde_json::from_str(v).ok()?)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Condition;
    use serde_json::json;

    #[test]
    fn values_are_taken_from_matching_messages_and_replaced() {
        let capturing = Capturing::new(&[
            CaptureConfig {
                name: "session".into(),
                pointer: "/d/session_id".into(),
                matches: vec![Condition::Equals {
                    pointer: "/t".into(),
                    value: json!("READY"),
                }],
                default: None,
                persist: true,
            },
            CaptureConfig {
                name: "seq".into(),
                pointer: "/s".into(),
                matches: vec![],
                default: Some(Value::Null),
                persist: false,
            },
        ]);
        let mut c = Captures::default();
        capturing.seed(&mut c);
        assert_eq!(
            c.get("seq"),
            Some(&Value::Null),
            "its default before any message"
        );
        assert_eq!(c.get("session"), None);
        let msg = |d: &Value, c: &mut Captures| {
            capturing.take(
                Message {
                    text: None,
                    doc: Some(d),
                },
                c,
            )
        };
        let changed = msg(
            &json!({"t": "OTHER", "d": {"session_id": "no"}, "s": 1}),
            &mut c,
        );
        assert!(
            changed.any && changed.to_store.is_empty(),
            "seq is not kept"
        );
        assert_eq!(
            msg(&json!({"s": 1}), &mut c),
            Changed::default(),
            "the same value is no change"
        );
        assert_eq!(c.get("session"), None, "only from matching messages");
        assert_eq!(c.get("seq"), Some(&json!(1)));
        let changed = msg(
            &json!({"t": "READY", "d": {"session_id": "abc"}, "s": 2}),
            &mut c,
        );
        let kept = vec![("session".to_string(), "\"abc\"".to_string())];
        assert_eq!(changed.to_store, kept);
        assert_eq!(c.get("session"), Some(&json!("abc")));
        let back = Captures::restored(&kept);
        assert_eq!(
            back.get("session"),
            Some(&json!("abc")),
            "a restart gets it back"
        );
        msg(&json!({"op": 11}), &mut c);
        assert_eq!(
            c.get("seq"),
            Some(&json!(2)),
            "absent pointer keeps the value"
        );
        let huge = json!({"s": "x".repeat(MAX_VALUE + 1)});
        msg(&huge, &mut c);
        assert_eq!(c.get("seq"), Some(&json!(2)), "too long is not taken");
        c.clear();
        assert_eq!(c, Captures::default());
    }
}
