//! The embedded database (one redb file): outboxes, idempotency keys, per-endpoint sequence
//! marks, the last upstream id, and the persisted replay log.
//!
//! All writes go through one committer thread that drains every queued job into a single write
//! transaction and commits it durably: many concurrent publishers (and the upstream tasks) share
//! one fsync. A job's completion runs on the committer thread once its commit is known, so it
//! must be quick (set a flag, wake a task).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::TableDefinition;

use crate::log::Kind;

mod committer;
mod open;

use committer::Committer;
use open::open_db;
pub use open::OpenError;

/// Outbox entries: (endpoint, outbox id) → kind, enqueue time (Unix ms), payload.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// Idempotency keys: (endpoint, key) → (outbox id, first seen Unix ms).
const IDEM: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("idempotency");
/// Marks: (endpoint, name) → value; names are `seq` (highest seq that may have been used),
/// `outbox_next` (next outbox id), and `lease_from`/`lease_upto` (the last block of seqs reserved
/// ahead of use: while `lease_upto` equals `seq`, seqs from `lease_from` on may never have been
/// used; a clean stop removes them).
const MARKS: TableDefinition<(&str, &str), u64> = TableDefinition::new("marks");
/// Last delivered upstream id per endpoint, encoded by [`crate::upstream::resume`].
const UPSTREAM_IDS: TableDefinition<&str, &str> = TableDefinition::new("upstream_ids");
/// Recently delivered upstream ids: (endpoint, seq) → payload hash (8 bytes, little endian) and
/// the encoded id. Resume's memory of them, so a restart tells a resend from a reset as well as
/// a running daemon does; trimmed to the endpoint's `resume.dedup_window` messages.
const UPSTREAM_RECENT: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("upstream_recent");
/// Persisted replay log: (endpoint, seq) → kind, receive time (Unix ns), payload.
const REPLAY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("replay");
/// (endpoint, capture name) → its value as JSON text: the captured values a resume needs
/// across a restart (a session id, the URL to resume on).
const CAPTURES: TableDefinition<(&str, &str), &str> = TableDefinition::new("captures");
/// Confirmed publishes waiting for the upstream's reply: (endpoint, confirm id) → kind, enqueue
/// time (Unix ms), payload. Kept apart from the outbox, whose range deletes assume FIFO order:
/// these leave in the order their replies come.
const CONFIRM: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("confirm");

/// Jobs committed together at most; bounds one transaction's size and latency.
const MAX_GROUP: usize = 8192;

/// A store failure; the message names the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store {path}: {msg}")]
pub struct StoreError {
    pub path: PathBuf,
    pub msg: String,
    /// The disk (or file size limit) is full: publishers get RESOURCE_EXHAUSTED.
    pub full: bool,
}

/// One change to the database.
#[derive(Debug)]
pub enum Op {
    OutboxPut {
        endpoint: Arc<str>,
        id: u64,
        kind: Kind,
        enqueued_ms: u64,
        data: Bytes,
        idempotency_key: Option<String>,
    },
    /// Every entry with id ≤ `upto` left the outbox (sent or expired).
    OutboxRemoveUpTo { endpoint: Arc<str>, upto: u64 },
    /// Forget idempotency keys first seen before `before_ms`.
    IdemPrune { endpoint: Arc<str>, before_ms: u64 },
    /// Raise the endpoint's seq mark (never lowers it).
    SeqMark { endpoint: Arc<str>, seq: u64 },
    /// Reserve seqs `from..=upto` ahead of use: the seq mark goes to `upto`, and a start after
    /// a crash knows that seqs from `from` on may never have been used.
    SeqLease {
        endpoint: Arc<str>,
        from: u64,
        upto: u64,
    },
    /// The endpoint stopped cleanly after seq `last`: the mark becomes exactly `last` (giving
    /// back an unused lease), so the next start continues without a jump.
    SeqStop { endpoint: Arc<str>, last: u64 },
    /// Remember the last delivered upstream id (encoded), delivered as `seq`, whose payload
    /// hashes to `hash`.
    UpstreamId {
        endpoint: Arc<str>,
        id: String,
        seq: u64,
        hash: u64,
    },
    /// Forget remembered upstream ids delivered below `seq`.
    UpstreamIdTrim { endpoint: Arc<str>, below: u64 },
    /// Forget every upstream id of the endpoint (an operator's reset-resume).
    UpstreamIdClear { endpoint: Arc<str> },
    /// Persist one replay entry.
    ReplayPut {
        endpoint: Arc<str>,
        seq: u64,
        kind: Kind,
        received_at: u64,
        data: Bytes,
    },
    /// Drop persisted replay entries below `seq`.
    ReplayTrim { endpoint: Arc<str>, below: u64 },
    /// Keep a captured value (JSON text) the resume needs across a restart.
    CaptureSet {
        endpoint: Arc<str>,
        name: String,
        value: String,
    },
    /// Forget every captured value of the endpoint (its session ended).
    CaptureClear { endpoint: Arc<str> },
    /// Keep a confirmed publish until the upstream answers it.
    ConfirmPut {
        endpoint: Arc<str>,
        id: u64,
        kind: Kind,
        enqueued_ms: u64,
        data: Bytes,
    },
    /// The upstream answered confirmed publish `id` (or it expired).
    ConfirmRemove { endpoint: Arc<str>, id: u64 },
}

/// Called on the committer thread with the commit's outcome.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Work for the committer thread, which alone owns the database.
enum Job {
    Write {
        ops: Vec<Op>,
        done: Option<Done>,
    },
    Restore {
        endpoint: String,
        limits: RestoreLimits,
        reply: mpsc::Sender<Result<Restored, StoreError>>,
    },
}

/// How much of an endpoint's history a restore reads back.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreLimits {
    /// Persisted replay entries, the newest.
    pub replay_messages: usize,
    /// Remembered upstream ids, the newest (`resume.dedup_window`).
    pub recent_ids: usize,
}

impl RestoreLimits {
    /// What an endpoint configured as `cfg` uses.
    pub fn of(cfg: &crate::config::EndpointConfig) -> RestoreLimits {
        RestoreLimits {
            replay_messages: cfg.replay.messages,
            recent_ids: cfg.resume.as_ref().map_or(0, |r| r.dedup_window),
        }
    }
}

/// Handle to the database and its committer thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` once closed: later submissions fail instead of being lost silently.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the store knows about one endpoint at startup.
#[derive(Debug, Default)]
pub struct Restored {
    /// Highest seq that may have been used; the log continues above it.
    pub seq_mark: u64,
    /// After a stop that was not clean: the seqs reserved ahead of use, which may or may not
    /// have been used before it (`from..=to`, ending at `seq_mark`).
    pub seq_hole: Option<(u64, u64)>,
    pub outbox_next: u64,
    /// (id, kind, enqueued Unix ms, payload), oldest first.
    pub outbox: Vec<(u64, Kind, u64, Bytes)>,
    /// (key, outbox id, first seen Unix ms).
    pub idempotency: Vec<(String, u64, u64)>,
    pub upstream_id: Option<String>,
    /// Recently delivered upstream ids (encoded) with their payload hash, oldest first.
    pub recent_ids: Vec<(String, u64)>,
    /// (seq, kind, received_at, payload), oldest first.
    pub replay: Vec<(u64, Kind, u64, Bytes)>,
    /// Captured values kept for resume: (name, JSON text).
    pub captures: Vec<(String, String)>,
    /// Confirmed publishes not answered yet: (confirm id, kind, enqueued Unix ms, payload),
    /// oldest first.
    pub confirm: Vec<(u64, Kind, u64, Bytes)>,
}

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::Text => 0,
        Kind::Binary => 1,
    }
}

fn encode(kind: Kind, at: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + data.len());
    v.push(kind_byte(kind));
    v.extend_from_slice(&at.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn decode(v: &[u8]) -> Option<(Kind, u64, Bytes)> {
    let (&k, rest) = v.split_first()?;
    let kind = match k {
        0 => Kind::Text,
        1 => Kind::Binary,
        _ => return None,
    };
    let at = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    Some((kind, at, Bytes::copy_from_slice(rest.get(8..)?)))
}

impl Store {
    /// Opens (or creates) the database file and starts the committer. A file that is not a
    /// readable database is an error naming it: never a silent reset.
    pub fn open(path: &Path) -> Result<Store, OpenError> {
        let err = |msg: String| StoreError {
            path: path.to_path_buf(),
            msg,
            full: false,
        };
        let db = open::database(path)?;
        // Create every table now, so readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            txn.open_table(OUTBOX).map_err(|e| err(e.to_string()))?;
            txn.open_table(IDEM).map_err(|e| err(e.to_string()))?;
            txn.open_table(MARKS).map_err(|e| err(e.to_string()))?;
            txn.open_table(UPSTREAM_IDS)
                .map_err(|e| err(e.to_string()))?;
            txn.open_table(UPSTREAM_RECENT)
                .map_err(|e| err(e.to_string()))?;
            txn.open_table(REPLAY).map_err(|e| err(e.to_string()))?;
            txn.open_table(CAPTURES).map_err(|e| err(e.to_string()))?;
            txn.open_table(CONFIRM).map_err(|e| err(e.to_string()))?;
        }
        txn.commit().map_err(|e| storage_err(path, e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let mut committer = Committer {
            db: Some(db),
            path: path.to_path_buf(),
        };
        let handle = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| err(format!("cannot start committer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                jobs: Mutex::new(Some(tx)),
                committer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues ops for the next group commit; `done` runs with the outcome.
    pub fn submit(&self, ops: Vec<Op>, done: Option<Done>) {
        if let Err(Job::Write {
            done: Some(done), ..
        }) = self.send(Job::Write { ops, done })
        {
            done(Err(self.closed()));
        }
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        let sender = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match sender {
            Some(tx) => tx.send(job).map_err(|mpsc::SendError(j)| j),
            None => Err(job),
        }
    }

    fn closed(&self) -> StoreError {
        StoreError {
            path: self.inner.path.clone(),
            msg: "store is closed".into(),
            full: false,
        }
    }

    /// Commits everything queued, then stops the committer; later writes fail.
    pub fn close(&self) {
        drop(
            self.inner
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let handle = self
            .inner
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Queues ops and waits for their commit.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            ops,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.await.unwrap_or_else(|_| {
            Err(StoreError {
                path: self.inner.path.clone(),
                msg: "committer stopped".into(),
                full: false,
            })
        })
    }

    /// Reads what the store holds for `endpoint`, within `limits`. Blocks until the committer
    /// has read it: for startup.
    pub fn restore(&self, endpoint: &str, limits: RestoreLimits) -> Result<Restored, StoreError> {
        let (reply, rx) = mpsc::channel();
        let job = Job::Restore {
            endpoint: endpoint.to_owned(),
            limits,
            reply,
        };
        if self.send(job).is_err() {
            return Err(self.closed());
        }
        rx.recv().unwrap_or_else(|_| Err(self.closed()))
    }
}

fn storage_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    let msg = e.to_string();
    // redb reports I/O errors by their OS text; ENOSPC, EDQUOT and EFBIG all mean "full".
    let lower = msg.to_ascii_lowercase();
    let full = lower.contains("no space left")
        || lower.contains("quota exceeded")
        || lower.contains("file too large");
    StoreError {
        path: path.to_path_buf(),
        msg,
        full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn round_trip_and_group_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("store");
        let s = Store::open(&path).expect("open");
        let mut waits = Vec::new();
        for id in 1..=50u64 {
            let s = s.clone();
            waits.push(tokio::spawn(async move {
                s.commit(vec![Op::OutboxPut {
                    endpoint: ep("a"),
                    id,
                    kind: Kind::Text,
                    enqueued_ms: 7,
                    data: Bytes::from(format!("m{id}")),
                    idempotency_key: (id == 3).then(|| "k".to_owned()),
                }])
                .await
            }));
        }
        for w in waits {
            w.await.expect("task").expect("commit");
        }
        s.commit(vec![
            Op::OutboxRemoveUpTo {
                endpoint: ep("a"),
                upto: 10,
            },
            Op::SeqMark {
                endpoint: ep("a"),
                seq: 99,
            },
            Op::SeqMark {
                endpoint: ep("a"),
                seq: 5,
            },
            Op::UpstreamId {
                endpoint: ep("a"),
                id: "i:41".into(),
                seq: 97,
                hash: 7,
            },
            Op::UpstreamId {
                endpoint: ep("a"),
                id: "i:42".into(),
                seq: 98,
                hash: 8,
            },
            Op::UpstreamId {
                endpoint: ep("b"),
                id: "i:1".into(),
                seq: 1,
                hash: 1,
            },
            Op::UpstreamIdTrim {
                endpoint: ep("a"),
                below: 98,
            },
            Op::UpstreamIdClear { endpoint: ep("b") },
            Op::ReplayPut {
                endpoint: ep("a"),
                seq: 98,
                kind: Kind::Binary,
                received_at: 1,
                data: Bytes::from_static(b"\x00\x01"),
            },
            Op::ReplayPut {
                endpoint: ep("a"),
                seq: 99,
                kind: Kind::Text,
                received_at: 2,
                data: Bytes::from_static(b"x"),
            },
            Op::ReplayTrim {
                endpoint: ep("a"),
                below: 99,
            },
        ])
        .await
        .expect("commit");
        s.close();
        drop(s);
        let s = Store::open(&path).expect("reopen");
        let limits = RestoreLimits {
            replay_messages: 10,
            recent_ids: 10,
        };
        let r = s.restore("a", limits).expect("restore");
        assert_eq!(r.outbox.len(), 40);
        assert_eq!(r.outbox[0].0, 11);
        assert_eq!(r.outbox[0].3, Bytes::from_static(b"m11"));
        assert_eq!(r.outbox_next, 51);
        assert_eq!(r.seq_mark, 99);
        assert_eq!(r.idempotency, vec![("k".to_owned(), 3, 7)]);
        assert_eq!(r.upstream_id.as_deref(), Some("i:42"));
        assert_eq!(r.recent_ids, vec![("i:42".to_owned(), 8)], "41 was trimmed");
        assert_eq!(r.replay.len(), 1);
        assert_eq!(r.replay[0].0, 99);
        let other = s.restore("b", limits).expect("restore");
        assert_eq!(
            (other.upstream_id, other.recent_ids.len()),
            (None, 0),
            "cleared"
        );
        assert_eq!(
            (other.seq_mark, other.outbox_next, other.outbox.len()),
            (0, 1, 0)
        );
    }

    #[tokio::test]
    async fn confirm_entries_round_trip_per_endpoint() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("store");
        let s = Store::open(&path).expect("open");
        let put = |endpoint: &str, id: u64| Op::ConfirmPut {
            endpoint: ep(endpoint),
            id,
            kind: Kind::Text,
            enqueued_ms: 9,
            data: Bytes::from(format!("c{id}")),
        };
        s.commit(vec![put("a", 1), put("a", 2), put("a", 3), put("b", 1)])
            .await
            .expect("commit");
        s.commit(vec![Op::ConfirmRemove {
            endpoint: ep("a"),
            id: 2,
        }])
        .await
        .expect("commit");
        s.close();
        drop(s);
        let s = Store::open(&path).expect("reopen");
        let r = s.restore("a", RestoreLimits::default()).expect("restore");
        let ids: Vec<u64> = r.confirm.iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![1, 3], "2 was removed, out of FIFO order");
        assert_eq!((r.confirm[1].2, &r.confirm[1].3[..]), (9, &b"c3"[..]));
        assert!(r.outbox.is_empty(), "the outbox is apart");
        let b = s.restore("b", RestoreLimits::default()).expect("restore");
        assert_eq!(b.confirm.len(), 1);
    }

    #[test]
    fn garbage_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("store");
        std::fs::write(&path, vec![0x5au8; 8192]).expect("write");
        let e = Store::open(&path).err().expect("garbage refused");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        // The file is left as it was.
        assert_eq!(std::fs::read(&path).expect("read")[..4], [0x5a; 4]);
    }
}
