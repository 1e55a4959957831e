//! Requests from any host through the leader's connection (core NATS, not JetStream:
//! requests live in memory, as they do on one host).
//!
//! A follower's app request goes to the subject [`subject`] with a reply inbox; the leader of
//! the moment ([`answer`]) makes it through its endpoint's share (its own ids, `max_in_flight`,
//! `requests.join`, streams) and sends each reply to the inbox. The message kinds, in the
//! `Ws-Sidecar-Call` header:
//!
//! | from | kind | body |
//! |---|---|---|
//! | asker | `request` (`Ws-Sidecar-Stream: 1` for a stream) | the app's JSON request |
//! | leader | `accepted` | - (the request is in the leader's share) |
//! | leader | `reply` (`Ws-Sidecar-Error: 1`, `Ws-Sidecar-End: 1` as they apply) | the reply |
//! | leader | `failed` | the [`ShareError`] as JSON |
//! | asker, on `<inbox>.ctl` | `alive` / `cancel` | - |
//! | leader | `alive` (the answer to one) | - |
//!
//! While a request waits, each side tells the other it is alive every lease TTL; one that
//! hears nothing for [`SILENCE`] TTLs ends it (the leader forgets the request; the asker's
//! app gets `UNAVAILABLE`), so a host that dies leaves nothing waiting anywhere. A request in
//! flight when the leader changes fails `UNAVAILABLE`, as one in flight when a connection
//! drops does on one host.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::endpoint::Endpoint;
use crate::share::{Replies, Reply, ShareError};

const CALL: &str = "Ws-Sidecar-Call";
const STREAM: &str = "Ws-Sidecar-Stream";
const ERROR: &str = "Ws-Sidecar-Error";
const END: &str = "Ws-Sidecar-End";

/// Lease TTLs of silence after which either side gives a request up.
pub const SILENCE: u32 = 3;

/// Replies a stream may have waiting for its app on the asking host.
const QUEUE: usize = 1024;

/// The subject an endpoint's leader takes requests on: `ws-sidecar-request.<endpoint>`
/// (escaped, one token, so no endpoint's subject is another's).
pub fn subject(endpoint: &str) -> String {
    let mut s = String::from("ws-sidecar-request.");
    super::escape_into(&mut s, endpoint);
    s
}

/// What a host needs to send requests to its endpoint's leader. Cheap to clone.
#[derive(Clone)]
pub struct Calls {
    client: Client,
    subject: String,
    ttl: Duration,
}

impl Calls {
    /// Requests of `endpoint` over `client`; `ttl` is the fleet's lease TTL.
    pub fn new(client: Client, endpoint: &str, ttl: Duration) -> Calls {
        Calls {
            client,
            subject: subject(endpoint),
            ttl,
        }
    }

    /// Sends `doc` to the leader (waiting for one while there is none) and returns its
    /// replies as they come, as [`crate::share::Share::request`] does on one host.
    pub fn request(&self, doc: &Value, stream: bool) -> Remote {
        let (tx, rx) = mpsc::channel(if stream { QUEUE } else { 1 });
        let accepted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(ask(
            self.clone(),
            Bytes::from(doc.to_string()),
            stream,
            tx,
            Arc::clone(&accepted),
        ));
        Remote {
            replies: Replies::new(rx),
            task,
            accepted,
        }
    }
}

/// A request made through the leader; dropping it cancels it there.
pub struct Remote {
    replies: Replies,
    task: tokio::task::JoinHandle<()>,
    accepted: Arc<std::sync::atomic::AtomicBool>,
}

impl Remote {
    /// The next reply; see [`Replies::next`].
    pub async fn next(&mut self) -> Option<Result<Reply, ShareError>> {
        self.replies.next().await
    }

    /// Whether the leader took the request (it may have reached the upstream).
    pub fn accepted(&self) -> bool {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // The task sees the receiver gone and cancels at the leader; only a task still
        // looking for a leader is stopped here, having nothing to cancel.
        if !self.accepted() {
            self.task.abort();
        }
    }
}

fn kind(m: &Message) -> Option<&str> {
    m.headers.as_ref()?.get(CALL).map(|v| v.as_str())
}

fn flag(m: &Message, name: &str) -> bool {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .is_some_and(|v| v.as_str() == "1")
}

fn headers(kind: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CALL, kind);
    h
}

/// The asking host's side of one request.
async fn ask(
    calls: Calls,
    doc: Bytes,
    stream: bool,
    tx: mpsc::Sender<Result<Reply, ShareError>>,
    accepted: Arc<std::sync::atomic::AtomicBool>,
) {
    let fail = |e: ShareError| {
        let _ = tx.try_send(Err(e));
    };
    let client = &calls.client;
    let inbox = client.new_inbox();
    let mut sub = match client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => return fail(ShareError::Unavailable(format!("the fleet: {e}"))),
    };
    let mut h = headers("request");
    if stream {
        h.insert(STREAM, "1");
    }
    // Asked again only while nobody receives it (no leader, a failover); the app's own
    // timeout (`requests.timeout`) bounds that wait.
    loop {
        if let Err(e) = client
            .publish_with_reply_and_headers(
                calls.subject.clone(),
                inbox.clone(),
                h.clone(),
                doc.clone(),
            )
            .await
        {
            return fail(ShareError::Unavailable(format!("the fleet: {e}")));
        }
        let first = tokio::time::timeout(calls.ttl * SILENCE, sub.next()).await;
        match first {
            Ok(Some(m)) if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) => {
                // No leader right now (a failover): ask again once one may be there.
                tokio::time::sleep(calls.ttl / 4).await;
            }
            Ok(Some(m)) => match kind(&m) {
                Some("accepted") => break,
                Some("failed") => return fail(failure(&m)),
                _ => {}
            },
            Ok(None) => return fail(ShareError::Closed),
            // A leader got it and said nothing: asking again could make it twice.
            Err(_) => {
                return fail(ShareError::Unavailable(
                    "the fleet's leader did not take the request in time".into(),
                ))
            }
        }
    }
    accepted.store(true, std::sync::atomic::Ordering::Relaxed);
    let ctl = format!("{inbox}.ctl");
    let mut heard = Instant::now();
    let mut tick = tokio::time::interval(calls.ttl);
    let cancel = |client: Client, ctl: String| async move {
        let _ = client
            .publish_with_headers(ctl, headers("cancel"), Bytes::new())
            .await;
    };
    loop {
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { return fail(ShareError::Closed) };
                heard = Instant::now();
                let reply = match kind(&m) {
                    Some("reply") => Reply {
                        data: m.payload.clone(),
                        error: flag(&m, ERROR),
                        end: flag(&m, END),
                    },
                    Some("failed") => return fail(failure(&m)),
                    _ => continue,
                };
                let end = reply.end;
                match tx.try_send(Ok(reply)) {
                    Ok(()) if end => return,
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // As on one host: a stream's app that falls behind is ended.
                        let _ = tx.send(Err(ShareError::Slow)).await;
                        return cancel(client.clone(), ctl).await;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return cancel(client.clone(), ctl).await,
                }
            }
            _ = tx.closed() => return cancel(client.clone(), ctl).await,
            _ = tick.tick() => {
                if heard.elapsed() > calls.ttl * SILENCE {
                    return fail(ShareError::Unavailable(
                        "the fleet's leader stopped answering with the request in flight".into(),
                    ));
                }
                let _ = client.publish_with_headers(ctl.clone(), headers("alive"), Bytes::new()).await;
            }
        }
    }
}

fn failure(m: &Message) -> ShareError {
    serde_json::from_slice(&m.payload).unwrap_or_else(|_| {
        ShareError::Unavailable(String::from_utf8_lossy(&m.payload).into_owned())
    })
}

/// The leader's side for its term: takes the fleet's requests of `ep` until `stop`; what it
/// answers when the term ends is `UNAVAILABLE`.
pub async fn answer(ep: Arc<Endpoint>, client: Client, ttl: Duration, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let mut sub = tokio::select! {
            s = client.subscribe(subject(&ep.name)) => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the fleet's requests; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            },
            _ = stop.cancelled() => break,
        };
        loop {
            tokio::select! {
                m = sub.next() => match m {
                    Some(m) => {
                        let (ep, client, stop) = (Arc::clone(&ep), client.clone(), stop.clone());
                        tasks.spawn(serve(ep, client, m, ttl, stop));
                    }
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = stop.cancelled() => {
                    let _ = sub.unsubscribe().await;
                    // Each request tells its asker the term ended.
                    while tasks.join_next().await.is_some() {}
                    return;
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One request from another host, made through this leader's share.
async fn serve(
    ep: Arc<Endpoint>,
    client: Client,
    m: Message,
    ttl: Duration,
    stop: CancellationToken,
) {
    let Some(inbox) = m.reply.clone() else { return };
    let send = |h: HeaderMap, body: Bytes| {
        let (client, inbox) = (client.clone(), inbox.clone());
        async move { client.publish_with_headers(inbox, h, body).await.is_ok() }
    };
    let failed = |e: ShareError| {
        let body = serde_json::to_vec(&e).unwrap_or_default();
        send(headers("failed"), Bytes::from(body))
    };
    if kind(&m) != Some("request") {
        return;
    }
    let cfg = ep.config();
    let Some(reqs) = cfg.requests.as_ref() else {
        failed(ShareError::Closed).await;
        return;
    };
    let doc: Value = match serde_json::from_slice(&m.payload) {
        Ok(d) => d,
        Err(e) => {
            failed(ShareError::Unavailable(format!(
                "the request reached the leader unreadable: {e}"
            )))
            .await;
            return;
        }
    };
    let mut pending = match ep
        .share
        .request(doc, &reqs.id, flag(&m, STREAM), reqs.max_in_flight)
    {
        Ok(p) => p,
        Err(e) => {
            failed(e).await;
            return;
        }
    };
    let mut ctl = match client.subscribe(format!("{inbox}.ctl")).await {
        Ok(s) => s,
        Err(e) => {
            failed(ShareError::Unavailable(format!("the fleet: {e}"))).await;
            return;
        }
    };
    if !send(headers("accepted"), Bytes::new()).await {
        return;
    }
    let mut heard = Instant::now();
    let mut tick = tokio::time::interval(ttl);
    loop {
        tokio::select! {
            r = pending.next() => match r {
                Some(Ok(reply)) => {
                    let mut h = headers("reply");
                    if reply.error {
                        h.insert(ERROR, "1");
                    }
                    if reply.end {
                        h.insert(END, "1");
                    }
                    let end = reply.end;
                    if !send(h, reply.data).await {
                        failed(ShareError::Unavailable("the reply could not be sent through the fleet (larger than NATS max_payload?)".into())).await;
                        return;
                    }
                    if end {
                        return;
                    }
                }
                Some(Err(e)) => {
                    // Its words are about the leader ("the daemon is stopping"): say whose.
                    let e = match e {
                        ShareError::Unavailable(why) => {
                            ShareError::Unavailable(format!("on the fleet's leader: {why}"))
                        }
                        e => e,
                    };
                    failed(e).await;
                    return;
                }
                None => return,
            },
            c = ctl.next() => match c.as_ref().and_then(kind) {
                Some("cancel") | None => return,
                _ => {
                    heard = Instant::now();
                    send(headers("alive"), Bytes::new()).await;
                }
            },
            _ = tick.tick() => if heard.elapsed() > ttl * SILENCE {
                // The asking host is gone: forget the request (a stream is cancelled upstream).
                return;
            },
            _ = stop.cancelled() => {
                failed(ShareError::Unavailable("the fleet's leader stepped down with the request in flight".into())).await;
                return;
            }
        }
    }
}
