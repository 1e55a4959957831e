//! A fake Phoenix socket (Phoenix.Socket with the V2 JSON serializer) on top of
//! [`FakeUpstream`], written from Phoenix's own sources (`lib/phoenix/socket.ex`,
//! `lib/phoenix/socket/serializers/v2_json_serializer.ex` in phoenixframework/phoenix) and
//! enforcing them. Every message is `[join_ref, ref, topic, event, payload]`; replies are
//! `[join_ref, ref, topic, "phx_reply", {"status", "response"}]`, broadcasts
//! `[null, null, topic, event, payload]`.
//!
//! What it does, and what it records as a fault (a breach of the protocol or of what the
//! Phoenix JS client does):
//! - only `/socket/websocket?vsn=2.x` is served: another path gets HTTP 404, another `vsn`
//!   HTTP 400 (both faults), as Phoenix's transport answers them;
//! - `phx_join` → ok reply with an empty response; a topic starting `private:` is refused
//!   with `{"reason":"unauthorized"}`; joining a topic joined already on the connection
//!   (a fault) replaces the old channel: the new join is answered, then the old one gets
//!   `phx_close` under its join_ref;
//! - `phx_leave` → ok reply, then `phx_close`; the topic gets no more broadcasts; leaving a
//!   topic not joined is a fault (Phoenix answers ok, the JS client never does it);
//! - any other event on a topic not joined → error reply `{"reason":"unmatched topic"}`
//!   (a fault); on a joined topic under another join_ref → ignored, as Phoenix ignores stale
//!   messages (a fault); `"ping"` on a joined topic → ok reply `{"pong": payload}`;
//! - `heartbeat` on topic `phoenix` → ok reply; none within the heartbeat timeout (Phoenix's
//!   websocket `timeout` defaults to 60 s) → close 1000 (a fault);
//! - a ref used twice on a connection, a frame that is not a JSON array of five with string
//!   topic and event, or a binary frame are faults; the last two close with 1011, as the
//!   socket process crashing on a bad decode does.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{FakeUpstream, Reply, UpConn};

/// The socket path Phoenix mounts `socket "/socket", ...` at for websockets.
pub const PATH: &str = "/socket/websocket";
/// Phoenix's default websocket timeout.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);

/// What one connection received and how its channels stand, for assertions.
#[derive(Clone, Debug, Default)]
pub struct PhxConn {
    /// Every text frame received, parsed (one that is not JSON is kept as a JSON string).
    pub frames: Vec<Value>,
    /// Topics joined successfully, in order (a rejoin appears again).
    pub joins: Vec<String>,
    /// Topics refused on join, in order.
    pub refused: Vec<String>,
    /// Topics left with `phx_leave`, in order.
    pub leaves: Vec<String>,
    /// Topics joined now, each with the join_ref of its join.
    pub joined: BTreeMap<String, Value>,
    /// Every non-null ref, in order.
    pub refs: Vec<Value>,
    /// Heartbeats answered.
    pub heartbeats: usize,
    /// Broadcasts written to this connection.
    pub broadcasts: usize,
    /// False once the connection has ended.
    pub open: bool,
}

#[derive(Debug, Default)]
struct State {
    conns: Vec<PhxConn>,
    faults: Vec<String>,
}

struct Shared {
    state: watch::Sender<State>,
    /// Live sockets, by connection index.
    wires: Mutex<Vec<UpConn>>,
    heartbeat_timeout: Duration,
}

impl Shared {
    fn fault(&self, why: String) {
        eprintln!("fake Phoenix: {why}");
        self.state.send_modify(|s| s.faults.push(why));
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut PhxConn)) {
        self.state.send_modify(|s| {
            if let Some(conn) = s.conns.get_mut(index) {
                f(conn);
            }
        });
    }

    fn wires(&self) -> std::sync::MutexGuard<'_, Vec<UpConn>> {
        self.wires.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fake Phoenix endpoint with one socket. The test pushes traffic with
/// [`FakePhoenix::broadcast`] and waits on what the client did with [`FakePhoenix::wait_until`].
pub struct FakePhoenix {
    /// The server underneath, for its attempt log.
    pub up: FakeUpstream,
    shared: Arc<Shared>,
}

impl FakePhoenix {
    /// A socket with Phoenix's default 60 s heartbeat timeout.
    pub async fn start() -> FakePhoenix {
        Self::start_with_timeout(DEFAULT_HEARTBEAT_TIMEOUT).await
    }

    /// A socket that closes a connection sending no heartbeat for `heartbeat_timeout`.
    pub async fn start_with_timeout(heartbeat_timeout: Duration) -> FakePhoenix {
        let shared = Arc::new(Shared {
            state: watch::Sender::new(State::default()),
            wires: Mutex::new(Vec::new()),
            heartbeat_timeout,
        });
        let policy = {
            let shared = Arc::clone(&shared);
            move |_: usize, request: &http::Request<()>| handshake(&shared, request.uri())
        };
        let on_accept = {
            let shared = Arc::clone(&shared);
            move |c: UpConn| {
                let index = {
                    let mut wires = shared.wires();
                    wires.push(c.clone());
                    shared.state.send_modify(|s| {
                        s.conns.push(PhxConn {
                            open: true,
                            ..PhxConn::default()
                        })
                    });
                    wires.len() - 1
                };
                tokio::spawn(serve(Arc::clone(&shared), c, index));
            }
        };
        let up = FakeUpstream::start_with_handler(policy, on_accept).await;
        FakePhoenix { up, shared }
    }

    /// `ws://127.0.0.1:PORT/socket/websocket?vsn=2.0.0`, as the Phoenix JS client connects.
    pub fn url(&self) -> String {
        self.up.url(&format!("{PATH}?vsn=2.0.0"))
    }

    /// Connections accepted so far; the 0-based index of each is its place in this count.
    pub fn connections(&self) -> usize {
        self.shared.state.borrow().conns.len()
    }

    /// A snapshot of connection `index`; panics if there is no such connection.
    pub fn conn(&self, index: usize) -> PhxConn {
        let state = self.shared.state.borrow();
        match state.conns.get(index) {
            Some(conn) => conn.clone(),
            None => panic!(
                "fake Phoenix: no connection {index} ({} so far)",
                state.conns.len()
            ),
        }
    }

    /// Every breach of the protocol the client committed, in order.
    pub fn faults(&self) -> Vec<String> {
        self.shared.state.borrow().faults.clone()
    }

    /// Resets every open connection (RST, no close frame), as a crashed server or a cut
    /// network does, and returns how many there were.
    pub async fn drop_all(&self) -> usize {
        let open: Vec<UpConn> = self
            .shared
            .wires()
            .iter()
            .filter(|c| !c.is_closed())
            .cloned()
            .collect();
        for c in &open {
            let _ = c.reset().await;
        }
        open.len()
    }

    /// Closes connection `index` with `code`, as the server going away does.
    pub async fn close(&self, index: usize, code: u16) {
        let wire = self.shared.wires().get(index).cloned();
        if let Some(c) = wire {
            let _ = c.close(code, "closing").await;
        }
    }

    /// Sends `[null, null, topic, event, payload]` to every open connection that has `topic`
    /// joined, as `Endpoint.broadcast` does; returns how many connections it went to.
    pub async fn broadcast(&self, topic: &str, event: &str, payload: Value) -> usize {
        let text = json!([null, null, topic, event, payload]).to_string();
        let targets: Vec<(usize, UpConn)> = {
            // Wires before state, the order accepting a connection takes them in.
            let wires = self.shared.wires().clone();
            let state = self.shared.state.borrow();
            state
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.open && c.joined.contains_key(topic))
                .filter_map(|(i, _)| wires.get(i).map(|w| (i, w.clone())))
                .collect()
        };
        let mut sent = 0;
        for (index, c) in targets {
            if c.send_text(&text).await.is_ok() {
                self.shared.update(index, |conn| conn.broadcasts += 1);
                sent += 1;
            }
        }
        sent
    }

    /// Waits until `f` holds for the connections so far, within `within`; `what` names the
    /// condition in the error, which also shows every connection.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&[PhxConn]) -> bool,
    ) -> anyhow::Result<()> {
        let mut rx = self.shared.state.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|s| f(&s.conns))).await;
        if matches!(reached, Ok(Ok(_))) {
            return Ok(());
        }
        let state = self.shared.state.borrow();
        Err(anyhow!(
            "fake Phoenix: not {what} within {within:?}; connections: {:#?}; faults: {:?}",
            state.conns,
            state.faults
        ))
    }

    /// Waits until `n` connections have been accepted.
    pub async fn wait_connections(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        self.wait_until(within, &format!("{n} connections"), |c| c.len() >= n)
            .await
    }

    /// Waits until connection `index` has `topic` joined.
    pub async fn wait_joined(
        &self,
        index: usize,
        topic: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        self.wait_until(within, &format!("{topic} joined on {index}"), |c| {
            c.get(index).is_some_and(|c| c.joined.contains_key(topic))
        })
        .await
    }

    /// Waits until connection `index` has received at least `n` frames.
    pub async fn wait_frames(
        &self,
        index: usize,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        self.wait_until(within, &format!("{n} frames on {index}"), |c| {
            c.get(index).is_some_and(|c| c.frames.len() >= n)
        })
        .await
    }
}

/// Phoenix's transport answers a wrong path with 404 and a `vsn` no serializer takes with 400.
fn handshake(shared: &Shared, uri: &http::Uri) -> Reply {
    if uri.path() != PATH {
        shared.fault(format!("connected to {uri}, not {PATH}"));
        return Reply::reject(404, &[]);
    }
    let vsn = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("vsn="));
    match vsn {
        Some(v) if v.starts_with("2.") => Reply::Accept,
        _ => {
            shared.fault(format!(
                "connected to {uri} without vsn=2.x (V1 serializer)"
            ));
            Reply::reject(400, &[])
        }
    }
}

fn reply(join_ref: &Value, r: &Value, topic: &str, status: &str, response: Value) -> Value {
    json!([join_ref, r, topic, "phx_reply", {"status": status, "response": response}])
}

/// One socket connection, from accept to its end.
async fn serve(shared: Arc<Shared>, c: UpConn, index: usize) {
    let timeout = shared.heartbeat_timeout;
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut refs = HashSet::new();
    loop {
        let text = match tokio::time::timeout_at(deadline, c.recv()).await {
            Err(_) => {
                shared.fault(format!("conn {index}: no heartbeat within {timeout:?}"));
                let _ = c.close(1000, "heartbeat timeout").await;
                break;
            }
            Ok(None) | Ok(Some(Message::Close(_))) => break,
            Ok(Some(Message::Text(t))) => t.as_str().to_owned(),
            Ok(Some(other)) => {
                shared.fault(format!("conn {index}: not a text frame: {other:?}"));
                let _ = c.close(1011, "").await;
                break;
            }
        };
        let parsed = serde_json::from_str::<Value>(&text).ok();
        let frame = parsed
            .clone()
            .unwrap_or_else(|| Value::String(text.clone()));
        shared.update(index, |conn| conn.frames.push(frame));
        let message = match parsed.as_ref().and_then(Value::as_array) {
            Some(a) if a.len() == 5 && a[2].is_string() && a[3].is_string() => a.clone(),
            _ => {
                shared.fault(format!("conn {index}: not a V2 message: {text}"));
                let _ = c.close(1011, "").await;
                break;
            }
        };
        let (join_ref, r, payload) = (&message[0], &message[1], &message[4]);
        let topic = message[2].as_str().unwrap_or_default();
        let event = message[3].as_str().unwrap_or_default();
        if !r.is_null() {
            if !refs.insert(r.to_string()) {
                shared.fault(format!("conn {index}: ref {r} used twice: {text}"));
            }
            shared.update(index, |conn| conn.refs.push(r.clone()));
        }
        let joined = shared.state.borrow().conns[index]
            .joined
            .get(topic)
            .cloned();
        let mut out = Vec::new();
        match (topic, event) {
            ("phoenix", "heartbeat") => {
                deadline = tokio::time::Instant::now() + timeout;
                shared.update(index, |conn| conn.heartbeats += 1);
                out.push(reply(&Value::Null, r, topic, "ok", json!({})));
            }
            (_, "phx_join") => {
                if joined.is_some() {
                    shared.fault(format!("conn {index}: joined {topic} twice: {text}"));
                    shared.update(index, |conn| {
                        conn.joined.remove(topic);
                    });
                }
                if topic.starts_with("private:") {
                    let refusal = json!({"reason": "unauthorized"});
                    out.push(reply(join_ref, r, topic, "error", refusal));
                    shared.update(index, |conn| conn.refused.push(topic.to_owned()));
                } else {
                    out.push(reply(join_ref, r, topic, "ok", json!({})));
                }
                // Phoenix queues the old channel's close behind the new join's reply.
                if let Some(old) = &joined {
                    out.push(json!([old, old, topic, "phx_close", {}]));
                }
            }
            (_, "phx_leave") => match &joined {
                Some(jr) if join_ref.is_null() || join_ref == jr => {
                    // Left before the reply goes out: nothing is broadcast after it.
                    shared.update(index, |conn| {
                        conn.joined.remove(topic);
                        conn.leaves.push(topic.to_owned());
                    });
                    out.push(reply(jr, r, topic, "ok", json!({})));
                    out.push(json!([jr, jr, topic, "phx_close", {}]));
                }
                Some(jr) => shared.fault(format!(
                    "conn {index}: stale leave of {topic} (joined as {jr}): {text}"
                )),
                None => {
                    shared.fault(format!("conn {index}: left {topic}, never joined: {text}"));
                    out.push(reply(join_ref, r, topic, "ok", json!({})));
                }
            },
            _ => match &joined {
                None => {
                    shared.fault(format!("conn {index}: {event} on unjoined {topic}: {text}"));
                    let unmatched = json!({"reason": "unmatched topic"});
                    out.push(reply(&Value::Null, r, topic, "error", unmatched));
                }
                Some(jr) if !join_ref.is_null() && join_ref != jr => shared.fault(format!(
                    "conn {index}: stale {event} on {topic} (joined as {jr}): {text}"
                )),
                Some(jr) if event == "ping" => {
                    out.push(reply(jr, r, topic, "ok", json!({"pong": payload})));
                }
                Some(_) => {}
            },
        }
        for m in &out {
            let _ = c.send_text(&m.to_string()).await;
        }
        // Joined only once the reply is out, so a broadcast never overtakes it.
        if event == "phx_join" && !topic.starts_with("private:") {
            shared.update(index, |conn| {
                conn.joined.insert(topic.to_owned(), join_ref.clone());
                conn.joins.push(topic.to_owned());
            });
        }
    }
    shared.update(index, |conn| conn.open = false);
}
