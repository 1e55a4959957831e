//! The NDJSON target: request lines through the daemon's line codec and request handler.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio_util::codec::{Decoder, LinesCodec};

use crate::access::Peer;
use crate::api::stream::{self, Line, Lines, Out, Request};
use crate::config::{self, Config};
use crate::endpoint::{Endpoint, State};
use crate::registry::Registry;

/// Line limit for the NDJSON target: small, so the fuzzer reaches the over-long-line path with
/// inputs of a few hundred bytes instead of the daemon's 1 MiB.
const NDJSON_MAX_LINE: usize = 200;

/// Replies the NDJSON handler may send for a request line.
const REPLY_TYPES: &[&str] = &["ack", "error", "status"];

/// Endpoints the NDJSON target talks to: `e` accepts everything (tiny outbox, so a few publishes
/// fill it), `locked` has access lists, `down` is `failed`.
static NDJSON_CONFIG: LazyLock<Config> = LazyLock::new(|| {
    let text = "[endpoints.e]\nurl = 'ws://127.0.0.1:9/'\noutbox = { max_messages = 2 }\n\
                [endpoints.locked]\nurl = 'ws://127.0.0.1:9/'\n\
                access = { subscribe = ['uid:4242'], publish = ['uid:4242'] }\n\
                [endpoints.down]\nurl = 'ws://127.0.0.1:9/'\n";
    match config::load_str(text, Path::new("fuzz.toml"), &HashMap::new()) {
        Ok(c) => c,
        Err(e) => panic!("fuzz config is invalid: {e}"),
    }
});

/// Splits `input` into request lines with the daemon's line codec and handles each one against
/// a fresh registry, checking that every reply is one JSON line of a known type and that every
/// request that parses re-serialises to the same request.
pub fn ndjson(input: &[u8]) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let endpoints: Vec<Arc<Endpoint>> = NDJSON_CONFIG
        .endpoints
        .iter()
        .map(|(name, cfg)| Endpoint::new(name.clone(), cfg.clone(), None, Default::default()))
        .collect();
    for ep in &endpoints {
        for i in 0..3 {
            let data = format!(r#"{{"i":{i},"ep":"{}"}}"#, ep.name);
            ep.log
                .append_after_gap(crate::log::Kind::Text, data.into(), 0, None);
        }
        if ep.name == "down" {
            ep.set_state(State::Failed, "fuzz");
        }
    }
    let registry = Registry::new(endpoints, 4);
    let (tx, _rx) = tokio::sync::mpsc::channel::<Out>(64);
    let newlines = input.iter().filter(|b| **b == b'\n').count();
    let lines = split_lines(input);
    assert!(lines.len() <= newlines + 1, "more lines than newlines + 1");
    rt.block_on(async {
        for line in lines {
            let Line::Text(text) = line else { continue };
            assert!(
                text.len() <= NDJSON_MAX_LINE,
                "over-long line passed the codec"
            );
            assert!(!text.contains('\n'), "a line holds a newline");
            if text.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Request>(&text).ok();
            if let Some(req) = &parsed {
                check_reserialises(req);
            }
            let reply = stream::request(&text, Peer::Unknown, &registry, &tx).await;
            check_reply(parsed.as_ref(), reply);
        }
    });
}

fn split_lines(input: &[u8]) -> Vec<Line> {
    let mut codec = Lines(LinesCodec::new_with_max_length(NDJSON_MAX_LINE));
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    // Each call consumes at least one byte or ends, so this bounds a codec that would spin.
    let mut budget = input.len() + 2;
    loop {
        assert!(budget > 0, "line codec does not make progress");
        budget -= 1;
        match codec.decode(&mut buf) {
            Ok(Some(l)) => out.push(l),
            Ok(None) => break,
            Err(e) => panic!("line codec failed on in-memory input: {e}"),
        }
    }
    loop {
        assert!(budget > 0, "line codec does not make progress at EOF");
        budget -= 1;
        match codec.decode_eof(&mut buf) {
            Ok(Some(l)) => out.push(l),
            Ok(None) => break,
            Err(e) => panic!("line codec failed at EOF: {e}"),
        }
    }
    out
}

/// The request as the JSON a client would write, with every optional field that is set.
fn request_json(req: &Request) -> Value {
    match req {
        Request::Subscribe {
            endpoint,
            from_seq,
            filters,
            key,
            keys,
            params,
        } => {
            let filters: Vec<Value> = filters
                .iter()
                .map(|f| json!({"pointer": f.pointer, "equals": f.equals}))
                .collect();
            let mut v =
                json!({"op": "subscribe", "endpoint": endpoint, "filters": filters, "keys": keys});
            if let Some(n) = from_seq {
                v["from_seq"] = json!(n);
            }
            if let Some(k) = key {
                v["key"] = json!(k);
            }
            if let Some(p) = params {
                v["params"] = p.clone();
            }
            v
        }
        Request::Unsubscribe { endpoint, key } => {
            json!({"op": "unsubscribe", "endpoint": endpoint, "key": key})
        }
        Request::Call {
            endpoint,
            data,
            id,
            stream,
        } => {
            let mut v =
                json!({"op": "request", "endpoint": endpoint, "data": data, "stream": stream});
            if let Some(id) = id {
                v["id"] = id.clone();
            }
            v
        }
        Request::Cancel { id } => json!({"op": "cancel", "id": id}),
        Request::Publish {
            endpoint,
            data,
            binary,
            id,
            idempotency_key,
            wait,
        } => {
            let mut v =
                json!({"op": "publish", "endpoint": endpoint, "data": data, "binary": binary});
            if let Some(id) = id {
                v["id"] = id.clone();
            }
            if let Some(k) = idempotency_key {
                v["idempotency_key"] = json!(k);
            }
            if let Some(w) = wait {
                v["wait"] = json!(w);
            }
            v
        }
        Request::Status { endpoint } => match endpoint {
            Some(e) => json!({"op": "status", "endpoint": e}),
            None => json!({"op": "status"}),
        },
    }
}

fn check_reserialises(req: &Request) {
    let first = request_json(req);
    let text = first.to_string();
    let again = match serde_json::from_str::<Request>(&text) {
        Ok(r) => r,
        Err(e) => panic!("re-serialised request does not parse: {e}: {text}"),
    };
    assert_eq!(
        request_json(&again),
        first,
        "request changed on a round trip"
    );
}

fn check_reply(req: Option<&Request>, reply: Option<Out>) {
    let line = match reply {
        None => {
            // Only `wait = "sent"` publishes answer later, from their own task.
            let waits = matches!(req, Some(Request::Publish { wait: Some(w), .. }) if w == "sent");
            assert!(waits, "no reply for a request that does not wait");
            return;
        }
        Some(Out::Subscribe(mut sub)) => {
            assert!(
                matches!(req, Some(Request::Subscribe { .. })),
                "a subscription for a request that is not a subscribe"
            );
            let first =
                futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut *sub));
            assert!(
                matches!(
                    first,
                    Some(Some(crate::api::subscription::SubEvent::State(_)))
                ),
                "a subscription must start with the endpoint state"
            );
            return;
        }
        Some(Out::Line(line)) => line,
        // Handled by the connection's writer; the fuzzed registry has nothing shared, so a
        // request never gets this far.
        Some(Out::Call(..)) => panic!("a request started on an endpoint without requests"),
        Some(Out::Cancel(_)) => {
            assert!(
                matches!(req, Some(Request::Cancel { .. })),
                "a cancel for another request"
            );
            return;
        }
        Some(Out::Unsubscribe { .. }) => {
            assert!(
                matches!(req, Some(Request::Unsubscribe { .. })),
                "an unsubscribe for another request"
            );
            return;
        }
    };
    assert!(!line.contains('\n'), "reply spans lines: {line}");
    let v: Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => panic!("reply is not JSON ({e}): {line}"),
    };
    let kind = v["type"].as_str().unwrap_or_default();
    assert!(REPLY_TYPES.contains(&kind), "unknown reply type: {line}");
    if kind == "error" {
        assert!(v["code"].is_string() && v["message"].is_string(), "{line}");
    }
    match req {
        None => assert_eq!(
            kind, "error",
            "a line that does not parse must get an error"
        ),
        Some(Request::Status { .. }) => assert!(kind == "status" || kind == "error", "{line}"),
        Some(Request::Subscribe { .. } | Request::Call { .. }) => {
            assert_eq!(kind, "error", "{line}")
        }
        Some(Request::Unsubscribe { .. } | Request::Cancel { .. }) => {
            panic!("handled by the writer, not answered here: {line}")
        }
        Some(Request::Publish { id, .. }) => {
            assert!(kind == "ack" || kind == "error", "{line}");
            if let Some(id) = id {
                assert_eq!(&v["id"], id, "reply does not echo the request id: {line}");
            }
        }
    }
}
