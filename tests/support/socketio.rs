//! A fake Socket.IO v5 server over Engine.IO v4, WebSocket transport only, on top of
//! [`FakeUpstream`], written from the engine.io-protocol and socket.io-protocol READMEs (and the
//! behaviour of the reference `engine.io` / `socket.io` servers where the READMEs are silent)
//! and enforcing them; every breach is recorded in [`FakeSocketIo::faults`].
//!
//! - The handshake must ask for `/socket.io/?EIO=4&transport=websocket` with no `sid`; anything
//!   else is refused with HTTP 400, as the reference server does.
//! - On accept the server sends the open packet `0{"sid":..,"upgrades":[],"pingInterval":PI,
//!   "pingTimeout":PT,"maxPayload":1000000}`; then it pings (`2`) every pingInterval and closes
//!   the connection if no pong (`3`) comes within pingTimeout. Engine.IO v4 reversed the
//!   heartbeat, so a ping from the client ("invalid heartbeat direction") closes it too, as do
//!   an unknown packet type, an `upgrade` and a message over maxPayload (close 1009).
//! - Socket.IO packets ride in Engine.IO message packets (`4`). The client connects to the
//!   main namespace with `40` or `40{auth}` and gets `40{"sid":..}` (or `44{"message":..}` when
//!   the server requires an auth payload and it differs); another namespace gets
//!   `44/nsp,{"message":"Invalid namespace"}`. An event (`42[...]`) or anything else before the
//!   namespace connect, or a second connect, is an invalid state: the fake answers
//!   `44{"message":..}` and closes, as the reference server closes. A malformed packet (an
//!   event payload that is not an array starting with a non-reserved event name, a binary
//!   packet, a CONNECT_ERROR from the client) closes the connection.
//! - Events are recorded; one with an ack id (`42<id>[...]`) is acknowledged with `43<id>[...]`:
//!   `echo` gets its args back, `add` the sum of its numeric args, any other event no ack (for
//!   timeout tests). Ack ids must be unique per connection.
//!
//! The test pushes events to every connected client with [`FakeSocketIo::emit`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::journal::Journal;
use super::{FakeUpstream, Reply, UpConn};

/// The maxPayload announced in the open packet.
pub const MAX_PAYLOAD: usize = 1_000_000;

/// Event names the socket.io parser refuses in an EVENT packet.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct SioOptions {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// When set, a namespace connect must carry exactly this auth payload.
    pub auth: Option<Value>,
}

impl Default for SioOptions {
    fn default() -> SioOptions {
        SioOptions {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            auth: None,
        }
    }
}

/// One event a client emitted.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub args: Vec<Value>,
    pub ack: Option<u64>,
}

/// What the server keeps per connection.
#[derive(Clone, Debug, Default)]
pub struct SioConn {
    /// The Engine.IO session id of the open packet.
    pub sid: String,
    /// Connected to the main namespace.
    pub connected: bool,
    /// The auth payload of the namespace connect (`null` if it had none).
    pub auth: Option<Value>,
    /// Every event, in arrival order.
    pub events: Vec<Event>,
    /// Every ack id, in arrival order.
    pub ack_ids: Vec<u64>,
    pub pings_sent: usize,
    pub pongs: usize,
}

struct Server {
    journal: Journal<SioConn>,
    options: SioOptions,
}

/// A fake Socket.IO server. Dropping it stops the server.
pub struct FakeSocketIo {
    pub up: FakeUpstream,
    server: Arc<Server>,
}

impl FakeSocketIo {
    /// A server pinging every 300 ms with a 200 ms pong timeout.
    pub async fn start() -> FakeSocketIo {
        Self::start_with(SioOptions::default()).await
    }

    pub async fn start_with(options: SioOptions) -> FakeSocketIo {
        let server = Arc::new(Server {
            journal: Journal::new("Socket.IO server"),
            options,
        });
        let on_accept = {
            let server = Arc::clone(&server);
            move |c: UpConn| {
                let index = server.journal.open(c.clone());
                tokio::spawn(serve(Arc::clone(&server), c, index));
            }
        };
        let policy = {
            let server = Arc::clone(&server);
            move |_: usize, request: &http::Request<()>| {
                let uri = request.uri();
                let query = uri.query().unwrap_or_default();
                let params: Vec<&str> = query.split('&').collect();
                let refusal = if uri.path() != "/socket.io/" {
                    Some("path is not /socket.io/")
                } else if !params.contains(&"EIO=4") {
                    Some("EIO is not 4")
                } else if !params.contains(&"transport=websocket") {
                    Some("transport is not websocket")
                } else if params.iter().any(|p| p.starts_with("sid=")) {
                    Some("a sid on a websocket-only handshake")
                } else {
                    None
                };
                match refusal {
                    Some(why) => {
                        server.journal.fault(format!("handshake {uri}: {why}"));
                        Reply::reject(400, &[])
                    }
                    None => Reply::Accept,
                }
            }
        };
        let up = FakeUpstream::start_with_handler(policy, on_accept).await;
        FakeSocketIo { up, server }
    }

    /// The URL a websocket-only Socket.IO client connects to.
    pub fn url(&self) -> String {
        self.up.url("/socket.io/?EIO=4&transport=websocket")
    }

    /// Everything the server saw; wait on it with [`Journal::wait`].
    pub fn journal(&self) -> &Journal<SioConn> {
        &self.server.journal
    }

    /// Every breach of the protocol so far.
    pub fn faults(&self) -> Vec<String> {
        self.server.journal.faults()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.journal.connections()
    }

    /// Resets every open connection.
    pub async fn drop_all(&self) -> usize {
        self.server.journal.drop_all().await
    }

    /// The packets connection `index` received, as raw text (JSON strings).
    pub fn frames(&self, index: usize) -> Vec<Value> {
        self.server.journal.frames(index)
    }

    /// The state of connection `index`.
    pub fn conn(&self, index: usize) -> SioConn {
        self.server.journal.state(index).unwrap_or_default()
    }

    /// Waits until `n` open connections are connected to the main namespace.
    pub async fn wait_connected(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let what = format!("{n} connected client(s)");
        self.server
            .journal
            .wait(within, &what, |seen| {
                let live = seen.conns.iter().filter(|c| c.open && c.state.connected);
                live.count() >= n
            })
            .await
            .map(drop)
    }

    /// Waits until events called `name` have arrived `n` times over all connections; returns
    /// them all.
    pub async fn wait_events(
        &self,
        name: &str,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<Vec<Event>> {
        let what = format!("{n} {name:?} event(s)");
        let named = |conns: &[super::journal::ConnLog<SioConn>]| -> Vec<Event> {
            conns
                .iter()
                .flat_map(|c| &c.state.events)
                .filter(|e| e.name == name)
                .cloned()
                .collect()
        };
        let seen = self
            .server
            .journal
            .wait(within, &what, |seen| named(&seen.conns).len() >= n)
            .await?;
        Ok(named(&seen.conns))
    }

    /// Waits until connection `index` has answered `n` pings.
    pub async fn wait_pongs(&self, index: usize, n: usize, within: Duration) -> anyhow::Result<()> {
        let what = format!("{n} pong(s) on connection {index}");
        self.server
            .journal
            .wait(within, &what, |seen| {
                seen.conns.get(index).is_some_and(|c| c.state.pongs >= n)
            })
            .await
            .map(drop)
    }

    /// Emits `42["name",...args]` to every client connected to the main namespace; returns to
    /// how many.
    pub async fn emit(&self, name: &str, args: &[Value]) -> usize {
        let mut array = vec![json!(name)];
        array.extend_from_slice(args);
        let packet = format!("42{}", Value::Array(array));
        let seen = self.server.journal.snapshot();
        let mut sent = 0;
        for (index, wire) in self.server.journal.open_wires() {
            let connected = seen.conns.get(index).is_some_and(|c| c.state.connected);
            if connected && wire.send_text(&packet).await.is_ok() {
                sent += 1;
            }
        }
        sent
    }
}

/// A decoded Socket.IO packet.
struct Packet<'a> {
    kind: u8,
    nsp: &'a str,
    ack: Option<u64>,
    payload: Option<Value>,
}

/// Decodes `<type>[<attachments>-][<nsp>,][<ack id>][<JSON>]` (socket.io-protocol v5).
fn decode(text: &str) -> Result<Packet<'_>, String> {
    let kind = match text.as_bytes().first() {
        Some(b @ b'0'..=b'6') => b - b'0',
        _ => return Err("unknown packet type".to_owned()),
    };
    if kind == 5 || kind == 6 {
        return Err("binary packet without binary support".to_owned());
    }
    let mut rest = &text[1..];
    let mut nsp = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        nsp = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let ack = if digits > 0 {
        let id = rest[..digits].parse().map_err(|_| "ack id too large")?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };
    let payload = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).map_err(|e| format!("payload is not JSON: {e}"))?)
    };
    let valid = match (kind, &payload) {
        (0, None | Some(Value::Object(_))) => true,
        (1, None) => true,
        (2, Some(Value::Array(a))) => a
            .first()
            .and_then(Value::as_str)
            .is_some_and(|name| !RESERVED_EVENTS.contains(&name)),
        (3, Some(Value::Array(_))) => true,
        _ => false,
    };
    if !valid {
        return Err("invalid payload".to_owned());
    }
    Ok(Packet {
        kind,
        nsp,
        ack,
        payload,
    })
}

/// What ends a connection: the fault to record and how to close.
struct Breach {
    why: String,
    code: u16,
    /// A CONNECT_ERROR to send first, for invalid states.
    connect_error: bool,
}

fn breach(why: String) -> Breach {
    Breach {
        why,
        code: 1000,
        connect_error: false,
    }
}

fn random_id() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(20)
        .collect()
}

/// One connection, until it ends.
async fn serve(server: Arc<Server>, c: UpConn, index: usize) {
    if let Err(b) = run(&server, &c, index).await {
        server.journal.fault(format!("conn {index}: {}", b.why));
        if b.connect_error {
            let message = json!({"message": b.why});
            let _ = c.send_text(&format!("44{message}")).await;
        }
        let _ = c.close(b.code, "socket.io: protocol breach").await;
    }
    server.journal.conn(index, |conn| {
        conn.open = false;
        conn.state.connected = false;
    });
}

async fn run(server: &Server, c: &UpConn, index: usize) -> Result<(), Breach> {
    let opts = &server.options;
    let journal = &server.journal;
    let sid = random_id();
    journal.conn(index, |conn| conn.state.sid = sid.clone());
    let open = json!({"sid": sid, "upgrades": [], "pingInterval": opts.ping_interval.as_millis() as u64,
        "pingTimeout": opts.ping_timeout.as_millis() as u64, "maxPayload": MAX_PAYLOAD});
    let _ = c.send_text(&format!("0{open}")).await;
    let mut next_ping = Instant::now() + opts.ping_interval;
    let mut pong_due: Option<Instant> = None;
    loop {
        let message = tokio::select! {
            _ = tokio::time::sleep_until(next_ping), if pong_due.is_none() => {
                journal.conn(index, |conn| conn.state.pings_sent += 1);
                let _ = c.send_text("2").await;
                pong_due = Some(Instant::now() + opts.ping_timeout);
                continue;
            }
            _ = tokio::time::sleep_until(pong_due.unwrap_or(next_ping)), if pong_due.is_some() => {
                return Err(breach(format!("no pong within pingTimeout {:?}", opts.ping_timeout)));
            }
            message = c.recv() => message,
        };
        let text = match message {
            None | Some(Message::Close(_)) => return Ok(()),
            Some(Message::Text(t)) => t.as_str().to_owned(),
            Some(other) => return Err(breach(format!("not a text frame: {other:?}"))),
        };
        journal.frame(index, Value::String(text.clone()));
        if text.len() > MAX_PAYLOAD {
            let mut b = breach(format!("{} bytes over maxPayload", text.len()));
            b.code = 1009;
            return Err(b);
        }
        match text.as_bytes().first() {
            Some(b'3') => {
                journal.conn(index, |conn| conn.state.pongs += 1);
                pong_due = None;
                next_ping = Instant::now() + opts.ping_interval;
            }
            Some(b'4') => on_message(server, c, index, &text[1..]).await?,
            Some(b'6') => {}
            Some(b'1') => return Ok(()),
            Some(b'2') => {
                return Err(breach(
                    "ping from the client: invalid heartbeat direction in Engine.IO v4".to_owned(),
                ))
            }
            _ => return Err(breach(format!("invalid Engine.IO packet {text:?}"))),
        }
    }
}

/// One Socket.IO packet.
async fn on_message(server: &Server, c: &UpConn, index: usize, text: &str) -> Result<(), Breach> {
    let journal = &server.journal;
    let packet = decode(text).map_err(|why| breach(format!("{why}: 4{text}")))?;
    if packet.nsp != "/" {
        if packet.kind == 0 {
            let reply = format!(
                "44{},{}",
                packet.nsp,
                json!({"message": "Invalid namespace"})
            );
            let _ = c.send_text(&reply).await;
        }
        return Ok(());
    }
    let connected = journal.state(index).is_some_and(|s| s.connected);
    let invalid_state = |what: &str| Breach {
        why: format!("{what}: 4{text}"),
        code: 1000,
        connect_error: true,
    };
    match packet.kind {
        0 if connected => Err(invalid_state("a second namespace connect")),
        0 => {
            let auth = packet.payload.unwrap_or(Value::Null);
            if server
                .options
                .auth
                .as_ref()
                .is_some_and(|want| *want != auth)
            {
                let _ = c
                    .send_text(&format!("44{}", json!({"message": "not authorized"})))
                    .await;
                return Ok(());
            }
            journal.conn(index, |conn| {
                conn.state.connected = true;
                conn.state.auth = Some(auth);
            });
            let _ = c
                .send_text(&format!("40{}", json!({"sid": random_id()})))
                .await;
            Ok(())
        }
        _ if !connected => Err(invalid_state("a packet before the namespace connect")),
        1 => {
            journal.conn(index, |conn| conn.state.connected = false);
            Ok(())
        }
        2 => {
            let mut args = match packet.payload {
                Some(Value::Array(args)) => args,
                _ => Vec::new(),
            };
            let name = args.remove(0).as_str().unwrap_or_default().to_owned();
            let reused = journal.conn(index, |conn| {
                let reused = packet
                    .ack
                    .is_some_and(|id| conn.state.ack_ids.contains(&id));
                conn.state.ack_ids.extend(packet.ack);
                conn.state.events.push(Event {
                    name: name.clone(),
                    args: args.clone(),
                    ack: packet.ack,
                });
                reused
            });
            if reused {
                journal.fault(format!("conn {index}: ack id used again: 4{text}"));
            }
            let Some(id) = packet.ack else {
                return Ok(());
            };
            let answer = match name.as_str() {
                "echo" => Value::Array(args),
                "add" => {
                    let sum: f64 = args.iter().filter_map(Value::as_f64).sum();
                    let sum = if sum.fract() == 0.0 && sum.abs() < 9e15 {
                        json!(sum as i64)
                    } else {
                        json!(sum)
                    };
                    json!([sum])
                }
                _ => return Ok(()),
            };
            let _ = c.send_text(&format!("43{id}{answer}")).await;
            Ok(())
        }
        _ => Err(breach(format!("unexpected packet from a client: 4{text}"))),
    }
}
