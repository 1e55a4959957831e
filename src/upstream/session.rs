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
use super::failure::classify_read_error;
use super::failure::Failure;
use super::frame_watch::CloseSlot;
use super::heartbeat::{Action, Heartbeat};
use super::overlap::Overlap;
use super::replace::{Ready, Why};
use super::resume::Resume;
use super::switch::{Event, Replaced, Switching};
use super::writer::{hand_over, send_one, writer, Ctl, CTL_QUEUE};
use crate::config::EndpointConfig;
use crate::dialogue::capture::Captures;
use crate::dialogue::decode::{Decoded, Decoder};
use crate::dialogue::{Act, Dialogue, Script};
use crate::endpoint::{Endpoint, State};
use crate::filter::Filter;
use crate::log::Kind;
use crate::share::link::Link;

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
pub(super) enum Flow {
    Continue,
    End(End),
    /// Send this close frame, then end.
    Close(CloseCode, &'static str, End),
    /// The dialogue asks something of the connection.
    Act(Act),
}

/// Inbound frames handled per wake-up of the connection loop.
const INGEST_BATCH: usize = 256;

/// Shared subscriptions and requests rendered per turn; the writer must have this much room
/// first, so a flood of requests waits in the share's queue, not in the writer's.
const SHARE_BATCH: usize = 64;

/// Ready when the writer has room for a batch of shared frames and some are queued.
async fn share_work(ep: &Endpoint, ctl: &mpsc::Sender<Ctl>) {
    // Room first: the permits are only a measure, the frames go through `hand_over`.
    match ctl.reserve_many(SHARE_BATCH).await {
        Ok(permits) => drop(permits),
        Err(_) => std::future::pending::<()>().await,
    }
    ep.share.work_queued().await;
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
    /// Consecutive auth failures of the endpoint: a refusal during the opening dialogue (a
    /// step's `failure = "reauth"`, a reauth close code) counts, and only a completed opening
    /// clears them.
    pub auth_failures: &'a mut u32,
    /// `Some(counter)` for a replacement whose opening dialogue ran already.
    pub opened: Option<u64>,
    /// A replacement's first message, read before the switch: delivered first.
    pub held: Vec<super::replace::Held>,
    /// Inflates inbound binary messages; new for each connection, so a stream context resets.
    pub decoder: Decoder,
}

/// One connection's state, threaded through frame handling.
pub(super) struct Conn<'s> {
    pub(super) hb: Heartbeat,
    pub(super) wire_close: CloseSlot,
    /// The last seq appended but not yet announced to subscribers.
    pub(super) announce: Option<u64>,
    pub(super) dialogue: Dialogue<'s>,
    /// Frames for the writer, handed over after each batch.
    pub(super) out: Vec<Message>,
    /// Tells the writer the outbox may flow (the opening dialogue is done).
    pub(super) open: watch::Sender<bool>,
    /// The endpoint's shared subscriptions and requests on this connection, if it has any.
    pub(super) link: Option<Link<'s>>,
}

impl End {
    /// Why the connection ended, as requests in flight are told.
    pub fn describe(&self) -> &str {
        match self {
            End::Shutdown => "the daemon is stopping",
            End::Reconnect => "an operator asked for a new connection",
            End::ResetResume => "the upstream said the resume position is gone",
            End::Lost(f) => &f.reason,
            End::Switch(..) => "the connection was replaced",
        }
    }
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
        script.seed(self.captures);
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
                let timeout = cfg.heartbeat.pong_timeout;
                let sent = send_one(&mut sink, ep, m, timeout, "on_connect frames");
                tokio::select! {
                    _ = self.shutdown.cancelled() => return End::Shutdown,
                    r = sent => if let Err(f) = r { return End::Lost(f) },
                }
            }
        }

        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>(CTL_QUEUE);
        let (open_tx, open_rx) = watch::channel(dialogue.is_open());
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
            link: Link::new(cfg),
        };
        if conn.dialogue.is_open() {
            self.opened(&mut conn);
        } else {
            let waiting = format!("{}; waiting for the on_connect answers", self.connected);
            ep.set_state(State::Connecting, waiting);
        }
        self.sync_captures(&mut conn, None);
        let sleep = tokio::time::sleep_until(conn.deadline().into());
        tokio::pin!(sleep);
        let mut switching = Switching::new(self.auth.as_ref(), cfg.max_lifetime);

        // Carries out what a batch asked, hands the writer what it queued, then ends the loop
        // where the batch ended the connection (the close frame after the queued frames).
        macro_rules! settle {
            ($flow:expr) => {
                let flow = match $flow {
                    Flow::Act(act) => self.act(act, &mut switching),
                    other => other,
                };
                if let Err(f) = hand_over(&ctl_tx, &mut conn.out) {
                    break End::Lost(f);
                }
                // The old connection ended while an open replacement waited for it to catch
                // up (Slack closes it after its `disconnect`): continue on the replacement.
                if matches!(
                    flow,
                    Flow::End(End::Lost(_)) | Flow::Close(_, _, End::Lost(_))
                ) {
                    if let Some((ready, why)) = switching.take_ready() {
                        break self.switch_to(ready, why, &ctl_tx, &mut writer).await;
                    }
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

        let mut held = std::mem::take(&mut self.held).into_iter();
        let end = loop {
            // What a replacement received before it took over, in order.
            if let Some(h) = held.next() {
                let flow = match h.seen {
                    true => self.deliver(h.kind, h.data, None, &mut conn).await,
                    false => self.on_message(h.kind, h.data, &mut conn).await,
                };
                settle!(flow);
                continue;
            }
            // The old connection delivered what the new one holds: nothing falls between (once
            // the new one has every held key).
            if self.overlap.caught_up() && !switching.subscribing() {
                if let Some((ready, why)) = switching.take_ready() {
                    break self.switch_to(ready, why, &ctl_tx, &mut writer).await;
                }
            }
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
                event = switching.next(self.auth.is_some(), ep, conn.link.as_ref(), self.auth.as_ref().and_then(Auth::token)) => match event {
                    Event::Due(why) => self.replace(&mut switching, self.target(), why),
                    Event::Subscribed(last) => {
                        if last {
                            self.overlap.restart_catch_up();
                        }
                    }
                    Event::Done(why, outcome) => match self.replaced(why, outcome, &mut conn, &mut switching) {
                        Replaced::Open(ready) => {
                            let keys = conn.link.as_ref().map(|l| l.begin_next(&ep.share)).unwrap_or_default();
                            switching.catch_up(ready, why, self.script, keys);
                        }
                        Replaced::Stay => { settle!(Flow::Continue); }
                        Replaced::Reset => { settle!(Flow::Act(Act::ResetResume)); }
                    },
                    Event::Held(kind, data) => self.converse_held(&mut switching, kind, data).await,
                    Event::Lost(why) => {
                        self.overlap.clear();
                        if let Some(link) = &conn.link {
                            link.abandon_next(&ep.share);
                        }
                        let retry_in = crate::fmt::duration(switching.lost(why));
                        tracing::warn!(%retry_in, "the new connection closed before the switch; this one stays");
                    }
                    Event::Now => {
                        // What the old connection has received already is delivered before it
                        // goes; the new connection's copies are dropped as overlap.
                        let flow = self.take_frames(None, &mut stream, &mut conn).await;
                        settle!(flow);
                        if let Some((ready, why)) = switching.take_ready() {
                            break self.switch_to(ready, why, &ctl_tx, &mut writer).await;
                        }
                    }
                },
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
                            // The opening dialogue speaks first (Home Assistant refuses anything
                            // before auth_ok).
                            Action::AppPing if !conn.dialogue.is_open() => {}
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
                () = share_work(ep, &ctl_tx), if conn.link.is_some() && conn.dialogue.is_open() => {
                    self.share_frames(&mut conn);
                    settle!(Flow::Continue);
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

    /// Handles `first` (a frame just read, if any) and every frame already buffered after it, up
    /// to a batch (so timers and control still get their turn), then wakes subscribers once for
    /// the whole batch. `Flow::Continue` when there was nothing to read.
    pub(super) async fn take_frames<S>(
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

    /// The opening dialogue is done: the connection is `connected`, the outbox may flow, and
    /// the credential proved good (auth failures start counting again from zero).
    pub(super) fn opened(&mut self, conn: &mut Conn<'_>) {
        self.ep.set_state(State::Connected, self.connected.clone());
        let _ = conn.open.send(true);
        *self.auth_failures = 0;
        if let Some(link) = &conn.link {
            link.opened(&self.ep.share);
        }
    }

    /// Renders queued subscriptions and requests for the writer, as many as it has room for.
    fn share_frames(&mut self, conn: &mut Conn<'_>) {
        let Some(link) = &conn.link else { return };
        let token = self.auth.as_ref().and_then(Auth::token);
        let values = conn.dialogue.values(token, self.captures);
        let frames = link.take(&self.ep.share, SHARE_BATCH, values);
        conn.out.extend(frames.into_iter().map(Message::text));
    }

    /// Closes this connection with 1000 for `why`, and continues on `ready`.
    async fn switch_to<W>(
        &self,
        ready: Box<Ready>,
        why: Why,
        ctl: &mpsc::Sender<Ctl>,
        writer: &mut std::pin::Pin<&mut W>,
    ) -> End
    where
        W: std::future::Future<Output = Result<(), Failure>>,
    {
        tracing::info!(
            reason = why.close_reason(),
            "switching to the new connection"
        );
        let end = End::Switch(ready, why);
        self.close(ctl, writer, CloseCode::Normal, why.close_reason(), end)
            .await
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
