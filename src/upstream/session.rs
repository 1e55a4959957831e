//! One live upstream connection: reads frames and hands each message to the dialogue and then
//! the log, keeps the heartbeat, and starts replacements (credential renewal, `max_lifetime`,
//! the upstream's request) until the connection ends. Writing is `writer.rs`, replacing
//! `replace.rs`, the daemon's own part in the conversation `crate::dialogue`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::auth::Auth;
use super::connect::Ws;
use super::failure::Failure;
use super::frame_watch::CloseSlot;
use super::heartbeat::{Action, Heartbeat};
use super::overlap::Overlap;
use super::replace::{self, Plan, Ready, Replacing, Why};
use super::resume::Resume;
use super::writer::{send_one, writer, Ctl, CTL_QUEUE};
use crate::config::EndpointConfig;
use crate::dialogue::capture::Captures;
use crate::dialogue::decode::{Decoded, Decoder};
use crate::dialogue::{matching, template, Act, Dialogue, Script};
use crate::endpoint::{Endpoint, State};
use crate::filter::Filter;
use crate::log::Kind;

/// How a connection ended.
pub enum End {
    /// The daemon is stopping; the upstream got a 1001 close.
    Shutdown,
    /// An operator asked for a fresh connection; the upstream got a 1000 close.
    Reconnect,
    /// A rule said the resume position is gone (`reset_resume`); the upstream got a 1000 close.
    ResetResume,
    /// The connection failed or the upstream closed it.
    Lost(Failure),
    /// A replacement is up (and the old connection closed with 1000): continue on it.
    Switch(Box<Ready>, Why),
}

/// What the connection loop does after a frame.
enum Flow {
    Continue,
    End(End),
    /// Send this close frame, then end.
    Close(CloseCode, &'static str, End),
    /// The dialogue asks something of the connection.
    Act(Act),
}

/// Inbound frames handled per wake-up of the connection loop.
const INGEST_BATCH: usize = 256;

/// First and longest wait between failed credential renewals (or rotations) while the old
/// connection is in use.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A timer deadline for a wall-clock instant.
fn timer_at(at: Option<std::time::SystemTime>) -> tokio::time::Instant {
    match at {
        Some(at) => {
            let wait = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::Instant::now() + wait
        }
        None => far_future(),
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// When a connection opened now is rotated: `max_lifetime` less up to a tenth, at random, so
/// connections opened together are not all replaced at once.
fn rotation_deadline(max: Option<Duration>) -> tokio::time::Instant {
    match max {
        Some(max) => tokio::time::Instant::now() + max.mul_f64(1.0 - fastrand::f64() / 10.0),
        None => far_future(),
    }
}

/// Per-connection context borrowed from the endpoint task.
pub struct Session<'a> {
    pub ep: &'a Endpoint,
    /// The settings this run started with.
    pub cfg: &'a EndpointConfig,
    pub resume: &'a mut Option<Resume>,
    /// The endpoint's credential state; taken by a replacement while it runs.
    pub auth: &'a mut Option<Auth>,
    /// Where this connection's URL came from, for a make-before-break replacement (a
    /// discovered URL is discovered again).
    pub base: &'a crate::config::UrlSource,
    pub drop_filters: &'a [Filter],
    pub shutdown: &'a CancellationToken,
    /// Changes after the process stalled or the host slept: check the connection at once.
    pub stalls: &'a mut tokio::sync::watch::Receiver<u64>,
    /// Commit each message before delivering it (resume or persisted replay configured).
    pub durable: bool,
    /// The endpoint's captures, rules and `on_connect` steps.
    pub script: &'a Script,
    /// Values captured so far; they outlive connections.
    pub captures: &'a mut Captures,
    /// Payload hashes around a make-before-break switch.
    pub overlap: &'a mut Overlap,
    /// What status says once the connection's opening dialogue is done.
    pub connected: String,
    /// `Some(counter)` for a replacement whose opening dialogue ran already.
    pub opened: Option<u64>,
    /// A replacement's first message, read before the switch: delivered first.
    pub held: Option<(Kind, Bytes)>,
    /// Inflates inbound binary messages; new for each connection, so a stream context resets.
    pub decoder: Decoder,
}

/// One connection's state, threaded through frame handling.
struct Conn<'s> {
    hb: Heartbeat,
    wire_close: CloseSlot,
    /// The last seq appended but not yet announced to subscribers.
    announce: Option<u64>,
    dialogue: Dialogue<'s>,
    /// Frames for the writer, handed over after each batch.
    out: Vec<Message>,
    /// Tells the writer the outbox may flow (the opening dialogue is done).
    open: watch::Sender<bool>,
}

impl<'a> Session<'a> {
    /// Runs the connection until it ends.
    pub async fn run(mut self, ws: Ws) -> End {
        let wire_close = ws.get_ref().close_slot();
        if let Some(r) = self.resume.as_mut() {
            r.start_connection();
        }
        match self.opened {
            Some(_) => self.overlap.switched(Instant::now()),
            None => self.overlap.clear(),
        }
        let (mut sink, mut stream) = ws.split();
        let ep = self.ep;
        let cfg = self.cfg;
        let script: &'a Script = self.script;
        let mut dialogue = match self.opened {
            Some(counter) => Dialogue::opened(script, counter),
            None => Dialogue::new(script, self.offered()),
        };

        // Resume frame first, then `on_connect`, then the outbox: upstreams expect to be told
        // where to resume before being asked for anything.
        if self.opened.is_none() {
            let first = match self.first_frames(&mut dialogue) {
                Ok(frames) => frames,
                Err(reason) => return End::Lost(Failure::retry(reason)),
            };
            // One at a time, each when its turn comes under the rate limit.
            for m in first {
                let sent = send_one(
                    &mut sink,
                    ep,
                    m,
                    cfg.heartbeat.pong_timeout,
                    "on_connect frames",
                );
                tokio::select! {
                    _ = self.shutdown.cancelled() => return End::Shutdown,
                    r = sent => if let Err(f) = r { return End::Lost(f) },
                }
            }
        }

        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>(CTL_QUEUE);
        let (open_tx, open_rx) = watch::channel(dialogue.is_open());
        if dialogue.is_open() {
            ep.set_state(State::Connected, self.connected.clone());
        } else {
            ep.set_state(
                State::Connecting,
                format!("{}; waiting for the on_connect answers", self.connected),
            );
        }
        let (pinged, ping_written) = watch::channel(None);
        let writer = writer(sink, ctl_rx, open_rx, ep, pinged);
        tokio::pin!(writer);

        let mut conn = Conn {
            hb: Heartbeat::new(cfg.heartbeat.clone(), Instant::now())
                .with_writes(ping_written, ep.rate.longest_ping_wait()),
            wire_close,
            announce: None,
            dialogue,
            out: Vec::new(),
            open: open_tx,
        };
        self.sync_captures(&mut conn, None);
        let sleep = tokio::time::sleep_until(conn.deadline().into());
        tokio::pin!(sleep);
        let renew_sleep =
            tokio::time::sleep_until(timer_at(self.auth.as_ref().and_then(Auth::renew_at)));
        tokio::pin!(renew_sleep);
        let rotate_sleep = tokio::time::sleep_until(rotation_deadline(cfg.max_lifetime));
        tokio::pin!(rotate_sleep);
        let mut retry = RETRY_MIN;
        let mut replacing: Option<(Why, Replacing<'a>)> = None;

        // Hands the writer what the batch queued, then ends the loop where the batch ended the
        // connection (the close frame, if any, after the queued frames).
        macro_rules! settle {
            ($flow:expr) => {
                let flow = match $flow {
                    Flow::Act(act) => self.act(act, &mut replacing),
                    other => other,
                };
                if let Err(end) = hand_over(&ctl_tx, &mut conn.out) {
                    break end;
                }
                match flow {
                    Flow::Continue | Flow::Act(_) => {}
                    Flow::End(end) => break end,
                    Flow::Close(code, why, end) => {
                        break self.close(&ctl_tx, &mut writer, code, why, end).await;
                    }
                }
            };
        }

        if let Some((kind, data)) = self.held.take() {
            let flow = self.on_message(kind, data, &mut conn).await;
            let flow = match flow {
                Flow::Act(act) => self.act(act, &mut replacing),
                other => other,
            };
            if let Err(end) = hand_over(&ctl_tx, &mut conn.out) {
                return end;
            }
            match flow {
                Flow::Continue | Flow::Act(_) => {}
                Flow::End(end) => return end,
                Flow::Close(code, why, end) => {
                    return self.close(&ctl_tx, &mut writer, code, why, end).await
                }
            }
        }
        let end = loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    break self.close(&ctl_tx, &mut writer, CloseCode::Away, "shutting down", End::Shutdown).await;
                }
                _ = ep.reconnect_requested() => {
                    break self.close(&ctl_tx, &mut writer, CloseCode::Normal, "reconnect requested", End::Reconnect).await;
                }
                r = &mut writer => {
                    break End::Lost(r.err().unwrap_or_else(|| Failure::retry("writer stopped")));
                }
                _ = &mut renew_sleep, if replacing.is_none() && self.auth.is_some() => {
                    replacing = Some((Why::Renewal, self.replace(self.base.clone(), Why::Renewal)));
                    renew_sleep.as_mut().reset(far_future());
                }
                _ = &mut rotate_sleep, if replacing.is_none() => {
                    tracing::info!("max_lifetime reached: opening the next connection before closing this one");
                    replacing = Some((Why::Lifetime, self.replace(self.base.clone(), Why::Lifetime)));
                    rotate_sleep.as_mut().reset(far_future());
                }
                (auth, result) = async { match replacing.as_mut() {
                    Some((_, r)) => r.await,
                    None => std::future::pending().await,
                } } => {
                    let why = replacing.take().map_or(Why::Renewal, |(w, _)| w);
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
                            tracing::info!(reason = why.close_reason(), "switching to the new connection");
                            // What the old connection has already received is delivered before
                            // it goes; the new connection's copies are dropped as overlap.
                            let flow = self.take_frames(None, &mut stream, &mut conn).await;
                            settle!(flow);
                            return self.close(&ctl_tx, &mut writer, CloseCode::Normal, why.close_reason(), End::Switch(ready, why)).await;
                        }
                        Ok(None) => {
                            self.overlap.clear();
                            Endpoint::count(&ep.stats.auth_renewals_ok, 1);
                            conn.out.extend(self.renew_frame(&conn.dialogue));
                            tracing::info!("credential renewed on the live connection");
                            retry = RETRY_MIN;
                            renew_sleep.as_mut().reset(timer_at(self.auth.as_ref().and_then(Auth::renew_at)));
                            settle!(Flow::Continue);
                        }
                        Err(reason) => {
                            self.overlap.clear();
                            let again = tokio::time::Instant::now() + retry;
                            match why {
                                Why::Renewal => {
                                    Endpoint::count(&ep.stats.auth_renewals_failed, 1);
                                    tracing::warn!(%reason, retry_in = %crate::fmt::duration(retry), "credential renewal failed; the current connection stays");
                                    renew_sleep.as_mut().reset(again);
                                }
                                Why::Lifetime => {
                                    tracing::warn!(%reason, retry_in = %crate::fmt::duration(retry), "cannot open the next connection; the current one stays");
                                    rotate_sleep.as_mut().reset(again);
                                }
                                Why::Upstream => tracing::warn!(%reason, "the upstream asked to reconnect, but the new connection failed; staying on this one while it lasts"),
                            }
                            retry = (retry * 2).min(RETRY_MAX);
                        }
                    }
                }
                _ = &mut sleep => {
                    // What is already in the socket counts before the timers: a timer that fired
                    // late (the daemon did not run for a while) must not declare dead a
                    // connection whose pong and messages are waiting to be read.
                    let flow = self.take_frames(None, &mut stream, &mut conn).await;
                    settle!(flow);
                    let now = Instant::now();
                    if Heartbeat::is_late(sleep.deadline().into_std(), now) {
                        conn.hb.on_late_wake(now);
                    }
                    if let Some(act) = conn.dialogue.expired(now) {
                        settle!(Flow::Act(act));
                    }
                    for action in conn.hb.poll(now) {
                        match action {
                            Action::Dead(reason) => return End::Lost(Failure::retry(reason)),
                            Action::Ping(p) => conn.out.push(Message::Ping(Bytes::from(p))),
                            Action::AppPing => conn.out.extend(self.app_ping(&conn.dialogue)),
                        }
                    }
                    settle!(Flow::Continue);
                    sleep.as_mut().reset(conn.deadline().into());
                }
                Ok(()) = self.stalls.changed() => {
                    // The process did not run for a while, or the host slept: the upstream may
                    // have given up on us meanwhile. Read what came, then ping at once.
                    let flow = self.take_frames(None, &mut stream, &mut conn).await;
                    settle!(flow);
                    conn.hb.on_late_wake(Instant::now());
                    if let Some(Action::Ping(p)) = conn.hb.check_now(Instant::now()) {
                        conn.out.push(Message::Ping(Bytes::from(p)));
                    }
                    settle!(Flow::Continue);
                    sleep.as_mut().reset(conn.deadline().into());
                }
                msg = stream.next() => {
                    let flow = self.take_frames(Some(msg), &mut stream, &mut conn).await;
                    settle!(flow);
                    if conn.deadline() != sleep.deadline().into_std() {
                        sleep.as_mut().reset(conn.deadline().into());
                    }
                }
            }
        };
        end
    }

    /// The resume frame and the `on_connect` frames up to the first step that waits, rendered
    /// for this connection.
    fn first_frames(&self, dialogue: &mut Dialogue<'_>) -> Result<Vec<Message>, String> {
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
    fn offered(&self) -> Option<super::resume::UpstreamId> {
        let r = self.resume.as_ref()?;
        r.is_resuming(self.captures)
            .then(|| r.last_id().cloned())
            .flatten()
    }

    /// The resume frame, when configured and a position is offered.
    fn resume_frame(&self, dialogue: &Dialogue<'_>) -> Option<Result<Message, String>> {
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
    fn app_ping(&self, dialogue: &Dialogue<'_>) -> Option<Message> {
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
    fn renew_frame(&self, dialogue: &Dialogue<'_>) -> Option<Message> {
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

    /// Starts a make-before-break replacement on `target` (a discovered URL is discovered
    /// again: it is single-use).
    fn replace(&mut self, target: crate::config::UrlSource, why: Why) -> Replacing<'a> {
        if self.needs_overlap() {
            self.overlap.remember_from_now();
        }
        // The resume frame for the new connection is built from the last id at this moment;
        // what the old connection delivers meanwhile is sorted out by the resume ids.
        let offered = self.offered();
        let dialogue = Dialogue::new(self.script, offered.clone());
        let resume_frame = self.resume_frame(&dialogue).and_then(Result::ok);
        let offer = match target == *self.base {
            true => self.resume.as_ref().and_then(Resume::query_offer),
            false => None,
        };
        replace::start(Plan {
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
        })
    }

    /// Whether duplicates across a switch must be found by payload: no ids that outlive a
    /// connection do it.
    fn needs_overlap(&self) -> bool {
        !self.resume.as_ref().is_some_and(Resume::is_global)
    }

    /// Carries out what the dialogue asks.
    fn act(&mut self, act: Act, replacing: &mut Option<(Why, Replacing<'a>)>) -> Flow {
        match act {
            Act::Reconnect | Act::ReconnectTo(_) if replacing.is_some() => Flow::Continue,
            Act::Reconnect => {
                tracing::info!("the upstream asked to reconnect: opening the next connection");
                *replacing = Some((
                    Why::Upstream,
                    self.replace(self.base.clone(), Why::Upstream),
                ));
                Flow::Continue
            }
            Act::ReconnectTo(url) => {
                tracing::info!(url = %crate::redact::redact_url(&url), "the upstream asked to reconnect elsewhere: opening that connection");
                *replacing = Some((
                    Why::Upstream,
                    self.replace(crate::config::UrlSource::Fixed(url), Why::Upstream),
                ));
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

    /// Handles `first` (a frame just read, if any) and every frame already buffered after it, up
    /// to a batch (so timers and control still get their turn), then wakes subscribers once for
    /// the whole batch. `Flow::Continue` when there was nothing to read.
    async fn take_frames<S>(
        &mut self,
        first: Option<Option<Result<Message, WsError>>>,
        stream: &mut S,
        conn: &mut Conn<'_>,
    ) -> Flow
    where
        S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let mut next = first;
        let mut flow = Flow::Continue;
        let mut taken = 0;
        while matches!(flow, Flow::Continue) && taken < INGEST_BATCH {
            let Some(msg) = next.take().or_else(|| stream.next().now_or_never()) else {
                break;
            };
            flow = self.on_frame(msg, conn).await;
            taken += 1;
        }
        if let Some(seq) = conn.announce.take() {
            self.ep.log.announce(seq);
        }
        if taken > 0 {
            conn.hb.on_inbound(Instant::now());
        }
        flow
    }

    /// Handles one frame read from the upstream.
    async fn on_frame(
        &mut self,
        msg: Option<Result<Message, WsError>>,
        conn: &mut Conn<'_>,
    ) -> Flow {
        let ep = self.ep;
        match msg {
            Some(Ok(Message::Text(t))) => {
                return self.on_message(Kind::Text, Bytes::from(t), conn).await
            }
            Some(Ok(Message::Binary(b))) => {
                return match self.decoder.binary(b, ep) {
                    Decoded::Message(kind, data) => self.on_message(kind, data, conn).await,
                    Decoded::Nothing => Flow::Continue,
                    Decoded::Close(code, why, f) => Flow::Close(code, why, End::Lost(f)),
                }
            }
            Some(Ok(Message::Pong(p))) => {
                if let Some(rtt) = conn.hb.on_pong(&p, Instant::now()) {
                    ep.stats
                        .rtt_micros
                        .store(rtt.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            // tungstenite has queued the pong; it leaves with the next read.
            Some(Ok(Message::Ping(_))) => ep.rate.pong_sent(),
            Some(Ok(Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                // As sent: tungstenite turns codes it does not know into 1002.
                let (code, text) = conn
                    .wire_close
                    .get()
                    .or_else(|| frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                    .unwrap_or((1005, String::new()));
                // RFC 6455 §5.5.1: answer with a close; the writer flushes the echo.
                let lost = End::Lost(Failure::close(code, &text, &self.cfg.close_codes));
                return Flow::Close(CloseCode::Normal, "closing", lost);
            }
            Some(Err(e)) => {
                let (failure, close) = classify_read_error(e, self.cfg.max_message_size);
                return match close {
                    Some((code, why)) => Flow::Close(code, why, End::Lost(failure)),
                    None => Flow::End(End::Lost(failure)),
                };
            }
            None => return Flow::End(End::Lost(Failure::retry("connection closed by upstream"))),
        }
        Flow::Continue
    }

    /// One inbound message: the dialogue first (captures, rules, the opening gate), then, unless
    /// it keeps the message from apps, the log.
    async fn on_message(&mut self, kind: Kind, data: Bytes, conn: &mut Conn<'_>) -> Flow {
        let listens = self.script.listens() || !conn.dialogue.is_open();
        let needs_json = self.resume.is_some() || !self.drop_filters.is_empty() || listens;
        let doc = if needs_json {
            serde_json::from_slice::<serde_json::Value>(&data).ok()
        } else {
            None
        };
        let mut flow = Flow::Continue;
        if listens {
            let m = matching::Message {
                text: std::str::from_utf8(&data).ok(),
                doc: doc.as_ref(),
            };
            let token = self.auth.as_ref().and_then(Auth::token);
            let session = self
                .resume
                .as_ref()
                .and_then(|r| r.session_capture())
                .and_then(|s| self.captures.get(s).cloned());
            let reaction = conn
                .dialogue
                .inbound(m, self.captures, token, Instant::now());
            if reaction.captured {
                self.sync_captures(conn, session);
            }
            conn.out
                .extend(reaction.send.iter().map(|f| Message::text(f.expose())));
            if reaction.opened {
                self.ep.set_state(State::Connected, self.connected.clone());
                let _ = conn.open.send(true);
            }
            if let Some(act) = reaction.act {
                flow = Flow::Act(act);
            }
            if !reaction.deliver {
                return flow;
            }
        }
        if self.overlap.is_active() {
            let hash = super::resume::payload_hash(&data);
            if self.overlap.is_resend(hash, Instant::now()) {
                Endpoint::count(&self.ep.stats.duplicates_dropped, 1);
                return flow;
            }
            self.overlap.delivered(hash);
        }
        self.ingest(kind, data, doc, &mut conn.announce).await;
        flow
    }

    /// Applies what captured values decide: the app ping interval (Discord's Hello), and a
    /// new session (its value other than `session_before`) whose ids start afresh.
    fn sync_captures(&mut self, conn: &mut Conn<'_>, session_before: Option<serde_json::Value>) {
        if let Some((name, unit)) = &self.cfg.heartbeat.app_ping_interval_capture {
            let n = self.captures.get(name).and_then(serde_json::Value::as_f64);
            if let Some(interval) = n
                .filter(|n| *n > 0.0 && n.is_finite())
                .map(|n| unit.mul_f64(n))
            {
                conn.hb.set_app_ping_interval(interval, Instant::now());
            }
        }
        let Some(resume) = self.resume.as_mut() else {
            return;
        };
        let Some(name) = resume.session_capture() else {
            return;
        };
        let now = self.captures.get(name);
        if session_before.is_some() && now != session_before.as_ref() {
            tracing::info!("a new upstream session began: its ids start afresh");
            resume.forget();
            self.ep.set_last_upstream_id(String::new());
            if let Some(store) = &self.ep.store {
                let op = crate::store::Op::UpstreamIdClear {
                    endpoint: std::sync::Arc::clone(&self.ep.key),
                };
                store.submit(vec![op], None);
            }
        }
    }

    /// Sends a close frame through the writer, waiting briefly for it to be flushed.
    async fn close<W>(
        &self,
        ctl: &mpsc::Sender<Ctl>,
        writer: &mut std::pin::Pin<&mut W>,
        code: CloseCode,
        why: &'static str,
        end: End,
    ) -> End
    where
        W: std::future::Future<Output = Result<(), Failure>>,
    {
        if ctl.try_send(Ctl::Close(code, why)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.as_mut()).await;
        }
        end
    }
}

impl Conn<'_> {
    /// The next timer: the heartbeat's, or an opening step's timeout.
    fn deadline(&self) -> Instant {
        let hb = self.hb.deadline();
        self.dialogue.deadline().map_or(hb, |d| d.min(hb))
    }
}

/// Queues `out` for the writer. A writer [`CTL_QUEUE`] frames behind means the upstream stopped
/// reading: the connection is ended rather than queueing without bound.
fn hand_over(ctl: &mpsc::Sender<Ctl>, out: &mut Vec<Message>) -> Result<(), End> {
    for m in std::mem::take(out) {
        if ctl.try_send(Ctl::Frame(m)).is_err() {
            return Err(End::Lost(Failure::retry(format!(
                "the upstream is not reading: {CTL_QUEUE} frames wait to be written"
            ))));
        }
    }
    Ok(())
}

/// Maps a read error to a failure and, where we must tell the upstream, the close to send.
fn classify_read_error(e: WsError, max: usize) -> (Failure, Option<(CloseCode, &'static str)>) {
    match e {
        WsError::Capacity(c) => (
            Failure::retry(format!(
                "inbound message exceeds max_message_size ({max} bytes): {c}"
            )),
            Some((CloseCode::Size, "message too big")),
        ),
        WsError::Utf8(_) => (
            Failure::retry("invalid UTF-8 in a text frame"),
            Some((CloseCode::Invalid, "invalid utf-8")),
        ),
        WsError::Protocol(p) => (
            Failure::retry(format!("protocol error: {p}")),
            Some((CloseCode::Protocol, "protocol error")),
        ),
        WsError::Io(e) => (Failure::retry(format!("connection error: {e}")), None),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            (Failure::retry("connection closed"), None)
        }
        other => (Failure::retry(format!("read failed: {other}")), None),
    }
}
