//! The dialogue layer, between the connection and the log: the daemon's own part in the
//! upstream's protocol. For each inbound message, in this order: it is decoded ([`decode`]:
//! gzip, zlib, zstd), so everything after sees the payload apps get; values are captured
//! ([`capture`]), so a reply can use what the message carries; rules answer it, keep it from
//! apps or act on the connection ([`rules`]); and while the connection is opening, the
//! `on_connect` steps wait for their answers ([`gate`]). Frames are built from
//! [`template`]s.
//!
//! The connection loop only asks a [`Dialogue`] what to send and whether to deliver: nothing
//! protocol-specific lives there.

pub mod capture;
pub mod decode;
pub mod gate;
pub mod matching;
pub mod rules;
pub mod template;

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use crate::config::{CloseAction, EndpointConfig, RuleAction};
use crate::secret::SecretString;
use crate::upstream::resume::UpstreamId;
use capture::{Captures, Capturing};
use gate::{Gate, Passage, Steps};
use matching::Message;
use rules::Rules;
use template::Values;

/// An endpoint's dialogue settings, compiled once per endpoint run.
#[derive(Debug, Default)]
pub struct Script {
    capturing: Capturing,
    rules: Rules,
    steps: Steps,
}

impl Script {
    /// Compiles `cfg`'s captures, rules and `on_connect` steps.
    pub fn new(cfg: &EndpointConfig) -> Self {
        Script {
            capturing: Capturing::new(&cfg.captures),
            rules: Rules::new(&cfg.rules),
            steps: Steps::new(&cfg.on_connect),
        }
    }

    /// Gives captures without a value their configured default.
    pub fn seed(&self, captures: &mut Captures) {
        self.capturing.seed(captures);
    }

    /// Whether an open connection's messages go through the dialogue (captures or rules).
    pub fn listens(&self) -> bool {
        !self.capturing.is_empty() || !self.rules.is_empty()
    }
}

/// What the connection must do about the dialogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Open a new connection, then close this one.
    Reconnect,
    /// The same, to this URL (given by the upstream, so shown redacted).
    ReconnectTo(url::Url),
    /// Forget the resume position and captured values, then reconnect.
    ResetResume,
    /// End the connection with this reason, as the class says.
    End(String, CloseAction),
}

/// What to do with one inbound message.
#[derive(Default)]
pub struct Reaction {
    /// Frames to send at once, in order.
    pub send: Vec<SecretString>,
    /// Whether apps get the message.
    pub deliver: bool,
    pub act: Option<Act>,
    /// The gate opened with this message: the connection is now `connected`.
    pub opened: bool,
    /// What changed among the captured values.
    pub captured: capture::Changed,
}

/// One connection's part of the dialogue.
pub struct Dialogue<'s> {
    script: &'s Script,
    gate: Gate<'s>,
    /// `{{counter}}`: starts again on every connection.
    counter: AtomicU64,
    /// The resume position this connection offers (`{{last_id}}` in resuming steps).
    offered: Option<UpstreamId>,
}

impl<'s> Dialogue<'s> {
    /// The dialogue of a connection just opened, offering resume position `offered`, if any
    /// (which picks the `when` steps it takes).
    pub fn new(script: &'s Script, offered: Option<UpstreamId>) -> Self {
        Dialogue {
            script,
            gate: Gate::new(&script.steps, offered.is_some()),
            counter: AtomicU64::new(0),
            offered,
        }
    }

    /// The dialogue of a replacement connection that went through its opening already, with
    /// its counter where it left it.
    pub fn opened(script: &'s Script, counter: u64) -> Self {
        Dialogue {
            script,
            gate: Gate::done(&script.steps),
            counter: AtomicU64::new(counter),
            offered: None,
        }
    }

    /// The last `{{counter}}` value used.
    pub fn counter(&self) -> u64 {
        self.counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The values templates on this connection are rendered with.
    pub fn values<'a>(
        &'a self,
        token: Option<&'a SecretString>,
        captures: &'a Captures,
    ) -> Values<'a> {
        Values {
            token,
            last_id: self.offered.as_ref(),
            counter: Some(&self.counter),
            captures: Some(captures),
            share: None,
        }
    }

    /// The frames of the `on_connect` steps up to the first that waits for an answer.
    pub fn start(
        &mut self,
        now: Instant,
        token: Option<&SecretString>,
        captures: &Captures,
    ) -> Result<Vec<SecretString>, String> {
        let first = self.gate.advance(now);
        first
            .into_iter()
            .map(|t| {
                template::frame(t, self.values(token, captures))
                    .map_err(|e| format!("on_connect: {e}"))
            })
            .collect()
    }

    /// True once every `on_connect` step is done.
    pub fn is_open(&self) -> bool {
        self.gate.is_open()
    }

    /// When the step waiting for an answer gives up, if one waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.gate.deadline()
    }

    /// The failure of a waiting step whose time ran out by `now`.
    pub fn expired(&self, now: Instant) -> Option<Act> {
        self.gate
            .expired(now)
            .map(|(why, class)| Act::End(why, class))
    }

    /// Captures, rules and the gate on one inbound message.
    pub fn inbound(
        &mut self,
        m: Message<'_>,
        captures: &mut Captures,
        token: Option<&SecretString>,
        now: Instant,
    ) -> Reaction {
        let captured = self.script.capturing.take(m, captures);
        let verdict = self.script.rules.judge(m);
        let mut r = Reaction {
            deliver: !verdict.drop && self.gate.delivers(),
            captured,
            ..Reaction::default()
        };
        let mut templates = verdict.replies;
        r.act = verdict.action.map(|a| act(a, m));
        match self.gate.on_message(m, now) {
            Passage::Held => {}
            Passage::Passed { send, open } => {
                templates.extend(send);
                r.opened = open;
            }
            // A rule that acts on the refusal (`reset_resume` on Discord's op 9) says more
            // than the step's failure class.
            Passage::Refused(why, class) => {
                r.act.get_or_insert(Act::End(why, class));
            }
        }
        for t in templates {
            match template::frame(t, self.values(token, captures)) {
                Ok(f) => r.send.push(f),
                Err(e) => tracing::warn!(error = %e, "a reply cannot be built yet; not sent"),
            }
        }
        r
    }
}

/// What a rule's action asks of the connection, for message `m`.
fn act(a: &RuleAction, m: Message<'_>) -> Act {
    match a {
        RuleAction::Reconnect => Act::Reconnect,
        RuleAction::ResetResume => Act::ResetResume,
        RuleAction::Fail => Act::End(
            "a rule's action is fail: the upstream sent a message that ends the endpoint".into(),
            CloseAction::Fail,
        ),
        RuleAction::ReconnectTo { url_pointer } => {
            let found = m
                .doc
                .and_then(|d| d.pointer(url_pointer))
                .and_then(serde_json::Value::as_str);
            match found.map(url::Url::parse) {
                Some(Ok(u)) if matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some() => {
                    Act::ReconnectTo(u)
                }
                _ => {
                    tracing::warn!(
                        pointer = %url_pointer,
                        "reconnect_to: no ws:// or wss:// URL at the pointer; reconnecting to the configured URL"
                    );
                    Act::Reconnect
                }
            }
        }
    }
}
