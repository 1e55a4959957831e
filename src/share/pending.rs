//! Requests through the shared connection: [`Share::request`] queues one with an id of the
//! daemon's, and its replies come to the app that asked through [`Pending`].

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use super::{Reply, Req, Share, ShareError, Work, STREAM_QUEUE};

/// A request's replies as they come, whoever routes them (this host's share, or the fleet's
/// leader: `crate::cluster::calls`).
pub struct Replies {
    rx: mpsc::Receiver<Result<Reply, ShareError>>,
    done: bool,
}

impl Replies {
    /// The replies sent into `rx`.
    pub fn new(rx: mpsc::Receiver<Result<Reply, ShareError>>) -> Replies {
        Replies { rx, done: false }
    }

    /// The next reply; `None` once the request ended (after its last reply or an error).
    /// A request dropped without a word (its endpoint was removed) ends with `Closed`.
    pub async fn next(&mut self) -> Option<Result<Reply, ShareError>> {
        if self.done {
            return None;
        }
        let r = self.rx.recv().await.unwrap_or(Err(ShareError::Closed));
        if !matches!(&r, Ok(reply) if !reply.end) {
            self.done = true;
        }
        Some(r)
    }
}

/// A request's replies; dropping it forgets the request (a stream is cancelled upstream).
pub struct Pending {
    share: Arc<Share>,
    n: u64,
    replies: Replies,
}

impl Pending {
    /// The next reply; see [`Replies::next`].
    pub async fn next(&mut self) -> Option<Result<Reply, ShareError>> {
        self.replies.next().await
    }

    /// Ends the request waiting: a timeout, counted. True when it had been sent (it may have
    /// reached the upstream), false when it still waited for a connection.
    pub fn timed_out(&mut self) -> bool {
        Share::count(&self.share.stats.timeouts);
        self.share
            .lock()
            .requests
            .get(&self.n)
            .is_some_and(|r| r.sent.is_some())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.share.forget(self.n);
    }
}

impl Share {
    /// Queues `doc` (a JSON request whose id, if any, is at `id_pointer`) to be sent with an id
    /// of the daemon's; its replies come through the returned [`Pending`].
    pub fn request(
        self: &Arc<Self>,
        doc: Value,
        id_pointer: &str,
        stream: bool,
        max_in_flight: usize,
    ) -> Result<Pending, ShareError> {
        let mut inner = self.lock();
        if inner.requests.len() >= max_in_flight {
            return Err(ShareError::TooManyRequests(max_in_flight));
        }
        inner.next_req += 1;
        let n = inner.next_req;
        let (tx, rx) = mpsc::channel(if stream { STREAM_QUEUE } else { 1 });
        let app_id = doc.pointer(id_pointer).cloned();
        inner.requests.insert(
            n,
            Req {
                doc,
                app_id,
                stream,
                tx,
                sent: None,
                first_name: None,
                name: None,
                answered: false,
            },
        );
        let wake = inner.open;
        if wake {
            inner.queue.push_back(Work::Request(n));
        }
        drop(inner);
        Share::count(&self.stats.requests);
        if wake {
            self.work.notify_one();
        }
        Ok(Pending {
            share: Arc::clone(self),
            n,
            replies: Replies::new(rx),
        })
    }

    /// Forgets request `n` (its app stopped waiting); an open stream is cancelled upstream.
    fn forget(&self, n: u64) {
        let mut inner = self.lock();
        let Some(req) = inner.requests.remove(&n) else {
            return;
        };
        inner
            .queue
            .retain(|w| !matches!(w, Work::Request(m) if *m == n));
        let Some(sent) = req.sent else { return };
        // A reply still coming for it is an orphan, not someone else's.
        let key = sent.to_string();
        if inner.ids.contains_key(&key) {
            inner.orphan(key);
        }
        if let Some(name) = &req.name {
            inner.streams.remove(&name.to_string());
        }
        if req.stream && inner.open {
            inner.queue.push_back(Work::Cancel {
                request_id: sent,
                sub_id: req.name,
            });
            drop(inner);
            self.work.notify_one();
        }
    }

    /// Requests waiting for a reply (streams included).
    pub fn in_flight(&self) -> usize {
        self.lock().requests.len()
    }
}
