//! One inbound message on its way to subscribers: the dialogue first (captures, rules, the
//! opening gate) and duplicates across a switch, then resume dedup and id breaks, `drop`
//! filters, the seq, and the durable record that must precede delivery where resume or
//! persisted replay is configured.

use std::time::Instant;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

use super::auth::Auth;
use super::resume::{Break, UpstreamId, Verdict};
use super::session::{Conn, Flow, Session};
use crate::config::Framing;
use crate::dialogue::matching;
use crate::endpoint::{unix_nanos, Endpoint};
use crate::log::{GapReason, IdBreak, Kind};
use crate::share::link::Routed;
use crate::share::socketio;
use crate::store::Op;

/// Inbound messages allowed to wait for their durable commit before reading pauses (which
/// pushes back on the upstream through TCP).
const MAX_PENDING: u64 = 8192;

/// Seqs reserved in the store at a time where messages are not committed one by one: a restart
/// continues above the reservation, so a seq is never reused.
const SEQ_LEASE: u64 = 10_000;

/// Persisted replay entries below the window, and remembered upstream ids beyond
/// `dedup_window` messages back, are deleted every this many messages.
const TRIM_EVERY: u64 = 512;

impl Session<'_> {
    /// One inbound message: the dialogue first (captures, rules, the opening gate), then, unless
    /// it keeps the message from apps, the log.
    pub(super) async fn on_message(
        &mut self,
        kind: Kind,
        data: Bytes,
        conn: &mut Conn<'_>,
    ) -> Flow {
        let listens = self.script.listens() || !conn.dialogue.is_open();
        let needs_json = self.resume.is_some()
            || !self.drop_filters.is_empty()
            || listens
            || conn.link.is_some();
        // Socket.IO: conditions and routing read the packet as a document; apps get an
        // event's array.
        let packet = match self.cfg.framing {
            Framing::SocketIo => std::str::from_utf8(&data).ok().and_then(socketio::decode),
            Framing::Json => None,
        };
        let (doc, for_apps) = match packet {
            Some(p) => (Some(p.doc), p.for_apps),
            None if needs_json => (
                serde_json::from_slice::<serde_json::Value>(&data).ok(),
                None,
            ),
            None => (None, None),
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
            if reaction.captured.any {
                self.keep_captures(&reaction.captured.to_store);
                self.sync_captures(conn, session);
            }
            conn.out
                .extend(reaction.send.iter().map(|f| Message::text(f.expose())));
            if reaction.opened {
                self.opened(conn);
            }
            if let Some(act) = reaction.act {
                flow = Flow::Act(act);
            }
            if !reaction.deliver {
                Endpoint::count(&self.ep.stats.dialogue_kept, 1);
                return flow;
            }
        }
        let data = for_apps.unwrap_or(data);
        let flow2 = self.deliver(kind, data, doc, conn).await;
        match flow {
            Flow::Continue => flow2,
            acted => acted,
        }
    }

    /// Hands one message to the log, unless it is a copy of what the old connection delivered
    /// across a switch, or a reply for one app (`crate::share`). `doc` is its JSON, when
    /// parsed already.
    pub(super) async fn deliver(
        &mut self,
        kind: Kind,
        data: Bytes,
        doc: Option<serde_json::Value>,
        conn: &mut Conn<'_>,
    ) -> Flow {
        let mut key = None;
        let mut data = data;
        let mut doc = doc;
        if let Some(link) = &conn.link {
            if doc.is_none() {
                doc = serde_json::from_slice::<serde_json::Value>(&data).ok();
            }
            let text = std::str::from_utf8(&data).ok();
            match link.inbound(&self.ep.share, text, doc.as_ref()) {
                Routed::Consumed => return Flow::Continue,
                Routed::Key(k, rewritten) => {
                    key = Some(k);
                    if let Some(d) = rewritten {
                        data = d;
                    }
                }
                Routed::Plain => {}
            }
        }
        if self.overlap.is_active() {
            let hash = super::resume::payload_hash(&data);
            if self.overlap.is_resend(hash, Instant::now()) {
                Endpoint::count(&self.ep.stats.duplicates_dropped, 1);
                return Flow::Continue;
            }
            self.overlap.delivered(hash);
        }
        let needs_json = self.resume.is_some() || !self.drop_filters.is_empty();
        let doc = match doc {
            Some(doc) => Some(doc),
            None if needs_json => serde_json::from_slice::<serde_json::Value>(&data).ok(),
            None => None,
        };
        self.ingest(kind, data, doc, key, &mut conn.announce).await;
        Flow::Continue
    }

    /// Writes the captured values a resume needs after a restart to the store (without waiting:
    /// the commit queue keeps their order with the ids committed after them).
    fn keep_captures(&self, changed: &[(String, String)]) {
        let Some(store) = &self.ep.store else { return };
        if changed.is_empty() {
            return;
        }
        let ops = changed
            .iter()
            .map(|(name, value)| Op::CaptureSet {
                endpoint: std::sync::Arc::clone(&self.ep.key),
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        store.submit(ops, None);
    }

    /// Applies what captured values decide: the app ping interval (Discord's Hello), and a
    /// new session (its value other than `session_before`) whose ids start afresh.
    pub(super) fn sync_captures(
        &mut self,
        conn: &mut Conn<'_>,
        session_before: Option<serde_json::Value>,
    ) {
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
        // A session that began (its capture had no value, or another one): ids start afresh,
        // so the first message of a new session is not taken for a reset of the old one.
        if now != session_before.as_ref() {
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

    /// Fans out one inbound message, after resume dedup and `drop` filters.
    ///
    /// With resume or `replay.persist`, the message's seq, upstream id (and payload) are
    /// committed before subscribers see it, so a crash can neither reuse a delivered seq nor
    /// make the upstream resend what was delivered. Otherwise only a block of seqs is reserved
    /// now and then.
    ///
    /// Where a message becomes visible at once it is appended without waking subscribers, and
    /// its seq left in `announce` for the caller to announce with the rest of the batch.
    /// `doc` is the payload parsed as JSON, where resume or `drop` filters need it.
    pub(super) async fn ingest(
        &mut self,
        kind: Kind,
        data: Bytes,
        doc: Option<serde_json::Value>,
        key: Option<std::sync::Arc<str>>,
        announce: &mut Option<u64>,
    ) {
        let ep = self.ep;
        let mut gap = None;
        let mut new_id = None;
        if let (Some(resume), Some(doc)) = (self.resume.as_mut(), doc.as_ref()) {
            if let Some(id) = resume.extract(doc) {
                let stored = id.encode();
                let shown = id.to_string();
                let hash = super::resume::payload_hash(&data);
                match resume.accept_in(doc, id, hash) {
                    Verdict::Duplicate => {
                        Endpoint::count(&ep.stats.duplicates_dropped, 1);
                        return;
                    }
                    Verdict::Deliver(brk) => {
                        gap = brk.and_then(|b| id_break(ep, b));
                        ep.set_last_upstream_id(shown);
                        // Ids that start again on every connection are no position to keep.
                        new_id = resume.is_global().then(|| (stored, hash, resume.window()));
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
        if ep.cluster.is_clustered() {
            // The stream is the log: every host, this one included, reads it back from there.
            let Some(leading) = ep.cluster.leading() else {
                // The term just ended: the next leader resumes before this message.
                return;
            };
            let upstream_id = self
                .resume
                .as_ref()
                .map(|_| ep.last_upstream_id())
                .filter(|id| !id.is_empty());
            let meta = crate::cluster::stream::Meta {
                binary: kind == Kind::Binary,
                received_at: unix_nanos(),
                key,
                gap,
            };
            // Returns once the append is on its way (or the window has room for it): the
            // stream's acks are read by the term's acker, not here.
            leading
                .submit(&ep.cluster, data, upstream_id.as_deref(), &meta)
                .await;
            return;
        }
        Endpoint::count(&ep.stats.messages_received, 1);
        Endpoint::count(&ep.stats.bytes_received, data.len() as u64);
        let Some(store) = &ep.store else {
            *announce = Some(ep.log.append_quiet(kind, data, unix_nanos(), gap, key));
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
            *announce = Some(ep.log.append_quiet(kind, data, unix_nanos(), gap, key));
            return;
        }
        if ep.log.pending() >= MAX_PENDING {
            ep.log.wait_pending_at_most(MAX_PENDING / 2).await;
        }
        let received_at = unix_nanos();
        let seq = ep
            .log
            .append_pending(kind, data.clone(), received_at, gap, key);
        let mut ops = vec![Op::SeqMark {
            endpoint: std::sync::Arc::clone(&endpoint),
            seq,
        }];
        if let Some((id, hash, window)) = new_id {
            ops.push(Op::UpstreamId {
                endpoint: std::sync::Arc::clone(&endpoint),
                id,
                seq,
                hash,
            });
            if seq.is_multiple_of(TRIM_EVERY) {
                ops.push(Op::UpstreamIdTrim {
                    endpoint: std::sync::Arc::clone(&endpoint),
                    below: seq.saturating_sub(window as u64),
                });
            }
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
