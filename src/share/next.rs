//! A replacement connection (make-before-break: credential renewal, `max_lifetime`, the
//! upstream's `reconnect`) opened beside the current one: the held keys are subscribed on it
//! before it takes over, with ids from its own counter, so its feed has no gap; at the switch
//! what it subscribed stays, and its confirmations (held until then) are routed as usual.

use std::collections::VecDeque;
use std::sync::Arc;

use super::link::Link;
use super::{Next, Share, Sub, SubState, Target, Work};
use crate::dialogue::template::{ShareValues, Values};

impl Link<'_> {
    /// The current connection ended and the replacement opened beside it took over: what was
    /// subscribed on the replacement stays (its confirmations, held until now, come next);
    /// requests in flight on the old connection end as on a drop.
    pub fn switched(&self, share: &Share, why: &str) {
        let mut inner = share.lock();
        let next = inner.next.take().unwrap_or_default();
        inner.carry.clear();
        let mut released = Vec::new();
        for (k, state) in &next.subs {
            if inner.subs.get(k).is_none_or(|s| s.holders == 0) {
                released.push((Arc::clone(k), state.clone()));
            }
        }
        inner.subs.retain(|_, s| s.holders > 0);
        for (k, s) in inner.subs.iter_mut() {
            let now = next.subs.get(k).cloned().unwrap_or(SubState::Queued);
            if now == SubState::Queued && matches!(s.state, SubState::Sent | SubState::Active) {
                share.tell(k, super::KeyState::Pending);
            }
            s.state = now;
            s.sub_id = None;
        }
        // Let go of while the replacement opened: unsubscribed there once it took over.
        for (k, state) in released {
            match state {
                SubState::Sent => {
                    inner.subs.insert(
                        Arc::clone(&k),
                        Sub {
                            holders: 0,
                            fleet: 0,
                            params: None,
                            since: 0,
                            state: SubState::Leaving,
                            sub_id: None,
                            first_id: None,
                        },
                    );
                }
                _ => inner.carry.push(Work::Unsubscribe {
                    key: k,
                    params: None,
                    sub_id: None,
                }),
            }
        }
        self.end_connection(share, &mut inner, why);
        inner.ids = next.ids;
    }

    /// Notes a message the replacement received while the old connection catches up: true once
    /// every subscribe frame sent on it has its answer (its feed is complete from then on).
    pub fn next_answered(&self, share: &Share, doc: Option<&serde_json::Value>) -> bool {
        let mut inner = share.lock();
        let Some(next) = inner.next.as_mut() else {
            return false;
        };
        if let (Some(reqs), Some(doc)) = (self.reqs, doc) {
            if let Some(id) = doc.pointer(&reqs.id).map(serde_json::Value::to_string) {
                if matches!(next.ids.get(&id), Some(Target::Sub(_))) {
                    next.answered.insert(id);
                }
            }
        }
        Self::next_settled(next)
    }

    /// Whether every subscribe frame sent on the replacement has its answer.
    fn next_settled(next: &Next) -> bool {
        let awaited = next
            .ids
            .iter()
            .filter(|(_, t)| matches!(t, Target::Sub(_)))
            .count();
        next.answered.len() >= awaited
    }

    /// Whether the replacement's subscriptions are all answered (or need none).
    pub fn next_complete(&self, share: &Share) -> bool {
        share.lock().next.as_ref().is_none_or(Self::next_settled)
    }

    /// Forgets a replacement that will not take over.
    pub fn abandon_next(&self, share: &Share) {
        share.lock().next = None;
    }

    /// A replacement is open beside the current connection: the keys to subscribe on it before
    /// it takes over, in the order first held.
    pub fn begin_next(&self, share: &Share) -> VecDeque<Arc<str>> {
        let mut inner = share.lock();
        if self.subs.is_none() {
            return VecDeque::new();
        }
        inner.next = Some(Next::default());
        let mut keys: Vec<(u64, Arc<str>)> = inner
            .subs
            .iter()
            .filter(|(_, s)| s.holders > 0 && s.state != SubState::Leaving)
            .map(|(k, s)| (s.since, Arc::clone(k)))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    /// The subscribe frame of `key` for the replacement, with an id from its counter (in
    /// `values`); `None` when the key was let go meanwhile or the replacement was abandoned.
    pub fn subscribe_next(
        &self,
        share: &Share,
        key: &Arc<str>,
        values: Values<'_>,
    ) -> Option<String> {
        let subs = self.subs?;
        let mut inner = share.lock();
        inner.next.as_ref()?;
        let sub = inner.subs.get(key).filter(|s| s.holders > 0)?;
        let sv = ShareValues {
            key: Some(key),
            params: sub.params.as_ref(),
            ..ShareValues::default()
        };
        let (id, text) = self.fill(&subs.subscribe, sv, values);
        let text = text
            .map_err(|e| tracing::warn!(key = %key, error = %e, "cannot subscribe on the new connection"))
            .ok()?;
        let next = inner.next.as_mut()?;
        match id {
            Some(id) => {
                next.ids
                    .insert(id.to_string(), Target::Sub(Arc::clone(key)));
                next.subs.insert(Arc::clone(key), SubState::Sent);
            }
            None => {
                next.subs.insert(Arc::clone(key), SubState::Active);
            }
        }
        Share::count(&share.stats.subscribe_frames);
        Some(text)
    }
}
