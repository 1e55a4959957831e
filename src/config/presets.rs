//! `preset = "NAME"`: the settings a well-known protocol needs (`subscriptions`, `requests`, and
//! where the protocol has them its opening, keep-alive and rules), filled in under the
//! endpoint's own keys. A key the endpoint sets replaces the preset's value whole (a table is
//! merged key by key, an array such as `rules` is replaced), so any part can be overridden.
//! README.md "Presets" documents each with its source.

use config::{Value, ValueKind};

use super::value::{Node, Report};

/// JSON-RPC 2.0 (https://www.jsonrpc.org/specification) with the Ethereum pub/sub methods
/// (geth "Real-time events": `eth_subscribe` answers with a subscription id, notifications are
/// `eth_subscription` with `params.subscription`). Shared keys are subscription kinds
/// (`newHeads`, `newPendingTransactions`; `{{params}}` for `logs` filters in an override).
const JSONRPC: &str = r#"
[requests]
id = "/id"
error = { pointer = "/error" }
[requests.stream]
opens = { pointer = "/method", equals = "eth_subscribe" }
id = "/result"
route = "/params/subscription"
cancel = '{"jsonrpc":"2.0","id":{{id}},"method":"eth_unsubscribe","params":[{{sub_id}}]}'
[subscriptions]
subscribe = '{"jsonrpc":"2.0","id":{{id}},"method":"eth_subscribe","params":["{{key}}"]}'
unsubscribe = '{"jsonrpc":"2.0","id":{{id}},"method":"eth_unsubscribe","params":[{{sub_id}}]}'
id = "/params/subscription"
server_id = "/result"
refuse = { pointer = "/error" }
"#;

/// graphql-transport-ws (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md):
/// `connection_init` answered by `connection_ack` before anything else; ping/pong either way;
/// `subscribe` by operation id, answered by `next`… then `complete` or `error`; the client ends
/// an operation with `complete`.
const GRAPHQL_TRANSPORT_WS: &str = r#"
subprotocols = ["graphql-transport-ws"]
on_connect = [
  { send = '{"type":"connection_init","payload":{}}', expect = { pointer = "/type", equals = "connection_ack" }, timeout = "10s" },
]
heartbeat = { app_ping = '{"type":"ping"}', app_ping_interval = "15s" }
rules = [
  { match = { pointer = "/type", equals = "ping" }, reply = '{"type":"pong"}', drop = true },
  { match = { pointer = "/type", equals = "pong" }, drop = true },
]
[requests]
id = "/id"
ids = "string"
error = { pointer = "/type", equals = "error" }
[requests.stream]
ends = [{ pointer = "/type", equals = "complete" }, { pointer = "/type", equals = "error" }]
cancel = '{"id":{{request_id}},"type":"complete"}'
"#;

/// Phoenix channels, V2 JSON serializer (phoenixframework/phoenix
/// `socket/serializers/v2_json_serializer.ex`): `[join_ref, ref, topic, event, payload]`;
/// `phx_join`/`phx_leave` per topic answered by `phx_reply` with the same ref; a heartbeat on
/// the `phoenix` topic; a push on a topic carries the topic's join_ref.
const PHOENIX: &str = r#"
heartbeat = { app_ping = '[null,"{{counter}}","phoenix","heartbeat",{}]', app_ping_interval = "30s" }
rules = [
  { match = [{ pointer = "/2", equals = "phoenix" }, { pointer = "/3", equals = "phx_reply" }], drop = true },
]
[requests]
id = "/1"
ids = "string"
reply = { pointer = "/3", equals = "phx_reply" }
error = { pointer = "/4/status", equals = "error" }
join = { key = "/2", id = "/0" }
[subscriptions]
subscribe = '[{{id}},{{id}},"{{key}}","phx_join",{}]'
unsubscribe = '[{{sub_id}},{{id}},"{{key}}","phx_leave",{}]'
key = "/2"
refuse = { pointer = "/4/status", equals = "error" }
"#;

/// Home Assistant WebSocket API (developers.home-assistant.io/docs/api/websocket): the server
/// greets with `auth_required`, the token goes in an `auth` message answered by `auth_ok` or
/// `auth_invalid`; then every message carries an id that increases on the connection (the
/// daemon's `{{counter}}`), answered by a `result` with that id; events carry the id of their
/// `subscribe_events` command.
const HOME_ASSISTANT: &str = r#"
on_connect = [
  { expect = { pointer = "/type", equals = "auth_required" } },
  { send = '{"type":"auth","access_token":"{{token}}"}', expect = { pointer = "/type", equals = "auth_ok" }, refuse = { pointer = "/type", equals = "auth_invalid" }, failure = "reauth", timeout = "10s" },
]
heartbeat = { app_ping = '{"id":{{counter}},"type":"ping"}', app_ping_interval = "30s" }
rules = [{ match = { pointer = "/type", equals = "pong" }, drop = true }]
[requests]
id = "/id"
reply = { pointer = "/type", equals = "result" }
error = { pointer = "/success", equals = false }
[subscriptions]
subscribe = '{"id":{{id}},"type":"subscribe_events","event_type":"{{key}}"}'
unsubscribe = '{"id":{{id}},"type":"unsubscribe_events","subscription":{{sub_id}}}'
id = "/id"
refuse = { pointer = "/success", equals = false }
"#;

/// Socket.IO v5 over Engine.IO v4, WebSocket transport only (socket.io-protocol and
/// engine.io-protocol): the URL is `…/socket.io/?EIO=4&transport=websocket`; the server opens
/// with `0{…}`, the client connects the main namespace with `40` and waits for `40{"sid"…}`
/// (`44{…}` refuses); the server pings (`2`) and closes without a pong (`3`) in pingTimeout;
/// apps get each event as its array; a request is an event sent with an ack id, its reply the
/// ack's arguments.
const SOCKETIO: &str = r#"
framing = "socketio"
on_connect = [
  { expect = { pointer = "/eio", equals = 0 } },
  { send = "40", expect = [{ pointer = "/eio", equals = 4 }, { pointer = "/sio", equals = 0 }], refuse = [{ pointer = "/eio", equals = 4 }, { pointer = "/sio", equals = 4 }], timeout = "10s" },
]
rules = [
  { match = { text = "2" }, reply = "3", drop = true },
  { match = [{ pointer = "/eio", equals = 4 }, { pointer = "/sio", equals = 1 }], action = "reconnect" },
]
[requests]
id = "/id"
reply = [{ pointer = "/eio", equals = 4 }, { pointer = "/sio", equals = 3 }]
"#;

/// The presets by name.
pub(crate) const PRESETS: &[(&str, &str)] = &[
    ("jsonrpc", JSONRPC),
    ("graphql-transport-ws", GRAPHQL_TRANSPORT_WS),
    ("phoenix", PHOENIX),
    ("home-assistant", HOME_ASSISTANT),
    ("socketio", SOCKETIO),
];

/// The endpoint table with its preset's settings under it, when it names one; `None` when it
/// names none (or an unknown one, reported).
pub(super) fn apply(r: &mut Report, node: &Node<'_>) -> Option<Value> {
    let ValueKind::Table(t) = &node.value.kind else {
        return None;
    };
    let preset = t.get("preset")?;
    let name = match &preset.kind {
        ValueKind::String(s) => s.as_str(),
        _ => {
            r.at(&node.child("preset", preset), "must be a preset's name");
            return None;
        }
    };
    let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        r.at(
            &node.child("preset", preset),
            format!(
                "unknown preset {name:?}: expected one of {}",
                names.join(", ")
            ),
        );
        return None;
    };
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build();
    let mut base = match built {
        Ok(c) => c.cache,
        Err(e) => {
            // The presets are checked by a test; this would be a bug in the build.
            r.at(node, format!("preset {name:?} does not load: {e}"));
            return None;
        }
    };
    super::load::merge(&mut base, node.value.clone());
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::PRESETS;

    #[test]
    fn every_preset_loads_and_passes_check_config() {
        for (name, _) in PRESETS {
            let extra = match *name {
                "home-assistant" => "auth = { token = \"t\" }\n",
                _ => "",
            };
            let text = format!(
                "[endpoints.e]\nurl = \"ws://127.0.0.1:1/x\"\npreset = \"{name}\"\n{extra}"
            );
            let env = std::collections::HashMap::new();
            let cfg = crate::config::load_str(&text, std::path::Path::new("t.toml"), &env)
                .unwrap_or_else(|e| panic!("preset {name}: {e}"));
            let ep = &cfg.endpoints["e"];
            assert!(ep.requests.is_some(), "{name}: requests");
        }
    }
}
