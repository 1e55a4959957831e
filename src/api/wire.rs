//! `ws_sidecar.v1.Event` as the gRPC server sends it: bytes already in protobuf form.
//!
//! tonic encodes each response item into each stream's own buffer. With a hundred subscribers
//! that is a hundred prost encodings of the same message. The server is generated with this type
//! in place of `Event` (see build.rs), so a message's encoding is made once, cached on its log
//! entry, and each stream only copies it into its buffer.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;

use crate::log::{Encoding, Entry, Kind, Log};
use crate::proto;

/// Tags of `Event.message` and of `Message`'s fields (proto/ws_sidecar/v1/sidecar.proto); the
/// test below checks the hand-made encoding against prost's.
const EVENT_MESSAGE_TAG: u32 = 1;
const MESSAGE_ENDPOINT_TAG: u32 = 1;
const MESSAGE_SEQ_TAG: u32 = 2;
const MESSAGE_RECEIVED_TAG: u32 = 3;
const MESSAGE_KIND_TAG: u32 = 4;
const MESSAGE_DATA_TAG: u32 = 5;

/// An encoded `Event`.
#[derive(Debug, Clone)]
pub enum EventFrame {
    /// A message: its entry's cached head, then its payload. Holding the entry (one reference
    /// count) rather than clones of both byte buffers (two) matters when a hundred streams
    /// share it across cores.
    Message(Arc<Entry>),
    /// Any other event, encoded on the spot.
    Other(Bytes),
}

impl Default for EventFrame {
    fn default() -> Self {
        EventFrame::Other(Bytes::new())
    }
}

impl EventFrame {
    /// A message event; the head is rendered once per entry and shared by every subscriber of
    /// `log`.
    pub fn message(log: &Log, endpoint: &str, entry: Arc<Entry>) -> EventFrame {
        log.encoding(&entry, Encoding::GrpcHead, |e| message_head(endpoint, e));
        EventFrame::Message(entry)
    }

    /// Any other event (state changes and gaps are rare).
    pub fn event(ev: proto::Event) -> EventFrame {
        EventFrame::Other(ev.encode_to_vec().into())
    }

    fn parts(&self) -> (&[u8], &[u8]) {
        match self {
            // `message` rendered the head before building the frame, so it is there.
            EventFrame::Message(e) => (e.cached(Encoding::GrpcHead).unwrap_or_default(), &e.data),
            EventFrame::Other(b) => (b, &[]),
        }
    }
}

/// Everything of an `Event{message}` up to the payload, written as prost writes it (fields in
/// tag order, proto3 defaults left out; `data`, tag 5, is the last field) without building a
/// `proto::Message` and its owned endpoint `String` for every message.
fn message_head(endpoint: &str, e: &Entry) -> Bytes {
    use prost::encoding::{encoded_len_varint as vlen, key_len};
    let varint_field = |tag: u32, v: u64| if v == 0 { 0 } else { key_len(tag) + vlen(v) };
    let len_field = |tag: u32, len: usize| {
        if len == 0 {
            0
        } else {
            key_len(tag) + vlen(len as u64) + len
        }
    };
    let kind = proto_kind(e.kind) as i32 as u64;
    let inner = len_field(MESSAGE_ENDPOINT_TAG, endpoint.len())
        + varint_field(MESSAGE_SEQ_TAG, e.seq)
        + varint_field(MESSAGE_RECEIVED_TAG, e.received_at)
        + varint_field(MESSAGE_KIND_TAG, kind)
        + len_field(MESSAGE_DATA_TAG, e.data.len());
    let head_len = key_len(EVENT_MESSAGE_TAG) + vlen(inner as u64) + inner - e.data.len();
    let mut head = BytesMut::with_capacity(head_len);
    encode_key(EVENT_MESSAGE_TAG, WireType::LengthDelimited, &mut head);
    encode_varint(inner as u64, &mut head);
    if !endpoint.is_empty() {
        encode_key(MESSAGE_ENDPOINT_TAG, WireType::LengthDelimited, &mut head);
        encode_varint(endpoint.len() as u64, &mut head);
        head.put_slice(endpoint.as_bytes());
    }
    for (tag, v) in [
        (MESSAGE_SEQ_TAG, e.seq),
        (MESSAGE_RECEIVED_TAG, e.received_at),
        (MESSAGE_KIND_TAG, kind),
    ] {
        if v != 0 {
            encode_key(tag, WireType::Varint, &mut head);
            encode_varint(v, &mut head);
        }
    }
    if !e.data.is_empty() {
        encode_key(MESSAGE_DATA_TAG, WireType::LengthDelimited, &mut head);
        encode_varint(e.data.len() as u64, &mut head);
    }
    head.freeze()
}

fn proto_kind(k: Kind) -> proto::Kind {
    match k {
        Kind::Text => proto::Kind::Text,
        Kind::Binary => proto::Kind::Binary,
    }
}

impl prost::Message for EventFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let (head, body) = self.parts();
        buf.put_slice(head);
        buf.put_slice(body);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // The server never decodes an `Event`; a decoder reading one through this type sees an
        // empty message rather than garbage.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let (head, body) = self.parts();
        head.len() + body.len()
    }

    fn clear(&mut self) {
        *self = EventFrame::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReplayConfig, SlowPolicy};
    use crate::log::Item;

    fn framed(kind: Kind, data: &[u8], at: u64) -> (Vec<u8>, proto::Event) {
        let log = Log::new(
            &ReplayConfig {
                messages: 10,
                bytes: 1 << 30,
                persist: false,
                slow_subscriber: SlowPolicy::Skip,
            },
            41,
        );
        let mut cursor = log.subscribe(Some(0), vec![]);
        log.append(kind, Bytes::copy_from_slice(data), at);
        let mut items = vec![];
        cursor.try_read(&mut items, 10).expect("no lag");
        let Some(Item::Message(entry)) = items.pop() else {
            panic!("expected a message, got {items:?}");
        };
        let frame = EventFrame::message(&log, "ticker-β", entry);
        let expected = proto::Event {
            event: Some(proto::event::Event::Message(proto::Message {
                endpoint: "ticker-β".into(),
                seq: 41,
                received_at_unix_nanos: at,
                kind: proto_kind(kind) as i32,
                data: Bytes::copy_from_slice(data),
            })),
        };
        (frame.encode_to_vec(), expected)
    }

    #[test]
    fn message_frame_is_byte_identical_to_prost() {
        for len in [
            0usize,
            1,
            63,
            127,
            128,
            300,
            16_383,
            16_384,
            70_000,
            3 << 20,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            for (kind, at) in [(Kind::Binary, 1_700_000_000_123_456_789), (Kind::Text, 0)] {
                let (bytes, expected) = framed(kind, &data, at);
                assert_eq!(bytes, expected.encode_to_vec(), "len {len} {kind:?}");
                let decoded = proto::Event::decode(&bytes[..]).expect("decodes");
                assert_eq!(decoded, expected);
            }
        }
    }

    #[test]
    fn other_events_round_trip() {
        let ev = proto::Event {
            event: Some(proto::event::Event::Gap(proto::Gap {
                endpoint: "e".into(),
                from_seq: 3,
                to_seq: 9,
                reason: proto::GapReason::SlowSubscriber as i32,
            })),
        };
        let bytes = EventFrame::event(ev.clone()).encode_to_vec();
        assert_eq!(proto::Event::decode(&bytes[..]).expect("decodes"), ev);
    }
}
