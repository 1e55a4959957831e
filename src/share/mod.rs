//! An endpoint's conversation shared among apps (issue 14): upstream subscriptions held by key
//! with reference counts, and requests whose upstream ids the daemon assigns.
//!
//! The APIs take holds and make requests here ([`Share::hold`], [`Share::request`]); the
//! upstream task's [`link::Link`] turns the queued work into frames on the live connection, in
//! order and under the endpoint's rate limit, and routes what comes back: confirmations to the
//! subscription table, replies to the app that asked, subscription messages into the log with
//! their key. Subscriptions and requests are in memory: a subscription lives as long as an app
//! holds it, a request as long as its app waits. Confirmed publishes (`confirm.rs`) are kept in
//! the store until the upstream answers them.

pub mod confirm;
mod fleet;
mod inbound;
pub mod key;
pub mod link;
mod next;
mod pending;
pub mod socketio;
pub use pending::{Pending, Replies};
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, Notify};

/// Replies a stream may have waiting for its app; a stream further behind is ended (the
/// upstream is never slowed for one app).
const STREAM_QUEUE: usize = 1024;

/// Why a hold or a request was refused or ended. Serialized as JSON between the hosts of a
/// fleet (`crate::cluster::calls`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareError {
    /// `max_per_connection` subscriptions are held already.
    #[error("the endpoint holds {0} upstream subscriptions, its max_per_connection")]
    TooManyKeys(usize),
    /// `max_in_flight` requests wait already.
    #[error("{0} requests are in flight, the endpoint's requests.max_in_flight")]
    TooManyRequests(usize),
    /// No reply within `requests.timeout`.
    #[error("no reply within {0}")]
    Timeout(String),
    /// The connection dropped with the request in flight (and it is not idempotent).
    #[error("the upstream connection dropped with the request in flight: {0}")]
    Unavailable(String),
    /// A request on a key's subscription (`requests.join`) whose key is not subscribed.
    #[error("{0:?} is not subscribed on the connection: hold it (Attach) before sending on it")]
    NotJoined(String),
    /// The request cannot carry an id where `requests.id` says.
    #[error("the request has no place for an id at {0:?}: a JSON object (or array) with that parent is needed")]
    NoIdPlace(String),
    /// The app read a stream too slowly.
    #[error("the stream's app fell {STREAM_QUEUE} replies behind")]
    Slow,
    /// The endpoint stopped.
    #[error("the endpoint stopped")]
    Closed,
}

/// A subscription's state as its holders see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Waiting for a connection, or sent and not confirmed yet.
    Pending,
    /// Confirmed by the upstream (or sent, where it confirms nothing).
    Subscribed,
    /// The upstream refused it; it is asked again on the next connection.
    Refused(String),
}

impl KeyState {
    /// The name as status shows it, for a name read back (`pending` for one unknown).
    pub fn named(name: &str) -> &'static str {
        match name {
            "subscribed" => "subscribed",
            "refused" => "refused",
            _ => "pending",
        }
    }

    /// Lowercase name, as in status and NDJSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Subscribed => "subscribed",
            KeyState::Refused(_) => "refused",
        }
    }
}

/// A change of one key's state.
#[derive(Debug, Clone)]
pub struct KeyEvent {
    pub key: Arc<str>,
    pub state: KeyState,
}

/// One reply routed to the app that asked: the upstream's message with the app's own id put
/// back (and a stream's first name, where the upstream renamed it after a reconnect).
#[derive(Debug, Clone)]
pub struct Reply {
    pub data: Bytes,
    /// The reply matched `requests.error`: the upstream's own error, passed through.
    pub error: bool,
    /// The last message of a stream (or the only reply of a request).
    pub end: bool,
}

/// One held subscription.
struct Sub {
    holders: usize,
    /// Of the holders, those other hosts of the fleet declared (`fleet.rs`).
    fleet: usize,
    params: Option<Value>,
    /// When it was first held: subscriptions are sent again in this order.
    since: u64,
    state: SubState,
    /// Its id on the current connection (the server's, or its subscribe request's).
    sub_id: Option<Value>,
    /// The first id it ever had: apps see this one in its messages.
    first_id: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum SubState {
    /// To be sent when the connection is ready.
    Queued,
    /// Sent; the confirmation is awaited.
    Sent,
    Active,
    Refused(String),
    /// Its last holder left while the subscribe was in flight: unsubscribed once confirmed.
    Leaving,
}

/// Work for the connection, in order.
#[derive(Debug)]
pub(crate) enum Work {
    Subscribe(Arc<str>),
    Unsubscribe {
        key: Arc<str>,
        params: Option<Value>,
        sub_id: Option<Value>,
    },
    Request(u64),
    /// A confirmed publish, by its confirm id.
    Confirm(u64),
    /// An app ended its stream: tell the upstream.
    Cancel {
        request_id: Value,
        sub_id: Option<Value>,
    },
}

/// One request waiting for its reply (or a stream for its next).
struct Req {
    /// The app's request, its own id still in it.
    doc: Value,
    app_id: Option<Value>,
    stream: bool,
    tx: mpsc::Sender<Result<Reply, ShareError>>,
    /// The id it was sent with on the current connection.
    sent: Option<Value>,
    /// A stream's first name: apps see it, whatever the upstream calls it later.
    first_name: Option<Value>,
    /// Its current name on the connection.
    name: Option<Value>,
    /// The app has its first reply (a stream requested again answers again: kept back).
    answered: bool,
}

/// What an id sent on the current connection stands for.
#[derive(Debug, Clone)]
enum Target {
    Sub(Arc<str>),
    Unsub,
    Req(u64),
    Confirm(u64),
    Cancel,
}

#[derive(Default)]
struct Inner {
    subs: BTreeMap<Arc<str>, Sub>,
    since: u64,
    queue: VecDeque<Work>,
    requests: HashMap<u64, Req>,
    next_req: u64,
    /// The connection takes work (its opening dialogue is done).
    open: bool,
    /// On the current connection: what each id sent stands for (by its JSON text).
    ids: HashMap<String, Target>,
    /// On the current connection: subscription id → key.
    sub_ids: HashMap<String, Arc<str>>,
    /// On the current connection: stream name → request.
    streams: HashMap<String, u64>,
    /// The connection that will replace the current one (make-before-break), while it opens.
    next: Option<Next>,
    /// Work for the next connection once it opens, besides what the table says (unsubscribing
    /// what a replacement subscribed for a key let go meanwhile).
    carry: Vec<Work>,
    /// Ids whose replies nobody waits for any more, oldest first: at most [`MAX_ORPHANS`] are
    /// remembered, so requests that never get a reply cannot grow the map without bound.
    orphans: VecDeque<String>,
    /// Confirmed publishes waiting for their reply.
    confirms: confirm::Queue,
    /// While another host of the fleet holds the connection: the states it published, shown
    /// instead of this table's (`fleet.rs`).
    view: Option<HashMap<Arc<str>, KeyState>>,
}

/// Ids of abandoned requests remembered per connection, to keep their late replies from the
/// log; past this the oldest are forgotten (a reply that late reaches the log as a message).
const MAX_ORPHANS: usize = 10_000;

impl Inner {
    /// Marks `id` (JSON text) as a request nobody waits for.
    fn orphan(&mut self, id: String) {
        self.ids.insert(id.clone(), Target::Cancel);
        self.orphans.push_back(id);
        while self.orphans.len() > MAX_ORPHANS {
            if let Some(old) = self.orphans.pop_front() {
                if matches!(self.ids.get(&old), Some(Target::Cancel)) {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// What was sent on a replacement connection before the switch.
#[derive(Default)]
struct Next {
    ids: HashMap<String, Target>,
    /// The keys subscribed on it: `Sent` (a confirmation is awaited) or `Active`.
    subs: HashMap<Arc<str>, SubState>,
    /// Subscribe frames sent on it whose answers came, by id.
    answered: std::collections::HashSet<String>,
}

/// Counters shown by status and metrics.
#[derive(Debug, Default)]
pub struct ShareStats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub timeouts: AtomicU64,
    /// Requests failed because their connection dropped.
    pub unavailable: AtomicU64,
    /// Requests sent again on a new connection (idempotent ones, and open streams).
    pub resent: AtomicU64,
    /// Replies whose request was gone (timed out, or its app left).
    pub orphan_replies: AtomicU64,
    pub subscribe_frames: AtomicU64,
    pub unsubscribe_frames: AtomicU64,
    /// Confirmed publishes the upstream answered.
    pub confirmed: AtomicU64,
}

/// One subscription as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyStatus {
    pub key: String,
    pub holders: usize,
    /// `pending`, `subscribed` or `refused`.
    pub state: String,
}

/// An endpoint's shared subscriptions and requests.
pub struct Share {
    inner: Mutex<Inner>,
    /// Wakes the connection: work was queued.
    work: Notify,
    events: broadcast::Sender<KeyEvent>,
    pub stats: ShareStats,
    /// Where confirmed publishes are kept (`None`: in memory only).
    durable: Option<confirm::Durable>,
    /// Bumped whenever this host's apps take or let go of a hold (`fleet.rs`).
    local: tokio::sync::watch::Sender<u64>,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            inner: Mutex::default(),
            work: Notify::new(),
            events: broadcast::Sender::new(1024),
            stats: ShareStats::default(),
            durable: None,
            local: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Holds keys until dropped; the last holder of a key leaving unsubscribes it.
pub struct Holding {
    share: Arc<Share>,
    keys: Vec<Arc<str>>,
    /// Held for another host of the fleet, not an app of this one.
    fleet: bool,
}

impl Holding {
    /// The keys held.
    pub fn keys(&self) -> &[Arc<str>] {
        &self.keys
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.share.release(&self.keys, self.fleet);
    }
}

impl Share {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation leaves the maps consistent before it can panic; poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// State changes of every key; an app filters for its own.
    pub fn key_events(&self) -> broadcast::Receiver<KeyEvent> {
        self.events.subscribe()
    }

    /// Takes a hold on `keys` (each with its parameters for the subscribe frame); the first
    /// holder of a key subscribes it upstream. `max`: subscriptions allowed at once.
    pub fn hold(
        self: &Arc<Self>,
        keys: Vec<(Arc<str>, Option<Value>)>,
        max: usize,
    ) -> Result<(Holding, Vec<KeyEvent>), ShareError> {
        self.hold_as(keys, max, false)
    }

    /// [`hold`](Self::hold), for an app of this host (`fleet = false`) or another host's.
    fn hold_as(
        self: &Arc<Self>,
        keys: Vec<(Arc<str>, Option<Value>)>,
        max: usize,
        fleet: bool,
    ) -> Result<(Holding, Vec<KeyEvent>), ShareError> {
        let mut inner = self.lock();
        let new = keys
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !inner.subs.contains_key(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if inner.subs.len() + new > max {
            return Err(ShareError::TooManyKeys(max));
        }
        let mut now = Vec::new();
        let mut held = Vec::new();
        let mut wake = false;
        for (key, params) in keys {
            if held.contains(&key) {
                continue;
            }
            held.push(Arc::clone(&key));
            let since = inner.since;
            let open = inner.open;
            match inner.subs.get_mut(&key) {
                Some(sub) => {
                    sub.holders += 1;
                    sub.fleet += usize::from(fleet);
                    if sub.state == SubState::Leaving {
                        // Still subscribed upstream: it stays, nothing to send.
                        sub.state = SubState::Sent;
                    }
                }
                None => {
                    inner.since += 1;
                    inner.subs.insert(
                        Arc::clone(&key),
                        Sub {
                            holders: 1,
                            fleet: usize::from(fleet),
                            params,
                            since,
                            state: SubState::Queued,
                            sub_id: None,
                            first_id: None,
                        },
                    );
                    if open {
                        inner.queue.push_back(Work::Subscribe(Arc::clone(&key)));
                        wake = true;
                    }
                }
            }
            let state = inner.shown(&key);
            now.push(KeyEvent { key, state });
        }
        drop(inner);
        if wake {
            self.work.notify_one();
        }
        if !fleet {
            self.local.send_modify(|n| *n += 1);
        }
        Ok((
            Holding {
                share: Arc::clone(self),
                keys: held,
                fleet,
            },
            now,
        ))
    }

    /// Lets go of `keys` (held for another host when `fleet`); a key nobody holds any more is
    /// unsubscribed.
    fn release(&self, keys: &[Arc<str>], fleet: bool) {
        let mut inner = self.lock();
        let mut wake = false;
        for key in keys {
            let Some(sub) = inner.subs.get_mut(key) else {
                continue;
            };
            sub.holders = sub.holders.saturating_sub(1);
            if fleet {
                sub.fleet = sub.fleet.saturating_sub(1);
            }
            if sub.holders > 0 {
                continue;
            }
            match sub.state {
                SubState::Queued | SubState::Refused(_) => {
                    inner.subs.remove(key);
                    inner
                        .queue
                        .retain(|w| !matches!(w, Work::Subscribe(k) if k == key));
                }
                SubState::Sent => sub.state = SubState::Leaving,
                SubState::Leaving => {}
                SubState::Active => {
                    let (params, sub_id) = (sub.params.clone(), sub.sub_id.clone());
                    inner.subs.remove(key);
                    if inner.open {
                        inner.queue.push_back(Work::Unsubscribe {
                            key: Arc::clone(key),
                            params,
                            sub_id,
                        });
                        wake = true;
                    }
                }
            }
        }
        drop(inner);
        if wake {
            self.work.notify_one();
        }
        if !fleet {
            self.local.send_modify(|n| *n += 1);
        }
    }

    /// Subscriptions with their holders and state, by key.
    pub fn keys(&self) -> Vec<KeyStatus> {
        let inner = self.lock();
        inner
            .subs
            .iter()
            .map(|(k, s)| KeyStatus {
                key: k.to_string(),
                holders: s.holders,
                state: inner.shown(k).as_str().to_owned(),
            })
            .collect()
    }

    /// Waits until work is queued for the connection.
    pub(crate) async fn work_queued(&self) {
        self.work.notified().await
    }

    fn tell(&self, key: &Arc<str>, state: KeyState) {
        let _ = self.events.send(KeyEvent {
            key: Arc::clone(key),
            state,
        });
    }
}

impl Sub {
    fn shown(&self) -> KeyState {
        match &self.state {
            SubState::Queued | SubState::Sent => KeyState::Pending,
            SubState::Active | SubState::Leaving => KeyState::Subscribed,
            SubState::Refused(r) => KeyState::Refused(r.clone()),
        }
    }
}
