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
use crate::dialogue::{Act, Dialogue, Script};
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
    /// What it received and the old connection may not have delivered yet, in order (decoded
    /// already): delivered by the new connection first.
    pub held: Vec<Held>,
    /// Its decompression context, which read its opening.
    pub decoder: Decoder,
}

/// A message a replacement received before it took over.
pub struct Held {
    pub kind: Kind,
    pub data: bytes::Bytes,
    /// Its opening's dialogue has seen it (captures, rules) and let it through (a step with
    /// `deliver = true`): it goes straight to the log. Otherwise it arrived after the opening
    /// and goes through the dialogue like any message.
    pub seen: bool,
}

/// Why a replacement did not take over.
#[derive(Debug)]
pub struct Refused {
    pub reason: String,
    /// The upstream said the resume position is gone (a `reset_resume` rule on its opening).
    pub reset: bool,
}

impl From<String> for Refused {
    fn from(reason: String) -> Self {
        Refused {
            reason,
            reset: false,
        }
    }
}

/// What a replacement ends with: the endpoint's credential state back, and the new
/// connection, or `None` for a renewal that needs none (`renew = "frame"`).
pub type Outcome = (Option<Auth>, Result<Option<Box<Ready>>, Refused>);

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
                return (auth, Err(String::from("no credential to renew").into()));
            };
            if let Err(e) = a.renew(cfg).await {
                return (auth, Err(e.into()));
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
            Err(e) => return (auth, Err(e.into())),
        };
        let token = auth.as_ref().and_then(Auth::token).cloned();
        script.seed(&mut captures);
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

/// Sends the new connection's first frames and waits for its `on_connect` answers. What
/// arrives meanwhile feeds the gate, the captures and the rules; what a `deliver = true` step
/// lets through is held for the new connection to deliver once it takes over (the old
/// connection still delivers until then).
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

async fn open(mut ws: Ws, o: Opening<'_>) -> Result<(Ws, u64, Vec<Held>), Refused> {
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
    let mut held = Vec::new();
    while !dialogue.is_open() {
        let deadline = dialogue.deadline().unwrap_or_else(std::time::Instant::now);
        let read = tokio::select! {
            r = read(&mut ws, decoder, ep) => r?,
            _ = tokio::time::sleep_until(deadline.into()) => None,
        };
        let Some((kind, data)) = read else {
            return Err(match dialogue.expired(std::time::Instant::now()) {
                Some(Act::End(why, _)) => format!("replacement connection: {why}"),
                _ => "replacement connection closed while opening".into(),
            }
            .into());
        };
        let reaction = converse(&mut ws, &mut dialogue, captures, token, &data, (cfg, ep)).await?;
        match reaction.act {
            Some(Act::End(why, _)) => return Err(format!("replacement connection: {why}").into()),
            Some(Act::ResetResume) => {
                return Err(Refused {
                    reason: "the upstream refused to resume on the new connection".into(),
                    reset: true,
                })
            }
            // Already replacing.
            Some(Act::Reconnect | Act::ReconnectTo(_)) | None => {}
        }
        if reaction.deliver {
            held.push(Held {
                kind,
                data,
                seen: true,
            });
        }
    }
    Ok((ws, dialogue.counter(), held))
}

/// One message on a replacement connection: its dialogue reacts (captures, rules, the gate)
/// and the replies go out on that connection at once, under the rate limit.
pub(super) async fn converse(
    ws: &mut Ws,
    dialogue: &mut Dialogue<'_>,
    captures: &mut Captures,
    token: Option<&crate::secret::SecretString>,
    data: &[u8],
    (cfg, ep): (&EndpointConfig, &Endpoint),
) -> Result<crate::dialogue::Reaction, String> {
    let doc = serde_json::from_slice::<serde_json::Value>(data).ok();
    let m = matching::Message {
        text: std::str::from_utf8(data).ok(),
        doc: doc.as_ref(),
    };
    let reaction = dialogue.inbound(m, captures, token, std::time::Instant::now());
    let frames = reaction
        .send
        .iter()
        .map(|f| Message::text(f.expose()))
        .collect();
    send(ws, frames, cfg, ep).await?;
    Ok(reaction)
}

/// The next message of a replacement connection, decoded; `None` once it closed.
pub async fn read(
    ws: &mut Ws,
    decoder: &mut Decoder,
    ep: &Endpoint,
) -> Result<Option<(Kind, bytes::Bytes)>, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(Some((Kind::Text, bytes::Bytes::from(t)))),
            Some(Ok(Message::Binary(b))) => match decoder.binary(b, ep) {
                Decoded::Message(kind, data) => return Ok(Some((kind, data))),
                Decoded::Nothing => {}
                Decoded::Close(_, _, f) => {
                    return Err(format!("replacement connection: {}", f.reason))
                }
            },
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("replacement connection: {e}")),
        }
    }
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
