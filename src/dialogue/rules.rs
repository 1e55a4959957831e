//! Inbound rules: what the daemon does itself with a message that matches — answer it
//! (`reply`), keep it from apps (`drop`), or act on the connection (`action`). Every matching
//! rule applies, in order; the first action wins.

use super::matching::{Match, Message};
use crate::config::{RuleAction, RuleConfig};

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    when: Match,
    reply: Option<String>,
    drop: bool,
    action: Option<RuleAction>,
}

/// The endpoint's rules, compiled once per endpoint run.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<Rule>);

/// What the rules say about one message.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict<'r> {
    /// Reply templates to send, in rule order.
    pub replies: Vec<&'r str>,
    pub drop: bool,
    pub action: Option<&'r RuleAction>,
}

impl Rules {
    /// Compiles the endpoint's `rules`.
    pub fn new(cfg: &[RuleConfig]) -> Self {
        Rules(
            cfg.iter()
                .map(|r| Rule {
                    when: Match::new(&r.matches),
                    reply: r.reply.clone(),
                    drop: r.drop,
                    action: r.action.clone(),
                })
                .collect(),
        )
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies every rule that matches `m`.
    pub fn judge(&self, m: Message<'_>) -> Verdict<'_> {
        let mut v = Verdict::default();
        for rule in self.0.iter().filter(|r| r.when.holds(m)) {
            v.replies.extend(rule.reply.as_deref());
            v.drop |= rule.drop;
            if v.action.is_none() {
                v.action = rule.action.as_ref();
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Condition;
    use serde_json::json;

    #[test]
    fn every_matching_rule_applies_and_the_first_action_wins() {
        let rules = Rules::new(&[
            RuleConfig {
                matches: vec![Condition::Present {
                    pointer: "/envelope_id".into(),
                }],
                reply: Some(r#"{"envelope_id":"{{capture.envelope}}"}"#.into()),
                drop: false,
                action: None,
            },
            RuleConfig {
                matches: vec![Condition::Equals {
                    pointer: "/type".into(),
                    value: json!("disconnect"),
                }],
                reply: None,
                drop: true,
                action: Some(RuleAction::Reconnect),
            },
            RuleConfig {
                matches: vec![Condition::Equals {
                    pointer: "/type".into(),
                    value: json!("disconnect"),
                }],
                reply: None,
                drop: false,
                action: Some(RuleAction::Fail),
            },
        ]);
        let doc = json!({"type": "disconnect", "envelope_id": "e1"});
        let v = rules.judge(Message {
            text: None,
            doc: Some(&doc),
        });
        assert_eq!(v.replies.len(), 1);
        assert!(v.drop);
        assert_eq!(v.action, Some(&RuleAction::Reconnect));
        let doc = json!({"type": "events_api"});
        assert_eq!(
            rules.judge(Message {
                text: None,
                doc: Some(&doc)
            }),
            Verdict::default()
        );
    }
}
