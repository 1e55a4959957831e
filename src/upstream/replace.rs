//! Make-before-break: a new connection is opened — and its opening dialogue run — while the
//! old one keeps delivering, then the old one is closed. For a credential renewal
//! (`renew = "reconnect"`), `max_lifetime`, and an upstream's "reconnect" message.

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::auth::Auth;
use super::connect::Ws;
use crate::config::{EndpointConfig, RenewMode};
use crate::dialogue::capture::Captures;
use crate::dialogue::decode::{Decoded, Decoder};
use crate::dialogue::matching;
use crate::dialogue::{Dialogue, Script};
use crate::endpoint::Endpoint;
use crate::log::Kind;

/// Why a connection is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A credential renewal: the new token is in use from the new connection on.
    Renewal,
    /// `max_lifetime` is reached.
    Lifetime,
    /// The upstream asked (a rule with `action = "reconnect"` or `"reconnect_to"`).
    Upstream,
}

impl Why {
    /// The close reason the old connection gets.
    pub fn close_reason(self) -> &'static str {
        match self {
            Why::Renewal => "credential renewed",
            Why::Lifetime => "connection rotated",
            Why::Upstream => "reconnecting as asked",
        }
    }
}

/// A replacement connection, open and through its opening dialogue.
pub struct Ready {
    pub ws: Ws,
    /// Its URL as it may be shown.
    pub shown: String,
    /// Its `{{counter}}`, which the connection carries on.
    pub counter: u64,
    /// What its opening captured (the newest values).
    pub captures: Captures,
    /// Its first message after the opening, read to know it is live, not delivered yet
    /// (decoded already).
    pub held: Option<(Kind, bytes::Bytes)>,
    /// Its decompression context, which read its opening.
    pub decoder: Decoder,
}

/// What a replacement ends with: the endpoint's credential state back, and the new
/// connection, or `None` for a renewal that needs none (`renew = "frame"`).
pub type Outcome = (Option<Auth>, Result<Option<Box<Ready>>, String>);

/// A replacement under way; it owns the endpoint's `Auth` until it finishes.
pub type Replacing<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What a replacement needs from the connection it replaces.
pub struct Plan<'a> {
    pub ep: &'a Endpoint,
    pub cfg: &'a EndpointConfig,
    pub script: &'a Script,
    /// Where the new connection goes: the endpoint's URL (discovered again if it is
    /// discovered) or one the upstream named.
    pub target: crate::config::UrlSource,
    /// The resume query to offer on it (only on the endpoint's own URL).
    pub offer: Option<super::resume::QueryOffer>,
    pub why: Why,
    pub auth: Option<Auth>,
    /// A copy of the captured values to open with.
    pub captures: Captures,
    /// The resume frame for the new connection, if one is due.
    pub resume_frame: Option<Message>,
    /// The position the new connection offers.
    pub offered: Option<super::resume::UpstreamId>,
}

/// Starts replacing the connection: renew the credential first for [`Why::Renewal`], then
/// (unless `renew = "frame"`) connect and run the opening dialogue.
pub fn start(plan: Plan<'_>) -> Replacing<'_> {
    Box::pin(async move {
        let Plan {
            ep,
            cfg,
            script,
            target,
            offer,
            why,
            mut auth,
            mut captures,
            resume_frame,
            offered,
        } = plan;
        if why == Why::Renewal {
            let Some(a) = auth.as_mut() else {
                return (auth, Err("no credential to renew".into()));
            };
            if let Err(e) = a.renew(cfg).await {
                return (auth, Err(e));
            }
            if a.renew_mode() == RenewMode::Frame {
                return (auth, Ok(None));
            }
        }
        let ws = match super::prepare(ep, cfg, &target, offer.as_ref(), auth.as_mut()).await {
            Ok((attempt, shown)) => super::connect::connect(attempt)
                .await
                .map(|ws| (ws, shown))
                .map_err(|f| format!("replacement connection: {}", f.reason)),
            Err(f) => Err(f.reason),
        };
        let (ws, shown) = match ws {
            Ok(ok) => ok,
            Err(e) => return (auth, Err(e)),
        };
        let token = auth.as_ref().and_then(Auth::token).cloned();
        let mut decoder = Decoder::new(cfg.decode, cfg.max_message_size);
        let r = open(
            ws,
            Opening {
                script,
                resume_frame,
                offered,
                token: token.as_ref(),
                captures: &mut captures,
                cfg,
                ep,
                decoder: &mut decoder,
            },
        )
        .await;
        let r = r.map(|(ws, counter, held)| {
            Some(Box::new(Ready {
                ws,
                shown,
                counter,
                captures,
                held,
                decoder,
            }))
        });
        (auth, r)
    })
}

/// How long a replacement whose opening heard nothing is waited on for its first message.
const FIRST_MESSAGE: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends the new connection's first frames and waits for its `on_connect` answers. What
/// arrives meanwhile only feeds the gate and the captures: the old connection still delivers.
///
/// The old connection is closed only once the new one is known to be live: its opening heard
/// from the upstream, or its first message came (held, for the new connection to deliver), or
/// [`FIRST_MESSAGE`] passed (a quiet feed). Closing sooner would lose what the upstream sends
/// between closing the old connection and starting to send on the new one.
/// What opening a replacement needs.
struct Opening<'o> {
    script: &'o Script,
    resume_frame: Option<Message>,
    offered: Option<super::resume::UpstreamId>,
    token: Option<&'o crate::secret::SecretString>,
    captures: &'o mut Captures,
    cfg: &'o EndpointConfig,
    ep: &'o Endpoint,
    decoder: &'o mut Decoder,
}

async fn open(
    mut ws: Ws,
    o: Opening<'_>,
) -> Result<(Ws, u64, Option<(Kind, bytes::Bytes)>), String> {
    let Opening {
        script,
        resume_frame,
        offered,
        token,
        captures,
        cfg,
        ep,
        decoder,
    } = o;
    let mut dialogue = Dialogue::new(script, offered);
    let now = std::time::Instant::now();
    let first = dialogue.start(now, token, captures)?;
    let first: Vec<Message> = resume_frame
        .into_iter()
        .chain(first.iter().map(|f| Message::text(f.expose())))
        .collect();
    send(&mut ws, first, cfg, ep).await?;
    let mut heard = false;
    while !dialogue.is_open() {
        let deadline = dialogue.deadline().unwrap_or_else(std::time::Instant::now);
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = tokio::time::sleep_until(deadline.into()) => None,
        };
        let data = match msg {
            Some(Ok(Message::Text(t))) => bytes::Bytes::from(t),
            Some(Ok(Message::Binary(b))) => match decoder.binary(b, ep) {
                Decoded::Message(_, data) => data,
                Decoded::Nothing => continue,
                Decoded::Close(_, _, f) => {
                    return Err(format!("replacement connection: {}", f.reason))
                }
            },
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("replacement connection: {e}")),
            None => {
                return Err(match dialogue.expired(std::time::Instant::now()) {
                    Some(crate::dialogue::Act::End(why, _)) => {
                        format!("replacement connection: {why}")
                    }
                    _ => "replacement connection closed while opening".into(),
                })
            }
        };
        heard = true;
        let text = std::str::from_utf8(&data).ok();
        let doc = serde_json::from_slice::<serde_json::Value>(&data).ok();
        let m = matching::Message {
            text,
            doc: doc.as_ref(),
        };
        let reaction = dialogue.inbound(m, captures, token, std::time::Instant::now());
        if let Some(crate::dialogue::Act::End(why, _)) = reaction.act {
            return Err(format!("replacement connection: {why}"));
        }
        let frames = reaction
            .send
            .iter()
            .map(|f| Message::text(f.expose()))
            .collect();
        send(&mut ws, frames, cfg, ep).await?;
    }
    let mut held = None;
    if !heard {
        let first = tokio::time::timeout(FIRST_MESSAGE, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Ok(Some((Kind::Text, bytes::Bytes::from(t))))
                    }
                    Some(Ok(Message::Binary(b))) => match decoder.binary(b, ep) {
                        Decoded::Message(kind, data) => return Ok(Some((kind, data))),
                        Decoded::Nothing => {}
                        Decoded::Close(_, _, f) => {
                            return Err(format!("replacement connection: {}", f.reason))
                        }
                    },
                    Some(Ok(Message::Close(_))) | None => {
                        return Err("replacement connection closed while opening".to_string())
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("replacement connection: {e}")),
                }
            }
        })
        .await;
        held = first.unwrap_or(Ok(None))?;
    }
    Ok((ws, dialogue.counter(), held))
}

/// Writes `frames`, each when its turn comes under the rate limit, within the pong timeout.
async fn send(
    ws: &mut Ws,
    frames: Vec<Message>,
    cfg: &EndpointConfig,
    ep: &Endpoint,
) -> Result<(), String> {
    for f in frames {
        super::writer::send_one(
            ws,
            ep,
            f,
            cfg.heartbeat.pong_timeout,
            "the replacement's opening frames",
        )
        .await
        .map_err(|f| format!("replacement connection: {}", f.reason))?;
    }
    Ok(())
}
