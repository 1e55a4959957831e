//! A fake Ethereum-like JSON-RPC 2.0 node over WebSocket, on top of [`FakeUpstream`], written
//! from the JSON-RPC 2.0 specification (https://www.jsonrpc.org/specification) and geth's
//! "Real-time Events" pub/sub documentation
//! (https://geth.ethereum.org/docs/interacting-with-geth/rpc/pubsub) and enforcing them.
//!
//! A request is `{"jsonrpc":"2.0","id":ID,"method":M,"params":[...]}`; `params` may be left out
//! and is otherwise an array or object; a request without `id` is a notification and is never
//! answered. Invalid JSON is answered with error -32700 and a malformed request with -32600
//! (both with `id: null`), an unknown method with -32601, bad params with -32602. A batch (an
//! array) is answered with an array of the replies, notifications left out; an empty batch with
//! one -32600 error. On top of the specification, the fake records as faults what would make
//! replies impossible to route: an id reused while a request with that id is in flight on the
//! connection, a null or fractional id; it keeps every id per connection for the test to check
//! that they are unique and increasing ([`FakeNode::id_order_faults`]).
//!
//! Methods: `eth_blockNumber`; `echo` (test method: the result is the params, sent after
//! params[1] milliseconds if that is a number, so replies can come out of order); `slow` (never
//! answered); `eth_subscribe` `["newHeads"]` or `["logs", filter]`, whose result is a fresh
//! random 16-byte hex subscription id, then `eth_subscription` notifications; `eth_unsubscribe`
//! `[id]` (true, or as geth does, error -32000 "subscription not found" for an id that is not
//! live on this connection). Subscriptions die with their connection, as on a real node, and no
//! notification ever precedes the reply that announced its subscription id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::journal::Journal;
use super::{FakeUpstream, Reply, UpConn};

/// A live subscription.
#[derive(Clone, Debug)]
pub struct Sub {
    /// The id the node announced, `0x` and 32 hex digits.
    pub id: String,
    /// `newHeads` or `logs`.
    pub kind: String,
    /// The `logs` filter (`null` for newHeads).
    pub filter: Value,
}

/// What the node keeps per connection.
#[derive(Clone, Debug, Default)]
pub struct RpcConn {
    /// Every request id, in arrival order (batches in array order).
    pub ids: Vec<Value>,
    /// Ids of requests not answered yet.
    pub in_flight: Vec<Value>,
    /// Live subscriptions.
    pub subs: Vec<Sub>,
    /// Every method called, in arrival order.
    pub methods: Vec<String>,
}

struct Node {
    journal: Journal<RpcConn>,
    block: AtomicU64,
    /// Serialises notifications so every subscriber sees blocks in order.
    push: tokio::sync::Mutex<()>,
    /// Methods whose next request resets its connection instead of being answered.
    drop_on: std::sync::Mutex<Vec<String>>,
    /// Methods whose requests are recorded but not answered while listed.
    muted: std::sync::Mutex<Vec<String>>,
}

/// A fake JSON-RPC node. Dropping it stops the server.
pub struct FakeNode {
    pub up: FakeUpstream,
    node: Arc<Node>,
}

/// What to do with one request.
enum Outcome {
    Reply(Value),
    Later(Duration, Value),
    /// `slow`: stays in flight until the connection ends.
    Never,
    /// A notification: no reply.
    Silent,
    /// Reply, then make the subscription live.
    Subscribed(Value, Sub),
}

impl FakeNode {
    /// A node at block 0x100 accepting every connection.
    pub async fn start() -> FakeNode {
        let node = Arc::new(Node {
            journal: Journal::new("JSON-RPC node"),
            block: AtomicU64::new(0x100),
            push: tokio::sync::Mutex::new(()),
            drop_on: std::sync::Mutex::default(),
            muted: std::sync::Mutex::default(),
        });
        let on_accept = {
            let node = Arc::clone(&node);
            move |c: UpConn| {
                let index = node.journal.open(c.clone());
                tokio::spawn(serve(Arc::clone(&node), c, index));
            }
        };
        let up = FakeUpstream::start_with_handler(|_, _| Reply::Accept, on_accept).await;
        FakeNode { up, node }
    }

    /// The node's WebSocket URL.
    pub fn url(&self) -> String {
        self.up.url("/")
    }

    /// Everything the node saw; wait on it with [`Journal::wait`].
    pub fn journal(&self) -> &Journal<RpcConn> {
        &self.node.journal
    }

    /// Every breach of the rules so far.
    pub fn faults(&self) -> Vec<String> {
        self.node.journal.faults()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.node.journal.connections()
    }

    /// The next request calling `method` resets its connection (no close frame) right after it
    /// arrived, unanswered: the write reached the node, the reply never leaves it.
    pub fn drop_on_next(&self, method: &str) {
        self.node
            .drop_on
            .lock()
            .expect("lock")
            .push(method.to_owned());
    }

    /// While `on`, requests calling `method` are recorded but never answered.
    pub fn mute(&self, method: &str, on: bool) {
        let mut muted = self.node.muted.lock().expect("lock");
        muted.retain(|m| m != method);
        if on {
            muted.push(method.to_owned());
        }
    }

    /// Requests calling `method` over all connections, as received (answered or not).
    pub fn received(&self, method: &str) -> usize {
        (0..self.connections())
            .flat_map(|i| self.frames(i))
            .filter(|f| f["method"] == method)
            .count()
    }

    /// Resets every open connection; their subscriptions die with them.
    pub async fn drop_all(&self) -> usize {
        self.node.journal.drop_all().await
    }

    /// The frames connection `index` received (parsed JSON; invalid JSON as a string).
    pub fn frames(&self, index: usize) -> Vec<Value> {
        self.node.journal.frames(index)
    }

    /// Every request id connection `index` carried, in order.
    pub fn ids(&self, index: usize) -> Vec<Value> {
        self.node
            .journal
            .state(index)
            .map(|s| s.ids)
            .unwrap_or_default()
    }

    /// The live subscriptions of connection `index`.
    pub fn subscriptions(&self, index: usize) -> Vec<Sub> {
        self.node
            .journal
            .state(index)
            .map(|s| s.subs)
            .unwrap_or_default()
    }

    /// The current block number.
    pub fn block(&self) -> u64 {
        self.node.block.load(Ordering::SeqCst)
    }

    /// Where the ids of connection `index` are not unique and increasing: numbers must grow,
    /// strings must be unique and grow in their trailing number (`p-9` before `p-10`).
    pub fn id_order_faults(&self, index: usize) -> Vec<String> {
        let ids = self.ids(index);
        let mut out = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                out.push(format!("conn {index}: id {id} used again"));
            }
        }
        for pair in ids.windows(2) {
            let (a, b) = (order_key(&pair[0]), order_key(&pair[1]));
            if a.is_none() || b.is_none() || a >= b {
                out.push(format!(
                    "conn {index}: id {} after {} does not increase",
                    pair[1], pair[0]
                ));
            }
        }
        out
    }

    /// Waits until the open connections hold exactly `n` live subscriptions of `kind` in total
    /// (0: every one was unsubscribed or died with its connection).
    pub async fn wait_subscriptions(
        &self,
        kind: &str,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("{n} live {kind} subscription(s)");
        self.node
            .journal
            .wait(within, &what, |seen| {
                let live = seen
                    .conns
                    .iter()
                    .filter(|c| c.open)
                    .flat_map(|c| &c.state.subs)
                    .filter(|s| s.kind == kind)
                    .count();
                live == n
            })
            .await
            .map(drop)
    }

    /// Waits until `method` has been called `n` times in total, over all connections.
    pub async fn wait_calls(&self, method: &str, n: usize, within: Duration) -> anyhow::Result<()> {
        let what = format!("{n} call(s) of {method}");
        self.node
            .journal
            .wait(within, &what, |seen| {
                let calls = seen
                    .conns
                    .iter()
                    .flat_map(|c| &c.state.methods)
                    .filter(|m| *m == method)
                    .count();
                calls >= n
            })
            .await
            .map(drop)
    }

    /// Mines a block: pushes its header to every live newHeads subscription of every connection;
    /// returns its number.
    pub async fn new_head(&self) -> u64 {
        let _order = self.node.push.lock().await;
        let number = self.node.block.fetch_add(1, Ordering::SeqCst) + 1;
        let header = json!({
            "number": format!("{number:#x}"),
            "hash": format!("0x{number:064x}"),
            "parentHash": format!("0x{:064x}", number - 1),
            "timestamp": format!("{:#x}", 1_700_000_000 + number * 12),
        });
        self.notify(|sub| (sub.kind == "newHeads").then(|| header.clone()))
            .await;
        number
    }

    /// Pushes `log` to every live logs subscription whose filter's `address` (one or a list)
    /// matches its `address`, or that has none; returns how many notifications went out.
    pub async fn new_log(&self, log: Value) -> usize {
        let _order = self.node.push.lock().await;
        let address = log["address"].as_str().unwrap_or_default().to_lowercase();
        self.notify(|sub| {
            let wanted = match &sub.filter["address"] {
                Value::String(one) => one.to_lowercase() == address,
                Value::Array(many) => many
                    .iter()
                    .any(|a| a.as_str().is_some_and(|a| a.to_lowercase() == address)),
                _ => true,
            };
            (sub.kind == "logs" && wanted).then(|| log.clone())
        })
        .await
    }

    /// Sends `result_for(sub)` to every live subscription it returns one for.
    async fn notify(&self, result_for: impl Fn(&Sub) -> Option<Value>) -> usize {
        let seen = self.node.journal.snapshot();
        let mut sent = 0;
        for (index, wire) in self.node.journal.open_wires() {
            let Some(conn) = seen.conns.get(index) else {
                continue;
            };
            for sub in &conn.state.subs {
                if let Some(result) = result_for(sub) {
                    let note = json!({"jsonrpc": "2.0", "method": "eth_subscription",
                        "params": {"subscription": sub.id, "result": result}});
                    if wire.send_text(&note.to_string()).await.is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        sent
    }
}

/// Numbers, and strings by their trailing number.
fn order_key(id: &Value) -> Option<u64> {
    match id {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
            s[s.len() - digits..].parse().ok()
        }
        _ => None,
    }
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// One connection, until it ends; its subscriptions and requests in flight end with it.
async fn serve(node: Arc<Node>, c: UpConn, index: usize) {
    let journal = &node.journal;
    loop {
        let text = match c.recv().await {
            None | Some(Message::Close(_)) => break,
            Some(Message::Text(t)) => t.as_str().to_owned(),
            Some(other) => {
                journal.fault(format!("conn {index}: not a text frame: {other:?}"));
                continue;
            }
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            journal.frame(index, Value::String(text.clone()));
            journal.fault(format!("conn {index}: not JSON: {text}"));
            send(&c, &error(&Value::Null, -32700, "parse error")).await;
            continue;
        };
        journal.frame(index, v.clone());
        if let Some(method) = v.get("method").and_then(Value::as_str) {
            let armed = {
                let mut d = node.drop_on.lock().expect("lock");
                let at = d.iter().position(|m| m == method);
                at.map(|at| d.remove(at)).is_some()
            };
            if armed {
                let _ = c.reset().await;
                break;
            }
            if node.muted.lock().expect("lock").iter().any(|m| m == method) {
                // Recorded as a call, never answered.
                let _ = handle(&node, index, &v);
                continue;
            }
        }
        match v {
            Value::Array(items) => batch(&node, &c, index, &items).await,
            one => match handle(&node, index, &one) {
                Outcome::Reply(reply) => reply_now(&node, &c, index, reply).await,
                Outcome::Later(delay, reply) => {
                    let (node, c) = (Arc::clone(&node), c.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        reply_now(&node, &c, index, reply).await;
                    });
                }
                Outcome::Subscribed(reply, sub) => {
                    reply_now(&node, &c, index, reply).await;
                    journal.conn(index, |conn| conn.state.subs.push(sub));
                }
                Outcome::Never | Outcome::Silent => {}
            },
        }
    }
    journal.conn(index, |conn| {
        conn.open = false;
        conn.state.subs.clear();
        conn.state.in_flight.clear();
    });
}

/// Takes the reply's id out of flight, then sends it: the client may reuse the id as soon as
/// it has the reply.
async fn reply_now(node: &Node, c: &UpConn, index: usize, reply: Value) {
    end_flight(node, index, &reply);
    send(c, &reply).await;
}

fn end_flight(node: &Node, index: usize, reply: &Value) {
    node.journal.conn(index, |conn| {
        if let Some(at) = conn.state.in_flight.iter().position(|i| *i == reply["id"]) {
            conn.state.in_flight.remove(at);
        }
    });
}

async fn send(c: &UpConn, v: &Value) {
    let _ = c.send_text(&v.to_string()).await;
}

/// A batch is answered as one array once every reply in it is ready; a `slow` call holds the
/// whole batch back forever.
async fn batch(node: &Arc<Node>, c: &UpConn, index: usize, items: &[Value]) {
    if items.is_empty() {
        node.journal.fault(format!(
            "conn {index}: empty batch (invalid per JSON-RPC 2.0 §6)"
        ));
        send(c, &error(&Value::Null, -32600, "empty batch")).await;
        return;
    }
    let mut replies = Vec::new();
    let mut subs = Vec::new();
    let mut delay = Duration::ZERO;
    let mut never = false;
    for item in items {
        match handle(node, index, item) {
            Outcome::Reply(reply) => replies.push(reply),
            Outcome::Later(after, reply) => {
                delay = delay.max(after);
                replies.push(reply);
            }
            Outcome::Subscribed(reply, sub) => {
                replies.push(reply);
                subs.push(sub);
            }
            Outcome::Never => never = true,
            Outcome::Silent => {}
        }
    }
    if never || replies.is_empty() {
        return;
    }
    let (node, c) = (Arc::clone(node), c.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        for reply in &replies {
            end_flight(&node, index, reply);
        }
        send(&c, &Value::Array(replies)).await;
        node.journal
            .conn(index, |conn| conn.state.subs.extend(subs));
    });
}

/// Checks one request, records it, and decides its reply.
fn handle(node: &Node, index: usize, req: &Value) -> Outcome {
    let journal = &node.journal;
    let invalid = |why: &str| {
        journal.fault(format!("conn {index}: {why}: {req}"));
        Outcome::Reply(error(&Value::Null, -32600, "invalid request"))
    };
    let Some(obj) = req.as_object() else {
        return invalid("request is not an object");
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return invalid("jsonrpc is not \"2.0\"");
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return invalid("method is not a string");
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    if !(params.is_null() && !obj.contains_key("params") || params.is_array() || params.is_object())
    {
        return invalid("params is neither an array nor an object");
    }
    let Some(id) = obj.get("id").cloned() else {
        journal.conn(index, |conn| conn.state.methods.push(method.to_owned()));
        return Outcome::Silent;
    };
    match &id {
        Value::String(_) => {}
        Value::Number(n) if n.is_i64() || n.is_u64() => {}
        Value::Number(_) => journal.fault(format!("conn {index}: fractional id {id}")),
        Value::Null => journal.fault(format!("conn {index}: null id cannot be routed")),
        _ => return invalid("id is neither a string nor a number"),
    }
    let reused = journal.conn(index, |conn| {
        let s = &mut conn.state;
        s.methods.push(method.to_owned());
        s.ids.push(id.clone());
        let reused = s.in_flight.contains(&id);
        s.in_flight.push(id.clone());
        reused
    });
    if reused {
        journal.fault(format!("conn {index}: id {id} reused while in flight"));
    }
    let p = |i: usize| params.get(i).cloned().unwrap_or(Value::Null);
    match method {
        "eth_blockNumber" => Outcome::Reply(result(
            &id,
            json!(format!("{:#x}", node.block.load(Ordering::SeqCst))),
        )),
        "echo" => {
            let reply = result(&id, params.clone());
            match p(1).as_u64() {
                Some(ms) => Outcome::Later(Duration::from_millis(ms), reply),
                None => Outcome::Reply(reply),
            }
        }
        "slow" => Outcome::Never,
        "eth_subscribe" => {
            let kind = p(0).as_str().unwrap_or_default().to_owned();
            if kind != "newHeads" && kind != "logs" {
                let message = format!("no {:?} subscription in eth namespace", p(0));
                return Outcome::Reply(error(&id, -32602, &message));
            }
            let sub = Sub {
                id: format!("0x{:032x}", fastrand::u128(..)),
                filter: if kind == "logs" { p(1) } else { Value::Null },
                kind,
            };
            Outcome::Subscribed(result(&id, json!(sub.id)), sub)
        }
        "eth_unsubscribe" => {
            let Some(sub_id) = p(0).as_str().map(str::to_owned) else {
                return Outcome::Reply(error(&id, -32602, "invalid params"));
            };
            let removed = journal.conn(index, |conn| {
                let before = conn.state.subs.len();
                conn.state.subs.retain(|s| s.id != sub_id);
                before != conn.state.subs.len()
            });
            if removed {
                Outcome::Reply(result(&id, json!(true)))
            } else {
                journal.fault(format!(
                    "conn {index}: eth_unsubscribe of {sub_id}, not live on this connection"
                ));
                Outcome::Reply(error(&id, -32000, "subscription not found"))
            }
        }
        other => {
            let message = format!("the method {other} does not exist/is not available");
            Outcome::Reply(error(&id, -32601, &message))
        }
    }
}

/// An app's `Request` of `body` on `endpoint`: the reply's JSON, or the call's status.
pub async fn request(
    c: &mut ws_sidecar::proto::sidecar_client::SidecarClient<tonic::transport::Channel>,
    endpoint: &str,
    body: Value,
) -> Result<Value, tonic::Status> {
    let reply = c
        .request(ws_sidecar::proto::UpstreamRequest {
            endpoint: endpoint.into(),
            data: body.to_string().into(),
        })
        .await?
        .into_inner();
    Ok(serde_json::from_slice(&reply.data).expect("a JSON reply"))
}

/// The next reply of a `RequestStream`, within `within`.
pub async fn next_reply(
    s: &mut tonic::Streaming<ws_sidecar::proto::UpstreamReply>,
    within: Duration,
) -> Value {
    let r = tokio::time::timeout(within, s.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    serde_json::from_slice::<Value>(&r.data).expect("JSON")
}
