//! `match` conditions on an inbound message (after decoding): a JSON value at a pointer, a
//! pointer that is present, or the whole text of the message.

use serde_json::Value;

use crate::config::Condition;
use crate::filter::Filter;

/// An inbound message as conditions see it.
#[derive(Clone, Copy, Default)]
pub struct Message<'a> {
    /// The payload as text, when it is valid UTF-8 (text frames, and binary ones that are).
    pub text: Option<&'a str>,
    /// The payload parsed as JSON, when it is JSON.
    pub doc: Option<&'a Value>,
}

/// A compiled condition.
#[derive(Debug, Clone)]
enum Cond {
    Equals(Filter),
    Present(String),
    Text(String),
}

/// Conditions that must all hold.
#[derive(Debug, Clone, Default)]
pub struct Match(Vec<Cond>);

impl Match {
    /// Compiles `conds` (validated by `check-config`).
    pub fn new(conds: &[Condition]) -> Self {
        Match(
            conds
                .iter()
                .filter_map(|c| match c {
                    Condition::Equals { pointer, value } => {
                        Filter::new(pointer.clone(), value.clone())
                            .ok()
                            .map(Cond::Equals)
                    }
                    Condition::Present { pointer } => Some(Cond::Present(pointer.clone())),
                    Condition::Text(t) => Some(Cond::Text(t.clone())),
                })
                .collect(),
        )
    }

    /// True when there are no conditions.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any condition looks inside JSON (so the message must be parsed).
    pub fn reads_json(&self) -> bool {
        self.0.iter().any(|c| !matches!(c, Cond::Text(_)))
    }

    /// True when every condition holds for `m` (and there is at least one).
    pub fn holds(&self, m: Message<'_>) -> bool {
        !self.0.is_empty()
            && self.0.iter().all(|c| match c {
                Cond::Equals(f) => m.doc.is_some_and(|d| f.matches(d)),
                Cond::Present(p) => m.doc.and_then(|d| d.pointer(p)).is_some(),
                Cond::Text(t) => m.text == Some(t.as_str()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_all_hold_and_text_is_the_whole_message() {
        let m = Match::new(&[
            Condition::Equals {
                pointer: "/type".into(),
                value: json!("hello"),
            },
            Condition::Present {
                pointer: "/id".into(),
            },
        ]);
        let doc = json!({"type": "hello", "id": 0});
        assert!(m.holds(Message {
            text: None,
            doc: Some(&doc)
        }));
        let doc = json!({"type": "hello"});
        assert!(!m.holds(Message {
            text: None,
            doc: Some(&doc)
        }));
        let pong = Match::new(&[Condition::Text("pong".into())]);
        assert!(!pong.reads_json());
        assert!(pong.holds(Message {
            text: Some("pong"),
            doc: None
        }));
        assert!(!pong.holds(Message {
            text: Some("pong "),
            doc: None
        }));
        assert!(
            !Match::default().holds(Message::default()),
            "nothing is no match"
        );
    }
}
