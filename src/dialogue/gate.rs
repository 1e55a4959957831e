//! The opening dialogue of a connection (`on_connect` steps): frames are sent in order, and a
//! step with `expect` holds the next frame, the outbox and `connected` until a message matches
//! (or `refuse` matches, or its timeout passes: the attempt failed).

use std::time::Instant;

use super::matching::{Match, Message};
use crate::config::{CloseAction, StepConfig, StepWhen};

/// One compiled step.
#[derive(Debug, Clone)]
struct Step {
    send: Option<String>,
    expect: Match,
    refuse: Match,
    cfg: StepConfig,
}

/// The endpoint's steps, compiled once per endpoint run.
#[derive(Debug, Clone, Default)]
pub struct Steps(Vec<Step>);

impl Steps {
    /// Compiles the endpoint's `on_connect`.
    pub fn new(cfg: &[StepConfig]) -> Self {
        Steps(
            cfg.iter()
                .map(|s| Step {
                    send: s.send.clone(),
                    expect: Match::new(&s.expect),
                    refuse: Match::new(&s.refuse),
                    cfg: s.clone(),
                })
                .collect(),
        )
    }
}

/// Where a connection is in its opening dialogue.
#[derive(Debug)]
pub struct Gate<'s> {
    steps: &'s Steps,
    /// The next step to start.
    next: usize,
    /// The step waiting for its answer, and until when.
    waiting: Option<(usize, Instant)>,
    /// Whether this connection offers a resume position (which `when` steps are taken).
    resuming: bool,
}

/// What a message did to the gate.
#[derive(Debug, PartialEq)]
pub enum Passage<'s> {
    /// Nothing changed.
    Held,
    /// The awaited answer came: send these templates; `open` when no step waits any more.
    Passed { send: Vec<&'s str>, open: bool },
    /// The upstream refused: end the attempt with this class.
    Refused(String, CloseAction),
}

impl<'s> Gate<'s> {
    /// A connection's gate, before its first step; `resuming` when it offers a position.
    pub fn new(steps: &'s Steps, resuming: bool) -> Self {
        Gate {
            steps,
            next: 0,
            waiting: None,
            resuming,
        }
    }

    /// A gate whose steps are all done.
    pub fn done(steps: &'s Steps) -> Self {
        Gate {
            steps,
            next: steps.0.len(),
            waiting: None,
            resuming: false,
        }
    }

    /// Starts steps up to (and including) the first that waits; returns the templates to send.
    pub fn advance(&mut self, now: Instant) -> Vec<&'s str> {
        let mut send = Vec::new();
        while self.waiting.is_none() {
            let Some(step) = self.steps.0.get(self.next) else {
                break;
            };
            let taken = match step.cfg.when {
                None => true,
                Some(StepWhen::Resuming) => self.resuming,
                Some(StepWhen::NewSession) => !self.resuming,
            };
            if !taken {
                self.next += 1;
                continue;
            }
            send.extend(step.send.as_deref());
            if !step.expect.is_empty() {
                self.waiting = Some((self.next, now + step.cfg.timeout));
            }
            self.next += 1;
        }
        send
    }

    /// True when every step is done: the outbox may flow and the connection is `connected`.
    pub fn is_open(&self) -> bool {
        self.waiting.is_none() && self.next >= self.steps.0.len()
    }

    /// Whether a message arriving now goes to apps: always once open, before that as the
    /// waiting step says.
    pub fn delivers(&self) -> bool {
        match self.waiting {
            Some((i, _)) => self.steps.0[i].cfg.deliver,
            None => true,
        }
    }

    /// When the waiting step gives up.
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting.map(|(_, at)| at)
    }

    /// The failure of a step whose deadline passed, if one did by `now`.
    pub fn expired(&self, now: Instant) -> Option<(String, CloseAction)> {
        let (i, at) = self.waiting?;
        (now >= at).then(|| {
            let step = &self.steps.0[i].cfg;
            (
                format!(
                    "on_connect[{i}]: no expected answer within {}",
                    crate::fmt::duration(step.timeout)
                ),
                step.failure,
            )
        })
    }

    /// Checks `m` against the waiting step.
    pub fn on_message(&mut self, m: Message<'_>, now: Instant) -> Passage<'s> {
        let Some((i, _)) = self.waiting else {
            return Passage::Held;
        };
        let step = &self.steps.0[i];
        if step.refuse.holds(m) {
            return Passage::Refused(
                format!("on_connect[{i}]: the upstream refused (a message matched refuse)"),
                step.cfg.failure,
            );
        }
        if !step.expect.holds(m) {
            return Passage::Held;
        }
        self.waiting = None;
        let send = self.advance(now);
        Passage::Passed {
            send,
            open: self.is_open(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Condition;
    use serde_json::json;
    use std::time::Duration;

    fn wait_for(kind: &str) -> StepConfig {
        StepConfig {
            expect: vec![Condition::Equals {
                pointer: "/type".into(),
                value: json!(kind),
            }],
            refuse: vec![Condition::Equals {
                pointer: "/type".into(),
                value: json!("auth_invalid"),
            }],
            send: None,
            ..StepConfig::frame("")
        }
    }

    fn leak(v: serde_json::Value) -> &'static serde_json::Value {
        Box::leak(Box::new(v))
    }

    #[test]
    fn steps_wait_for_their_answer_in_order() {
        let steps = Steps::new(&[
            wait_for("auth_required"),
            StepConfig {
                send: Some("auth".into()),
                ..wait_for("auth_ok")
            },
            StepConfig::frame("subscribe"),
        ]);
        let t0 = Instant::now();
        let mut g = Gate::new(&steps, false);
        assert!(g.advance(t0).is_empty());
        assert!(!g.is_open());
        assert!(!g.delivers());
        assert_eq!(g.deadline(), Some(t0 + Duration::from_secs(10)));
        let (required, ok, invalid) = (
            json!({"type": "auth_required"}),
            json!({"type": "auth_ok"}),
            json!({"type": "auth_invalid"}),
        );
        let m = |d: &'static serde_json::Value| Message {
            text: None,
            doc: Some(d),
        };
        let (required, ok, invalid) = (leak(required), leak(ok), leak(invalid));
        assert_eq!(g.on_message(m(ok), t0), Passage::Held, "not yet");
        assert_eq!(
            g.on_message(m(required), t0),
            Passage::Passed {
                send: vec!["auth"],
                open: false
            }
        );
        assert!(g.expired(t0 + Duration::from_secs(11)).is_some());
        assert_eq!(
            g.on_message(m(ok), t0),
            Passage::Passed {
                send: vec!["subscribe"],
                open: true
            }
        );
        assert!(g.is_open() && g.delivers() && g.deadline().is_none());

        let mut g = Gate::new(&steps, false);
        g.advance(t0);
        g.on_message(m(required), t0);
        assert!(matches!(
            g.on_message(m(invalid), t0),
            Passage::Refused(_, CloseAction::Retry)
        ));
    }

    #[test]
    fn when_steps_follow_whether_the_connection_resumes() {
        let step = |send: &str, when| StepConfig {
            when: Some(when),
            ..StepConfig::frame(send)
        };
        let steps = Steps::new(&[
            StepConfig::frame("hello"),
            step("resume", StepWhen::Resuming),
            step("identify", StepWhen::NewSession),
        ]);
        let t0 = Instant::now();
        assert_eq!(Gate::new(&steps, true).advance(t0), vec!["hello", "resume"]);
        assert_eq!(
            Gate::new(&steps, false).advance(t0),
            vec!["hello", "identify"]
        );
    }

    #[test]
    fn without_waiting_steps_the_gate_is_open_at_once() {
        let steps = Steps::new(&[StepConfig::frame("a"), StepConfig::frame("b")]);
        let mut g = Gate::new(&steps, false);
        assert_eq!(g.advance(Instant::now()), vec!["a", "b"]);
        assert!(g.is_open());
    }
}
