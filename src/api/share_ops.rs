//! The NDJSON socket's shared-conversation operations: `subscribe` with keys (`Attach`),
//! `unsubscribe`, `request` (one reply, or a stream of them) and `cancel`.
//!
//! A request runs on its own task and writes its reply lines through the connection's queue;
//! the connection's writer keeps it in [`Calls`] so that `cancel`, or the client leaving,
//! ends it (which forgets the request and cancels a stream upstream).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::call::Call;
use super::stream::{error_line, Out};
use super::subscription::{SubscribeError, Subscription};
use crate::access::Peer;
use crate::registry::Registry;

/// Line ids tracked on one connection before finished requests are swept out.
const MAX_CALLS: usize = 10_000;

/// A request's task; aborted when dropped.
pub struct Running(AbortHandle);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection's requests in flight, by the JSON text of their line id (several may share
/// one; `cancel` ends them all).
#[derive(Default)]
pub struct Calls(HashMap<String, Vec<Running>>);

impl Calls {
    /// Keeps a request to cancel it later; finished ones are let go first.
    pub fn insert(&mut self, id: String, running: Running) {
        if self.0.len() >= MAX_CALLS {
            self.0.retain(|_, rs| {
                rs.retain(|r| !r.0.is_finished());
                !rs.is_empty()
            });
        }
        self.0.entry(id).or_default().push(running);
    }

    /// Ends the requests with line id `id`; the line that says so.
    pub fn cancel(&mut self, id: &str) -> String {
        let idv: Value = serde_json::from_str(id).unwrap_or(Value::Null);
        let running = self.0.remove(id).unwrap_or_default();
        let live = running.iter().filter(|r| !r.0.is_finished()).count();
        drop(running);
        if live == 0 {
            return error_line("not_found", "no request in flight with this id", Some(&idv));
        }
        json!({"type": "cancelled", "id": idv}).to_string()
    }
}

/// `subscribe` with keys: an `Attach` subscription, or the error line.
pub(crate) fn attach(
    registry: &Registry,
    endpoint: &str,
    keys: Vec<String>,
    params: Option<Value>,
    from_seq: Option<u64>,
    peer: Peer,
) -> Out {
    let named = keys.clone();
    match Subscription::attach(registry, endpoint, keys, params, from_seq, peer) {
        Ok(sub) => Out::Subscribe(Box::new(sub)),
        Err(e) => {
            // Which subscribe failed, for a client that sent several.
            let mut line: Value = serde_json::from_str(&subscribe_error(&e)).unwrap_or_default();
            line["endpoint"] = json!(endpoint);
            line["keys"] = json!(named);
            Out::Line(line.to_string())
        }
    }
}

/// The error line for a subscription that could not start.
pub(crate) fn subscribe_error(e: &SubscribeError) -> String {
    let code = match e {
        SubscribeError::NotFound(_) => "not_found",
        SubscribeError::TooMany(_) | SubscribeError::Share(_) => "resource_exhausted",
        SubscribeError::Denied(_) => "permission_denied",
        SubscribeError::NotShared(_) => "failed_precondition",
        SubscribeError::BadKey(_) => "invalid_argument",
    };
    error_line(code, &e.to_string(), None)
}

/// `request`: starts the request and hands its task to the writer, or the error line.
pub(crate) fn call(
    registry: &Registry,
    endpoint: &str,
    data: Value,
    id: Option<Value>,
    stream: bool,
    peer: Peer,
    tx: &mpsc::Sender<Out>,
) -> Out {
    // `data` is the request itself, or a string of its JSON text (what `send` reads).
    let text = match data {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let mut call = match Call::start(registry, endpoint, text.as_bytes(), stream, peer) {
        Ok(c) => c,
        Err(e) => return Out::Line(error_line(e.code(), &e.to_string(), id.as_ref())),
    };
    let key = id.as_ref().map_or_else(String::new, Value::to_string);
    let tx = tx.clone();
    let line_id = id.clone();
    let task = tokio::spawn(async move {
        while let Some(r) = call.next().await {
            let (line, last) = match r {
                Ok(reply) => (
                    reply_line(&call.endpoint, &reply, line_id.as_ref()),
                    reply.end,
                ),
                Err(e) => (error_line(e.code(), &e.to_string(), line_id.as_ref()), true),
            };
            if tx.send(Out::Line(line)).await.is_err() || last {
                break;
            }
        }
    });
    Out::Call(key, Running(task.abort_handle()))
}

/// `{"type":"reply","endpoint":…,"id":…,"data":…,"error":…,"end":…}`: the reply as JSON.
fn reply_line(endpoint: &Arc<str>, reply: &crate::share::Reply, id: Option<&Value>) -> String {
    let data: Value = serde_json::from_slice(&reply.data).unwrap_or(Value::Null);
    let mut v = json!({
        "type": "reply", "endpoint": &**endpoint, "data": data,
        "error": reply.error, "end": reply.end,
    });
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string()
}
