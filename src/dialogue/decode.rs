//! Decompression of inbound messages (`decode`), before seq assignment, resume ids, filters and
//! fan-out, so all of them see the decoded payload.
//!
//! Only binary messages are decoded: compressed bytes are not UTF-8, so upstreams send them as
//! binary frames, and a text frame on such a feed is plain already (OKX's `pong`, a
//! subscription answer) and passes through. A decoded message is text when it is valid UTF-8
//! (apps then get JSON as text), else binary.
//!
//! `gzip`, `zlib` and `deflate-raw` inflate each message on its own; `zlib-stream` and
//! `zstd-stream` keep one context for the connection (a [`Decoder`] lives exactly as long as
//! one), so a reconnect starts a fresh one as the upstream does.
//!
//! `max_message_size` applies to the inflated size. Output grows in [`CHUNK`]-sized steps
//! through a fixed scratch buffer and stops as soon as it would pass the cap: a decompression
//! bomb costs at most the cap, never its full size. Over the cap the connection closes with
//! 1009, as for an oversized frame. Corrupt data is logged, counted and dropped; for a stream
//! the context is now useless, so the connection is closed (1007) and reopened with a new one.

use std::io::Read as _;

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use zstd::stream::raw::{DParameter, InBuffer, Operation as _, OutBuffer};

use crate::config::Decode;
use crate::endpoint::Endpoint;
use crate::log::Kind;
use crate::upstream::failure::Failure;

/// Inflated bytes are produced into a scratch buffer of this size, then copied to the message.
pub const CHUNK: usize = 16 * 1024;

/// The empty stored block a zlib sync flush ends with: the end of a zlib-stream message.
const SYNC_FLUSH: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest zstd window accepted, as a power of two (16 MiB): every standard compression level
/// up to 19 fits; what a frame header asks beyond is refused rather than allocated.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// What to do with one inbound binary message.
pub enum Decoded {
    /// A whole message, decoded.
    Message(Kind, Bytes),
    /// Nothing to deliver: part of a zlib-stream message buffered, or a corrupt message
    /// dropped (logged and counted).
    Nothing,
    /// The connection must end: send this close, then reconnect.
    Close(CloseCode, &'static str, Failure),
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("inbound message exceeds max_message_size ({cap} bytes) once decoded")]
    TooBig { cap: usize },
    #[error("{0}")]
    Corrupt(String),
}

/// A message being inflated: never allocates past `cap` bytes.
#[derive(Debug)]
pub struct Bounded {
    buf: Vec<u8>,
    cap: usize,
}

impl Bounded {
    /// An empty message that may grow to `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Bounded {
            buf: Vec::new(),
            cap,
        }
    }

    /// Appends `data`, or refuses it (allocating nothing) when the message would pass the cap.
    fn push(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        let need = self.buf.len() + data.len();
        if need > self.cap {
            return Err(DecodeError::TooBig { cap: self.cap });
        }
        if need > self.buf.capacity() {
            // Doubling keeps copies linear; the clamp keeps the allocation within the cap.
            let grow = (self.buf.capacity() * 2).max(need).max(CHUNK).min(self.cap);
            self.buf.reserve_exact(grow - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Bytes allocated for the message so far.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// One connection's decoder: stream contexts live as long as it does.
pub struct Decoder {
    format: Decode,
    /// `max_message_size`: the most a decoded message may hold.
    cap: usize,
    state: State,
}

enum State {
    None,
    Gzip,
    /// Per-message zlib or raw deflate: the context is reset for every message, only reused
    /// to spare the allocation.
    Flate(Box<Decompress>),
    ZlibStream(Box<ZlibStream>),
    /// Created on the first message; libzstd allocates it.
    ZstdStream(Option<Box<zstd::stream::raw::Decoder<'static>>>),
}

/// Discord's zlib-stream: one inflate context for the connection; a message may arrive in
/// several WebSocket messages and ends where the input ends with a sync flush.
struct ZlibStream {
    inflate: Decompress,
    /// What is inflated of the message under way.
    pending: Bounded,
    /// The last four input bytes, which may come from more than one WebSocket message.
    tail: [u8; 4],
    /// The upstream ended its zlib stream: more data cannot belong to it.
    ended: bool,
}

impl Decoder {
    /// A fresh decoder for a new connection.
    pub fn new(format: Decode, cap: usize) -> Self {
        let state = match format {
            Decode::None => State::None,
            Decode::Gzip => State::Gzip,
            Decode::Zlib => State::Flate(Box::new(Decompress::new(true))),
            Decode::DeflateRaw => State::Flate(Box::new(Decompress::new(false))),
            Decode::ZlibStream => State::ZlibStream(Box::new(ZlibStream {
                inflate: Decompress::new(true),
                pending: Bounded::new(cap),
                tail: [0xaa; 4],
                ended: false,
            })),
            Decode::ZstdStream => State::ZstdStream(None),
        };
        Decoder { format, cap, state }
    }

    /// Decodes one inbound binary message for `ep`, logging and counting what fails.
    pub fn binary(&mut self, data: Bytes, ep: &Endpoint) -> Decoded {
        if matches!(self.state, State::None) {
            return Decoded::Message(Kind::Binary, data);
        }
        Endpoint::count(&ep.stats.decode_input_bytes, data.len() as u64);
        let format = self.format.name();
        match self.decode(&data) {
            Ok(Some(plain)) => {
                let kind = match std::str::from_utf8(&plain) {
                    Ok(_) => Kind::Text,
                    Err(_) => Kind::Binary,
                };
                Decoded::Message(kind, Bytes::from(plain))
            }
            Ok(None) => Decoded::Nothing,
            Err(e @ DecodeError::TooBig { .. }) => {
                Endpoint::count(&ep.stats.decode_too_big, 1);
                let reason = format!("{e} ({format}, {} bytes compressed)", data.len());
                Decoded::Close(CloseCode::Size, "message too big", Failure::retry(reason))
            }
            Err(DecodeError::Corrupt(e)) => {
                Endpoint::count(&ep.stats.decode_corrupt, 1);
                if self.format.is_stream() {
                    tracing::warn!(decode = format, error = %e, bytes = data.len(), "corrupt compressed stream: reconnecting for a fresh context");
                    let reason = format!("corrupt {format} data: {e}");
                    Decoded::Close(
                        CloseCode::Invalid,
                        "corrupt compressed data",
                        Failure::retry(reason),
                    )
                } else {
                    tracing::warn!(decode = format, error = %e, bytes = data.len(), "corrupt compressed message dropped");
                    Decoded::Nothing
                }
            }
        }
    }

    /// The decoded message, `None` while a zlib-stream message is incomplete.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        let mut out = Bounded::new(self.cap);
        match &mut self.state {
            State::None => return Ok(Some(data.to_vec())),
            State::Gzip => gunzip(data, &mut out)?,
            State::Flate(z) => {
                z.reset(self.format == Decode::Zlib);
                let ended = inflate(z, data, &mut out)?;
                // A zlib stream carries a checksum checked at its end: a message without one
                // was cut. Raw deflate has none, and feeds that sync-flush each message never
                // write a final block.
                if !ended && self.format == Decode::Zlib {
                    return Err(DecodeError::Corrupt("truncated zlib data".into()));
                }
            }
            State::ZlibStream(s) => return s.push(data),
            State::ZstdStream(z) => {
                let z = match z {
                    Some(z) => z,
                    None => z.insert(Box::new(zstd_context()?)),
                };
                unzstd(z, data, &mut out)?;
            }
        }
        Ok(Some(out.take()))
    }
}

impl ZlibStream {
    fn push(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        if data.is_empty() {
            return Ok(None);
        }
        if self.ended {
            return Err(DecodeError::Corrupt(
                "data after the end of the zlib stream".into(),
            ));
        }
        self.ended = inflate(&mut self.inflate, data, &mut self.pending)?;
        let keep = data.len().min(4);
        self.tail.rotate_left(keep);
        self.tail[4 - keep..].copy_from_slice(&data[data.len() - keep..]);
        if self.tail == SYNC_FLUSH || self.ended {
            return Ok(Some(self.pending.take()));
        }
        Ok(None)
    }
}

/// Inflates `input` into `out`; whether the deflate stream ended.
fn inflate(z: &mut Decompress, mut input: &[u8], out: &mut Bounded) -> Result<bool, DecodeError> {
    let mut chunk = [0u8; CHUNK];
    loop {
        let (in_before, out_before) = (z.total_in(), z.total_out());
        let status = z
            .decompress(input, &mut chunk, FlushDecompress::Sync)
            .map_err(|e| DecodeError::Corrupt(format!("inflate: {e}")))?;
        let used = (z.total_in() - in_before) as usize;
        let made = (z.total_out() - out_before) as usize;
        input = &input[used..];
        out.push(&chunk[..made])?;
        match status {
            Status::StreamEnd => return Ok(true),
            // A full chunk may leave more output inside the context.
            _ if made == chunk.len() => {}
            _ if input.is_empty() => return Ok(false),
            _ if used == 0 && made == 0 => {
                return Err(DecodeError::Corrupt("inflate made no progress".into()))
            }
            _ => {}
        }
    }
}

fn gunzip(data: &[u8], out: &mut Bounded) -> Result<(), DecodeError> {
    let mut gz = flate2::bufread::GzDecoder::new(data);
    let mut chunk = [0u8; CHUNK];
    loop {
        let n = gz
            .read(&mut chunk)
            .map_err(|e| DecodeError::Corrupt(format!("gzip: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        out.push(&chunk[..n])?;
    }
}

fn zstd_context() -> Result<zstd::stream::raw::Decoder<'static>, DecodeError> {
    let corrupt = |e: std::io::Error| DecodeError::Corrupt(format!("zstd: {e}"));
    let mut z = zstd::stream::raw::Decoder::new().map_err(corrupt)?;
    z.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
        .map_err(corrupt)?;
    Ok(z)
}

/// Runs one flushed zstd-stream message through the connection's context. The frame does not
/// end with the message: what it decodes to is all there once the input is used up and the
/// output is no longer full.
fn unzstd(
    z: &mut zstd::stream::raw::Decoder<'static>,
    data: &[u8],
    out: &mut Bounded,
) -> Result<(), DecodeError> {
    let mut input = InBuffer::around(data);
    let mut chunk = [0u8; CHUNK];
    loop {
        let before = input.pos();
        let mut output = OutBuffer::around(&mut chunk[..]);
        z.run(&mut input, &mut output)
            .map_err(|e| DecodeError::Corrupt(format!("zstd: {e}")))?;
        let made = output.pos();
        out.push(&chunk[..made])?;
        if made < CHUNK {
            if input.pos() == data.len() {
                return Ok(());
            }
            if input.pos() == before && made == 0 {
                return Err(DecodeError::Corrupt("zstd made no progress".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
