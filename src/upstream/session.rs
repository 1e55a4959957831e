//! One live upstream connection: reads and fans out messages, keeps the heartbeat, and writes
//! the resume frame, `on_connect` frames and then the outbox, until the connection ends.

use std::time::Instant;

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
use super::resume::Resume;
use super::writer::{send_one, writer, Ctl};
use crate::config::{EndpointConfig, RenewMode};
use crate::endpoint::Endpoint;
use crate::filter::Filter;
use crate::log::Kind;

/// How a connection ended.
pub enum End {
    /// The daemon is stopping; the upstream got a 1001 close.
    Shutdown,
    /// An operator asked for a fresh connection; the upstream got a 1000 close.
    Reconnect,
    /// The connection failed or the upstream closed it.
    Lost(Failure),
    /// A renewed credential's connection is up (and the old one closed with 1000): continue
    /// on it. The string is its URL as it may be shown.
    Switch(Box<Ws>, String),
}

/// A credential renewal under way: it owns the endpoint's `Auth` until it finishes, and for
/// `renew = "reconnect"` also opens the replacement connection.
type Renewal<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Auth, Result<Option<(Ws, String)>, String>)> + Send + 'a>,
>;

/// What the connection loop does after a frame.
enum Flow {
    Continue,
    End(End),
    /// Send this close frame, then end.
    Close(CloseCode, &'static str, End),
}

/// Inbound frames handled per wake-up of the connection loop.
const INGEST_BATCH: usize = 256;

/// First and longest wait between failed credential renewals while the old one is in use.
const RENEW_RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const RENEW_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// When the next renewal is due, as a timer deadline.
fn renew_deadline(auth: Option<&Auth>) -> tokio::time::Instant {
    match auth.and_then(Auth::renew_at) {
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
    tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600)
}

/// Per-connection context borrowed from the endpoint task.
pub struct Session<'a> {
    pub ep: &'a Endpoint,
    /// The settings this run started with.
    pub cfg: &'a EndpointConfig,
    pub resume: &'a mut Option<Resume>,
    /// The endpoint's credential state; taken by a renewal while it runs.
    pub auth: &'a mut Option<Auth>,
    /// The URL this connection was opened on, for a make-before-break replacement.
    pub base: &'a url::Url,
    pub drop_filters: &'a [Filter],
    pub shutdown: &'a CancellationToken,
    /// Changes after the process stalled or the host slept: check the connection at once.
    pub stalls: &'a mut tokio::sync::watch::Receiver<u64>,
    /// Commit each message before delivering it (resume or persisted replay configured).
    pub durable: bool,
}

impl<'a> Session<'a> {
    /// Runs the connection until it ends.
    pub async fn run(mut self, ws: Ws) -> End {
        let wire_close = ws.get_ref().close_slot();
        if let Some(r) = self.resume.as_mut() {
            r.start_connection();
        }
        let (mut sink, mut stream) = ws.split();
        let ep = self.ep;
        let cfg = self.cfg;

        // Resume frame first, then `on_connect`, then the outbox: upstreams expect to be told
        // where to resume before being asked for anything.
        let first = match self.first_frames() {
            Ok(frames) => frames,
            Err(reason) => return End::Lost(Failure::retry(reason)),
        };
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

        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>(16);
        let (pinged, ping_written) = watch::channel(None);
        let writer = writer(sink, ctl_rx, ep, pinged);
        tokio::pin!(writer);

        let mut hb = Heartbeat::new(cfg.heartbeat.clone(), Instant::now())
            .with_writes(ping_written, ep.rate.longest_ping_wait());
        let sleep = tokio::time::sleep_until(hb.deadline().into());
        tokio::pin!(sleep);
        let renew_sleep = tokio::time::sleep_until(renew_deadline(self.auth.as_ref()));
        tokio::pin!(renew_sleep);
        let mut renew_retry = RENEW_RETRY_MIN;
        let mut renewing: Option<Renewal<'a>> = None;
        // The last seq appended but not yet announced to subscribers.
        let mut announce: Option<u64> = None;

        // Ends the loop where a frame ended the connection (the close frame, if any, first).
        macro_rules! settle {
            ($flow:expr) => {
                match $flow {
                    Flow::Continue => {}
                    Flow::End(end) => break end,
                    Flow::Close(code, why, end) => {
                        break self.close(&ctl_tx, &mut writer, code, why, end).await;
                    }
                }
            };
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
                _ = &mut renew_sleep, if renewing.is_none() && self.auth.is_some() => {
                    renewing = self.start_renewal();
                    renew_sleep.as_mut().reset(far_future());
                }
                (auth, result) = async { match renewing.as_mut() {
                    Some(r) => r.await,
                    None => std::future::pending().await,
                } } => {
                    renewing = None;
                    super::record_expiry(ep, &auth);
                    let frame = auth.renew_frame();
                    *self.auth = Some(auth);
                    match result {
                        Ok(None) => {
                            Endpoint::count(&ep.stats.auth_renewals_ok, 1);
                            if let Some(frame) = frame {
                                let _ = ctl_tx.try_send(Ctl::Frame(Message::text(frame.expose().to_owned())));
                            }
                            tracing::info!("credential renewed on the live connection");
                            renew_retry = RENEW_RETRY_MIN;
                            renew_sleep.as_mut().reset(renew_deadline(self.auth.as_ref()));
                        }
                        Ok(Some((ws, shown))) => {
                            Endpoint::count(&ep.stats.auth_renewals_ok, 1);
                            tracing::info!("credential renewed: switching to the new connection");
                            return self.close(&ctl_tx, &mut writer, CloseCode::Normal, "credential renewed", End::Switch(Box::new(ws), shown)).await;
                        }
                        Err(reason) => {
                            Endpoint::count(&ep.stats.auth_renewals_failed, 1);
                            tracing::warn!(%reason, retry_in = %crate::fmt::duration(renew_retry), "credential renewal failed; the current connection stays");
                            renew_sleep.as_mut().reset(tokio::time::Instant::now() + renew_retry);
                            renew_retry = (renew_retry * 2).min(RENEW_RETRY_MAX);
                        }
                    }
                }
                _ = &mut sleep => {
                    // What is already in the socket counts before the timers: a timer that fired
                    // late (the daemon did not run for a while) must not declare dead a
                    // connection whose pong and messages are waiting to be read.
                    let flow = self.take_frames(None, &mut stream, &mut hb, &wire_close, &mut announce).await;
                    settle!(flow);
                    let now = Instant::now();
                    if Heartbeat::is_late(sleep.deadline().into_std(), now) {
                        hb.on_late_wake(now);
                    }
                    for action in hb.poll(now) {
                        let frame = match action {
                            Action::Dead(reason) => return End::Lost(Failure::retry(reason)),
                            Action::Ping(p) => Message::Ping(Bytes::from(p)),
                            Action::AppPing => match &cfg.heartbeat.app_ping {
                                Some(text) => Message::text(text.clone()),
                                None => continue,
                            },
                        };
                        // A full channel means the writer is stuck: the pong timeout will tell.
                        let _ = ctl_tx.try_send(Ctl::Frame(frame));
                    }
                    sleep.as_mut().reset(hb.deadline().into());
                }
                Ok(()) = self.stalls.changed() => {
                    // The process did not run for a while, or the host slept: the upstream may
                    // have given up on us meanwhile. Read what came, then ping at once.
                    let flow = self.take_frames(None, &mut stream, &mut hb, &wire_close, &mut announce).await;
                    settle!(flow);
                    hb.on_late_wake(Instant::now());
                    if let Some(Action::Ping(p)) = hb.check_now(Instant::now()) {
                        let _ = ctl_tx.try_send(Ctl::Frame(Message::Ping(Bytes::from(p))));
                    }
                    sleep.as_mut().reset(hb.deadline().into());
                }
                msg = stream.next() => {
                    let flow = self.take_frames(Some(msg), &mut stream, &mut hb, &wire_close, &mut announce).await;
                    settle!(flow);
                    if hb.deadline() != sleep.deadline().into_std() {
                        sleep.as_mut().reset(hb.deadline().into());
                    }
                }
            }
        };
        end
    }

    /// The resume frame and the `on_connect` frames, rendered for this connection with the
    /// current token and last id.
    fn first_frames(&self) -> Result<Vec<Message>, String> {
        let token = self.auth.as_ref().and_then(Auth::token);
        let mut first = Vec::with_capacity(self.cfg.on_connect.len() + 1);
        if let Some(frame) = self.resume.as_ref().and_then(|r| r.frame(token)) {
            let frame = frame.map_err(|e| format!("resume.frame: {e}"))?;
            first.push(Message::text(frame.expose()));
        }
        let values = super::template::Values {
            token,
            last_id: None,
        };
        for (i, template) in self.cfg.on_connect.iter().enumerate() {
            let frame = super::template::frame(template, values)
                .map_err(|e| format!("on_connect[{i}]: {e}"))?;
            first.push(Message::text(frame.expose()));
        }
        Ok(first)
    }

    /// Starts renewing the credential: fetch a new token, and for `renew = "reconnect"` open
    /// the replacement connection (resumed from the last id) before the old one is closed.
    fn start_renewal(&mut self) -> Option<Renewal<'a>> {
        let mut auth = self.auth.take()?;
        let ep: &'a Endpoint = self.ep;
        let cfg: &'a EndpointConfig = self.cfg;
        let mut url = self.base.clone();
        if let Some(r) = self.resume.as_ref() {
            r.apply_query(&mut url);
        }
        Some(Box::pin(async move {
            if let Err(e) = auth.renew(cfg).await {
                return (auth, Err(e));
            }
            if auth.renew_mode() == RenewMode::Frame {
                return (auth, Ok(None));
            }
            let r = match super::prepare(ep, cfg, url, Some(&mut auth)).await {
                Ok((attempt, shown)) => super::connect::connect(attempt)
                    .await
                    .map(|ws| Some((ws, shown)))
                    .map_err(|f| format!("replacement connection: {}", f.reason)),
                Err(f) => Err(f.reason),
            };
            (auth, r)
        }))
    }

    /// Handles `first` (a frame just read, if any) and every frame already buffered after it, up
    /// to a batch (so timers and control still get their turn), then wakes subscribers once for
    /// the whole batch. `Flow::Continue` when there was nothing to read.
    async fn take_frames<S>(
        &mut self,
        first: Option<Option<Result<Message, WsError>>>,
        stream: &mut S,
        hb: &mut Heartbeat,
        wire_close: &CloseSlot,
        announce: &mut Option<u64>,
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
            flow = self.on_frame(msg, hb, wire_close, announce).await;
            taken += 1;
        }
        if let Some(seq) = announce.take() {
            self.ep.log.announce(seq);
        }
        if taken > 0 {
            hb.on_inbound(Instant::now());
        }
        flow
    }

    /// Handles one frame read from the upstream.
    async fn on_frame(
        &mut self,
        msg: Option<Result<Message, WsError>>,
        hb: &mut Heartbeat,
        wire_close: &CloseSlot,
        announce: &mut Option<u64>,
    ) -> Flow {
        let ep = self.ep;
        match msg {
            Some(Ok(Message::Text(t))) => self.ingest(Kind::Text, Bytes::from(t), announce).await,
            Some(Ok(Message::Binary(b))) => self.ingest(Kind::Binary, b, announce).await,
            Some(Ok(Message::Pong(p))) => {
                if let Some(rtt) = hb.on_pong(&p, Instant::now()) {
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
                let (code, text) = wire_close
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
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer.as_mut()).await;
        }
        end
    }
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
