//! A fake Home Assistant WebSocket API on top of [`FakeUpstream`], written from the developer
//! documentation (developers.home-assistant.io/docs/api/websocket) and Home Assistant's
//! `websocket_api` component (`auth.py`, `connection.py`, `commands.py` in
//! home-assistant/core), enforcing them.
//!
//! What it does, and what it records as a fault:
//! - only `/api/websocket` is served (another path: HTTP 404, a fault);
//! - on accept it sends `auth_required`; the first message must be
//!   `{"type":"auth","access_token":T}`, sent within 10 s: anything else is a fault and gets
//!   `auth_invalid` and a close, as does a late auth; a wrong token gets `auth_invalid` and a
//!   close (not a fault: the token is configuration), the right one `auth_ok`;
//! - after that every command is an object with an integer `id` and a string `type`
//!   (otherwise `invalid_format`, a fault), and its id must be strictly greater than every id
//!   before it on the connection (otherwise `id_reuse`, "Identifier values have to increase.",
//!   a fault). Home Assistant itself only remembers the ids of commands it ran; this fake
//!   remembers every accepted id, which a correct client never notices. A JSON array of
//!   commands is taken as the commands in order, as Home Assistant does;
//! - `ping` → `pong`; `subscribe_events` (optional `event_type`, all events when absent) →
//!   result success, then an `event` under the subscribe command's id for every matching
//!   [`FakeHomeAssistant::fire`]; `unsubscribe_events` with `subscription` → result success, or
//!   `not_found` for a subscription not active on this connection (a fault: a correct client
//!   only unsubscribes what it subscribed there); `get_states` → a list; `call_service` →
//!   result with a `context` (and `response` echoing `service_data` when `return_response`);
//!   `fire_event` → fires it, result with a `context`; any other type → `unknown_command`;
//! - text that is not JSON, or a binary frame, is a fault and ends the connection, as Home
//!   Assistant disconnects on it. Subscriptions die with their connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{FakeUpstream, Reply, UpConn};

/// Where Home Assistant serves the API.
pub const PATH: &str = "/api/websocket";
/// The version the fake claims in `auth_required` and `auth_ok`.
pub const HA_VERSION: &str = "2026.11.0";
/// How long Home Assistant waits for the auth message.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// `event_type` of a subscription to every event (Home Assistant's `MATCH_ALL`).
pub const MATCH_ALL: &str = "*";

/// What one connection received and how its subscriptions stand, for assertions.
#[derive(Clone, Debug, Default)]
pub struct HaConn {
    /// Every text frame received, parsed (one that is not JSON is kept as a JSON string).
    pub frames: Vec<Value>,
    /// `auth_ok` was sent.
    pub authenticated: bool,
    /// `auth_invalid` was sent for a wrong token.
    pub auth_rejected: bool,
    /// Every command id accepted, in order.
    pub ids: Vec<u64>,
    /// Every `subscribe_events` accepted, in order: (command id, event type).
    pub subscribes: Vec<(u64, String)>,
    /// Every `unsubscribe_events` that ended a subscription: its subscribe id.
    pub unsubscribes: Vec<u64>,
    /// Active subscriptions: subscribe command id → event type ([`MATCH_ALL`] for all).
    pub subscriptions: BTreeMap<u64, String>,
    /// Events written to this connection.
    pub events: usize,
    /// False once the connection has ended.
    pub open: bool,
}

impl HaConn {
    /// Active subscriptions by event type: the subscribe ids of each, so a test can assert
    /// one subscription per event type.
    pub fn by_event_type(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (id, event_type) in &self.subscriptions {
            out.entry(event_type.clone()).or_default().push(*id);
        }
        out
    }
}

#[derive(Debug, Default)]
struct State {
    conns: Vec<HaConn>,
    faults: Vec<String>,
}

struct Shared {
    token: String,
    state: watch::Sender<State>,
    /// Live sockets, by connection index.
    wires: Mutex<Vec<UpConn>>,
    /// Makes every context id unique.
    contexts: AtomicU64,
}

impl Shared {
    fn fault(&self, why: String) {
        eprintln!("fake Home Assistant: {why}");
        self.state.send_modify(|s| s.faults.push(why));
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut HaConn)) {
        self.state.send_modify(|s| {
            if let Some(conn) = s.conns.get_mut(index) {
                f(conn);
            }
        });
    }

    fn wires(&self) -> std::sync::MutexGuard<'_, Vec<UpConn>> {
        self.wires.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn context(&self) -> Value {
        let n = self.contexts.fetch_add(1, Ordering::SeqCst);
        json!({"id": format!("ctx{n:026}"), "parent_id": null, "user_id": "fake-user"})
    }

    /// Sends `event_type` to every matching subscription on every open connection; returns
    /// how many events went out.
    async fn fire(&self, event_type: &str, data: Value) -> usize {
        let targets: Vec<(usize, UpConn, Vec<u64>)> = {
            // Wires before state, the order accepting a connection takes them in.
            let wires = self.wires().clone();
            let state = self.state.borrow();
            state
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.open)
                .filter_map(|(i, c)| {
                    let ids: Vec<u64> = c
                        .subscriptions
                        .iter()
                        .filter(|(_, t)| *t == event_type || *t == MATCH_ALL)
                        .map(|(id, _)| *id)
                        .collect();
                    wires.get(i).map(|w| (i, w.clone(), ids))
                })
                .collect()
        };
        let mut sent = 0;
        for (index, c, ids) in targets {
            for id in ids {
                let event = json!({"id": id, "type": "event", "event": {
                    "event_type": event_type, "data": data, "origin": "LOCAL",
                    "time_fired": "2026-01-01T00:00:00.000000+00:00",
                    "context": self.context()}});
                if c.send_text(&event.to_string()).await.is_ok() {
                    self.update(index, |conn| conn.events += 1);
                    sent += 1;
                }
            }
        }
        sent
    }
}

/// A fake Home Assistant instance. The test fires events with [`FakeHomeAssistant::fire`]
/// and waits on what the client did with [`FakeHomeAssistant::wait_until`].
pub struct FakeHomeAssistant {
    /// The server underneath, for its attempt log.
    pub up: FakeUpstream,
    shared: Arc<Shared>,
}

impl FakeHomeAssistant {
    /// An instance that accepts the access token `token`.
    pub async fn start(token: &str) -> FakeHomeAssistant {
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            state: watch::Sender::new(State::default()),
            wires: Mutex::new(Vec::new()),
            contexts: AtomicU64::new(1),
        });
        let policy = {
            let shared = Arc::clone(&shared);
            move |_: usize, request: &http::Request<()>| {
                if request.uri().path() == PATH {
                    Reply::Accept
                } else {
                    shared.fault(format!("connected to {}, not {PATH}", request.uri()));
                    Reply::reject(404, &[])
                }
            }
        };
        let on_accept = {
            let shared = Arc::clone(&shared);
            move |c: UpConn| {
                let index = {
                    let mut wires = shared.wires();
                    wires.push(c.clone());
                    shared.state.send_modify(|s| {
                        s.conns.push(HaConn {
                            open: true,
                            ..HaConn::default()
                        })
                    });
                    wires.len() - 1
                };
                tokio::spawn(serve(Arc::clone(&shared), c, index));
            }
        };
        let up = FakeUpstream::start_with_handler(policy, on_accept).await;
        FakeHomeAssistant { up, shared }
    }

    /// `ws://127.0.0.1:PORT/api/websocket`.
    pub fn url(&self) -> String {
        self.up.url(PATH)
    }

    /// Connections accepted so far; the 0-based index of each is its place in this count.
    pub fn connections(&self) -> usize {
        self.shared.state.borrow().conns.len()
    }

    /// A snapshot of connection `index`; panics if there is no such connection.
    pub fn conn(&self, index: usize) -> HaConn {
        let state = self.shared.state.borrow();
        match state.conns.get(index) {
            Some(conn) => conn.clone(),
            None => panic!(
                "fake Home Assistant: no connection {index} ({} so far)",
                state.conns.len()
            ),
        }
    }

    /// Every breach of the API the client committed, in order.
    pub fn faults(&self) -> Vec<String> {
        self.shared.state.borrow().faults.clone()
    }

    /// Resets every open connection (RST, no close frame) and returns how many there were.
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

    /// Closes connection `index` with `code`, as a restarting Home Assistant does.
    pub async fn close(&self, index: usize, code: u16) {
        let wire = self.shared.wires().get(index).cloned();
        if let Some(c) = wire {
            let _ = c.close(code, "closing").await;
        }
    }

    /// Fires `event_type` with `data` on the event bus: every subscription to it (or to all
    /// events) on an open connection gets an `event`. Returns how many events went out.
    pub async fn fire(&self, event_type: &str, data: Value) -> usize {
        self.shared.fire(event_type, data).await
    }

    /// Waits until `f` holds for the connections so far, within `within`; `what` names the
    /// condition in the error, which also shows every connection.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&[HaConn]) -> bool,
    ) -> anyhow::Result<()> {
        let mut rx = self.shared.state.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|s| f(&s.conns))).await;
        if matches!(reached, Ok(Ok(_))) {
            return Ok(());
        }
        let state = self.shared.state.borrow();
        Err(anyhow!(
            "fake Home Assistant: not {what} within {within:?}; connections: {:#?}; faults: {:?}",
            state.conns,
            state.faults
        ))
    }

    /// Waits until `n` connections have been accepted.
    pub async fn wait_connections(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        self.wait_until(within, &format!("{n} connections"), |c| c.len() >= n)
            .await
    }

    /// Waits until connection `index` has an active subscription to `event_type`.
    pub async fn wait_subscribed(
        &self,
        index: usize,
        event_type: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        self.wait_until(
            within,
            &format!("subscribed to {event_type} on {index}"),
            |c| {
                c.get(index)
                    .is_some_and(|c| c.subscriptions.values().any(|t| t == event_type))
            },
        )
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

fn error(id: &Value, code: &str, message: &str) -> Value {
    json!({"id": id, "type": "result", "success": false,
        "error": {"code": code, "message": message}})
}

fn result(id: u64, result: Value) -> Value {
    json!({"id": id, "type": "result", "success": true, "result": result})
}

/// Reads the next text frame: `Err(())` when the connection ended or broke the framing rules
/// (recorded); the frame is logged parsed, or as a string if it is not JSON.
async fn next_text(
    shared: &Shared,
    c: &UpConn,
    index: usize,
    within: Duration,
) -> Result<Option<Value>, ()> {
    let text = match tokio::time::timeout(within, c.recv()).await {
        Err(_) => return Ok(None),
        Ok(None) | Ok(Some(Message::Close(_))) => return Err(()),
        Ok(Some(Message::Text(t))) => t.as_str().to_owned(),
        Ok(Some(other)) => {
            shared.fault(format!("conn {index}: not a text frame: {other:?}"));
            let _ = c.close(1000, "").await;
            return Err(());
        }
    };
    let parsed = serde_json::from_str::<Value>(&text).ok();
    let frame = parsed
        .clone()
        .unwrap_or_else(|| Value::String(text.clone()));
    shared.update(index, |conn| conn.frames.push(frame));
    match parsed {
        Some(v) => Ok(Some(v)),
        None => {
            shared.fault(format!("conn {index}: not JSON: {text}"));
            let _ = c.close(1000, "").await;
            Err(())
        }
    }
}

/// One API connection, from `auth_required` to its end.
async fn serve(shared: Arc<Shared>, c: UpConn, index: usize) {
    let hello = json!({"type": "auth_required", "ha_version": HA_VERSION});
    let _ = c.send_text(&hello.to_string()).await;
    if authenticate(&shared, &c, index).await {
        let mut last_id = None;
        while let Ok(Some(v)) = next_text(&shared, &c, index, Duration::MAX).await {
            let commands = match v {
                Value::Array(commands) => commands,
                one => vec![one],
            };
            for command in commands {
                let (out, activate) = command_reply(&shared, index, &command, &mut last_id).await;
                let _ = c.send_text(&out.to_string()).await;
                if let Some((id, event_type)) = activate {
                    shared.update(index, |conn| {
                        conn.subscriptions.insert(id, event_type);
                    });
                }
            }
        }
    }
    shared.update(index, |conn| {
        conn.open = false;
        conn.subscriptions.clear();
    });
}

/// The auth phase; true once `auth_ok` is sent.
async fn authenticate(shared: &Shared, c: &UpConn, index: usize) -> bool {
    let invalid = |message: &str| json!({"type": "auth_invalid", "message": message}).to_string();
    let v = match next_text(shared, c, index, AUTH_TIMEOUT).await {
        Err(()) => return false,
        Ok(None) => {
            shared.fault(format!("conn {index}: no auth within {AUTH_TIMEOUT:?}"));
            let _ = c.send_text(&invalid("Did not receive auth message")).await;
            let _ = c.close(1000, "").await;
            return false;
        }
        Ok(Some(v)) => v,
    };
    let (Some("auth"), Some(token)) = (v["type"].as_str(), v["access_token"].as_str()) else {
        shared.fault(format!("conn {index}: first message is not auth: {v}"));
        let _ = c
            .send_text(&invalid("Auth message incorrectly formatted"))
            .await;
        let _ = c.close(1000, "").await;
        return false;
    };
    if token != shared.token {
        shared.update(index, |conn| conn.auth_rejected = true);
        let _ = c
            .send_text(&invalid("Invalid access token or password"))
            .await;
        let _ = c.close(1000, "").await;
        return false;
    }
    let ok = json!({"type": "auth_ok", "ha_version": HA_VERSION});
    let _ = c.send_text(&ok.to_string()).await;
    shared.update(index, |conn| conn.authenticated = true);
    true
}

/// What the command phase answers `command` with and, for an accepted `subscribe_events`, the
/// subscription to activate once the answer is on the wire (so no event overtakes it, as in
/// Home Assistant).
async fn command_reply(
    shared: &Shared,
    index: usize,
    command: &Value,
    last_id: &mut Option<u64>,
) -> (Value, Option<(u64, String)>) {
    let (Some(id), Some(kind)) = (command["id"].as_u64(), command["type"].as_str()) else {
        shared.fault(format!(
            "conn {index}: command without integer id and type: {command}"
        ));
        let id = command.get("id").cloned().unwrap_or(Value::Null);
        return (
            error(&id, "invalid_format", "Message incorrectly formatted."),
            None,
        );
    };
    if last_id.is_some_and(|last| id <= last) {
        shared.fault(format!(
            "conn {index}: id {id} after {last_id:?}: {command}"
        ));
        let message = "Identifier values have to increase.";
        return (error(&json!(id), "id_reuse", message), None);
    }
    *last_id = Some(id);
    shared.update(index, |conn| conn.ids.push(id));
    let reply = match kind {
        "ping" => json!({"id": id, "type": "pong"}),
        "subscribe_events" => {
            let event_type = match command.get("event_type") {
                None => MATCH_ALL,
                Some(Value::String(t)) => t.as_str(),
                Some(other) => {
                    shared.fault(format!("conn {index}: event_type {other}: {command}"));
                    let message = "expected str for event_type";
                    return (error(&json!(id), "invalid_format", message), None);
                }
            };
            let subscription = (id, event_type.to_owned());
            shared.update(index, |conn| conn.subscribes.push(subscription.clone()));
            return (result(id, Value::Null), Some(subscription));
        }
        "unsubscribe_events" => {
            let sub = command["subscription"].as_u64();
            let mut found = false;
            shared.update(index, |conn| {
                if let Some(sub) = sub.filter(|s| conn.subscriptions.remove(s).is_some()) {
                    found = true;
                    conn.unsubscribes.push(sub);
                }
            });
            if found {
                result(id, Value::Null)
            } else {
                shared.fault(format!("conn {index}: no such subscription: {command}"));
                error(&json!(id), "not_found", "Subscription not found.")
            }
        }
        "get_states" => result(
            id,
            json!([
                {"entity_id": "light.kitchen", "state": "on", "attributes": {}},
                {"entity_id": "sensor.outside", "state": "21.5", "attributes": {}}
            ]),
        ),
        "call_service" => {
            if !command["domain"].is_string() || !command["service"].is_string() {
                shared.fault(format!("conn {index}: call_service without domain/service"));
                let message = "domain and service are required";
                return (error(&json!(id), "invalid_format", message), None);
            }
            let response = match command["return_response"].as_bool() {
                Some(true) => json!({"echo": command["service_data"]}),
                _ => Value::Null,
            };
            result(
                id,
                json!({"context": shared.context(), "response": response}),
            )
        }
        "fire_event" => match command["event_type"].as_str() {
            Some(event_type) => {
                let data = command.get("event_data").cloned().unwrap_or(json!({}));
                shared.fire(event_type, data).await;
                result(id, json!({"context": shared.context()}))
            }
            None => error(&json!(id), "invalid_format", "event_type is required"),
        },
        _ => error(&json!(id), "unknown_command", "Unknown command."),
    };
    (reply, None)
}
