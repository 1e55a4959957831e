//! What the APIs share with an endpoint's upstream task: its log, outbox, state and counters.
//!
//! The upstream task is the only writer of state and of the log; the APIs read, subscribe,
//! publish into the outbox and ask for a reconnect through [`Endpoint::request_reconnect`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, oneshot, watch, Notify};

use crate::config::EndpointConfig;
use crate::dialogue::capture::Captures;
use crate::log::Log;
use crate::outbox::Outbox;
use crate::ratelimit::RateLimit;
use crate::store::{Op, Restored, Store};
use crate::upstream::resume::{Memory, UpstreamId};

/// Endpoint connection state (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected,
    Backoff,
    Failed,
    Closed,
}

impl State {
    /// Lowercase name, as in logs, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Closed => "closed",
        }
    }
}

/// A state transition with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEvent {
    pub state: State,
    pub reason: String,
    /// Unix nanoseconds.
    pub at: u64,
    /// The last seq assigned when the transition happened (0 before any). Subscribers get the
    /// event only after every message up to this seq, so a state change never overtakes the
    /// messages that arrived before it, even those still waiting for their durable commit.
    pub after_seq: u64,
}

/// Counters and gauges shown by status and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Upstream messages fanned out (after resume dedup and `drop` filters).
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Upstream messages discarded as already delivered (resume dedup).
    pub duplicates_dropped: AtomicU64,
    /// Upstream messages discarded by `drop` filters.
    pub filtered: AtomicU64,
    /// Upstream messages the dialogue kept from apps: a rule's `drop`, or the opening dialogue
    /// (what arrives while an `on_connect` step waits, unless it delivers).
    pub dialogue_kept: AtomicU64,
    /// Times the upstream's ids started again (resume saw a reset).
    pub upstream_id_resets: AtomicU64,
    /// Compressed bytes of inbound binary messages handed to `decode`.
    pub decode_input_bytes: AtomicU64,
    /// Inbound messages `decode` could not inflate (dropped; a stream's connection reopened).
    pub decode_corrupt: AtomicU64,
    /// Inbound messages that inflated past `max_message_size` (the connection closed with 1009).
    pub decode_too_big: AtomicU64,
    /// Outbox messages flushed upstream.
    pub messages_sent: AtomicU64,
    /// Last ping round trip in microseconds; 0 before the first pong.
    pub rtt_micros: AtomicU64,
    /// Current credential's expiry in Unix nanoseconds; 0 when unknown.
    pub auth_expires_at: AtomicU64,
    /// Payload bytes of outbox messages flushed upstream (the upstream writer counts them).
    pub bytes_sent: AtomicU64,
    /// Credential renewals that succeeded / failed (the auth code counts them).
    pub auth_renewals_ok: AtomicU64,
    pub auth_renewals_failed: AtomicU64,
    /// Connection attempts by outcome, counted from state transitions in `set_state`.
    pub connects: ConnectStats,
    /// What subscribers were handed, counted by `api::subscription` per batch read.
    pub delivery: DeliveryStats,
}

/// Connection attempts by outcome: an attempt is a `connecting` state that ends.
#[derive(Debug, Default)]
pub struct ConnectStats {
    /// `connecting` → `connected`.
    pub ok: AtomicU64,
    /// `connecting` → `backoff`: failed, will be retried.
    pub error: AtomicU64,
    /// `connecting` → `failed`: failed, retrying cannot help.
    pub fatal: AtomicU64,
}

/// Messages and gaps handed to subscribers (summed over all of them).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Messages handed to a subscriber stream; one per subscriber per message.
    pub messages: AtomicU64,
    pub gaps_replay_expired: AtomicU64,
    /// Includes subscribers disconnected under `slow_subscriber = "disconnect"`.
    pub gaps_slow_subscriber: AtomicU64,
    pub gaps_upstream: AtomicU64,
    pub gaps_daemon_restart: AtomicU64,
    pub gaps_upstream_reset: AtomicU64,
}

/// One configured endpoint, shared by its upstream task and the APIs.
pub struct Endpoint {
    pub name: String,
    /// The name as a shared string, for the store ops and events made per message.
    pub key: Arc<str>,
    /// Swapped by a reload that changes this endpoint; the upstream task reads a snapshot per
    /// run, the APIs read it per request (so access lists apply at once).
    config: RwLock<Arc<EndpointConfig>>,
    /// Set while a reload restarts the upstream task, so the old task does not announce
    /// `closed` to subscribers that stay.
    restarting: std::sync::atomic::AtomicBool,
    pub log: Arc<Log>,
    pub outbox: Outbox,
    pub stats: Stats,
    /// Current state, for status and for subscribers joining late.
    state: watch::Sender<StateEvent>,
    /// Every transition, in order, for live subscribers.
    events: broadcast::Sender<StateEvent>,
    /// Redacted URL of the current (or last tried) connection.
    url: Mutex<String>,
    /// Last upstream id delivered, for status; empty without resume.
    last_upstream_id: Mutex<String>,
    /// Asks the upstream task to drop its connection (or leave `failed`) and connect now.
    reconnect: Notify,
    /// Where seq marks, upstream ids and persisted replay entries go; `None` keeps everything
    /// in memory (seqs then restart at 1 with the process).
    pub store: Option<Store>,
    /// Highest seq durably reserved in the store; the upstream task raises it in blocks.
    pub seq_leased: AtomicU64,
    /// What resume remembers of the upstream's ids between runs of the upstream task: read
    /// back from the store at startup, handed over across a reload's restart.
    resume_memory: Mutex<Option<Memory>>,
    /// The values captured from the upstream's messages, between runs of the upstream task:
    /// those a resume needs read back from the store at startup, all of them across a reload.
    captures: Mutex<Option<Captures>>,
    /// Operators waiting for the resume position to be forgotten (`reset-resume`).
    resume_resets: Mutex<Vec<ResumeReset>>,
    /// The send rate limit every frame to the upstream waits on; here rather than in a
    /// connection so that reconnects and reload restarts share one history.
    pub rate: RateLimit,
    /// Upstream subscriptions held by apps and their requests in flight (`crate::share`).
    pub share: Arc<crate::share::Share>,
    /// The last hour's transitions, for the status page; `set_state` records them.
    pub history: crate::history::History,
    /// The endpoint's part in the fleet (`crate::cluster`); `Standalone` unless `cluster = true`.
    pub cluster: crate::cluster::slot::Slot,
}

/// The answer to one reset-resume request: the forgotten position, or why it failed.
pub type ResumeReset = oneshot::Sender<Result<Option<String>, String>>;

/// Current time in Unix nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Endpoint {
    /// A new endpoint in `connecting` state, continuing from what the store had for it.
    pub fn new(
        name: String,
        config: EndpointConfig,
        store: Option<Store>,
        restored: Restored,
    ) -> Arc<Endpoint> {
        let replay = if config.replay.persist {
            restored.replay.clone()
        } else {
            Vec::new()
        };
        // Keys are not stored with the entries: those a message spells itself are read again.
        let key_rule = match config.subscriptions.as_ref().map(|s| &s.route) {
            Some(crate::config::Route::Key(rule)) => Some(rule.clone()),
            _ => None,
        };
        let key_of = |data: &[u8]| {
            let rule = key_rule.as_ref()?;
            let doc = serde_json::from_slice::<serde_json::Value>(data).ok()?;
            crate::share::key::extract(rule, &doc).map(|k| Arc::from(k.as_str()))
        };
        // A clustered endpoint's seqs are its stream's: the log fills from there.
        let log = if config.cluster {
            Log::mirror(&config.replay)
        } else {
            let log = Log::restored_keyed(&config.replay, restored.seq_mark + 1, replay, key_of);
            if let Some(hole) = restored.seq_hole {
                log.set_restart_hole(hole);
            }
            log
        };
        let cluster = crate::cluster::slot::Slot::new(config.cluster);
        let key: Arc<str> = Arc::from(name.as_str());
        let outbox = Outbox::restored(
            config.outbox.clone(),
            Arc::clone(&key),
            store.clone(),
            &restored,
        );
        let first = StateEvent {
            state: State::Connecting,
            reason: "starting".into(),
            at: unix_nanos(),
            after_seq: log.next_seq() - 1,
        };
        let url = config.url.shown();
        let history = crate::history::History::default();
        history.record(&first);
        // Confirmed publishes are durable where the outbox is.
        let share = Arc::new(crate::share::Share::with_confirms(
            store.clone().filter(|_| config.outbox.durable),
            Arc::clone(&key),
            &restored.confirm,
            config.outbox.max_age,
        ));
        Arc::new(Endpoint {
            name,
            key,
            log,
            outbox,
            stats: Stats::default(),
            state: watch::Sender::new(first),
            events: broadcast::Sender::new(64),
            url: Mutex::new(url),
            last_upstream_id: Mutex::new(String::new()),
            reconnect: Notify::new(),
            store,
            seq_leased: AtomicU64::new(restored.seq_mark),
            resume_memory: Mutex::new(Some(Memory {
                last: restored.upstream_id.as_deref().and_then(UpstreamId::decode),
                recent: restored
                    .recent_ids
                    .iter()
                    .filter_map(|(id, hash)| Some((UpstreamId::decode(id)?, *hash)))
                    .collect(),
            })),
            captures: Mutex::new(Some(Captures::restored(&restored.captures))),
            resume_resets: Mutex::new(Vec::new()),
            rate: RateLimit::new(config.rate_limit.clone()),
            cluster,
            share,
            history,
            config: RwLock::new(Arc::new(config)),
            restarting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The endpoint's current settings.
    pub fn config(&self) -> Arc<EndpointConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the settings; the next upstream run uses them. Replay and outbox sizes stay
    /// those the endpoint started with.
    pub fn set_config(&self, cfg: EndpointConfig) {
        self.rate.configure(cfg.rate_limit.clone());
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
    }

    /// Marks (or clears) an upstream restart by reload.
    pub fn set_restarting(&self, on: bool) {
        self.restarting
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// True while a reload restarts the upstream task.
    pub fn is_restarting(&self) -> bool {
        self.restarting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What resume remembered when the upstream task last stopped (or the store at startup);
    /// taken by the task that starts next.
    pub fn take_resume_memory(&self) -> Option<Memory> {
        self.resume_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Hands resume's memory to the next run of the upstream task.
    pub fn keep_resume_memory(&self, memory: Memory) {
        *self.resume_memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(memory);
    }

    /// The captured values the last run of the upstream task left (or the store had at
    /// startup); taken by the run that starts next.
    pub fn take_captures(&self) -> Captures {
        self.captures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default()
    }

    /// Hands the captured values to the next run of the upstream task.
    pub fn keep_captures(&self, captures: Captures) {
        *self.captures.lock().unwrap_or_else(|e| e.into_inner()) = Some(captures);
    }

    /// Records a transition; logs it and tells subscribers.
    pub fn set_state(&self, state: State, reason: impl Into<String>) {
        let ev = StateEvent {
            state,
            reason: reason.into(),
            at: unix_nanos(),
            after_seq: self.log.next_seq() - 1,
        };
        match state {
            State::Failed => {
                tracing::error!(endpoint = %self.name, state = state.as_str(), reason = %ev.reason, "endpoint state")
            }
            State::Backoff => {
                tracing::warn!(endpoint = %self.name, state = state.as_str(), reason = %ev.reason, "endpoint state")
            }
            _ => {
                tracing::info!(endpoint = %self.name, state = state.as_str(), reason = %ev.reason, "endpoint state")
            }
        }
        // Before the broadcast: a reader woken by it finds the change in the history.
        self.history.record(&ev);
        let previous = self.state.send_replace(ev.clone());
        if previous.state == State::Connecting {
            let c = &self.stats.connects;
            match state {
                State::Connected => Self::count(&c.ok, 1),
                State::Backoff => Self::count(&c.error, 1),
                State::Failed => Self::count(&c.fatal, 1),
                // Shutdown or a new attempt interrupted this one: it has no outcome.
                State::Connecting | State::Closed => {}
            }
        }
        let _ = self.events.send(ev);
    }

    /// The current state and its reason.
    pub fn state(&self) -> StateEvent {
        self.state.borrow().clone()
    }

    /// A receiver of future transitions; take it before reading [`state`](Self::state) so
    /// nothing falls between the two.
    pub fn state_events(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    /// Waits until the state satisfies `pred`; for clients and tests.
    pub async fn wait_state(&self, pred: impl Fn(&StateEvent) -> bool) -> StateEvent {
        let mut rx = self.state.subscribe();
        let found = match rx.wait_for(|s| pred(s)).await {
            Ok(s) => Some(s.clone()),
            Err(_) => None,
        };
        found.unwrap_or_else(|| self.state())
    }

    /// Sets the redacted URL shown in status.
    pub fn set_url(&self, redacted: String) {
        *self.url.lock().unwrap_or_else(|e| e.into_inner()) = redacted;
    }

    /// The redacted URL of the current connection.
    pub fn url(&self) -> String {
        self.url.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the last upstream id shown in status.
    pub fn set_last_upstream_id(&self, id: String) {
        *self
            .last_upstream_id
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// Last upstream id delivered, or empty.
    pub fn last_upstream_id(&self) -> String {
        self.last_upstream_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records in the store that this endpoint stopped cleanly, once its upstream task has
    /// ended: the exact last seq is kept, so the next start continues right after it instead of
    /// above a block of seqs reserved ahead of use.
    pub async fn record_clean_stop(&self) {
        let Some(store) = &self.store else { return };
        let last = self.log.next_seq() - 1;
        let op = Op::SeqStop {
            endpoint: Arc::clone(&self.key),
            last,
        };
        if let Err(e) = store.commit(vec![op]).await {
            tracing::warn!(endpoint = %self.name, error = %e, "cannot record the last seq; the next start continues above the reserved ones");
        }
    }

    /// Asks the upstream task to forget the resume position and reconnect; resolves with the
    /// position forgotten (`None` when there was none) once it is gone from memory and store.
    pub async fn reset_resume(&self) -> Result<Option<String>, String> {
        let (tx, rx) = oneshot::channel();
        self.resume_resets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        self.request_reconnect();
        rx.await
            .unwrap_or_else(|_| Err("the endpoint stopped before the reset was done".into()))
    }

    /// The pending reset-resume requests, for the upstream task to carry out and answer.
    pub fn take_resume_resets(&self) -> Vec<ResumeReset> {
        std::mem::take(&mut *self.resume_resets.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether a reset-resume request waits for the upstream task.
    pub fn resume_reset_pending(&self) -> bool {
        !self
            .resume_resets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Asks the upstream task to reconnect now (also leaves `failed`).
    pub fn request_reconnect(&self) {
        self.reconnect.notify_one();
    }

    /// Resolves when a reconnect was requested.
    pub async fn reconnect_requested(&self) {
        self.reconnect.notified().await;
    }

    /// Adds to a counter.
    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
