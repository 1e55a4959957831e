//! What the daemon says on a connection, rendered from the config's templates with the
//! connection's values: the resume frame and the `on_connect` frames, the application ping and
//! the renewal frame.

use std::time::Instant;

use tokio_tungstenite::tungstenite::Message;

use super::auth::Auth;
use super::session::Session;
use crate::dialogue::{template, Dialogue};

impl Session<'_> {
    /// The resume frame and the `on_connect` frames up to the first step that waits, rendered
    /// for this connection.
    pub(super) fn first_frames(&self, dialogue: &mut Dialogue<'_>) -> Result<Vec<Message>, String> {
        let token = self.auth.as_ref().and_then(Auth::token);
        let mut first = Vec::new();
        if let Some(frame) = self.resume_frame(dialogue) {
            first.push(frame?);
        }
        let steps = dialogue.start(Instant::now(), token, self.captures)?;
        first.extend(steps.iter().map(|f| Message::text(f.expose())));
        Ok(first)
    }

    /// The position this connection offers, if any.
    pub(super) fn offered(&self) -> Option<super::resume::UpstreamId> {
        let r = self.resume.as_ref()?;
        r.is_resuming(self.captures)
            .then(|| r.last_id().cloned())
            .flatten()
    }

    /// The resume frame, when configured and a position is offered.
    pub(super) fn resume_frame(&self, dialogue: &Dialogue<'_>) -> Option<Result<Message, String>> {
        let token = self.auth.as_ref().and_then(Auth::token);
        let resume = self.resume.as_ref()?;
        if !resume.is_resuming(self.captures) {
            return None;
        }
        let frame = resume.frame(dialogue.values(token, self.captures))?;
        Some(
            frame
                .map(|f| Message::text(f.expose()))
                .map_err(|e| format!("resume.frame: {e}")),
        )
    }

    /// The application ping, rendered now.
    pub(super) fn app_ping(&self, dialogue: &Dialogue<'_>) -> Option<Message> {
        let t = self.cfg.heartbeat.app_ping.as_ref()?;
        let token = self.auth.as_ref().and_then(Auth::token);
        match template::frame(t, dialogue.values(token, self.captures)) {
            Ok(f) => Some(Message::text(f.expose())),
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat.app_ping cannot be built yet; not sent");
                None
            }
        }
    }

    /// The renewal frame (`renew = "frame"`) with the new token.
    pub(super) fn renew_frame(&self, dialogue: &Dialogue<'_>) -> Option<Message> {
        let auth = self.auth.as_ref()?;
        let t = auth.renew_frame()?;
        match template::frame(t, dialogue.values(auth.token(), self.captures)) {
            Ok(f) => Some(Message::text(f.expose())),
            Err(e) => {
                tracing::warn!(error = %e, "auth.renew_frame cannot be built; not sent");
                None
            }
        }
    }
}
