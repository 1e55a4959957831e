//! What an endpoint holds of the fleet: its role for status and metrics, and, while it leads,
//! the writer every inbound message goes through before any subscriber sees it ([`Leading`],
//! in `append.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::append::AppendCounters;
pub use super::append::Leading;
use super::calls::Calls;
use super::queue::PublishQueue;
use super::stream::EndpointStream;

/// An endpoint's part in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not clustered (`cluster = false`).
    Standalone,
    /// Clustered, but NATS has not answered yet.
    Joining,
    /// Another daemon holds the upstream connection; messages come from the stream.
    Follower,
    /// This daemon holds the upstream connection and writes the stream.
    Leader,
}

impl Role {
    /// The name status and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Joining => "joining",
            Role::Follower => "follower",
            Role::Leader => "leader",
        }
    }
}

/// A snapshot of an endpoint's role, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The role now.
    pub role: Role,
    /// The leader's name (`cluster.name` of the daemon holding the lease), when known.
    pub leader: Option<String>,
    /// The lease epoch (KV revision of the leader's last write) last seen; 0 when unknown.
    pub epoch: u64,
    /// Messages in the stream this daemon has not put in its local log yet.
    pub lag: u64,
    /// Why this daemon last stopped leading (lease lost, fenced by the stream), if it did.
    pub stepped_down: Option<String>,
}

/// Per-endpoint cluster state; lives in `Endpoint` for the endpoint's whole life.
pub struct Slot {
    status: Mutex<ClusterStatus>,
    leading: Mutex<Option<Arc<Leading>>>,
    /// The stream's last seq, as last learnt (appends and reads); shared with the term's acker.
    stream_last: Arc<AtomicU64>,
    /// The last seq put in the local log.
    read_last: AtomicU64,
    /// Times the lease changed hands as this daemon saw it.
    pub lease_changes: AtomicU64,
    /// Appends acknowledged by the stream, and their total time (submit to ack) in
    /// microseconds; shared with the term's acker (`append.rs`).
    pub appends: Arc<AtomicU64>,
    /// See [`Slot::appends`].
    pub append_micros: Arc<AtomicU64>,
    /// Upstream messages the stream could not take: larger than the server's `max_payload`.
    pub too_large: Arc<AtomicU64>,
    /// The endpoint's publish work-queue, once the endpoint joined the fleet.
    queue: std::sync::OnceLock<PublishQueue>,
    /// The endpoint's stream, once the endpoint joined the fleet: replays older than the local
    /// window read it (`history.rs`).
    stream: std::sync::OnceLock<EndpointStream>,
    /// Where this host's apps' requests go, once the endpoint joined the fleet.
    calls: std::sync::OnceLock<Calls>,
}

impl Slot {
    /// A slot for an endpoint with `clustered` as its config says.
    pub fn new(clustered: bool) -> Slot {
        Slot {
            status: Mutex::new(ClusterStatus {
                role: if clustered {
                    Role::Joining
                } else {
                    Role::Standalone
                },
                leader: None,
                epoch: 0,
                lag: 0,
                stepped_down: None,
            }),
            leading: Mutex::new(None),
            stream_last: Arc::default(),
            read_last: AtomicU64::new(0),
            lease_changes: AtomicU64::new(0),
            appends: Arc::default(),
            append_micros: Arc::default(),
            too_large: Arc::default(),
            queue: std::sync::OnceLock::new(),
            stream: std::sync::OnceLock::new(),
            calls: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClusterStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The role and what goes with it now.
    pub fn status(&self) -> ClusterStatus {
        let mut s = self.lock().clone();
        let (stream, read) = (
            self.stream_last.load(Ordering::Relaxed),
            self.read_last.load(Ordering::Relaxed),
        );
        s.lag = stream.saturating_sub(read);
        s
    }

    /// Whether the endpoint is clustered at all.
    pub fn is_clustered(&self) -> bool {
        self.lock().role != Role::Standalone
    }

    /// Records the role and the lease as last seen; a new epoch counts as a lease change.
    pub fn set_role(&self, role: Role, leader: Option<String>, epoch: u64) {
        let mut s = self.lock();
        if epoch != 0 && epoch != s.epoch && (s.leader != leader || role != s.role) {
            self.lease_changes.fetch_add(1, Ordering::Relaxed);
        }
        s.role = role;
        s.leader = leader;
        if epoch != 0 {
            s.epoch = epoch;
        }
    }

    /// Records why this daemon stopped leading.
    pub fn stepped_down(&self, why: String) {
        self.lock().stepped_down = Some(why);
    }

    /// The stream reaches `seq` (an append landed, or a read saw it).
    pub fn stream_at(&self, seq: u64) {
        self.stream_last.fetch_max(seq, Ordering::Relaxed);
    }

    /// What a term's acker counts into.
    pub(super) fn counters(&self) -> AppendCounters {
        AppendCounters {
            appends: Arc::clone(&self.appends),
            append_micros: Arc::clone(&self.append_micros),
            too_large: Arc::clone(&self.too_large),
            stream_last: Arc::clone(&self.stream_last),
        }
    }

    /// The local log holds the stream up to `seq`.
    pub fn read_upto(&self, seq: u64) {
        self.read_last.fetch_max(seq, Ordering::Relaxed);
        self.stream_at(seq);
    }

    /// Where this host's apps publish to the endpoint; `None` until it joined the fleet.
    pub fn queue(&self) -> Option<&PublishQueue> {
        self.queue.get()
    }

    /// Records the endpoint's publish queue (the first one stays: it is the same stream).
    pub fn set_queue(&self, queue: PublishQueue) {
        let _ = self.queue.set(queue);
    }

    /// The endpoint's stream; `None` until it joined the fleet.
    pub fn stream(&self) -> Option<&EndpointStream> {
        self.stream.get()
    }

    /// Records the endpoint's stream (the first one stays).
    pub fn set_stream(&self, stream: EndpointStream) {
        let _ = self.stream.set(stream);
    }

    /// Where requests go while another host leads; `None` until the endpoint joined the fleet.
    pub fn calls(&self) -> Option<&Calls> {
        self.calls.get()
    }

    /// Records where requests go (the first one stays).
    pub fn set_calls(&self, calls: Calls) {
        let _ = self.calls.set(calls);
    }

    /// The writer, while this daemon leads.
    pub fn leading(&self) -> Option<Arc<Leading>> {
        self.leading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs (or, with `None`, removes) the leader's writer.
    pub fn set_leading(&self, leading: Option<Arc<Leading>>) {
        *self.leading.lock().unwrap_or_else(|e| e.into_inner()) = leading;
    }
}
