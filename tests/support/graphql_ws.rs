//! A fake GraphQL over WebSocket server speaking `graphql-transport-ws`, on top of
//! [`FakeUpstream`], written from the protocol's specification (PROTOCOL.md in
//! enisdenjo/graphql-ws) and the close codes of its reference server (`CloseCode` in
//! src/common.ts), and enforcing them; every breach is recorded in [`FakeGraphql::faults`] and
//! answered as the specification says:
//!
//! - a handshake not offering the `graphql-transport-ws` subprotocol: close 4406;
//! - no `connection_init` within the initialisation timeout (3 s unless the test sets it): 4408;
//! - a second `connection_init`: 4429 "Too many initialisation requests";
//! - `subscribe` before `connection_ack`: 4401 "Unauthorized";
//! - `subscribe` with the id of an operation still running: 4409 "Subscriber for <id> already
//!   exists";
//! - anything not a valid message of the protocol (not JSON, no `type`, an unknown or
//!   server-only type, an empty id, a `subscribe` payload without a `query` string): 4400.
//!
//! `ping` is answered with `pong` (echoing its payload). Operations: `subscription { ticks }`
//! streams `next` with `{"data":{"ticks":N}}` each time the test calls [`FakeGraphql::tick`],
//! until the client sends `complete` or the test ends it ([`FakeGraphql::complete_ticks`]);
//! `query { one }` answers one `next` then `complete`; a query containing `boom` answers `error`
//! with an array of GraphQL errors (and, per the specification, no `complete`). Any other query
//! gets a validation `error`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::journal::Journal;
use super::{FakeUpstream, Reply, UpConn};

/// The subprotocol of the specification.
pub const SUBPROTOCOL: &str = "graphql-transport-ws";

/// How long a client has to send `connection_init` unless the test says otherwise.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the server keeps per connection.
#[derive(Clone, Debug, Default)]
pub struct GqlConn {
    /// `connection_ack` was sent.
    pub acked: bool,
    /// Every `subscribe` id, in arrival order.
    pub subscribe_ids: Vec<String>,
    /// Ids of running `subscription { ticks }` operations.
    pub streams: Vec<String>,
    /// Ids the client completed.
    pub completed: Vec<String>,
    /// Pings received.
    pub pings: usize,
    /// The close code the server ended the connection with, if it did.
    pub closed_with: Option<u16>,
}

struct Server {
    journal: Journal<GqlConn>,
    init_timeout: Duration,
    ticks: AtomicU64,
    /// Serialises stream messages so every stream sees ticks in order.
    push: tokio::sync::Mutex<()>,
}

/// A fake graphql-transport-ws server. Dropping it stops the server.
pub struct FakeGraphql {
    pub up: FakeUpstream,
    server: Arc<Server>,
}

impl FakeGraphql {
    /// A server with the default 3 s initialisation timeout.
    pub async fn start() -> FakeGraphql {
        Self::start_with_init_timeout(DEFAULT_INIT_TIMEOUT).await
    }

    /// A server closing with 4408 connections that send no `connection_init` within `timeout`.
    pub async fn start_with_init_timeout(timeout: Duration) -> FakeGraphql {
        let server = Arc::new(Server {
            journal: Journal::new("graphql-transport-ws server"),
            init_timeout: timeout,
            ticks: AtomicU64::new(0),
            push: tokio::sync::Mutex::new(()),
        });
        let on_accept = {
            let server = Arc::clone(&server);
            move |c: UpConn| {
                let index = server.journal.open(c.clone());
                tokio::spawn(serve(Arc::clone(&server), c, index));
            }
        };
        // Choosing the subprotocol only when offered; serve() closes the others with 4406.
        let policy = |_: usize, request: &http::Request<()>| {
            let offered = request
                .headers()
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .any(|p| p.trim() == SUBPROTOCOL);
            if offered {
                Reply::AcceptWithProtocol(SUBPROTOCOL.to_owned())
            } else {
                Reply::Accept
            }
        };
        let up = FakeUpstream::start_with_handler(policy, on_accept).await;
        FakeGraphql { up, server }
    }

    /// The server's WebSocket URL.
    pub fn url(&self) -> String {
        self.up.url("/graphql")
    }

    /// Everything the server saw; wait on it with [`Journal::wait`].
    pub fn journal(&self) -> &Journal<GqlConn> {
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

    /// Resets every open connection; their operations end with them.
    pub async fn drop_all(&self) -> usize {
        self.server.journal.drop_all().await
    }

    /// The messages connection `index` received (invalid JSON as a string).
    pub fn frames(&self, index: usize) -> Vec<Value> {
        self.server.journal.frames(index)
    }

    /// The state of connection `index`.
    pub fn conn(&self, index: usize) -> GqlConn {
        self.server.journal.state(index).unwrap_or_default()
    }

    /// Every `subscribe` id connection `index` sent, in order.
    pub fn subscribe_ids(&self, index: usize) -> Vec<String> {
        self.conn(index).subscribe_ids
    }

    /// Waits until the open connections run exactly `n` ticks streams in total.
    pub async fn wait_streams(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let what = format!("{n} running ticks stream(s)");
        self.server
            .journal
            .wait(within, &what, |seen| {
                let running: usize = seen
                    .conns
                    .iter()
                    .filter(|c| c.open)
                    .map(|c| c.state.streams.len())
                    .sum();
                running == n
            })
            .await
            .map(drop)
    }

    /// Sends the next tick to every running ticks stream; returns its number (from 1).
    pub async fn tick(&self) -> u64 {
        let _order = self.server.push.lock().await;
        let n = self.server.ticks.fetch_add(1, Ordering::SeqCst) + 1;
        for (wire, id) in self.streams() {
            let next = json!({"id": id, "type": "next", "payload": {"data": {"ticks": n}}});
            let _ = wire.send_text(&next.to_string()).await;
        }
        n
    }

    /// Ends every running ticks stream from the server's side with `complete`.
    pub async fn complete_ticks(&self) {
        let _order = self.server.push.lock().await;
        for (wire, id) in self.streams() {
            let _ = wire
                .send_text(&json!({"id": id, "type": "complete"}).to_string())
                .await;
        }
        self.server.journal.update(|seen| {
            for conn in &mut seen.conns {
                conn.state.streams.clear();
            }
        });
    }

    /// The socket and id of every running ticks stream.
    fn streams(&self) -> Vec<(UpConn, String)> {
        let seen = self.server.journal.snapshot();
        let mut out = Vec::new();
        for (index, wire) in self.server.journal.open_wires() {
            for id in seen.conns.get(index).map_or(&[][..], |c| &c.state.streams) {
                out.push((wire.clone(), id.clone()));
            }
        }
        out
    }
}

/// Records a breach and closes the connection with the code the specification gives for it.
async fn breach(server: &Server, c: &UpConn, index: usize, code: u16, reason: &str, what: String) {
    server.journal.fault(format!("conn {index}: {what}"));
    server
        .journal
        .conn(index, |conn| conn.state.closed_with = Some(code));
    let _ = c.close(code, reason).await;
}

async fn send(c: &UpConn, v: Value) {
    let _ = c.send_text(&v.to_string()).await;
}

/// A non-empty string id, as every operation message must carry.
fn op_id(v: &Value) -> Option<String> {
    v["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// An optional payload must be an object (PROTOCOL.md: `payload?: Record<string, unknown> | null`).
fn payload_ok(v: &Value) -> bool {
    matches!(
        v.get("payload"),
        None | Some(Value::Null | Value::Object(_))
    )
}

/// One connection, until it ends.
async fn serve(server: Arc<Server>, c: UpConn, index: usize) {
    run(&server, &c, index).await;
    server.journal.conn(index, |conn| {
        conn.open = false;
        conn.state.streams.clear();
    });
}

async fn run(server: &Server, c: &UpConn, index: usize) {
    let journal = &server.journal;
    if c.protocol() != Some(SUBPROTOCOL) {
        let what = format!("handshake did not offer {SUBPROTOCOL}");
        return breach(server, c, index, 4406, "Subprotocol not acceptable", what).await;
    }
    let init_deadline = tokio::time::Instant::now() + server.init_timeout;
    let mut init = false;
    loop {
        let message = if init {
            c.recv().await
        } else {
            match tokio::time::timeout_at(init_deadline, c.recv()).await {
                Ok(message) => message,
                Err(_) => {
                    let what = format!("no connection_init within {:?}", server.init_timeout);
                    let reason = "Connection initialisation timeout";
                    return breach(server, c, index, 4408, reason, what).await;
                }
            }
        };
        let text = match message {
            None | Some(Message::Close(_)) => return,
            Some(Message::Text(t)) => t.as_str().to_owned(),
            Some(other) => {
                let what = format!("not a text message: {other:?}");
                return breach(server, c, index, 4400, "Invalid message received", what).await;
            }
        };
        let parsed = serde_json::from_str::<Value>(&text).ok();
        journal.frame(
            index,
            parsed
                .clone()
                .unwrap_or_else(|| Value::String(text.clone())),
        );
        let Some(v) = parsed else {
            let what = format!("not JSON: {text}");
            return breach(server, c, index, 4400, "Invalid message received", what).await;
        };
        let invalid = |why: &str| format!("{why}: {text}");
        match v["type"].as_str() {
            Some("connection_init") if payload_ok(&v) => {
                if init {
                    let what = invalid("a second connection_init");
                    let reason = "Too many initialisation requests";
                    return breach(server, c, index, 4429, reason, what).await;
                }
                init = true;
                journal.conn(index, |conn| conn.state.acked = true);
                send(c, json!({"type": "connection_ack"})).await;
            }
            Some("ping") if payload_ok(&v) => {
                journal.conn(index, |conn| conn.state.pings += 1);
                let pong = match v.get("payload").filter(|p| !p.is_null()) {
                    Some(payload) => json!({"type": "pong", "payload": payload}),
                    None => json!({"type": "pong"}),
                };
                send(c, pong).await;
            }
            Some("pong") if payload_ok(&v) => {}
            Some("subscribe") => {
                let (Some(id), Some(query)) = (op_id(&v), v["payload"]["query"].as_str()) else {
                    let what = invalid("subscribe without an id and a payload.query string");
                    return breach(server, c, index, 4400, "Invalid message received", what).await;
                };
                if !init {
                    let what = invalid("subscribe before connection_ack");
                    return breach(server, c, index, 4401, "Unauthorized", what).await;
                }
                let running = journal.conn(index, |conn| {
                    conn.state.subscribe_ids.push(id.clone());
                    conn.state.streams.contains(&id)
                });
                if running {
                    let what = invalid(&format!("subscribe with {id} still running"));
                    let reason = format!("Subscriber for {id} already exists");
                    return breach(server, c, index, 4409, &reason, what).await;
                }
                execute(server, c, index, id, query).await;
            }
            Some("complete") => {
                let Some(id) = op_id(&v) else {
                    let what = invalid("complete without an id");
                    return breach(server, c, index, 4400, "Invalid message received", what).await;
                };
                journal.conn(index, |conn| {
                    conn.state.streams.retain(|s| *s != id);
                    conn.state.completed.push(id);
                });
            }
            other => {
                let what = invalid(&format!("invalid message of type {other:?}"));
                return breach(server, c, index, 4400, "Invalid message received", what).await;
            }
        }
    }
}

/// Runs operation `id`: a ticks stream, a single result, or errors.
async fn execute(server: &Server, c: &UpConn, index: usize, id: String, query: &str) {
    let query = query.trim();
    if query.contains("boom") {
        let errors = json!([{"message": "boom: the resolver failed", "path": ["boom"]}]);
        return send(c, json!({"id": id, "type": "error", "payload": errors})).await;
    }
    let words: Vec<&str> = query
        .split(|ch: char| !ch.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        ["subscription", .., "ticks"] => {
            // Held so no tick is sent between this stream starting and it being listed.
            let _order = server.push.lock().await;
            server
                .journal
                .conn(index, |conn| conn.state.streams.push(id));
        }
        ["query", .., "one"] | ["one"] => {
            let next = json!({"id": id, "type": "next", "payload": {"data": {"one": 1}}});
            send(c, next).await;
            send(c, json!({"id": id, "type": "complete"})).await;
        }
        _ => {
            let message = format!("cannot run {query:?}: only ticks, one and boom exist");
            let errors = json!([{"message": message}]);
            send(c, json!({"id": id, "type": "error", "payload": errors})).await;
        }
    }
}
