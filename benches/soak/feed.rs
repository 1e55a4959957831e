//! The soak's upstream: a numbered feed that keeps its whole history, resumes from `?since=` or
//! a resume frame, resends a few ids it already sent (the daemon must drop them), and records
//! every publish that reaches it. A publish frame that carries an `id` (a confirmed publish, sent
//! as a request) is answered on its connection with `{"id":<that id>,"result":"ok"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How the daemon tells this feed where to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Integer ids, `?since=N` on the URL.
    Query,
    /// Integer ids, a `{"op":"resume","from":N}` frame, then an `{"op":"subscribe"}` on_connect
    /// frame before the feed sends anything.
    Frame,
    /// String ids (`g-N`), `?since=g-N` on the URL.
    StringIds,
}

/// Bytes of filler per message, so the replay window holds realistic sizes.
const PAD: usize = 160;

/// Most ids a resumed connection resends from before the resume point.
const MAX_OVERLAP: u64 = 3;

/// How long a `Frame` connection waits for the client's subscribe frame.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// One fake upstream endpoint; shared by its server tasks and the report.
pub struct Feed {
    pub name: &'static str,
    pub style: Style,
    pub addr: SocketAddr,
    /// Last id produced; ids exist from 1 up to it.
    produced: watch::Sender<u64>,
    /// WebSocket handshakes completed.
    pub connections: AtomicU64,
    /// Message frames written, resends included.
    pub frames_sent: AtomicU64,
    /// Ids deliberately written again before the resume point, which the daemon must drop.
    pub resent: AtomicU64,
    /// Publishes received, by key, with how often each arrived.
    received: Mutex<HashMap<String, u32>>,
    /// Highest publish number seen per publisher, to spot reordering.
    last_by_publisher: Mutex<HashMap<String, u64>>,
    /// Publishes that arrived after a later one from the same publisher.
    pub reordered: AtomicU64,
    /// Answers written to publishes that carried an id (resends answered again included).
    pub answered: AtomicU64,
    /// Set TCP_NODELAY on its connections (`--confirmed`, see `main`).
    nodelay: bool,
}

impl Feed {
    /// Binds 127.0.0.1:0 with `prefill` ids already produced, then produces `rate` ids per second
    /// until `stop_producing`; serves connections until `stop`; `nodelay`: no Nagle delay.
    pub async fn start(
        name: &'static str,
        style: Style,
        rate: u32,
        prefill: u64,
        nodelay: bool,
        stop_producing: CancellationToken,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<Feed>> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let feed = Arc::new(Feed {
            name,
            style,
            addr: listener.local_addr()?,
            produced: watch::Sender::new(prefill),
            connections: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            received: Mutex::new(HashMap::new()),
            last_by_publisher: Mutex::new(HashMap::new()),
            reordered: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            nodelay,
        });
        let f = Arc::clone(&feed);
        tokio::spawn(async move {
            // Whole ids per 10 ms tick, the remainder carried, so any rate is met on average.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut owed = 0u64;
            loop {
                tokio::select! {
                    _ = stop_producing.cancelled() => return,
                    _ = tick.tick() => {
                        owed += u64::from(rate);
                        let n = owed / 100;
                        owed %= 100;
                        if n > 0 {
                            f.produced.send_modify(|p| *p += n);
                        }
                    }
                }
            }
        });
        let f = Arc::clone(&feed);
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                    },
                };
                tokio::spawn(Arc::clone(&f).serve(sock, stop.clone()));
            }
        });
        Ok(feed)
    }

    /// Last id produced.
    pub fn produced(&self) -> u64 {
        *self.produced.borrow()
    }

    /// The message with id `n`: identical every time it is sent.
    pub fn message(&self, n: u64) -> String {
        let id = match self.style {
            Style::StringIds => format!("\"g-{n}\""),
            Style::Query | Style::Frame => n.to_string(),
        };
        let pad = char::from(b'a' + (n % 26) as u8).to_string().repeat(PAD);
        format!(
            r#"{{"id":{id},"ep":"{}","n":{n},"pad":"{pad}"}}"#,
            self.name
        )
    }

    /// Publish keys received and how often each arrived.
    pub fn received(&self) -> HashMap<String, u32> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records one frame from the daemon; returns what it asks of the feed, if anything.
    fn on_frame(&self, text: &str) -> Option<Ask> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        if let Some(key) = v.get("pub").and_then(|k| k.as_str()) {
            let first = {
                let mut rx = self.received.lock().unwrap_or_else(PoisonError::into_inner);
                let count = rx.entry(key.to_owned()).or_insert(0);
                *count += 1;
                *count == 1
            };
            if let (true, Some((publisher, n))) = (first, split_key(key)) {
                let mut last = self
                    .last_by_publisher
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let l = last.entry(publisher.to_owned()).or_insert(0);
                if n < *l {
                    self.reordered.fetch_add(1, Ordering::Relaxed);
                }
                *l = (*l).max(n);
            }
            // The daemon's id on a confirmed publish: the answer is what confirms it.
            return v.get("id").map(|id| Ask::Answer(id.clone()));
        }
        match v.get("op").and_then(|o| o.as_str()) {
            Some("resume") => v.get("from").and_then(|f| f.as_u64()).map(Ask::Resume),
            Some("subscribe") => Some(Ask::Subscribe),
            _ => None,
        }
    }

    // tungstenite's handshake callback type fixes the large error variant.
    #[allow(clippy::result_large_err)]
    async fn serve(self: Arc<Self>, sock: TcpStream, stop: CancellationToken) {
        if self.nodelay {
            let _ = sock.set_nodelay(true);
        }
        let mut since: Option<String> = None;
        let callback = |req: &Request, resp: Response| {
            since = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .map(str::to_owned)
            });
            Ok(resp)
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, callback).await else {
            return;
        };
        self.connections.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = ws.split();
        let (ask_tx, mut ask_rx) = tokio::sync::mpsc::unbounded_channel();
        let conn_done = CancellationToken::new();
        // The reader outlives a failed writer: publishes forwarded before a cut must still count.
        let reader = {
            let feed = Arc::clone(&self);
            let done = conn_done.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    if let Message::Text(t) = m {
                        if let Some(ask) = feed.on_frame(t.as_str()) {
                            let _ = ask_tx.send(ask);
                        }
                    }
                }
                done.cancel();
            })
        };
        // Answers asked for before the feed starts writing (a `Frame` connection's publishes
        // ahead of its subscribe frame), written first.
        let mut early = Vec::new();
        let resume_from = match self.style {
            Style::Query => since.and_then(|s| s.parse::<u64>().ok()),
            Style::StringIds => since.and_then(|s| s.strip_prefix("g-")?.parse::<u64>().ok()),
            Style::Frame => {
                let mut from = None;
                let wait = tokio::time::sleep(SUBSCRIBE_WAIT);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => { conn_done.cancel(); break }
                        _ = conn_done.cancelled() => break,
                        a = ask_rx.recv() => match a {
                            Some(Ask::Resume(n)) => from = Some(n),
                            Some(Ask::Answer(id)) => early.push(id),
                            Some(Ask::Subscribe) => break,
                            None => break,
                        },
                    }
                }
                from
            }
        };
        // No position means a fresh client: the whole history, as the feed keeps it all.
        let mut next = match resume_from {
            Some(n) => (n + 1)
                .saturating_sub(fastrand::u64(0..=MAX_OVERLAP))
                .max(1),
            None => 1,
        };
        if let Some(n) = resume_from {
            self.resent.fetch_add(n + 1 - next, Ordering::Relaxed);
        }
        let mut produced = self.produced.subscribe();
        for id in early {
            if !self.answer(&mut sink, id).await {
                let _ = reader.await;
                return;
            }
        }
        'conn: loop {
            if conn_done.is_cancelled() {
                break;
            }
            let upto = *produced.borrow_and_update();
            while next <= upto {
                if sink.feed(Message::text(self.message(next))).await.is_err() {
                    break 'conn;
                }
                self.frames_sent.fetch_add(1, Ordering::Relaxed);
                next += 1;
                if next % 64 == 0 && sink.flush().await.is_err() {
                    break 'conn;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => { let _ = sink.close().await; break }
                _ = conn_done.cancelled() => break,
                // The sender lives in `self`, so this only ends with the process.
                r = produced.changed() => if r.is_err() { break },
                a = ask_rx.recv() => match a {
                    Some(Ask::Answer(id)) => if !self.answer(&mut sink, id).await { break },
                    Some(_) => {}
                    // The reader has ended, and with it the connection.
                    None => break,
                },
            }
        }
        let _ = reader.await;
    }

    /// Writes the answer to a publish that carried `id`; false once the connection is gone.
    async fn answer<S>(&self, sink: &mut S, id: serde_json::Value) -> bool
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        let text = serde_json::json!({"id": id, "result": "ok"}).to_string();
        if sink.send(Message::text(text)).await.is_err() {
            return false;
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// What a frame from the daemon asks of the feed.
enum Ask {
    Resume(u64),
    Subscribe,
    /// Answer the publish that carried this id.
    Answer(serde_json::Value),
}

/// `alpha.p1.42` → (`alpha.p1`, 42).
pub fn split_key(key: &str) -> Option<(&str, u64)> {
    let (publisher, n) = key.rsplit_once('.')?;
    Some((publisher, n.parse().ok()?))
}
