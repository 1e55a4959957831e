//! Reads an endpoint's `decode` key: how its inbound binary messages are decompressed (the
//! decoding itself is `dialogue::decode`).

use super::load::one_of;
use super::value::{Report, Table};
use super::Decode;

/// Every `decode` value, as written in the config.
const NAMES: [(&str, Decode); 6] = [
    ("none", Decode::None),
    ("gzip", Decode::Gzip),
    ("zlib", Decode::Zlib),
    ("deflate-raw", Decode::DeflateRaw),
    ("zlib-stream", Decode::ZlibStream),
    ("zstd-stream", Decode::ZstdStream),
];

/// `decode`, `"none"` when absent.
pub(super) fn read_decode(r: &mut Report, t: &mut Table<'_>) -> Decode {
    t.or(r, "decode", |v| one_of(v, &NAMES), Decode::None)
}

impl Decode {
    /// The name used in the config, logs and reasons.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, d)| *d == self)
            .map_or("none", |(name, _)| name)
    }

    /// Whether one decompression context spans the whole connection.
    pub fn is_stream(self) -> bool {
        matches!(self, Decode::ZlibStream | Decode::ZstdStream)
    }
}
