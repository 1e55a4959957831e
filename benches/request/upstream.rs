//! The built-in JSON-RPC 2.0 upstream: a tokio-tungstenite server on 127.0.0.1:0 that answers
//! each `echo` request at once with `{"jsonrpc":"2.0","id":X,"result":{"echo":PARAMS,"at":NS}}`,
//! `NS` being when it read the request on the bench's one clock ([`now_ns`]), so the request and
//! reply legs can be told apart.
//!
//! It enforces the request rules of the specification (https://www.jsonrpc.org/specification,
//! "Request object", "Batch"): `jsonrpc` exactly `"2.0"`, `method` a string, `params` absent, an
//! array or an object, an `id` that is a string or a number without a fraction (a request without
//! one is a notification, which gets no reply), no other members. A request breaking a rule, a
//! method other than `echo`, a binary frame or text that is not JSON gets the specification's
//! error object and counts as a violation, which fails the bench.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// The one clock every timestamp in the bench is taken against.
pub fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

/// Monotonic ns since [`epoch`].
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// What the upstream saw, shared with the bench.
#[derive(Default)]
pub struct Seen {
    /// Requests answered with a result.
    pub answered: AtomicU64,
    /// Requests or frames that broke the protocol.
    pub violations: AtomicU64,
    /// The first violation, for the report.
    pub first_violation: Mutex<Option<String>>,
}

impl Seen {
    fn violation(&self, what: String) {
        if self.violations.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("UPSTREAM: protocol violation: {what}");
            if let Ok(mut f) = self.first_violation.lock() {
                *f = Some(what);
            }
        }
    }
}

/// Binds 127.0.0.1:0 and serves every connection on the current runtime.
pub async fn start(seen: Arc<Seen>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("upstream bind: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("upstream addr: {e}"))?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp, Arc::clone(&seen)));
        }
    });
    Ok(addr)
}

async fn serve(tcp: TcpStream, seen: Arc<Seen>) {
    // Replies are single small frames: Nagle would hold them for the peer's delayed ACK.
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let at = now_ns();
        let reply = match msg {
            Message::Text(t) => answer(t.as_str(), at, &seen),
            Message::Binary(_) => {
                seen.violation("a binary frame (JSON-RPC over WebSocket is text)".into());
                Some(error(Value::Null, -32700, "binary frame"))
            }
            Message::Close(_) => break,
            // tungstenite answers pings itself.
            _ => None,
        };
        if let Some(r) = reply {
            if ws.send(Message::text(r)).await.is_err() {
                break;
            }
        }
    }
}

/// The reply to one text frame: a response, a batch of them, or nothing (notifications only).
fn answer(text: &str, at: u64, seen: &Seen) -> Option<String> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            seen.violation(format!("not JSON ({e})"));
            return Some(error(Value::Null, -32700, "parse error"));
        }
    };
    match v {
        Value::Array(batch) if batch.is_empty() => {
            seen.violation("an empty batch".into());
            Some(error(Value::Null, -32600, "invalid request"))
        }
        Value::Array(batch) => {
            let replies: Vec<Value> = batch.into_iter().filter_map(|r| one(r, at, seen)).collect();
            (!replies.is_empty()).then(|| Value::Array(replies).to_string())
        }
        other => one(other, at, seen).map(|r| r.to_string()),
    }
}

/// The response to one request object (`None` for a notification).
fn one(v: Value, at: u64, seen: &Seen) -> Option<Value> {
    let Value::Object(mut req) = v else {
        seen.violation(format!("a request that is not an object: {v}"));
        return Some(error_value(Value::Null, -32600, "invalid request"));
    };
    let id = req.remove("id");
    let reply_id = id.clone().unwrap_or(Value::Null);
    if let Err(why) = check(&req, id.as_ref()) {
        seen.violation(why);
        return Some(error_value(reply_id, -32600, "invalid request"));
    }
    let method = req.get("method").and_then(Value::as_str).unwrap_or("");
    if method != "echo" {
        seen.violation(format!("unknown method {method:?}"));
        return Some(error_value(reply_id, -32601, "method not found"));
    }
    let id = id?;
    seen.answered.fetch_add(1, Ordering::Relaxed);
    let params = req.remove("params").unwrap_or(Value::Null);
    Some(json!({"jsonrpc": "2.0", "id": id, "result": {"echo": params, "at": at}}))
}

/// The rules of a request object (its `id` already taken out).
fn check(req: &Map<String, Value>, id: Option<&Value>) -> Result<(), String> {
    if req.get("jsonrpc") != Some(&Value::from("2.0")) {
        return Err(format!("jsonrpc is {:?}, not \"2.0\"", req.get("jsonrpc")));
    }
    if !req.get("method").is_some_and(Value::is_string) {
        return Err("method missing or not a string".into());
    }
    if let Some(p) = req.get("params") {
        if !(p.is_array() || p.is_object()) {
            return Err(format!("params is neither an array nor an object: {p}"));
        }
    }
    if let Some(k) = req
        .keys()
        .find(|k| !matches!(k.as_str(), "jsonrpc" | "method" | "params"))
    {
        return Err(format!("unknown member {k:?}"));
    }
    match id {
        None => Err("no id: a notification, which gets no reply".into()),
        Some(Value::String(_)) => Ok(()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        Some(other) => Err(format!("id {other} is not a string or an integer")),
    }
}

fn error_value(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn error(id: Value, code: i64, message: &str) -> String {
    error_value(id, code, message).to_string()
}
