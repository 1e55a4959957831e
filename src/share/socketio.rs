//! Socket.IO v5 packets over Engine.IO v4 on a WebSocket (`framing = "socketio"`), per the
//! engine.io-protocol and socket.io-protocol specifications: an Engine.IO packet is its type
//! digit (0 open, 1 close, 2 ping, 3 pong, 4 message, 5 upgrade, 6 noop) and its data; a message
//! carries a Socket.IO packet `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]` (types 0
//! CONNECT, 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR, 5 BINARY_EVENT, 6 BINARY_ACK).
//!
//! Inbound packets become JSON documents the rest of the daemon reads with pointers (`on_connect`
//! steps, rules, reply routing): `{"eio":4,"sio":3,"id":7,"data":[…]}`; apps receive an event as
//! its decoded array (`["name", …]`) and an ack as its argument array.

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// A decoded packet: the document to match and route on, and what apps receive of it (an
/// event's array; `None`: the packet as it came).
#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub doc: Value,
    pub for_apps: Option<Bytes>,
}

/// Reads one text frame as an Engine.IO packet; `None` when it is not one.
pub fn decode(text: &str) -> Option<Decoded> {
    let mut chars = text.chars();
    let eio = chars.next()?.to_digit(10)?;
    if eio > 6 {
        return None;
    }
    let rest = chars.as_str();
    let mut doc = Map::new();
    doc.insert("eio".into(), json!(eio));
    let mut for_apps = None;
    match eio {
        // open: the handshake's JSON.
        0 => {
            if let Ok(v) = serde_json::from_str::<Value>(rest) {
                doc.insert("data".into(), v);
            }
        }
        4 => {
            let (sio, nsp, id, data) = socket_packet(rest)?;
            doc.insert("sio".into(), json!(sio));
            if let Some(nsp) = nsp {
                doc.insert("nsp".into(), json!(nsp));
            }
            if let Some(id) = id {
                doc.insert("id".into(), json!(id));
            }
            if let Some(data) = data {
                if sio == 2 {
                    for_apps = Some(Bytes::from(data.to_string()));
                }
                doc.insert("data".into(), data);
            }
        }
        _ if !rest.is_empty() => {
            doc.insert("data".into(), json!(rest));
        }
        _ => {}
    }
    Some(Decoded {
        doc: Value::Object(doc),
        for_apps,
    })
}

/// The Socket.IO packet in an Engine.IO message: type, namespace, ack id, JSON payload.
type SocketPacket<'a> = (u32, Option<&'a str>, Option<u64>, Option<Value>);

fn socket_packet(s: &str) -> Option<SocketPacket<'_>> {
    let mut rest = s;
    let sio = rest.chars().next()?.to_digit(10)?;
    if sio > 6 {
        return None;
    }
    rest = &rest[1..];
    // Binary packets say how many attachments follow: `51-["x",{"_placeholder":true,…}]`.
    if matches!(sio, 5 | 6) {
        let dash = rest.find('-')?;
        if !rest[..dash].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        rest = &rest[dash + 1..];
    }
    let mut nsp = None;
    if rest.starts_with('/') {
        let comma = rest.find(',');
        let end = comma.unwrap_or(rest.len());
        nsp = Some(&rest[..end]);
        rest = comma.map_or("", |c| &rest[c + 1..]);
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = match digits {
        0 => None,
        // An ack id is at most a JavaScript safe integer; longer digits are not one.
        1..=15 => rest[..digits].parse().ok(),
        _ => return None,
    };
    rest = &rest[digits..];
    let data = match rest {
        "" => None,
        json => Some(serde_json::from_str(json).ok()?),
    };
    Some((sio, nsp, id, data))
}

/// An EVENT packet (`42[…]`, with an ack id `42<id>[…]`) carrying `args` (`["name", …]`).
pub fn event(id: Option<&Value>, args: &Value) -> String {
    let id = id.map(Value::to_string).unwrap_or_default();
    format!("42{id}{args}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_decode_as_the_specification_writes_them() {
        let open = decode(r#"0{"sid":"a","pingInterval":25000}"#).expect("open");
        assert_eq!(
            open.doc,
            json!({"eio":0,"data":{"sid":"a","pingInterval":25000}})
        );
        assert_eq!(decode("2").expect("ping").doc, json!({"eio":2}));
        assert_eq!(
            decode(r#"40{"sid":"s"}"#).expect("connect").doc,
            json!({"eio":4,"sio":0,"data":{"sid":"s"}})
        );
        let ev = decode(r#"42["chat",{"t":"hi"}]"#).expect("event");
        assert_eq!(ev.for_apps.as_deref(), Some(&br#"["chat",{"t":"hi"}]"#[..]));
        let ack = decode(r#"43/admin,17["ok",3]"#).expect("ack");
        assert_eq!(
            ack.doc,
            json!({"eio":4,"sio":3,"nsp":"/admin","id":17,"data":["ok",3]})
        );
        assert_eq!(ack.for_apps, None);
        let bin = decode(r#"451-["f",{"_placeholder":true,"num":0}]"#).expect("binary event");
        assert_eq!(bin.doc["sio"], 5);
        for bad in [
            "",
            "9",
            "4",
            "49",
            "42[",
            "4x",
            "42123456789012345678[]",
            "451x-[]",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            event(Some(&json!(12)), &json!(["add", 1, 2])),
            r#"4212["add",1,2]"#
        );
        assert_eq!(event(None, &json!(["x"])), r#"42["x"]"#);
    }
}
