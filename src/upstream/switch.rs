//! When and why a live connection is replaced (make-before-break), and what follows: the
//! credential renewal timer, `max_lifetime`, the upstream's `reconnect`/`reconnect_to`, and the
//! replacement's outcome. Opening the replacement itself is `replace.rs`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::auth::Auth;
use super::failure::Failure;
use super::replace::{self, Outcome, Plan, Ready, Refused, Replacing, Why};
use super::resume::Resume;
use super::session::{Conn, End, Flow, Session};
use crate::config::UrlSource;
use crate::dialogue::{Act, Dialogue, Script};
use crate::endpoint::Endpoint;
use crate::log::Kind;
use crate::ratelimit::Class;
use crate::secret::SecretString;
use crate::share::link::Link;

/// First and longest wait between failed renewals (or rotations) while the old connection
/// stays in use.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long the old connection is given to catch up with an open replacement that receives
/// data.
const CATCH_UP: Duration = Duration::from_secs(2);

/// How long an open replacement that receives no data is waited on: its feed has not started,
/// so nothing can fall between the two connections, and its own timers (the upstream's
/// heartbeat deadline) are running.
const QUIET: Duration = Duration::from_millis(250);

/// Most messages a replacement holds while the old connection catches up.
const MAX_HELD: usize = 4096;

/// What the switching timers and the replacement under way bring.
pub(super) enum Event {
    /// A renewal or rotation is due.
    Due(Why),
    /// The replacement under way finished.
    Done(Why, Box<Outcome>),
    /// The open replacement received a message: it takes part in the conversation at once
    /// (see [`Session::converse_held`]).
    Held(Kind, Bytes),
    /// The old connection did not catch up in time, or the replacement holds all it may:
    /// switch now.
    Now,
    /// The open replacement closed or failed while the old connection caught up: the old one
    /// stays, and the replacement is tried again later.
    Lost(Why),
    /// A held key was subscribed on the open replacement; `true` when it was the last.
    Subscribed(bool),
}

/// An open replacement, waiting for the old connection to catch up.
struct Catching<'a> {
    ready: Box<Ready>,
    /// Its side of the conversation, which goes on while it waits (Slack's acknowledgements
    /// are due within 3 s).
    dialogue: Dialogue<'a>,
    why: Why,
    /// [`QUIET`] after it opened until data comes, then [`CATCH_UP`] after it opened.
    until: Instant,
    opened: Instant,
    /// The replacement could not be written to: it is given up at the next event.
    ended: bool,
    /// Held keys still to subscribe on it (`crate::share`), one per turn of the rate limit;
    /// it does not take over before they are, unless it holds all it may.
    subscribing: VecDeque<Arc<str>>,
    /// Every subscription made on it has its answer: its feed is complete from then on, and
    /// only what it holds from then shows the old connection caught up.
    settled: bool,
}

/// What a finished replacement means.
pub(super) enum Replaced {
    /// Open: wait for the old connection to catch up, then switch.
    Open(Box<Ready>),
    /// Nothing to switch to: the old connection stays.
    Stay,
    /// The upstream refused to resume on the new connection: forget the position.
    Reset,
}

/// The connection's replacement timers and the replacement under way, if any.
pub(super) struct Switching<'a> {
    renew: std::pin::Pin<Box<Sleep>>,
    rotate: std::pin::Pin<Box<Sleep>>,
    /// Another try at a reconnect the upstream asked for, whose new connection failed.
    upstream: std::pin::Pin<Box<Sleep>>,
    retry: Duration,
    under_way: Option<(Why, Replacing<'a>)>,
    catching: Option<Catching<'a>>,
}

impl<'a> Switching<'a> {
    /// Timers for a connection opened now: renewal when `auth` says, rotation after
    /// `max_lifetime` less up to a tenth at random (so connections opened together are not
    /// all replaced together).
    pub(super) fn new(auth: Option<&Auth>, max_lifetime: Option<Duration>) -> Self {
        let rotate = match max_lifetime {
            Some(max) => Instant::now() + max.mul_f64(1.0 - fastrand::f64() / 10.0),
            None => far_future(),
        };
        Switching {
            renew: Box::pin(tokio::time::sleep_until(renew_deadline(auth))),
            rotate: Box::pin(tokio::time::sleep_until(rotate)),
            upstream: Box::pin(tokio::time::sleep_until(far_future())),
            retry: RETRY_MIN,
            under_way: None,
            catching: None,
        }
    }

    /// Waits for the old connection to catch up with `ready` before switching to it, after
    /// subscribing `keys` on it.
    pub(super) fn catch_up(
        &mut self,
        ready: Box<Ready>,
        why: Why,
        script: &'a Script,
        keys: VecDeque<Arc<str>>,
    ) {
        let now = Instant::now();
        self.catching = Some(Catching {
            dialogue: Dialogue::opened(script, ready.counter),
            ready,
            why,
            until: now + QUIET,
            opened: now,
            ended: false,
            settled: keys.is_empty(),
            subscribing: keys,
        });
    }

    /// Whether keys are still being subscribed on the open replacement (it must not take over
    /// on catching up before they are).
    pub(super) fn subscribing(&self) -> bool {
        self.catching
            .as_ref()
            .is_some_and(|c| !c.settled && !c.ended)
    }

    /// The open replacement's subscriptions all have their answers.
    pub(super) fn settle(&mut self) {
        if let Some(c) = self.catching.as_mut() {
            c.settled = true;
        }
    }

    /// The replacement to switch to now.
    pub(super) fn take_ready(&mut self) -> Option<(Box<Ready>, Why)> {
        self.catching.take().map(|mut c| {
            c.ready.counter = c.dialogue.counter();
            (c.ready, c.why)
        })
    }

    /// The next event; renewals only while the connection holds a credential (a replacement
    /// under way holds it meanwhile).
    pub(super) async fn next(
        &mut self,
        has_auth: bool,
        ep: &Endpoint,
        link: Option<&Link<'_>>,
        token: Option<&SecretString>,
    ) -> Event {
        let idle = self.under_way.is_none() && self.catching.is_none();
        if self.catching.as_ref().is_some_and(|c| c.ended) {
            let why = self.catching.take().map_or(Why::Upstream, |c| c.why);
            return Event::Lost(why);
        }
        let subscribing = link.is_some()
            && self
                .catching
                .as_ref()
                .is_some_and(|c| !c.subscribing.is_empty());
        // No switch while keys are still being subscribed on the replacement.
        let until = self
            .catching
            .as_ref()
            .filter(|_| !subscribing)
            .map(|c| c.until);
        tokio::select! {
            permit = ep.rate.acquire(Class::Data), if subscribing => {
                let (Some(c), Some(link)) = (self.catching.as_mut(), link) else {
                    return Event::Subscribed(false);
                };
                if let Some(key) = c.subscribing.pop_front() {
                    let values = c.dialogue.values(token, &c.ready.captures);
                    if let Some(text) = link.subscribe_next(&ep.share, &key, values) {
                        let sent = tokio::time::timeout(CATCH_UP, c.ready.ws.send(Message::text(text))).await;
                        c.ended |= !matches!(sent, Ok(Ok(())));
                    }
                }
                drop(permit);
                let last = c.subscribing.is_empty();
                if last {
                    // The answers come within the catch-up bound, or it switches anyway.
                    let now = Instant::now();
                    c.opened = now;
                    c.until = now + CATCH_UP;
                    if link.next_complete(&ep.share) {
                        c.settled = true;
                    }
                }
                Event::Subscribed(last && c.settled)
            }
            _ = tokio::time::sleep_until(until.unwrap_or_else(far_future)), if until.is_some() => Event::Now,
            r = async { match self.catching.as_mut() {
                Some(c) => super::replace::read(&mut c.ready.ws, &mut c.ready.decoder, ep).await,
                None => std::future::pending().await,
            } } => {
                let Some(c) = self.catching.as_mut() else { return Event::Now };
                match r {
                    Ok(Some((kind, data))) => {
                        if c.ready.held.len() >= MAX_HELD {
                            return Event::Now;
                        }
                        c.until = c.opened + CATCH_UP;
                        Event::Held(kind, data)
                    }
                    Ok(None) | Err(_) => {
                        let why = c.why;
                        self.catching = None;
                        Event::Lost(why)
                    }
                }
            }
            _ = &mut self.renew, if idle && has_auth => {
                self.renew.as_mut().reset(far_future());
                Event::Due(Why::Renewal)
            }
            _ = &mut self.rotate, if idle => {
                self.rotate.as_mut().reset(far_future());
                Event::Due(Why::Lifetime)
            }
            _ = &mut self.upstream, if idle => {
                self.upstream.as_mut().reset(far_future());
                Event::Due(Why::Upstream)
            }
            outcome = async { match self.under_way.as_mut() {
                Some((_, r)) => r.await,
                None => std::future::pending().await,
            } } => {
                let why = self.under_way.take().map_or(Why::Renewal, |(w, _)| w);
                Event::Done(why, Box::new(outcome))
            }
        }
    }

    /// A replacement lost before the switch: try again after the retry delay.
    pub(super) fn lost(&mut self, why: Why) -> Duration {
        self.again(why)
    }

    /// Whether a replacement is under way.
    fn busy(&self) -> bool {
        self.under_way.is_some() || self.catching.is_some()
    }

    /// A failed replacement: try again after the current retry delay, doubling it.
    fn again(&mut self, why: Why) -> Duration {
        let wait = self.retry;
        let at = Instant::now() + wait;
        match why {
            Why::Renewal => self.renew.as_mut().reset(at),
            Why::Lifetime => self.rotate.as_mut().reset(at),
            Why::Upstream => self.upstream.as_mut().reset(at),
        }
        self.retry = (self.retry * 2).min(RETRY_MAX);
        wait
    }
}

/// When the credential's renewal is due, as a timer deadline.
fn renew_deadline(auth: Option<&Auth>) -> Instant {
    match auth.and_then(Auth::renew_at) {
        Some(at) => {
            let wait = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Instant::now() + wait
        }
        None => far_future(),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

impl<'a> Session<'a> {
    /// A message the open replacement received while the old connection catches up: its
    /// dialogue answers at once on the new connection; what it lets through is held for the new
    /// connection to deliver. A refusal abandons the replacement (this connection stays).
    pub(super) async fn converse_held(
        &mut self,
        switching: &mut Switching<'a>,
        kind: Kind,
        data: Bytes,
    ) {
        let ep = self.ep;
        let token = self.auth.as_ref().and_then(Auth::token);
        let Some(c) = switching.catching.as_mut() else {
            return;
        };
        let (ws, captures) = (&mut c.ready.ws, &mut c.ready.captures);
        let reaction =
            match replace::converse(ws, &mut c.dialogue, captures, token, &data, (self.cfg, ep))
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    c.ended = true;
                    return;
                }
            };
        if let Some(Act::End(..) | Act::ResetResume) = reaction.act {
            tracing::warn!(
                "the new connection was refused while this one caught up; this one stays"
            );
            switching.catching = None;
            self.overlap.clear();
            if let Some(link) = Link::new(self.cfg) {
                link.abandon_next(&ep.share);
            }
            return;
        }
        if !c.settled {
            let link = Link::new(self.cfg);
            let doc = serde_json::from_slice::<serde_json::Value>(&data).ok();
            if link.is_some_and(|l| l.next_answered(&ep.share, doc.as_ref())) {
                // Its feed is complete from the message after this one.
                switching.settle();
                self.overlap.restart_catch_up();
            }
        }
        let Some(c) = switching.catching.as_mut() else {
            return;
        };
        if reaction.deliver {
            self.overlap.held(super::resume::payload_hash(&data));
            c.ready.held.push(super::replace::Held {
                kind,
                data,
                seen: true,
            });
        }
    }

    /// Starts a make-before-break replacement on `target`.
    pub(super) fn replace(&mut self, switching: &mut Switching<'a>, target: UrlSource, why: Why) {
        // Remembered whatever the ids: the switch waits for the old connection to deliver what
        // the new one holds, and without ids the duplicates are found by payload.
        self.overlap.remember_from_now();
        // The resume frame for the new connection is built from the last id at this moment;
        // what the old connection delivers meanwhile is sorted out by the resume ids.
        let offered = self.offered();
        let dialogue = Dialogue::new(self.script, offered.clone());
        let resume_frame = self.resume_frame(&dialogue).and_then(Result::ok);
        // A URL the upstream named (`reconnect_to`) is used as given.
        let offer = match target == *self.base || target == self.target() {
            true => self.resume.as_ref().and_then(Resume::query_offer),
            false => None,
        };
        let r = replace::start(Plan {
            ep: self.ep,
            cfg: self.cfg,
            script: self.script,
            target,
            offer,
            why,
            auth: self.auth.take(),
            captures: self.captures.clone(),
            resume_frame,
            offered,
        });
        switching.under_way = Some((why, r));
    }

    /// Where a replacement connects: where a reconnect would now (`resume.url` when a
    /// position is offered, else the connection's own URL).
    pub(super) fn target(&self) -> UrlSource {
        self.resume
            .as_ref()
            .filter(|r| r.is_resuming(self.captures))
            .and_then(|r| r.url(self.captures))
            .map_or_else(|| self.base.clone(), UrlSource::Fixed)
    }

    /// Carries out what the dialogue asks.
    pub(super) fn act(&mut self, act: Act, switching: &mut Switching<'a>) -> Flow {
        match act {
            Act::Reconnect | Act::ReconnectTo(_) if switching.busy() => Flow::Continue,
            Act::Reconnect => {
                tracing::info!("the upstream asked to reconnect: opening the next connection");
                self.replace(switching, self.target(), Why::Upstream);
                Flow::Continue
            }
            Act::ReconnectTo(url) => {
                tracing::info!(url = %crate::redact::redact_url(&url), "the upstream asked to reconnect elsewhere: opening that connection");
                self.replace(switching, UrlSource::Fixed(url), Why::Upstream);
                Flow::Continue
            }
            Act::ResetResume => {
                Flow::Close(CloseCode::Normal, "resume position reset", End::ResetResume)
            }
            Act::End(why, class) => Flow::Close(
                CloseCode::Normal,
                "closing",
                End::Lost(Failure::of(class, why)),
            ),
        }
    }

    /// A replacement finished: the endpoint's credential is back; returns the new connection
    /// to switch to, if there is one.
    pub(super) fn replaced(
        &mut self,
        why: Why,
        outcome: Box<Outcome>,
        conn: &mut Conn<'_>,
        switching: &mut Switching<'a>,
    ) -> Replaced {
        let ep = self.ep;
        let (auth, result) = *outcome;
        if why == Why::Renewal {
            if let Some(a) = auth.as_ref() {
                super::record_expiry(ep, a);
            }
        }
        *self.auth = auth;
        match result {
            Ok(Some(ready)) => {
                if why == Why::Renewal {
                    Endpoint::count(&ep.stats.auth_renewals_ok, 1);
                }
                tracing::info!(
                    reason = why.close_reason(),
                    "the new connection is open; switching once this one has caught up"
                );
                Replaced::Open(ready)
            }
            Ok(None) => {
                // `renew = "frame"`: the new token goes on this connection.
                self.overlap.clear();
                Endpoint::count(&ep.stats.auth_renewals_ok, 1);
                conn.out.extend(self.renew_frame(&conn.dialogue));
                tracing::info!("credential renewed on the live connection");
                switching.retry = RETRY_MIN;
                let next = renew_deadline(self.auth.as_ref());
                switching.renew.as_mut().reset(next);
                Replaced::Stay
            }
            Err(Refused {
                reset: true,
                reason,
            }) => {
                self.overlap.clear();
                tracing::warn!(%reason, "the upstream refused to resume; forgetting the position");
                Replaced::Reset
            }
            Err(Refused { reason, .. }) => {
                self.overlap.clear();
                let wait = switching.again(why);
                let retry_in = crate::fmt::duration(wait);
                match why {
                    Why::Renewal => {
                        Endpoint::count(&ep.stats.auth_renewals_failed, 1);
                        tracing::warn!(%reason, %retry_in, "credential renewal failed; the current connection stays");
                    }
                    Why::Lifetime => {
                        tracing::warn!(%reason, %retry_in, "cannot open the next connection; the current one stays")
                    }
                    Why::Upstream => {
                        tracing::warn!(%reason, %retry_in, "the upstream asked to reconnect, but the new connection failed; this one stays meanwhile")
                    }
                }
                Replaced::Stay
            }
        }
    }
}
