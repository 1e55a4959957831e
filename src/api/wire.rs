//! `ws_sidecar.v1.Event` as the gRPC server sends it: bytes already in protobuf form.
//!
//! tonic encodes each response item into each stream's own buffer. With a hundred subscribers
//! that is a hundred prost encodings of the same message. The server is generated with this type
//! in place of `Event` (see build.rs), so a message's encoding is made once, cached on its log
//! entry, and each stream only copies it into its buffer.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;

use crate::log::{Encoding, Entry, Kind, Log};
use crate::proto;

/// `Event.message`, `Message.data`: the only tags the hand-made framing writes.
const EVENT_MESSAGE_TAG: u32 = 1;
const MESSAGE_DATA_TAG: u32 = 5;

/// An encoded `Event`: `head` followed by `body` (the payload, or nothing).
#[derive(Debug, Default, Clone)]
pub struct EventFrame {
    head: Bytes,
    body: Bytes,
}

impl EventFrame {
    /// A message event, framed around the entry's own payload bytes: the head is rendered
    /// once per entry and shared by every subscriber of `log`.
    pub fn message(log: &Log, endpoint: &str, entry: &Entry) -> EventFrame {
        let head = log.encoding(entry, Encoding::GrpcHead, |e| message_head(endpoint, e));
        EventFrame {
            head: head.clone(),
            body: entry.data.clone(),
        }
    }

    /// Any other event (state changes and gaps are rare), encoded on the spot.
    pub fn event(ev: proto::Event) -> EventFrame {
        EventFrame {
            head: ev.encode_to_vec().into(),
            body: Bytes::new(),
        }
    }
}

/// Everything of an `Event{message}` up to the payload: the fields of `Message` but `data`
/// (prost writes fields in tag order and `data` is the last), then `data`'s key and length.
fn message_head(endpoint: &str, e: &Entry) -> Bytes {
    let fields = proto::Message {
        endpoint: endpoint.to_owned(),
        seq: e.seq,
        received_at_unix_nanos: e.received_at,
        kind: proto_kind(e.kind) as i32,
        data: Bytes::new(),
    };
    let len = e.data.len() as u64;
    // proto3 leaves an empty `data` out, as prost itself does.
    let data_prefix = if len == 0 {
        0
    } else {
        prost::encoding::key_len(MESSAGE_DATA_TAG) + prost::encoding::encoded_len_varint(len)
    };
    let inner = fields.encoded_len() + data_prefix + e.data.len();
    let mut head = BytesMut::with_capacity(16 + fields.encoded_len() + data_prefix);
    encode_key(EVENT_MESSAGE_TAG, WireType::LengthDelimited, &mut head);
    encode_varint(inner as u64, &mut head);
    fields.encode_raw(&mut head);
    if len > 0 {
        encode_key(MESSAGE_DATA_TAG, WireType::LengthDelimited, &mut head);
        encode_varint(len, &mut head);
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
        buf.put_slice(&self.head);
        buf.put_slice(&self.body);
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
        self.head.len() + self.body.len()
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

    fn framed(kind: Kind, data: &[u8]) -> (Vec<u8>, proto::Event) {
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
        log.append(
            kind,
            Bytes::copy_from_slice(data),
            1_700_000_000_123_456_789,
        );
        let mut items = vec![];
        cursor.try_read(&mut items, 10).expect("no lag");
        let Some(Item::Message(entry)) = items.pop() else {
            panic!("expected a message, got {items:?}");
        };
        let frame = EventFrame::message(&log, "ticker-β", &entry);
        let expected = proto::Event {
            event: Some(proto::event::Event::Message(proto::Message {
                endpoint: "ticker-β".into(),
                seq: 41,
                received_at_unix_nanos: 1_700_000_000_123_456_789,
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
            for kind in [Kind::Binary, Kind::Text] {
                let (bytes, expected) = framed(kind, &data);
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
