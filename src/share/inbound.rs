//! Where an inbound message goes when the endpoint shares its conversation: a reply to the app
//! that asked (its own id put back), a subscription's confirmation or refusal to the key's state,
//! a stream's next message to its app, a subscription's message into the log with its key.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::key;
use super::link::Link;
use super::{Inner, Reply, Share, ShareError, SubState, Target, Work};
use crate::config::Route;
use crate::dialogue::matching::Message;

/// Where an inbound message goes.
#[derive(Debug)]
pub enum Routed {
    /// A reply or a confirmation: handled here, not fanned out.
    Consumed,
    /// A subscription's message: fanned out tagged with its key (`Some` payload: rewritten to
    /// the id apps know).
    Key(Arc<str>, Option<Bytes>),
    /// Nothing of the shared conversation: fanned out as it is.
    Plain,
}

impl Link<'_> {
    /// Routes one inbound message (`doc`: its JSON, if it is JSON).
    pub fn inbound(&self, share: &Share, text: Option<&str>, doc: Option<&Value>) -> Routed {
        let Some(doc) = doc else {
            return Routed::Plain;
        };
        let m = Message {
            text,
            doc: Some(doc),
        };
        let mut inner = share.lock();
        if let Some(reqs) = self.reqs {
            if let Some(id) = doc.pointer(&reqs.id).map(Value::to_string) {
                let target = inner.ids.get(&id).cloned();
                let is_reply = self.reply.is_empty() || self.reply.holds(m);
                match target {
                    Some(Target::Req(n)) if is_reply => {
                        return self.reply_to(share, &mut inner, n, &id, doc, m)
                    }
                    Some(Target::Sub(k)) if is_reply => {
                        inner.ids.remove(&id);
                        self.confirmed(share, &mut inner, &k, doc, m);
                        return Routed::Consumed;
                    }
                    Some(Target::Confirm(n)) if is_reply => {
                        let error = !self.error.is_empty() && self.error.holds(m);
                        self.confirm_reply(share, &mut inner, n, &id, error);
                        return Routed::Consumed;
                    }
                    Some(Target::Unsub) if is_reply => {
                        inner.ids.remove(&id);
                        return Routed::Consumed;
                    }
                    Some(Target::Cancel) if is_reply => {
                        if self.ends.iter().any(|e| e.holds(m)) {
                            inner.ids.remove(&id);
                        }
                        Share::count(&share.stats.orphan_replies);
                        return Routed::Consumed;
                    }
                    _ => {}
                }
            }
            if let Some(route) = reqs.stream.route.as_deref() {
                let name = doc.pointer(route).map(Value::to_string);
                if let Some(n) = name.and_then(|s| inner.streams.get(&s).copied()) {
                    return self.stream_item(share, &mut inner, n, route, doc, m);
                }
            }
        }
        let Some(subs) = self.subs else {
            return Routed::Plain;
        };
        match &subs.route {
            Route::Key(rule) => match key::extract(rule, doc) {
                Some(k) => {
                    let k = inner
                        .subs
                        .get_key_value(k.as_str())
                        .map_or_else(|| Arc::from(k.as_str()), |(k, _)| Arc::clone(k));
                    Routed::Key(k, None)
                }
                None => Routed::Plain,
            },
            Route::Id(ptr) => {
                let Some(now) = doc.pointer(ptr) else {
                    return Routed::Plain;
                };
                let Some(k) = inner.sub_ids.get(&now.to_string()).cloned() else {
                    return Routed::Plain;
                };
                let first = inner.subs.get(&k).and_then(|s| s.first_id.clone());
                let rewritten = match first {
                    Some(first) if &first != now => {
                        let mut doc = doc.clone();
                        key::set(&mut doc, ptr, first);
                        Some(Bytes::from(doc.to_string()))
                    }
                    _ => None,
                };
                Routed::Key(k, rewritten)
            }
        }
    }

    /// A subscribe's answer: a refusal, or the subscription is on (named as `server_id` says).
    fn confirmed(
        &self,
        share: &Share,
        inner: &mut Inner,
        k: &Arc<str>,
        doc: &Value,
        m: Message<'_>,
    ) {
        let Some(subs) = self.subs else { return };
        let open = inner.open;
        let Some(sub) = inner.subs.get_mut(k) else {
            return;
        };
        if !self.refuse.is_empty() && self.refuse.holds(m) {
            let mut why = doc.to_string();
            if why.len() > 512 {
                let mut cut = 512;
                while !why.is_char_boundary(cut) {
                    cut -= 1;
                }
                why.truncate(cut);
            }
            tracing::warn!(key = %k, answer = %why, "the upstream refused a subscription");
            let leaving = sub.state == SubState::Leaving;
            sub.state = SubState::Refused(why.clone());
            if leaving {
                inner.subs.remove(k);
            } else {
                share.tell(k, super::KeyState::Refused(why));
            }
            return;
        }
        let sub_id = match &subs.server_id {
            Some(p) => doc.pointer(p).cloned(),
            None => doc
                .pointer(self.reqs.map_or("/id", |r| r.id.as_str()))
                .cloned(),
        };
        if let Some(id) = &sub_id {
            inner.sub_ids.insert(id.to_string(), Arc::clone(k));
            sub.first_id.get_or_insert_with(|| id.clone());
        }
        sub.sub_id = sub_id;
        if sub.state == SubState::Leaving {
            let (params, sub_id) = (sub.params.clone(), sub.sub_id.clone());
            inner.subs.remove(k);
            if open {
                inner.queue.push_back(Work::Unsubscribe {
                    key: Arc::clone(k),
                    params,
                    sub_id,
                });
                share.work.notify_one();
            }
            return;
        }
        sub.state = SubState::Active;
        share.tell(k, super::KeyState::Subscribed);
    }

    /// A reply to request `n` (sent with id text `id`).
    fn reply_to(
        &self,
        share: &Share,
        inner: &mut Inner,
        n: u64,
        id: &str,
        doc: &Value,
        m: Message<'_>,
    ) -> Routed {
        let Some(reqs) = self.reqs else {
            return Routed::Plain;
        };
        let Some(req) = inner.requests.get_mut(&n) else {
            inner.ids.remove(id);
            Share::count(&share.stats.orphan_replies);
            return Routed::Consumed;
        };
        let mut out = doc.clone();
        if self.socketio {
            // An ACK's arguments are the reply.
            out = doc.get("data").cloned().unwrap_or(Value::Null);
        } else {
            match &req.app_id {
                Some(app) => key::set(&mut out, &reqs.id, app.clone()),
                None => {
                    key::remove(&mut out, &reqs.id);
                    true
                }
            };
        }
        let mut deliver = true;
        if req.stream {
            if let Some(name) = reqs.stream.id.as_deref().and_then(|p| doc.pointer(p)) {
                // The reply that names the stream: after a resend it is the same stream to the
                // app, which has its answer already.
                deliver = !req.answered;
                inner.streams.insert(name.to_string(), n);
                let first = req.first_name.get_or_insert_with(|| name.clone()).clone();
                req.name = Some(name.clone());
                if let Some(p) = reqs.stream.id.as_deref() {
                    key::set(&mut out, p, first);
                }
            }
        }
        let error = !self.error.is_empty() && self.error.holds(m);
        // An error answers the whole request: a stream it refused never starts.
        let end = !req.stream || error || self.ends.iter().any(|e| e.holds(m));
        let reply = Reply {
            data: Bytes::from(out.to_string()),
            error,
            end,
        };
        req.answered = true;
        let sent = !deliver || req.tx.try_send(Ok(reply)).is_ok();
        if deliver {
            Share::count(&share.stats.replies);
        }
        if end || !sent {
            let streamed = req.stream;
            if let Some(r) = inner.requests.remove(&n) {
                if let Some(name) = r.name {
                    inner.streams.remove(&name.to_string());
                }
                if !sent {
                    let _ = r.tx.try_send(Err(ShareError::Slow));
                }
            }
            let ended = error || self.ends.iter().any(|e| e.holds(m));
            if !streamed && !self.ends.is_empty() && !ended {
                // The rest of a reply that comes in several messages (a GraphQL query's `next`
                // then `complete`) is nobody's: kept from the log until its end, and the
                // upstream is told to stop (a subscription sent as a plain request would
                // otherwise run for the connection's life).
                inner.orphan(id.to_owned());
                if reqs.stream.cancel.is_some() && inner.open {
                    if let Ok(request_id) = serde_json::from_str::<Value>(id) {
                        inner.queue.push_back(Work::Cancel {
                            request_id,
                            sub_id: None,
                        });
                        share.work.notify_one();
                    }
                }
            } else {
                inner.ids.remove(id);
            }
        }
        Routed::Consumed
    }

    /// A message of stream `n`, found by its name at `route`.
    fn stream_item(
        &self,
        share: &Share,
        inner: &mut Inner,
        n: u64,
        route: &str,
        doc: &Value,
        m: Message<'_>,
    ) -> Routed {
        let Some(req) = inner.requests.get_mut(&n) else {
            return Routed::Consumed;
        };
        let data = match (&req.first_name, doc.pointer(route)) {
            (Some(first), Some(now)) if first != now => {
                let mut out = doc.clone();
                key::set(&mut out, route, first.clone());
                Bytes::from(out.to_string())
            }
            _ => m.text.map_or_else(
                || Bytes::from(doc.to_string()),
                |t| Bytes::copy_from_slice(t.as_bytes()),
            ),
        };
        let end = self.ends.iter().any(|e| e.holds(m));
        let ok = req
            .tx
            .try_send(Ok(Reply {
                data,
                error: false,
                end,
            }))
            .is_ok();
        Share::count(&share.stats.replies);
        if end || !ok {
            if let Some(r) = inner.requests.remove(&n) {
                if let Some(name) = r.name {
                    inner.streams.remove(&name.to_string());
                }
                if !ok {
                    let _ = r.tx.try_send(Err(ShareError::Slow));
                }
            }
        }
        Routed::Consumed
    }
}
