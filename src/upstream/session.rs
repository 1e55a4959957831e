//! One live upstream connection: reads and fans out messages, keeps the heartbeat, and writes
//! the resume frame, `on_connect` frames and then the outbox, until the connection ends.

use std::time::Instant;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::auth::Auth;
use super::connect::Ws;
use super::failure::Failure;
use super::frame_watch::CloseSlot;
use super::heartbeat::{Action, Heartbeat};
use super::resume::{Break, Resume, UpstreamId, Verdict};
use crate::config::{EndpointConfig, RenewMode};
use crate::endpoint::{unix_nanos, Endpoint};
use crate::filter::Filter;
use crate::log::{GapReason, IdBreak, Kind};
use crate::store::Op;

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

/// Frames the connection loop asks the writer to send ahead of the outbox.
enum Ctl {
    Frame(Message),
    Close(CloseCode, &'static str),
}

/// What the connection loop does after a frame.
enum Flow {
    Continue,
    End(End),
    /// Send this close frame, then end.
    Close(CloseCode, &'static str, End),
}

/// Inbound frames handled per wake-up of the connection loop.
const INGEST_BATCH: usize = 256;

/// Outbox entries written per flush: enough to amortise the flush, small enough that a
/// heartbeat frame is not stuck behind a long batch.
const OUTBOX_BATCH: usize = 256;

/// Inbound messages allowed to wait for their durable commit before reading pauses (which
/// pushes back on the upstream through TCP).
const MAX_PENDING: u64 = 8192;

/// Seqs reserved in the store at a time where messages are not committed one by one: a restart
/// continues above the reservation, so a seq is never reused.
const SEQ_LEASE: u64 = 10_000;

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

/// Persisted replay entries below the window are deleted every this many messages.
const TRIM_EVERY: u64 = 512;

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
        let mut first: Vec<Message> = Vec::new();
        if let Some(frame) = self.resume.as_ref().and_then(Resume::frame) {
            first.push(Message::text(frame));
        }
        first.extend(cfg.on_connect.iter().map(|f| Message::text(f.clone())));
        if !first.is_empty() {
            let send_all = async {
                for m in first {
                    sink.feed(m).await?;
                }
                sink.flush().await
            };
            let r = tokio::select! {
                _ = self.shutdown.cancelled() => return End::Shutdown,
                r = tokio::time::timeout(cfg.heartbeat.pong_timeout, send_all) => r,
            };
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return End::Lost(Failure::retry(format!("write failed: {e}"))),
                Err(_) => {
                    return End::Lost(Failure::retry("write timeout sending on_connect frames"))
                }
            }
        }

        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>(16);
        let writer = writer(sink, ctl_rx, ep);
        tokio::pin!(writer);

        let mut hb = Heartbeat::new(cfg.heartbeat.clone(), Instant::now());
        let sleep = tokio::time::sleep_until(hb.deadline().into());
        tokio::pin!(sleep);
        let renew_sleep = tokio::time::sleep_until(renew_deadline(self.auth.as_ref()));
        tokio::pin!(renew_sleep);
        let mut renew_retry = RENEW_RETRY_MIN;
        let mut renewing: Option<Renewal<'a>> = None;
        // The last seq appended but not yet announced to subscribers.
        let mut announce: Option<u64> = None;

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
                    let now = Instant::now();
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
                msg = stream.next() => {
                    // Take every frame already buffered (up to a bound, so timers and control
                    // still get their turn) and wake subscribers once for the whole batch.
                    let mut flow = self.on_frame(msg, &mut hb, &wire_close, &mut announce).await;
                    let mut taken = 1;
                    while matches!(flow, Flow::Continue) && taken < INGEST_BATCH {
                        let Some(msg) = stream.next().now_or_never() else { break };
                        flow = self.on_frame(msg, &mut hb, &wire_close, &mut announce).await;
                        taken += 1;
                    }
                    if let Some(seq) = announce.take() {
                        ep.log.announce(seq);
                    }
                    hb.on_inbound(Instant::now());
                    match flow {
                        Flow::Continue => {}
                        Flow::End(end) => break end,
                        Flow::Close(code, why, end) => {
                            return self.close(&ctl_tx, &mut writer, code, why, end).await;
                        }
                    }
                    if hb.deadline() != sleep.deadline().into_std() {
                        sleep.as_mut().reset(hb.deadline().into());
                    }
                }
            }
        };
        end
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
            Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
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

    /// Fans out one inbound message, after resume dedup and `drop` filters.
    ///
    /// With resume or `replay.persist`, the message's seq, upstream id (and payload) are
    /// committed before subscribers see it, so a crash can neither reuse a delivered seq nor
    /// make the upstream resend what was delivered. Otherwise only a block of seqs is reserved
    /// now and then.
    ///
    /// Where a message becomes visible at once it is appended without waking subscribers, and
    /// its seq left in `announce` for the caller to announce with the rest of the batch.
    async fn ingest(&mut self, kind: Kind, data: Bytes, announce: &mut Option<u64>) {
        let ep = self.ep;
        let needs_json = self.resume.is_some() || !self.drop_filters.is_empty();
        let doc = if needs_json {
            serde_json::from_slice::<serde_json::Value>(&data).ok()
        } else {
            None
        };
        let mut gap = None;
        let mut new_id = None;
        if let (Some(resume), Some(doc)) = (self.resume.as_mut(), doc.as_ref()) {
            if let Some(id) = resume.extract(doc) {
                let stored = id.encode();
                let shown = id.to_string();
                match resume.accept(id, super::resume::payload_hash(&data)) {
                    Verdict::Duplicate => {
                        Endpoint::count(&ep.stats.duplicates_dropped, 1);
                        return;
                    }
                    Verdict::Deliver(brk) => {
                        gap = brk.and_then(|b| id_break(ep, b));
                        ep.set_last_upstream_id(shown);
                        // Ids that start again on every connection are no position to keep.
                        new_id = resume.is_global().then_some(stored);
                    }
                }
            }
        }
        if let Some(doc) = doc.as_ref() {
            if self.drop_filters.iter().any(|f| f.matches(doc)) {
                Endpoint::count(&ep.stats.filtered, 1);
                return;
            }
        }
        Endpoint::count(&ep.stats.messages_received, 1);
        Endpoint::count(&ep.stats.bytes_received, data.len() as u64);
        let Some(store) = &ep.store else {
            *announce = Some(ep.log.append_quiet(kind, data, unix_nanos(), gap));
            return;
        };
        let endpoint = std::sync::Arc::clone(&ep.key);
        if !self.durable {
            let next = ep.log.next_seq();
            if next > ep.seq_leased.load(std::sync::atomic::Ordering::Relaxed) {
                // Subscribers should not wait on the commit for what is already appended.
                if let Some(seq) = announce.take() {
                    ep.log.announce(seq);
                }
                let upto = next + SEQ_LEASE - 1;
                match store
                    .commit(vec![Op::SeqLease {
                        endpoint,
                        from: next,
                        upto,
                    }])
                    .await
                {
                    Ok(()) => ep
                        .seq_leased
                        .store(upto, std::sync::atomic::Ordering::Relaxed),
                    Err(e) => tracing::error!(error = %e, "cannot reserve seqs; delivering anyway"),
                }
            }
            *announce = Some(ep.log.append_quiet(kind, data, unix_nanos(), gap));
            return;
        }
        if ep.log.pending() >= MAX_PENDING {
            ep.log.wait_pending_at_most(MAX_PENDING / 2).await;
        }
        let received_at = unix_nanos();
        let seq = ep.log.append_pending(kind, data.clone(), received_at, gap);
        let mut ops = vec![Op::SeqMark {
            endpoint: std::sync::Arc::clone(&endpoint),
            seq,
        }];
        if let Some(id) = new_id {
            ops.push(Op::UpstreamId {
                endpoint: std::sync::Arc::clone(&endpoint),
                id,
            });
        }
        if self.cfg.replay.persist {
            ops.push(Op::ReplayPut {
                endpoint: std::sync::Arc::clone(&endpoint),
                seq,
                kind,
                received_at,
                data,
            });
            if seq.is_multiple_of(TRIM_EVERY) {
                ops.push(Op::ReplayTrim {
                    endpoint,
                    below: ep.log.first_retained(),
                });
            }
        }
        let log = std::sync::Arc::clone(&ep.log);
        store.submit(
            ops,
            Some(Box::new(move |r| {
                if let Err(e) = r {
                    // Subscribers come first: deliver, and say loudly that it is not recorded.
                    tracing::error!(error = %e, seq, "cannot record message; delivering it anyway");
                }
                log.publish_upto(seq);
            })),
        );
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

/// What subscribers are told of a break in the upstream's ids; a reset is also logged and
/// counted, since it means the upstream restarted or failed over.
fn id_break(ep: &Endpoint, b: Break) -> Option<IdBreak> {
    match b {
        Break::Gap(from, to) => Some(IdBreak {
            from,
            to,
            reason: GapReason::UpstreamGap,
        }),
        Break::Reset(last, first) => {
            Endpoint::count(&ep.stats.upstream_id_resets, 1);
            tracing::warn!(
                last_id = %last,
                first_id = %first,
                "the upstream's ids started again (it restarted or failed over): delivering from here"
            );
            match (last, first) {
                (UpstreamId::Int(from), UpstreamId::Int(to)) => Some(IdBreak {
                    from,
                    to,
                    reason: GapReason::UpstreamReset,
                }),
                // String ids have no order to show as a range: the log line and the counter
                // say it.
                _ => None,
            }
        }
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

/// Owns the write half: control frames first, then the outbox in batches with one flush each.
/// Entries are marked sent only after their flush succeeded.
async fn writer<S>(mut sink: S, mut ctl: mpsc::Receiver<Ctl>, ep: &Endpoint) -> Result<(), Failure>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let werr = |e: WsError| Failure::retry(format!("write failed: {e}"));
    let mut last = 0u64;
    loop {
        tokio::select! {
            biased;
            c = ctl.recv() => match c {
                Some(Ctl::Frame(m)) => sink.send(m).await.map_err(werr)?,
                Some(Ctl::Close(code, why)) => {
                    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(why) };
                    // After the upstream's own close this is refused, but a flush still sends
                    // the echo tungstenite queued for it.
                    if sink.send(Message::Close(Some(frame))).await.is_err() {
                        let _ = sink.flush().await;
                    }
                    return Ok(());
                }
                None => return Ok(()),
            },
            _ = ep.outbox.wait_after(last) => {
                let batch = ep.outbox.peek_after(last, OUTBOX_BATCH);
                let Some(tail) = batch.last().map(|e| e.id) else { continue };
                let n = batch.len() as u64;
                let bytes: u64 = batch.iter().map(|e| e.data.len() as u64).sum();
                for e in batch {
                    let msg = match e.kind {
                        Kind::Binary => Message::Binary(e.data),
                        // Publishers' text is validated on the way in; never send bad UTF-8 as text.
                        Kind::Text => match Utf8Bytes::try_from(e.data.clone()) {
                            Ok(t) => Message::Text(t),
                            Err(_) => Message::Binary(e.data),
                        },
                    };
                    sink.feed(msg).await.map_err(werr)?;
                }
                sink.flush().await.map_err(werr)?;
                ep.outbox.mark_sent(tail);
                Endpoint::count(&ep.stats.messages_sent, n);
                Endpoint::count(&ep.stats.bytes_sent, bytes);
                last = tail;
            }
        }
    }
}
