//! The committer thread: the only owner of the database, it folds every queued job into one
//! durable write transaction, answers start-up reads in order with the writes, and reopens the
//! file after an I/O error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::{
    decode, encode, open_db, storage_err, Done, Job, Op, RestoreLimits, Restored, StoreError,
    CAPTURES, CONFIRM, IDEM, MARKS, MAX_GROUP, OUTBOX, REPLAY, UPSTREAM_IDS, UPSTREAM_RECENT,
};

/// The committer thread's state. It owns the database so that, after an I/O error (which
/// redb latches until the file is reopened), it can close and reopen it: a disk that was
/// full works again once space is freed, without restarting the daemon.
pub(super) struct Committer {
    pub(super) db: Option<Database>,
    pub(super) path: PathBuf,
}

impl Committer {
    pub(super) fn run(&mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut writes = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { ops, done } => writes.push((ops, done)),
                    Job::Restore {
                        endpoint,
                        limits,
                        reply,
                    } => {
                        // Earlier writes first, so a restore sees them.
                        self.commit(std::mem::take(&mut writes));
                        let _ = reply.send(self.restore(&endpoint, limits));
                    }
                }
                if writes.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(writes);
        }
    }

    fn database(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            let db = open_db(&self.path).map_err(|e| storage_err(&self.path, e))?;
            tracing::info!(path = %self.path.display(), "store reopened after an I/O error");
            self.db = Some(db);
        }
        self.db
            .as_ref()
            .ok_or_else(|| storage_err(&self.path, "not open"))
    }

    fn commit(&mut self, writes: Vec<(Vec<Op>, Option<Done>)>) {
        if writes.is_empty() {
            return;
        }
        let path = self.path.clone();
        let result = self
            .database()
            .and_then(|db| apply(db, &path, writes.iter().flat_map(|w| w.0.iter())));
        if let Err(e) = &result {
            tracing::error!(error = %e, jobs = writes.len(), "store commit failed");
            // Reopen before the next commit: redb refuses everything after an I/O error.
            self.db = None;
        }
        for (_, done) in writes {
            if let Some(done) = done {
                done(result.clone());
            }
        }
    }

    fn restore(&mut self, endpoint: &str, limits: RestoreLimits) -> Result<Restored, StoreError> {
        let path = self.path.clone();
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: path.clone(),
            msg: format!("cannot read: {e}"),
            full: false,
        };
        let txn = self.database()?.begin_read().map_err(|e| err(&e))?;
        let mut r = Restored::default();
        let marks = txn.open_table(MARKS).map_err(|e| err(&e))?;
        r.seq_mark = marks
            .get((endpoint, "seq"))
            .map_err(|e| err(&e))?
            .map_or(0, |g| g.value());
        let mark = |name: &str| {
            marks
                .get((endpoint, name))
                .map(|g| g.map(|g| g.value()))
                .map_err(|e| err(&e))
        };
        if let (Some(from), Some(upto)) = (mark("lease_from")?, mark("lease_upto")?) {
            // A later seq mark (messages committed one by one since) means the lease was used up.
            if upto == r.seq_mark && from <= upto {
                r.seq_hole = Some((from, upto));
            }
        }
        r.outbox_next = marks
            .get((endpoint, "outbox_next"))
            .map_err(|e| err(&e))?
            .map_or(1, |g| g.value());
        let outbox = txn.open_table(OUTBOX).map_err(|e| err(&e))?;
        for item in outbox
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .map_err(|e| err(&e))?
        {
            let (k, v) = item.map_err(|e| err(&e))?;
            let id = k.value().1;
            match decode(v.value()) {
                Some((kind, at, data)) => r.outbox.push((id, kind, at, data)),
                None => return Err(err(&format!("outbox entry {endpoint}/{id} is corrupt"))),
            }
        }
        let confirm = txn.open_table(CONFIRM).map_err(|e| err(&e))?;
        for item in confirm
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .map_err(|e| err(&e))?
        {
            let (k, v) = item.map_err(|e| err(&e))?;
            let id = k.value().1;
            match decode(v.value()) {
                Some((kind, at, data)) => r.confirm.push((id, kind, at, data)),
                None => return Err(err(&format!("confirm entry {endpoint}/{id} is corrupt"))),
            }
        }
        let idem = txn.open_table(IDEM).map_err(|e| err(&e))?;
        for item in idem.range((endpoint, "")..).map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let (ep, key) = k.value();
            if ep != endpoint {
                break;
            }
            let (id, at) = v.value();
            r.idempotency.push((key.to_owned(), id, at));
        }
        let captures = txn.open_table(CAPTURES).map_err(|e| err(&e))?;
        for item in captures.range((endpoint, "")..).map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let (ep, name) = k.value();
            if ep != endpoint {
                break;
            }
            r.captures.push((name.to_owned(), v.value().to_owned()));
        }
        let ids = txn.open_table(UPSTREAM_IDS).map_err(|e| err(&e))?;
        r.upstream_id = ids
            .get(endpoint)
            .map_err(|e| err(&e))?
            .map(|g| g.value().to_owned());
        let replay = txn.open_table(REPLAY).map_err(|e| err(&e))?;
        let mut tail = Vec::new();
        for item in replay
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .map_err(|e| err(&e))?
            .rev()
            .take(limits.replay_messages)
        {
            let (k, v) = item.map_err(|e| err(&e))?;
            let seq = k.value().1;
            match decode(v.value()) {
                Some((kind, at, data)) => tail.push((seq, kind, at, data)),
                None => return Err(err(&format!("replay entry {endpoint}/{seq} is corrupt"))),
            }
        }
        tail.reverse();
        r.replay = tail;
        let recent = txn.open_table(UPSTREAM_RECENT).map_err(|e| err(&e))?;
        for item in recent
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .map_err(|e| err(&e))?
            .rev()
            .take(limits.recent_ids)
        {
            let (k, v) = item.map_err(|e| err(&e))?;
            let seq = k.value().1;
            let entry = v.value();
            let parsed = entry.get(..8).and_then(|h| {
                let hash = u64::from_le_bytes(h.try_into().ok()?);
                let id = std::str::from_utf8(&entry[8..]).ok()?;
                Some((id.to_owned(), hash))
            });
            match parsed {
                Some(p) => r.recent_ids.push(p),
                None => return Err(err(&format!("upstream id {endpoint}/{seq} is corrupt"))),
            }
        }
        r.recent_ids.reverse();
        Ok(r)
    }
}

/// What one commit does to an endpoint's seq marks, folded from its ops in order.
#[derive(Default)]
struct SeqUpdate {
    mark: u64,
    /// Write `mark` even if lower than the stored one (a clean stop gives back its lease).
    exact: bool,
    /// `Some(Some(range))`: a new lease; `Some(None)`: forget the lease.
    lease: Option<Option<(u64, u64)>>,
}

fn apply<'a>(
    db: &Database,
    path: &Path,
    ops: impl Iterator<Item = &'a Op>,
) -> Result<(), StoreError> {
    let e = |e: &dyn std::fmt::Display| storage_err(path, e);
    let txn = db.begin_write().map_err(|x| e(&x))?;
    {
        let mut outbox = txn.open_table(OUTBOX).map_err(|x| e(&x))?;
        let mut idem = txn.open_table(IDEM).map_err(|x| e(&x))?;
        let mut marks = txn.open_table(MARKS).map_err(|x| e(&x))?;
        let mut ids = txn.open_table(UPSTREAM_IDS).map_err(|x| e(&x))?;
        let mut replay = txn.open_table(REPLAY).map_err(|x| e(&x))?;
        let mut recent = txn.open_table(UPSTREAM_RECENT).map_err(|x| e(&x))?;
        let mut captures = txn.open_table(CAPTURES).map_err(|x| e(&x))?;
        let mut confirm = txn.open_table(CONFIRM).map_err(|x| e(&x))?;
        // Marks and ids are written once per endpoint per commit, whatever the batch holds.
        let mut outbox_next: HashMap<&str, u64> = HashMap::new();
        let mut seqs: HashMap<&str, SeqUpdate> = HashMap::new();
        // `None`: forget the endpoint's id.
        let mut last_ids: HashMap<&str, Option<&str>> = HashMap::new();
        for op in ops {
            match op {
                Op::OutboxPut {
                    endpoint,
                    id,
                    kind,
                    enqueued_ms,
                    data,
                    idempotency_key,
                } => {
                    let value = encode(*kind, *enqueued_ms, data);
                    outbox
                        .insert((&**endpoint, *id), value.as_slice())
                        .map_err(|x| e(&x))?;
                    let next = outbox_next.entry(&**endpoint).or_default();
                    *next = (*next).max(id + 1);
                    if let Some(key) = idempotency_key {
                        idem.insert((&**endpoint, key.as_str()), (*id, *enqueued_ms))
                            .map_err(|x| e(&x))?;
                    }
                }
                Op::OutboxRemoveUpTo { endpoint, upto } => {
                    outbox
                        .retain_in((&**endpoint, 0)..=(&**endpoint, *upto), |_, _| false)
                        .map_err(|x| e(&x))?;
                }
                Op::IdemPrune {
                    endpoint,
                    before_ms,
                } => {
                    let cutoff = *before_ms;
                    idem.retain(|(ep, _), (_, at)| ep != &**endpoint || at >= cutoff)
                        .map_err(|x| e(&x))?;
                }
                Op::SeqMark { endpoint, seq } => {
                    let u = seqs.entry(&**endpoint).or_default();
                    u.mark = u.mark.max(*seq);
                }
                Op::SeqLease {
                    endpoint,
                    from,
                    upto,
                } => {
                    let u = seqs.entry(&**endpoint).or_default();
                    u.mark = u.mark.max(*upto);
                    u.lease = Some(Some((*from, *upto)));
                }
                Op::SeqStop { endpoint, last } => {
                    let u = seqs.entry(&**endpoint).or_default();
                    *u = SeqUpdate {
                        mark: *last,
                        exact: true,
                        lease: Some(None),
                    };
                }
                Op::UpstreamId {
                    endpoint,
                    id,
                    seq,
                    hash,
                } => {
                    last_ids.insert(&**endpoint, Some(id.as_str()));
                    let mut value = hash.to_le_bytes().to_vec();
                    value.extend_from_slice(id.as_bytes());
                    recent
                        .insert((&**endpoint, *seq), value.as_slice())
                        .map_err(|x| e(&x))?;
                }
                Op::UpstreamIdTrim { endpoint, below } => {
                    recent
                        .retain_in((&**endpoint, 0)..(&**endpoint, *below), |_, _| false)
                        .map_err(|x| e(&x))?;
                }
                Op::CaptureSet {
                    endpoint,
                    name,
                    value,
                } => {
                    captures
                        .insert((&**endpoint, name.as_str()), value.as_str())
                        .map_err(|x| e(&x))?;
                }
                Op::CaptureClear { endpoint } => {
                    captures
                        .retain(|(ep, _), _| ep != &**endpoint)
                        .map_err(|x| e(&x))?;
                }
                Op::UpstreamIdClear { endpoint } => {
                    last_ids.insert(&**endpoint, None);
                    recent
                        .retain_in((&**endpoint, 0)..=(&**endpoint, u64::MAX), |_, _| false)
                        .map_err(|x| e(&x))?;
                }
                Op::ReplayPut {
                    endpoint,
                    seq,
                    kind,
                    received_at,
                    data,
                } => {
                    let value = encode(*kind, *received_at, data);
                    replay
                        .insert((&**endpoint, *seq), value.as_slice())
                        .map_err(|x| e(&x))?;
                }
                Op::ConfirmPut {
                    endpoint,
                    id,
                    kind,
                    enqueued_ms,
                    data,
                } => {
                    let value = encode(*kind, *enqueued_ms, data);
                    confirm
                        .insert((&**endpoint, *id), value.as_slice())
                        .map_err(|x| e(&x))?;
                }
                Op::ConfirmRemove { endpoint, id } => {
                    confirm.remove((&**endpoint, *id)).map_err(|x| e(&x))?;
                }
                Op::ReplayTrim { endpoint, below } => {
                    if *below > 0 {
                        replay
                            .retain_in((&**endpoint, 0)..(&**endpoint, *below), |_, _| false)
                            .map_err(|x| e(&x))?;
                    }
                }
            }
        }
        for (endpoint, next) in outbox_next {
            marks
                .insert((endpoint, "outbox_next"), next)
                .map_err(|x| e(&x))?;
        }
        for (endpoint, u) in seqs {
            let current = marks
                .get((endpoint, "seq"))
                .map_err(|x| e(&x))?
                .map_or(0, |g| g.value());
            if u.mark > current || (u.exact && u.mark != current) {
                marks.insert((endpoint, "seq"), u.mark).map_err(|x| e(&x))?;
            }
            match u.lease {
                Some(Some((from, upto))) => {
                    marks
                        .insert((endpoint, "lease_from"), from)
                        .map_err(|x| e(&x))?;
                    marks
                        .insert((endpoint, "lease_upto"), upto)
                        .map_err(|x| e(&x))?;
                }
                Some(None) => {
                    marks.remove((endpoint, "lease_from")).map_err(|x| e(&x))?;
                    marks.remove((endpoint, "lease_upto")).map_err(|x| e(&x))?;
                }
                None => {}
            }
        }
        for (endpoint, id) in last_ids {
            match id {
                Some(id) => ids.insert(endpoint, id).map(drop),
                None => ids.remove(endpoint).map(drop),
            }
            .map_err(|x| e(&x))?;
        }
    }
    txn.commit().map_err(|x| e(&x))
}
