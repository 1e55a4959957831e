//! Upstream resume (SPEC §9): reads the upstream's own id from each message, drops what was
//! already delivered, detects jumps, and offers the last id on reconnect (query and/or frame).

use std::collections::{HashSet, VecDeque};

use crate::config::{IdKind, ResumeConfig};

/// The upstream's id of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamId {
    Int(u64),
    Str(String),
}

impl UpstreamId {
    /// The form kept in the store: `i:<n>` or `s:<text>`.
    pub fn encode(&self) -> String {
        match self {
            UpstreamId::Int(n) => format!("i:{n}"),
            UpstreamId::Str(s) => format!("s:{s}"),
        }
    }

    /// Reads [`encode`](Self::encode)'s form back; `None` for anything else.
    pub fn decode(s: &str) -> Option<UpstreamId> {
        if let Some(n) = s.strip_prefix("i:") {
            return n.parse().ok().map(UpstreamId::Int);
        }
        s.strip_prefix("s:").map(|t| UpstreamId::Str(t.to_owned()))
    }
}

impl std::fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamId::Int(n) => write!(f, "{n}"),
            UpstreamId::Str(s) => f.write_str(s),
        }
    }
}

/// What to do with an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fan it out; `gap` names upstream ids that were skipped before it.
    Deliver { gap: Option<(u64, u64)> },
    /// Already delivered: drop it.
    Duplicate,
}

/// Resume state of one endpoint; outlives connections.
#[derive(Debug)]
pub struct Resume {
    cfg: ResumeConfig,
    last: Option<UpstreamId>,
    /// String ids seen recently, oldest first, bounded by `dedup_window`.
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
}

impl Resume {
    /// Starts with `last` as the last delivered id (from the store after a restart).
    pub fn new(cfg: ResumeConfig, last: Option<UpstreamId>) -> Self {
        // Only the last string id is stored, so after a restart the window restarts with it.
        let (recent, recent_set) = match &last {
            Some(UpstreamId::Str(s)) => (VecDeque::from([s.clone()]), HashSet::from([s.clone()])),
            _ => (VecDeque::new(), HashSet::new()),
        };
        // An id of the other kind (the config changed) is no position at all.
        let last = last.filter(|l| {
            matches!(
                (l, cfg.id_kind),
                (UpstreamId::Int(_), IdKind::Integer) | (UpstreamId::Str(_), IdKind::String)
            )
        });
        Resume {
            cfg,
            last,
            recent,
            recent_set,
        }
    }

    /// The last delivered id.
    pub fn last_id(&self) -> Option<&UpstreamId> {
        self.last.as_ref()
    }

    /// Extracts the id from a parsed message; `None` for messages without one (those are never
    /// deduplicated).
    pub fn extract(&self, doc: &serde_json::Value) -> Option<UpstreamId> {
        let v = doc.pointer(&self.cfg.id_pointer)?;
        match self.cfg.id_kind {
            IdKind::Integer => match v {
                serde_json::Value::Number(n) => n.as_u64().map(UpstreamId::Int),
                serde_json::Value::String(s) => s.parse().ok().map(UpstreamId::Int),
                _ => None,
            },
            IdKind::String => match v {
                serde_json::Value::String(s) => Some(UpstreamId::Str(s.clone())),
                serde_json::Value::Number(n) => Some(UpstreamId::Str(n.to_string())),
                _ => None,
            },
        }
    }

    /// Decides on a message with id `id` and records it when delivered.
    pub fn accept(&mut self, id: UpstreamId) -> Verdict {
        match id {
            UpstreamId::Int(n) => {
                let last = match self.last {
                    Some(UpstreamId::Int(l)) => Some(l),
                    _ => None,
                };
                if last.is_some_and(|l| n <= l) {
                    return Verdict::Duplicate;
                }
                let gap = match last {
                    Some(l) if self.cfg.contiguous && n > l + 1 => Some((l + 1, n - 1)),
                    _ => None,
                };
                self.last = Some(UpstreamId::Int(n));
                Verdict::Deliver { gap }
            }
            UpstreamId::Str(s) => {
                if self.recent_set.contains(&s) {
                    return Verdict::Duplicate;
                }
                self.recent.push_back(s.clone());
                self.recent_set.insert(s.clone());
                while self.recent.len() > self.cfg.dedup_window.max(1) {
                    if let Some(old) = self.recent.pop_front() {
                        self.recent_set.remove(&old);
                    }
                }
                self.last = Some(UpstreamId::Str(s));
                Verdict::Deliver { gap: None }
            }
        }
    }

    /// The connection URL with the resume query parameter set, when configured and known.
    pub fn apply_query(&self, url: &mut url::Url) {
        let (Some(name), Some(last)) = (&self.cfg.query, &self.last) else {
            return;
        };
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != name.as_str())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut q = url.query_pairs_mut();
        q.clear();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        q.append_pair(name, &last.to_string());
    }

    /// The resume frame to send right after connect, when configured and an id is known.
    pub fn frame(&self) -> Option<String> {
        let template = self.cfg.frame.as_ref()?;
        let last = self.last.as_ref()?;
        let value = match last {
            UpstreamId::Int(n) => n.to_string(),
            // A string id is substituted as a JSON string body, quotes escaped, so a template like
            // `{"from":"{{last_id}}"}` stays valid JSON whatever the id holds.
            UpstreamId::Str(s) => {
                let quoted = serde_json::Value::String(s.clone()).to_string();
                quoted[1..quoted.len() - 1].to_owned()
            }
        };
        Some(template.replace("{{last_id}}", &value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: IdKind, contiguous: bool) -> ResumeConfig {
        ResumeConfig {
            id_pointer: "/id".into(),
            id_kind: kind,
            query: Some("since".into()),
            frame: Some(r#"{"op":"resume","from":{{last_id}}}"#.into()),
            dedup_window: 3,
            contiguous,
        }
    }

    #[test]
    fn integer_dedup_and_gap() {
        let mut r = Resume::new(cfg(IdKind::Integer, true), None);
        let id = |s: &str| r_extract(s);
        assert_eq!(r.accept(id(r#"{"id":1}"#)), Verdict::Deliver { gap: None });
        assert_eq!(r.accept(id(r#"{"id":2}"#)), Verdict::Deliver { gap: None });
        assert_eq!(r.accept(id(r#"{"id":2}"#)), Verdict::Duplicate);
        assert_eq!(r.accept(id(r#"{"id":1}"#)), Verdict::Duplicate);
        assert_eq!(
            r.accept(id(r#"{"id":6}"#)),
            Verdict::Deliver { gap: Some((3, 5)) }
        );
        let mut u = url::Url::parse("ws://h/feed?a=1&since=0").expect("url");
        r.apply_query(&mut u);
        assert_eq!(u.as_str(), "ws://h/feed?a=1&since=6");
        assert_eq!(r.frame().as_deref(), Some(r#"{"op":"resume","from":6}"#));
    }

    fn r_extract(s: &str) -> UpstreamId {
        let doc = serde_json::from_str(s).expect("json");
        Resume::new(cfg(IdKind::Integer, true), None)
            .extract(&doc)
            .expect("has id")
    }

    #[test]
    fn string_window() {
        let mut r = Resume::new(cfg(IdKind::String, false), None);
        let s = |v: &str| UpstreamId::Str(v.into());
        for v in ["a", "b", "c"] {
            assert_eq!(r.accept(s(v)), Verdict::Deliver { gap: None });
        }
        assert_eq!(r.accept(s("a")), Verdict::Duplicate);
        assert_eq!(r.accept(s("d")), Verdict::Deliver { gap: None });
        // "a" fell out of the 3-entry window.
        assert_eq!(r.accept(s("a")), Verdict::Deliver { gap: None });
        let doc = serde_json::json!({"id": "x\"y"});
        assert_eq!(r.extract(&doc), Some(UpstreamId::Str("x\"y".into())));
    }

    #[test]
    fn stored_form_round_trips_and_seeds_dedup() {
        for id in [UpstreamId::Int(42), UpstreamId::Str("a:b".into())] {
            assert_eq!(UpstreamId::decode(&id.encode()), Some(id));
        }
        assert_eq!(UpstreamId::decode("x"), None);
        let mut r = Resume::new(
            cfg(IdKind::String, false),
            Some(UpstreamId::Str("z".into())),
        );
        assert_eq!(r.accept(UpstreamId::Str("z".into())), Verdict::Duplicate);
        let r = Resume::new(cfg(IdKind::String, false), Some(UpstreamId::Int(3)));
        assert_eq!(r.last_id(), None, "an id of the wrong kind is dropped");
    }

    #[test]
    fn nothing_offered_before_first_id() {
        let r = Resume::new(cfg(IdKind::Integer, false), None);
        let mut u = url::Url::parse("ws://h/feed").expect("url");
        r.apply_query(&mut u);
        assert_eq!(u.as_str(), "ws://h/feed");
        assert_eq!(r.frame(), None);
        assert_eq!(r.extract(&serde_json::json!({"other": 1})), None);
    }
}
