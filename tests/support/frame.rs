//! Server-side WebSocket framing (RFC 6455 §5) for the fake upstream.
//!
//! Written by hand rather than taken from tungstenite because the fake upstream must be able to
//! misbehave on purpose: swallow pings without a pong, put invalid UTF-8 in a text frame, or
//! announce a length it never sends. tungstenite answers pings on its own and will not produce
//! broken frames. Parsing is strict about what a client must do (mask every frame, no reserved
//! bits), so a daemon that breaks the protocol fails the test instead of passing unnoticed.

use bytes::{Buf, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame the fake upstream will buffer; far above anything a test sends, low enough that
/// a runaway client cannot exhaust memory.
const MAX_CLIENT_FRAME: u64 = 64 * 1024 * 1024;

/// The header of an unmasked (server-to-client) frame announcing `len` payload bytes.
///
/// `len` is not checked against anything, so a test can announce more than it sends.
pub fn frame_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out
}

/// A complete unmasked frame; the payload is taken as is, valid UTF-8 or not.
pub fn frame_bytes(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(opcode, fin, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// The payload of a close frame: big-endian code, then the UTF-8 reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason.as_bytes());
    out
}

/// One frame as the client sent it, payload already unmasked.
#[derive(Debug)]
pub struct ClientFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

/// Takes one complete client frame off the front of `buf`, or `Ok(None)` if more bytes are needed.
pub fn parse_client_frame(buf: &mut BytesMut) -> Result<Option<ClientFrame>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        return Err(format!("reserved bits set in frame header {b0:#04x}"));
    }
    if b1 & 0x80 == 0 {
        return Err("client frame is not masked".to_owned());
    }
    let (len, mut header_len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        short => (u64::from(short), 2),
    };
    if len > MAX_CLIENT_FRAME {
        return Err(format!(
            "client frame of {len} bytes is over the fixture's limit"
        ));
    }
    if opcode >= 0x8 && (len > 125 || !fin) {
        return Err(format!(
            "control frame {opcode:#x} fragmented or longer than 125 bytes"
        ));
    }
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(format!("reserved opcode {opcode:#x}"));
    }
    let mask_at = header_len;
    header_len += 4;
    // Fits in usize: len is bounded by MAX_CLIENT_FRAME above.
    let total = header_len + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[mask_at..mask_at + 4]);
    buf.advance(header_len);
    let mut payload = buf.split_to(len as usize);
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(Some(ClientFrame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}
