//! Subscription events rendered as NDJSON lines (SPEC §13). A message's line depends only on
//! the message and its endpoint, so it is rendered once per log entry and shared by every NDJSON
//! subscriber; state changes and gaps are rare and rendered on the spot.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use serde_json::json;

use super::subscription::{SubEvent, Subscription};
use crate::log::{Encoding, Entry, Item, Kind};

/// One rendered event.
pub enum Line {
    /// A message whose line is cached on its entry.
    Message(Arc<Entry>),
    Other {
        bytes: Bytes,
        /// The subscriber was dropped for falling behind: hang up once this line is written.
        last: bool,
    },
}

impl Line {
    /// The JSON object and its newline.
    pub fn bytes(&self) -> &[u8] {
        match self {
            // `EventLines` rendered the line before handing out the entry.
            Line::Message(e) => e.cached(Encoding::Ndjson).unwrap_or_default(),
            Line::Other { bytes, .. } => bytes,
        }
    }

    /// Whether the connection should hang up after this line.
    pub fn is_last(&self) -> bool {
        matches!(self, Line::Other { last: true, .. })
    }
}

/// A subscription's events as NDJSON lines, and whether it has ended.
struct EventLines(Subscription, bool);

impl Stream for EventLines {
    type Item = Line;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Line>> {
        let sub = &mut self.0;
        let ev = match Pin::new(&mut *sub).poll_next(cx) {
            Poll::Ready(Some(ev)) => ev,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let endpoint = &sub.endpoint;
        let line = match ev {
            SubEvent::Item(Item::Message(m)) => {
                sub.endpoint()
                    .log
                    .encoding(&m, Encoding::Ndjson, |e| message_line(endpoint, e));
                Line::Message(m)
            }
            SubEvent::State(s) => json_line(json!({
                "type": "state", "endpoint": &**endpoint, "state": s.state.as_str(),
                "reason": s.reason, "at_unix_nanos": s.at,
            })),
            SubEvent::Item(Item::Gap { from, to, reason }) => json_line(json!({
                "type": "gap", "endpoint": &**endpoint, "from_seq": from, "to_seq": to,
                "reason": reason.as_str(),
            })),
            SubEvent::Key(k) => {
                let mut v = json!({
                    "type": "key", "endpoint": &**endpoint, "key": &*k.key,
                    "state": k.state.as_str(),
                });
                if let crate::share::KeyState::Refused(r) = k.state {
                    v["reason"] = r.into();
                }
                json_line(v)
            }
            SubEvent::Lagged(l) => Line::Other {
                bytes: json_bytes(json!({
                    "type": "error", "code": "slow_subscriber", "endpoint": &**endpoint,
                    "message": format!("disconnected: {l}"),
                })),
                last: true,
            },
        };
        Poll::Ready(Some(line))
    }
}

fn json_line(v: serde_json::Value) -> Line {
    Line::Other {
        bytes: json_bytes(v),
        last: false,
    }
}

fn json_bytes(v: serde_json::Value) -> Bytes {
    let mut buf = v.to_string().into_bytes();
    buf.push(b'\n');
    buf.into()
}

/// A connection's subscriptions, drained in bulk into one write buffer.
///
/// A connection has few subscriptions, so each wake-up polls them all; unlike `SelectAll`,
/// which re-queues (and allocates a task node for) a stream after every item, this costs
/// nothing per line.
#[derive(Default)]
pub struct SubscriptionSet {
    subs: Vec<EventLines>,
}

/// What [`SubscriptionSet::poll_fill`] did.
pub struct Filled {
    /// A subscriber was dropped for falling behind: hang up once the buffer is written.
    pub hang_up: bool,
}

impl SubscriptionSet {
    /// Adds a subscription to drain.
    pub fn push(&mut self, sub: Subscription) {
        self.subs.push(EventLines(sub, false));
    }

    /// Ends the subscriptions on `endpoint` that hold `key` (their other keys go too); the
    /// `unsubscribed` line says how many ended.
    pub fn release(&mut self, endpoint: &str, key: &str) -> String {
        let before = self.subs.len();
        self.subs
            .retain(|s| !(&*s.0.endpoint == endpoint && s.0.holds(key)));
        let ended = before - self.subs.len();
        json!({"type": "unsubscribed", "endpoint": endpoint, "key": key, "ended": ended})
            .to_string()
    }

    /// Whether every subscription has ended (or none was made).
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Ready when a subscription fell out of the window under `slow_subscriber = "disconnect"`
    /// while the client was not reading: the connection is to be dropped.
    pub fn poll_fell_behind(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for sub in &mut self.subs {
            if sub.0.poll_fell_behind(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Appends every ready line to `buf` until it holds `limit` bytes; `Pending` when nothing
    /// was ready. Subscriptions that ended are dropped.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
        limit: usize,
    ) -> Poll<Filled> {
        let start = buf.len();
        let mut hang_up = false;
        let mut ended = false;
        for sub in &mut self.subs {
            while buf.len() < limit {
                match Pin::new(&mut *sub).poll_next(cx) {
                    Poll::Ready(Some(line)) => {
                        hang_up |= line.is_last();
                        buf.extend_from_slice(line.bytes());
                    }
                    Poll::Ready(None) => {
                        sub.1 = true;
                        ended = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if ended {
            self.subs.retain(|s| !s.1);
        }
        if buf.len() > start || ended || hang_up {
            Poll::Ready(Filled { hang_up })
        } else {
            Poll::Pending
        }
    }
}

/// `{"type":"message",...}` for one entry: text payloads as JSON strings, anything else (or
/// text that is not UTF-8) base64 with `"binary":true`.
fn message_line(endpoint: &str, m: &Entry) -> Bytes {
    let text = match m.kind {
        Kind::Text => std::str::from_utf8(&m.data).ok(),
        Kind::Binary => None,
    };
    let mut out = Vec::with_capacity(112 + endpoint.len() + m.data.len() * 4 / 3);
    out.extend_from_slice(br#"{"type":"message","endpoint":"#);
    write_str(&mut out, endpoint);
    // Writing into a `Vec` cannot fail.
    let _ = write!(
        out,
        r#","seq":{},"received_at_unix_nanos":{},"data":"#,
        m.seq, m.received_at
    );
    match text {
        Some(s) => write_str(&mut out, s),
        None => {
            out.push(b'"');
            let at = out.len();
            let b64 = &base64::engine::general_purpose::STANDARD;
            out.resize(at + base64::encoded_len(m.data.len(), true).unwrap_or(0), 0);
            let written = b64.encode_slice(&m.data, &mut out[at..]).unwrap_or(0);
            out.truncate(at + written);
            out.push(b'"');
        }
    }
    out.extend_from_slice(if text.is_some() {
        br#","binary":false}"#
    } else {
        br#","binary":true}"#
    });
    out.push(b'\n');
    out.into()
}

/// Writes `s` as a JSON string literal.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}
