//! A subscription as both APIs see it: the endpoint's current state, then state changes and log
//! items interleaved, read in batches from the log cursor.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::access::{self, Denied, Op, Peer};
use crate::endpoint::{Endpoint, StateEvent};
use crate::filter::Filter;
use crate::log::{Cursor, GapReason, Item, Lagged};
use crate::registry::{Registry, SubscriberSlot, TooManySubscribers};
use crate::share::{Holding, KeyEvent, KeyState, ShareError};

/// Items taken from the log per lock: enough to fill a write, small enough to stay fair.
const BATCH: usize = 256;

/// State changes held back for one subscriber at most. Only a subscriber far behind a flapping
/// endpoint gets near it; past it the oldest are dropped, the latest state always arrives.
const MAX_HELD: usize = 256;

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum SubEvent {
    State(StateEvent),
    Item(Item),
    /// Fell behind under `slow_subscriber = "disconnect"`; the stream ends after this.
    Lagged(Lagged),
    /// A held key's subscription changed state (`Attach` streams only).
    Key(KeyEvent),
}

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    NotFound(#[from] crate::registry::UnknownEndpoint),
    #[error(transparent)]
    TooMany(#[from] TooManySubscribers),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("endpoint {0:?} has no subscriptions configured: there is nothing to attach to")]
    NotShared(String),
    #[error("{0}")]
    BadKey(&'static str),
    #[error(transparent)]
    Share(#[from] ShareError),
}

/// A live subscription; ends when the endpoint's log closes.
pub struct Subscription {
    /// Endpoint name, shared by every event this subscription renders.
    pub endpoint: Arc<str>,
    ep: Arc<Endpoint>,
    cursor: Cursor,
    states: BroadcastStream<StateEvent>,
    /// Transitions waiting for the cursor to pass their `after_seq`, oldest first.
    held: VecDeque<StateEvent>,
    ready: VecDeque<SubEvent>,
    scratch: Vec<Item>,
    done: bool,
    _slot: SubscriberSlot,
    /// The keys an `Attach` stream holds (released when the stream is dropped), and their
    /// state changes.
    holding: Option<(Holding, BroadcastStream<KeyEvent>)>,
    /// What a clustered endpoint's stream has before the local window, read first.
    history: Option<Replay>,
}

/// A replay from a clustered endpoint's stream, and where the cursor goes on after it.
struct Replay {
    items: crate::cluster::history::History,
    /// The seq after the last item replayed.
    next: u64,
    /// The subscriber's filters, for the cursor made when the replay ends.
    filters: Vec<Filter>,
}

impl Subscription {
    /// Opens a subscription on `endpoint` for `peer`, taking one slot of the subscriber budget.
    pub fn open(
        registry: &Registry,
        endpoint: &str,
        from_seq: Option<u64>,
        filters: Vec<Filter>,
        peer: Peer,
    ) -> Result<Subscription, SubscribeError> {
        let ep = registry.lookup(endpoint)?;
        access::check(&ep.config().access, &ep.name, Op::Subscribe, peer)?;
        let slot = registry.subscriber_slot()?;
        // Transitions are subscribed before the current state is read, so none is lost between.
        let states = BroadcastStream::new(ep.state_events());
        let first = ep.state();
        // A clustered endpoint's stream reaches further back than its local window; the
        // cursor is made where that replay ends.
        let history = crate::cluster::history::older(&ep, from_seq, &filters).map(|h| Replay {
            items: h,
            next: from_seq.map_or(0, |n| n + 1),
            filters: filters.clone(),
        });
        let cursor = ep.log.subscribe(from_seq, filters);
        Ok(Subscription {
            endpoint: Arc::clone(&ep.key),
            cursor,
            states,
            held: VecDeque::new(),
            ready: VecDeque::from([SubEvent::State(first)]),
            scratch: Vec::with_capacity(BATCH),
            done: false,
            _slot: slot,
            holding: None,
            history,
            ep,
        })
    }

    /// Opens an `Attach` subscription: holds `keys` (the first holder of a key subscribes it
    /// upstream, with `params`) and reads only their messages.
    pub fn attach(
        registry: &Registry,
        endpoint: &str,
        keys: Vec<String>,
        params: Option<serde_json::Value>,
        from_seq: Option<u64>,
        peer: Peer,
    ) -> Result<Subscription, SubscribeError> {
        if keys.is_empty() {
            return Err(SubscribeError::BadKey("at least one key is needed"));
        }
        if keys.iter().any(String::is_empty) {
            return Err(SubscribeError::BadKey("a key must not be empty"));
        }
        let ep = registry.lookup(endpoint)?;
        let Some(max) = ep.config().subscriptions.as_ref().map(|s| s.max) else {
            return Err(SubscribeError::NotShared(endpoint.to_owned()));
        };
        let mut sub = Subscription::open(registry, endpoint, from_seq, Vec::new(), peer)?;
        let keys: Vec<(Arc<str>, Option<serde_json::Value>)> = keys
            .into_iter()
            .map(|k| (Arc::from(k), params.clone()))
            .collect();
        // Events first, so no change falls between the states read and the stream.
        let events = BroadcastStream::new(ep.share.key_events());
        let (holding, now) = ep.share.hold(keys, max)?;
        sub.cursor.only_keys(holding.keys().to_vec());
        sub.ready.extend(now.into_iter().map(SubEvent::Key));
        sub.holding = Some((holding, events));
        Ok(sub)
    }

    /// Whether this is an `Attach` subscription holding `key`.
    pub fn holds(&self, key: &str) -> bool {
        self.holding
            .as_ref()
            .is_some_and(|(h, _)| h.keys().iter().any(|k| &**k == key))
    }

    /// The endpoint this subscription reads.
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// Ready once this subscription fell out of the window under `slow_subscriber =
    /// "disconnect"` while nothing read it (see [`Cursor::poll_fell_behind`]); counted as a
    /// slow-subscriber gap like a lag found by reading.
    pub fn poll_fell_behind(&mut self, cx: &mut Context<'_>) -> Poll<Lagged> {
        let lagged = std::task::ready!(self.cursor.poll_fell_behind(cx));
        Endpoint::count(&self.ep.stats.delivery.gaps_slow_subscriber, 1);
        self.done = true;
        Poll::Ready(lagged)
    }

    /// Queues the state changes of held keys.
    fn poll_keys(&mut self, cx: &mut Context<'_>) {
        let Some((holding, events)) = self.holding.as_mut() else {
            return;
        };
        loop {
            match Pin::new(&mut *events).poll_next(cx) {
                Poll::Ready(Some(Ok(ev))) if holding.keys().contains(&ev.key) => {
                    self.ready.push_back(SubEvent::Key(ev));
                }
                Poll::Ready(Some(Ok(_))) => {}
                // Missed changes: the current state of every held key instead.
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                    let now = self.ep.share.keys();
                    for k in now {
                        if let Some(key) = holding.keys().iter().find(|h| ***h == *k.key) {
                            let state = match k.state.as_str() {
                                "subscribed" => KeyState::Subscribed,
                                "refused" => KeyState::Refused(String::new()),
                                _ => KeyState::Pending,
                            };
                            self.ready.push_back(SubEvent::Key(KeyEvent {
                                key: Arc::clone(key),
                                state,
                            }));
                        }
                    }
                }
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }

    /// Takes pending state transitions into `held`; a lagged receiver gets the current state.
    fn poll_states(&mut self, cx: &mut Context<'_>) {
        loop {
            let ev = match Pin::new(&mut self.states).poll_next(cx) {
                Poll::Ready(Some(Ok(ev))) => ev,
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => self.ep.state(),
                Poll::Ready(None) | Poll::Pending => return,
            };
            if self.held.len() >= MAX_HELD {
                self.held.pop_front();
            }
            self.held.push_back(ev);
        }
    }

    /// Moves held transitions that happened before seq `before` into `ready`.
    fn release_before(&mut self, before: u64) {
        while self.held.front().is_some_and(|ev| ev.after_seq < before) {
            if let Some(ev) = self.held.pop_front() {
                self.ready.push_back(SubEvent::State(ev));
            }
        }
    }

    /// Queues a batch read from the cursor, each held transition placed before the first item
    /// that came after it.
    fn queue_batch(&mut self) {
        let mut items = std::mem::take(&mut self.scratch);
        let mut rest = items.drain(..).peekable();
        while let Some(item) = rest.next() {
            // An upstream gap belongs to the message that follows it.
            let at = match &item {
                Item::Message(e) => Some(e.seq),
                Item::Gap { reason, .. } if reason.is_upstream() => match rest.peek() {
                    Some(Item::Message(e)) => Some(e.seq),
                    _ => None,
                },
                Item::Gap { from, .. } => Some(*from),
            };
            if let Some(at) = at {
                self.release_before(at);
            }
            self.ready.push_back(SubEvent::Item(item));
        }
        drop(rest);
        self.scratch = items;
        self.release_before(self.cursor.position());
    }

    /// Every held transition, in order: the stream is ending.
    fn release_all(&mut self) {
        self.release_before(u64::MAX);
    }
}

impl Stream for Subscription {
    type Item = SubEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubEvent>> {
        let this = &mut *self;
        if let Some(ev) = this.ready.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if this.done {
            return Poll::Ready(None);
        }
        this.poll_states(cx);
        this.poll_keys(cx);
        if this.history.is_none() {
            this.release_before(this.cursor.position());
        }
        if let Some(ev) = this.ready.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if let Some(replay) = this.history.as_mut() {
            match replay.items.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    replay.next = match &item {
                        Item::Message(e) => e.seq + 1,
                        Item::Gap { to, .. } => to + 1,
                    };
                    count_delivered(&this.ep, std::slice::from_ref(&item));
                    return Poll::Ready(Some(SubEvent::Item(item)));
                }
                Poll::Ready(None) => {
                    if let Some(r) = this.history.take() {
                        let after = r.next.saturating_sub(1);
                        this.cursor = this.ep.log.subscribe(Some(after), r.filters);
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        this.scratch.clear();
        match this.cursor.poll_read(cx, &mut this.scratch, BATCH) {
            Poll::Ready(Ok(true)) => {
                count_delivered(&this.ep, &this.scratch);
                this.queue_batch();
            }
            Poll::Ready(Ok(false)) => {
                // The log closed: hand out the final transitions (e.g. `closed`) and end.
                this.done = true;
                this.poll_states(cx);
                this.release_all();
            }
            Poll::Ready(Err(lagged)) => {
                Endpoint::count(&this.ep.stats.delivery.gaps_slow_subscriber, 1);
                this.done = true;
                this.release_all();
                this.ready.push_back(SubEvent::Lagged(lagged));
            }
            Poll::Pending => {
                // Filtered-out messages move the cursor too, past what held transitions wait for.
                this.release_before(this.cursor.position());
                if this.ready.is_empty() {
                    return Poll::Pending;
                }
            }
        }
        match this.ready.pop_front() {
            Some(ev) => Poll::Ready(Some(ev)),
            None => Poll::Ready(None),
        }
    }
}

/// Adds one batch to the endpoint's delivery counters: one relaxed add per counter that moved,
/// per batch rather than per message.
fn count_delivered(ep: &Endpoint, batch: &[Item]) {
    let (mut messages, mut expired, mut slow, mut upstream, mut restart, mut reset) =
        (0, 0, 0, 0, 0, 0);
    for item in batch {
        match item {
            Item::Message(_) => messages += 1,
            Item::Gap { reason, .. } => match reason {
                GapReason::ReplayExpired => expired += 1,
                GapReason::SlowSubscriber => slow += 1,
                GapReason::UpstreamGap => upstream += 1,
                GapReason::DaemonRestart => restart += 1,
                GapReason::UpstreamReset => reset += 1,
            },
        }
    }
    let d = &ep.stats.delivery;
    for (counter, n) in [
        (&d.messages, messages),
        (&d.gaps_replay_expired, expired),
        (&d.gaps_slow_subscriber, slow),
        (&d.gaps_upstream, upstream),
        (&d.gaps_daemon_restart, restart),
        (&d.gaps_upstream_reset, reset),
    ] {
        if n > 0 {
            Endpoint::count(counter, n);
        }
    }
}
