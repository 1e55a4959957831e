//! A fake Binance spot market-stream server that enforces Binance's documented send limit: at
//! most `messages` incoming frames per connection within any `per` (5 per second on spot),
//! pings, pongs and data frames alike; one more and the connection is closed with 1008.
//!
//! It speaks the market-stream side too: a `SUBSCRIBE` request is answered with
//! `{"result":null,"id":N}` (a malformed request with Binance's error object), and once
//! [`FakeBinance::feed`] runs, every connection gets the trades of the streams it subscribed,
//! from one global sequence, wrapped as the combined endpoint wraps them. With
//! [`FakeBinance::cut_after`] a connection is closed once it is that old (Binance: 24 hours).
//!
//! It records when it received every frame of every connection, so a test can check the rule
//! over everything the daemon sent, across connections too. Each connection is read by its own
//! OS thread with blocking reads: the timestamps then do not depend on how busy the test's
//! tokio runtime (which also runs the daemon) is.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Error as WsError, Message, WebSocket};

/// How often a connection's thread looks up from its socket, to ping or close when asked.
const TICK: Duration = Duration::from_millis(5);

/// What the fake enforces and does by itself.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Frames allowed per connection within any `per`.
    pub messages: usize,
    pub per: Duration,
    /// The server pings every connection this often (Binance: every 20 s).
    pub ping_every: Option<Duration>,
}

/// A frame the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Pong,
    Close(Option<u16>),
}

impl Frame {
    /// Whether Binance counts it against the limit.
    pub fn counts(&self) -> bool {
        !matches!(self, Frame::Close(_))
    }
}

/// One received frame: on which connection (0-based) and when.
#[derive(Clone, Debug)]
pub struct Received {
    pub conn: usize,
    pub at: Instant,
    pub frame: Frame,
}

struct Shared {
    rules: Rules,
    /// While false, handshakes are refused with 503 (the server is down).
    up: AtomicBool,
    /// This many next connections are closed with 1001 right after their first frame.
    close_after_first: AtomicUsize,
    /// Bumped to close every open connection with `kick_code`.
    kicks: AtomicUsize,
    stop: AtomicBool,
    received: Mutex<Vec<Received>>,
    /// Mirrors `received.len()`, for tests to wait on.
    count: watch::Sender<usize>,
    connections: AtomicUsize,
    /// Connections closed for going over the limit.
    rate_closes: AtomicUsize,
    /// Connections are closed once this old.
    lifetime: Mutex<Option<Duration>>,
    /// Connections the fake closed for their age.
    lifetime_cuts: AtomicUsize,
    /// Requests answered with an error.
    bad_requests: AtomicUsize,
    market: Mutex<Market>,
    /// A SUBSCRIBE answer waits for the other connections to write earlier trades.
    in_order: AtomicBool,
}

/// The trade feed and who subscribed to what.
#[derive(Default)]
struct Market {
    /// The streams the feed publishes, in turn: trade `n` is on `streams[n % len]`.
    streams: Vec<String>,
    /// The number of the next trade to be published.
    head: u64,
    subs: HashMap<usize, Sub>,
}

/// One connection's subscription.
struct Sub {
    streams: BTreeSet<String>,
    /// The first trade not yet taken to be written.
    next: u64,
    /// Every trade before this one is written.
    written: u64,
    /// Its SUBSCRIBE was answered: it is being sent trades.
    answered: bool,
}

/// How long a SUBSCRIBE answer waits for the other connections to have written every trade
/// published before it (see [`Conn::subscribe`]).
const CATCH_UP: Duration = Duration::from_secs(1);

/// The fake server; dropping it stops every thread within a few milliseconds.
pub struct FakeBinance {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for FakeBinance {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(self.addr);
    }
}

impl FakeBinance {
    /// Starts on 127.0.0.1, port 0, accepting connections.
    pub fn start(rules: Rules) -> FakeBinance {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake binance: bind");
        let addr = listener.local_addr().expect("fake binance: local address");
        let shared = Arc::new(Shared {
            rules,
            up: AtomicBool::new(true),
            close_after_first: AtomicUsize::new(0),
            kicks: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            received: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            rate_closes: AtomicUsize::new(0),
            lifetime: Mutex::new(None),
            lifetime_cuts: AtomicUsize::new(0),
            bad_requests: AtomicUsize::new(0),
            market: Mutex::new(Market::default()),
            in_order: AtomicBool::new(true),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, s));
        FakeBinance { addr, shared }
    }

    /// `ws://127.0.0.1:PORT/stream`, the combined-stream endpoint.
    pub fn url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    /// Up: handshakes succeed; down: they get 503.
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
    }

    /// The next `n` connections are closed (1001) right after their first frame.
    pub fn close_after_first(&self, n: usize) {
        self.shared.close_after_first.store(n, Ordering::SeqCst);
    }

    /// Closes every open connection with 1001.
    pub fn close_all(&self) {
        self.shared.kicks.fetch_add(1, Ordering::SeqCst);
    }

    /// Closes every connection (1001) once it is `age` old, as Binance does after 24 hours.
    pub fn cut_after(&self, age: Duration) {
        *lock(&self.shared.lifetime) = Some(age);
    }

    /// Publishes a trade every `every`, on `streams` in turn, numbered from 0 across all of
    /// them: each connection subscribed to a trade's stream gets it.
    pub fn feed(&self, streams: &[&str], every: Duration) {
        lock(&self.shared.market).streams = streams.iter().map(|s| s.to_string()).collect();
        let s = Arc::clone(&self.shared);
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.stop.load(Ordering::SeqCst) {
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                lock(&s.market).head += 1;
            }
        });
    }

    /// `false`: a SUBSCRIBE is answered at once, while the other connections may still be
    /// writing trades published before it, as when two connections are served by different
    /// servers (by default the answer waits for them, see [`Conn::subscribe`]).
    pub fn set_in_order(&self, in_order: bool) {
        self.shared.in_order.store(in_order, Ordering::SeqCst);
    }

    /// Connections the fake closed because they reached the age given to [`Self::cut_after`].
    pub fn lifetime_cuts(&self) -> usize {
        self.shared.lifetime_cuts.load(Ordering::SeqCst)
    }

    /// Requests the fake answered with an error (not a valid SUBSCRIBE or UNSUBSCRIBE).
    pub fn bad_requests(&self) -> usize {
        self.shared.bad_requests.load(Ordering::SeqCst)
    }

    /// Connections that completed the handshake.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections the fake closed with 1008 for going over the limit.
    pub fn rate_closes(&self) -> usize {
        self.shared.rate_closes.load(Ordering::SeqCst)
    }

    /// Every frame received so far, in the order received.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// The text frames of connection `conn`, in order.
    pub fn texts(&self, conn: usize) -> Vec<String> {
        texts(&self.received(), conn)
    }

    /// Waits until `pred` holds for what was received, at most `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let mut rx = self.shared.count.subscribe();
        let check = || {
            let all = self.received();
            pred(&all).then_some(all)
        };
        let waited = tokio::time::timeout(within, async {
            loop {
                if let Some(all) = check() {
                    return all;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        waited.map_err(|_| {
            let all = self.received();
            anyhow::anyhow!(
                "fake binance: condition not met within {within:?}; {} frame(s) on {} connection(s), {} closed for rate",
                all.len(),
                self.connections(),
                self.rate_closes()
            )
        })
    }
}

/// What each connection asked for, in order: `(method, stream)` pairs of every SUBSCRIBE and
/// UNSUBSCRIBE, by connection.
pub fn stream_requests(
    all: &[Received],
) -> std::collections::BTreeMap<usize, Vec<(String, String)>> {
    let mut out: std::collections::BTreeMap<usize, Vec<(String, String)>> = Default::default();
    for r in all {
        let Frame::Text(t) = &r.frame else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(t) else {
            continue;
        };
        let method = v["method"].as_str().unwrap_or_default().to_owned();
        for p in v["params"].as_array().into_iter().flatten() {
            let stream = p.as_str().unwrap_or_default().to_owned();
            out.entry(r.conn)
                .or_default()
                .push((method.clone(), stream));
        }
    }
    out
}

/// An app's next trade as (seq, stream, trade number) within `within`, skipping states and
/// key changes; panics on a gap.
pub async fn next_trade(
    s: &mut tonic::Streaming<ws_sidecar::proto::Event>,
    within: Duration,
) -> (u64, String, u64) {
    use ws_sidecar::proto::event::Event as Ev;
    loop {
        let ev = tokio::time::timeout(within, s.message())
            .await
            .expect("a message in time")
            .expect("stream ok")
            .expect("stream open");
        match ev.event {
            Some(Ev::Message(m)) => {
                let v: serde_json::Value = serde_json::from_slice(&m.data).expect("JSON");
                let stream = v["stream"].as_str().expect("a trade names its stream");
                let t = v["data"]["t"].as_u64().expect("a trade number");
                return (m.seq, stream.to_owned(), t);
            }
            Some(Ev::Gap(g)) => panic!("unexpected gap {g:?}"),
            _ => continue,
        }
    }
}

/// Trade `n` on `stream` as the combined-stream endpoint sends it.
pub fn trade(stream: &str, n: u64) -> String {
    let symbol = stream
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let time = 1_700_000_000_000 + n;
    format!(
        r#"{{"stream":"{stream}","data":{{"e":"trade","E":{time},"s":"{symbol}","t":{n},"p":"{}.00","q":"0.01","T":{time},"m":false,"M":true}}}}"#,
        40_000 + n % 100
    )
}

/// The text frames of connection `conn`, in order.
pub fn texts(all: &[Received], conn: usize) -> Vec<String> {
    all.iter()
        .filter(|r| r.conn == conn)
        .filter_map(|r| match &r.frame {
            Frame::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// The largest number of counted frames, over all connections, that arrived within one window
/// of length `per` (a window holds the frames less than `per` after its first one), with the
/// time that window began relative to the first frame.
pub fn busiest_window(all: &[Received], per: Duration) -> (usize, Duration) {
    let times: Vec<Instant> = all
        .iter()
        .filter(|r| r.frame.counts())
        .map(|r| r.at)
        .collect();
    let Some(first) = times.first().copied() else {
        return (0, Duration::ZERO);
    };
    let mut best = (0, Duration::ZERO);
    let mut end = 0;
    for (i, start) in times.iter().enumerate() {
        end = end.max(i);
        while end < times.len() && times[end].duration_since(*start) < per {
            end += 1;
        }
        if end - i > best.0 {
            best = (end - i, start.duration_since(first));
        }
    }
    best
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let s = Arc::clone(&shared);
        std::thread::spawn(move || serve(stream, s));
    }
}

// tungstenite's handshake callback returns its ErrorResponse unboxed; the size is not ours.
#[allow(clippy::result_large_err)]
fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // Bounds a handshake that never completes.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let up = shared.up.load(Ordering::SeqCst);
    let ws = tungstenite::accept_hdr(stream, |_: &Request, resp: Response| {
        if up {
            Ok(resp)
        } else {
            let mut refused = ErrorResponse::new(Some("down".into()));
            *refused.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            Err(refused)
        }
    });
    let Ok(mut ws) = ws else { return };
    let conn = shared.connections.fetch_add(1, Ordering::SeqCst);
    let _ = ws.get_ref().set_read_timeout(Some(TICK));
    let close_first = shared
        .close_after_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let cut_at = lock(&shared.lifetime).map(|age| Instant::now() + age);
    Conn {
        ws: &mut ws,
        shared: &shared,
        conn,
        close_first,
        kicks: shared.kicks.load(Ordering::SeqCst),
        window: VecDeque::new(),
        closing: false,
        cut_at,
    }
    .run();
    lock(&shared.market).subs.remove(&conn);
}

struct Conn<'a> {
    ws: &'a mut WebSocket<TcpStream>,
    shared: &'a Shared,
    conn: usize,
    close_first: bool,
    kicks: usize,
    /// When this connection's counted frames of the last `per` arrived.
    window: VecDeque<Instant>,
    closing: bool,
    /// When the connection is closed for its age.
    cut_at: Option<Instant>,
}

impl Conn<'_> {
    fn run(mut self) {
        let rules = self.shared.rules;
        let mut next_ping = rules.ping_every.map(|every| Instant::now() + every);
        while !self.shared.stop.load(Ordering::SeqCst) {
            if self.shared.kicks.load(Ordering::SeqCst) != self.kicks {
                self.kicks = self.shared.kicks.load(Ordering::SeqCst);
                self.close(CloseCode::Away, "going away");
            }
            if self.cut_at.is_some_and(|at| Instant::now() >= at) && !self.closing {
                self.shared.lifetime_cuts.fetch_add(1, Ordering::SeqCst);
                self.close(CloseCode::Away, "connection lifetime reached");
            }
            if self.send_trades().is_err() {
                return;
            }
            if let (Some(at), Some(every)) = (next_ping, rules.ping_every) {
                if Instant::now() >= at && !self.closing {
                    next_ping = Some(at + every);
                    if self.ws.send(Message::Ping(Vec::new().into())).is_err() {
                        return;
                    }
                }
            }
            match self.ws.read() {
                Ok(m) => self.on_frame(m, Instant::now()),
                Err(WsError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }

    fn on_frame(&mut self, m: Message, at: Instant) {
        let request = match &m {
            Message::Text(t) => Some(t.as_str().to_owned()),
            _ => None,
        };
        let frame = match m {
            Message::Text(t) => Frame::Text(t.as_str().to_owned()),
            Message::Binary(b) => Frame::Binary(b.to_vec()),
            Message::Ping(_) => Frame::Ping,
            Message::Pong(_) => Frame::Pong,
            Message::Close(c) => Frame::Close(c.map(|c| u16::from(c.code))),
            Message::Frame(_) => return,
        };
        let counts = frame.counts();
        {
            let mut all = lock(&self.shared.received);
            all.push(Received {
                conn: self.conn,
                at,
                frame,
            });
            self.shared.count.send_replace(all.len());
        }
        if !counts {
            return;
        }
        let per = self.shared.rules.per;
        while self
            .window
            .front()
            .is_some_and(|t| at.duration_since(*t) >= per)
        {
            self.window.pop_front();
        }
        self.window.push_back(at);
        if self.window.len() > self.shared.rules.messages && !self.closing {
            self.shared.rate_closes.fetch_add(1, Ordering::SeqCst);
            self.close(CloseCode::Policy, "Too many requests");
        } else if self.close_first {
            self.close_first = false;
            self.close(CloseCode::Away, "going away");
        } else if let Some(text) = request.filter(|_| !self.closing) {
            self.request(&text);
        }
    }

    /// Answers a request frame the way Binance does. Text that is not JSON is left unanswered
    /// (the rate-limit tests send such frames by the thousand).
    fn request(&mut self, text: &str) {
        let Ok(req) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        let id = req.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let streams: Option<BTreeSet<String>> = req
            .get("params")
            .and_then(|p| p.as_array())
            .and_then(|p| p.iter().map(|s| s.as_str().map(str::to_owned)).collect());
        let valid_id = id.is_i64() || id.is_u64() || id.is_null() || id.is_string();
        let answer = match (req.get("method").and_then(|m| m.as_str()), streams) {
            (Some("SUBSCRIBE"), Some(streams)) if valid_id => {
                self.subscribe(streams);
                Ok(())
            }
            (Some("UNSUBSCRIBE"), Some(streams)) if valid_id => {
                if let Some(sub) = lock(&self.shared.market).subs.get_mut(&self.conn) {
                    sub.streams.retain(|s| !streams.contains(s));
                }
                Ok(())
            }
            _ => Err(()),
        };
        let reply = match answer {
            Ok(()) => serde_json::json!({ "result": null, "id": id }),
            Err(()) => {
                self.shared.bad_requests.fetch_add(1, Ordering::SeqCst);
                serde_json::json!({ "error": { "code": 2, "msg": "Invalid request" }, "id": id })
            }
        };
        if self.ws.send(Message::text(reply.to_string())).is_ok() {
            if let Some(sub) = lock(&self.shared.market).subs.get_mut(&self.conn) {
                sub.answered = true;
            }
        }
    }

    /// Adds `streams` to this connection's subscription; it gets trades from the next one
    /// published on. Before it is answered, every other subscribed connection is given the
    /// time to write what was published before: one server process writes a trade to all its
    /// subscribers before the next event, so a client that sees the answer on a new
    /// connection finds every earlier trade already on its old one.
    fn subscribe(&mut self, streams: BTreeSet<String>) {
        let head = {
            let mut market = lock(&self.shared.market);
            let head = market.head;
            let sub = market.subs.entry(self.conn).or_insert(Sub {
                streams: BTreeSet::new(),
                next: head,
                written: head,
                answered: false,
            });
            sub.streams.extend(streams);
            head
        };
        let until = Instant::now() + CATCH_UP;
        while self.shared.in_order.load(Ordering::SeqCst) && Instant::now() < until {
            let behind = lock(&self.shared.market)
                .subs
                .iter()
                .any(|(c, s)| *c != self.conn && s.answered && s.written < head);
            if !behind {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Writes the trades published since the last call on the subscribed streams.
    fn send_trades(&mut self) -> Result<(), WsError> {
        if self.closing {
            // Nothing more is written: no one waits for this connection to catch up.
            lock(&self.shared.market).subs.remove(&self.conn);
            return Ok(());
        }
        let (trades, head) = {
            let mut market = lock(&self.shared.market);
            let (head, streams) = (market.head, market.streams.clone());
            let Some(sub) = market.subs.get_mut(&self.conn).filter(|s| s.answered) else {
                return Ok(());
            };
            let from = std::mem::replace(&mut sub.next, head);
            let trades: Vec<String> = (from..head)
                .filter_map(|n| {
                    let stream = streams.get(n as usize % streams.len().max(1))?;
                    sub.streams.contains(stream).then(|| trade(stream, n))
                })
                .collect();
            (trades, head)
        };
        for t in trades {
            self.ws.send(Message::text(t))?;
        }
        if let Some(sub) = lock(&self.shared.market).subs.get_mut(&self.conn) {
            sub.written = head;
        }
        Ok(())
    }

    fn close(&mut self, code: CloseCode, reason: &'static str) {
        if self.closing {
            return;
        }
        self.closing = true;
        let _ = self.ws.close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = self.ws.flush();
    }
}

/// A Binance combined-stream endpoint shared by key: SUBSCRIBE/UNSUBSCRIBE per stream name,
/// answered by id; messages name their stream at `/stream`.
pub fn shared_config(url: &str) -> String {
    format!(
        r#"
[endpoints.bn]
url = "{url}"
rate_limit = {{ messages = 10, per = "200ms" }}
backoff = {{ initial = "10ms", max = "40ms", min_delay = "10ms" }}

[endpoints.bn.requests]
id = "/id"
error = {{ pointer = "/error" }}

[endpoints.bn.subscriptions]
subscribe = '{{"method":"SUBSCRIBE","params":["{{{{key}}}}"],"id":{{{{id}}}}}}'
unsubscribe = '{{"method":"UNSUBSCRIBE","params":["{{{{key}}}}"],"id":{{{{id}}}}}}'
key = "/stream"
refuse = {{ pointer = "/error" }}
"#
    )
}
