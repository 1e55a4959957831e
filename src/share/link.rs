//! The connection's side of [`Share`]: the queued work rendered as frames with ids from the
//! connection's counter (so they increase together with `{{counter}}`), and inbound messages
//! routed: confirmations to the subscription table, replies to the app that asked, subscription
//! messages tagged with their key for the log.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;

pub use super::inbound::Routed;
use super::key;
use super::{Inner, Share, ShareError, SubState, Target, Work};
use crate::config::{EndpointConfig, IdStyle, RequestsConfig, SubscriptionsConfig};
use crate::dialogue::matching::Match;
use crate::dialogue::template::{frame, ShareValues, Values};

/// One connection's view of the endpoint's shared subscriptions and requests.
pub struct Link<'c> {
    /// Socket.IO: a request is an EVENT packet with an ack id, its reply the ACK's arguments.
    pub(super) socketio: bool,
    pub(super) subs: Option<&'c SubscriptionsConfig>,
    pub(super) reqs: Option<&'c RequestsConfig>,
    pub(super) reply: Match,
    pub(super) error: Match,
    pub(super) refuse: Match,
    pub(super) ends: Vec<Match>,
}

impl<'c> Link<'c> {
    /// The link for `cfg`; `None` when the endpoint shares nothing.
    pub fn new(cfg: &'c EndpointConfig) -> Option<Self> {
        if cfg.subscriptions.is_none() && cfg.requests.is_none() {
            return None;
        }
        let reqs = cfg.requests.as_ref();
        let subs = cfg.subscriptions.as_ref();
        Some(Link {
            socketio: cfg.framing == crate::config::Framing::SocketIo,
            reply: Match::new(reqs.map_or(&[][..], |r| &r.reply)),
            error: Match::new(reqs.map_or(&[][..], |r| &r.error)),
            refuse: Match::new(subs.map_or(&[][..], |s| &s.refuse)),
            ends: reqs.map_or_else(Vec::new, |r| {
                r.stream.ends.iter().map(|m| Match::new(m)).collect()
            }),
            subs,
            reqs,
        })
    }

    /// The connection's opening dialogue is done: every held key is subscribed again (in the
    /// order first held), then every request not sent yet goes out.
    pub fn opened(&self, share: &Share) {
        let mut inner = share.lock();
        inner.open = true;
        inner.queue.clear();
        // Those subscribed on this connection before it took over (make-before-break) stay.
        let mut keys: Vec<(u64, Arc<str>)> = Vec::new();
        for (k, s) in inner.subs.iter_mut() {
            if matches!(s.state, SubState::Queued | SubState::Refused(_)) {
                s.state = SubState::Queued;
                s.sub_id = None;
                keys.push((s.since, Arc::clone(k)));
            }
        }
        keys.sort_unstable();
        let carried = std::mem::take(&mut inner.carry);
        inner.queue.extend(carried);
        let mut reqs: Vec<u64> = inner
            .requests
            .iter()
            .filter(|(_, r)| r.sent.is_none())
            .map(|(n, _)| *n)
            .collect();
        reqs.sort_unstable();
        inner
            .queue
            .extend(keys.into_iter().map(|(_, k)| Work::Subscribe(k)));
        let confirms = self.confirms_to_send(share, &mut inner);
        inner.queue.extend(confirms);
        inner.queue.extend(reqs.into_iter().map(Work::Request));
        let any = !inner.queue.is_empty();
        drop(inner);
        if any {
            share.work.notify_one();
        }
    }

    /// The connection ended: requests in flight fail with `why` (or wait for the next
    /// connection, where the endpoint resends them), subscriptions wait to be made again.
    pub fn lost(&self, share: &Share, why: &str) {
        let mut inner = share.lock();
        inner.next = None;
        inner.carry.clear();
        inner
            .subs
            .retain(|_, s| s.holders > 0 && s.state != SubState::Leaving);
        for (k, s) in inner.subs.iter_mut() {
            if matches!(s.state, SubState::Sent | SubState::Active) {
                // Its holders learn it is not on a connection until it is made again.
                share.tell(k, super::KeyState::Pending);
            }
            s.state = SubState::Queued;
            s.sub_id = None;
        }
        self.end_connection(share, &mut inner, why);
    }

    /// The connection ended: the queue and its maps go; requests in flight fail with `why`
    /// (or wait for the next connection, where the endpoint resends them).
    pub(super) fn end_connection(&self, share: &Share, inner: &mut Inner, why: &str) {
        let idempotent = self.reqs.is_some_and(|r| r.idempotent);
        let resend_streams = self.reqs.is_none_or(|r| r.stream.resend);
        inner.open = false;
        inner.queue.clear();
        inner.ids.clear();
        inner.orphans.clear();
        inner.sub_ids.clear();
        inner.streams.clear();
        Self::confirms_lost(inner);
        let mut failed = Vec::new();
        for (n, r) in inner.requests.iter_mut() {
            if r.sent.take().is_none() {
                continue;
            }
            r.name = None;
            let again = if r.stream { resend_streams } else { idempotent };
            if again {
                Share::count(&share.stats.resent);
            } else {
                failed.push(*n);
            }
        }
        for n in failed {
            if let Some(r) = inner.requests.remove(&n) {
                let _ = r.tx.try_send(Err(ShareError::Unavailable(why.to_owned())));
                Share::count(&share.stats.unavailable);
            }
        }
    }

    /// Renders up to `max` queued items as frames, with ids from `values`' counter.
    pub fn take(&self, share: &Share, max: usize, values: Values<'_>) -> Vec<String> {
        let mut inner = share.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(work) = inner.queue.pop_front() else {
                break;
            };
            if let Some(f) = self.render(share, &mut inner, work, values) {
                out.push(f);
            }
        }
        let more = !inner.queue.is_empty();
        drop(inner);
        if more {
            // Taken on the next turn, once the writer has room.
            share.work.notify_one();
        }
        out
    }

    pub(super) fn next_id(&self, values: Values<'_>) -> Value {
        let n = values
            .counter
            .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed) + 1);
        match self.reqs.map(|r| &r.ids) {
            Some(IdStyle::Text { prefix }) => Value::String(format!("{prefix}{n}")),
            _ => Value::from(n),
        }
    }

    /// Fills a shared frame's template; a fresh id (returned, to route its reply) when it
    /// holds `{{id}}`.
    pub(super) fn fill(
        &self,
        template: &str,
        base: ShareValues<'_>,
        values: Values<'_>,
    ) -> (
        Option<Value>,
        Result<String, crate::dialogue::template::Missing>,
    ) {
        let id = template.contains("{{id}}").then(|| self.next_id(values));
        let sv = ShareValues {
            id: id.as_ref(),
            ..base
        };
        let text = frame(
            template,
            Values {
                share: Some(&sv),
                ..values
            },
        );
        (id, text.map(|t| t.expose().to_owned()))
    }

    fn render(
        &self,
        share: &Share,
        inner: &mut Inner,
        work: Work,
        values: Values<'_>,
    ) -> Option<String> {
        match work {
            Work::Subscribe(k) => {
                let subs = self.subs?;
                let sub = inner.subs.get(&k)?;
                if sub.state != SubState::Queued {
                    return None;
                }
                let sv = ShareValues {
                    key: Some(&k),
                    params: sub.params.as_ref(),
                    ..ShareValues::default()
                };
                let (id, filled) = self.fill(&subs.subscribe, sv, values);
                let sub = inner.subs.get_mut(&k)?;
                let text = match filled {
                    Ok(t) => t,
                    Err(e) => {
                        let why = format!("subscribe frame: {e}");
                        tracing::warn!(key = %k, reason = %why, "cannot subscribe");
                        sub.state = SubState::Refused(why.clone());
                        share.tell(&k, super::KeyState::Refused(why));
                        return None;
                    }
                };
                Share::count(&share.stats.subscribe_frames);
                match id {
                    Some(id) => {
                        sub.state = SubState::Sent;
                        inner
                            .ids
                            .insert(id.to_string(), Target::Sub(Arc::clone(&k)));
                    }
                    None => {
                        sub.state = SubState::Active;
                        share.tell(&k, super::KeyState::Subscribed);
                    }
                }
                Some(text)
            }
            Work::Unsubscribe {
                key: k,
                params,
                sub_id,
            } => {
                let template = self.subs?.unsubscribe.as_deref()?;
                let sv = ShareValues {
                    key: Some(&k),
                    params: params.as_ref(),
                    sub_id: sub_id.as_ref(),
                    ..ShareValues::default()
                };
                let (id, text) = self.fill(template, sv, values);
                let text = text
                    .map_err(|e| tracing::warn!(key = %k, error = %e, "cannot unsubscribe"))
                    .ok()?;
                if let Some(id) = id {
                    inner.ids.insert(id.to_string(), Target::Unsub);
                }
                if let Some(s) = sub_id {
                    inner.sub_ids.remove(&s.to_string());
                }
                Share::count(&share.stats.unsubscribe_frames);
                Some(text)
            }
            Work::Request(n) => {
                let reqs = self.reqs?;
                let id = self.next_id(values);
                let req = inner.requests.get_mut(&n)?;
                if req.sent.is_some() {
                    return None;
                }
                let mut doc = req.doc.clone();
                if let Some(join) = &reqs.join {
                    // A push on a key's subscription carries the subscription's id.
                    let k = doc
                        .pointer(&join.key)
                        .and_then(|v| v.as_str().map(str::to_owned));
                    let sub_id = k.as_deref().and_then(|k| {
                        let sub = inner.subs.get(k).filter(|s| s.state == SubState::Active)?;
                        sub.sub_id.clone()
                    });
                    let Some(sub_id) = sub_id else {
                        let req = inner.requests.remove(&n)?;
                        let k = k.unwrap_or_default();
                        let _ = req.tx.try_send(Err(ShareError::NotJoined(k)));
                        return None;
                    };
                    key::set(&mut doc, &join.id, sub_id);
                }
                let req = inner.requests.get_mut(&n)?;
                if self.socketio {
                    // The ack id goes before the arguments, not inside them.
                    req.sent = Some(id.clone());
                    inner.ids.insert(id.to_string(), Target::Req(n));
                    return Some(super::socketio::event(Some(&id), &doc));
                }
                if !key::set(&mut doc, &reqs.id, id.clone()) {
                    let _ = req.tx.try_send(Err(ShareError::NoIdPlace(reqs.id.clone())));
                    inner.requests.remove(&n);
                    return None;
                }
                req.sent = Some(id.clone());
                inner.ids.insert(id.to_string(), Target::Req(n));
                Some(doc.to_string())
            }
            Work::Confirm(id) => self.render_confirm(share, inner, id, values),
            Work::Cancel { request_id, sub_id } => {
                let template = self.reqs?.stream.cancel.as_deref()?;
                let sv = ShareValues {
                    request_id: Some(&request_id),
                    sub_id: sub_id.as_ref(),
                    ..ShareValues::default()
                };
                let (id, text) = self.fill(template, sv, values);
                let text = text
                    .map_err(|e| tracing::warn!(error = %e, "cannot cancel a stream"))
                    .ok()?;
                if let Some(id) = id {
                    // Its answer is the daemon's business, like an unsubscribe's.
                    inner.ids.insert(id.to_string(), Target::Unsub);
                }
                Some(text)
            }
        }
    }
}
