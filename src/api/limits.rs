//! How large a request the local APIs read: sized from the endpoints' `max_message_size`, so an
//! app can publish, over gRPC and over NDJSON alike, a message as large as it can receive.
//!
//! Both limits bound what one request may make the daemon buffer. They are fixed when the
//! listeners start; a reload that changes the largest `max_message_size` names them among the
//! keys that wait for a restart.

use crate::config::Config;

/// Room for everything around the message in one request: the JSON keys and the endpoint
/// name, id and idempotency key of an NDJSON publish, or the protobuf fields of a gRPC
/// `PublishRequest`. A subscribe's filters must fit in it too.
pub const ENVELOPE: usize = 64 * 1024;

/// The message size the limits are sized for when no endpoint is configured: the default
/// `max_message_size`.
const DEFAULT_MESSAGE: usize = 16 << 20;

/// The request sizes the gRPC and NDJSON listeners accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// The largest `max_message_size` of any endpoint, in bytes.
    pub message: usize,
    /// The most a gRPC request message may hold once decoded, in bytes:
    /// `message` + [`ENVELOPE`] (tonic answers a larger one with `OUT_OF_RANGE`).
    pub grpc_request: usize,
    /// The longest NDJSON request line, in bytes, without its newline: a binary message of
    /// `message` bytes as base64 (RFC 4648 §4, 4 characters per 3 bytes) + [`ENVELOPE`]. A text
    /// message travels as a JSON string, which is as long as the text unless it needs escapes
    /// (RFC 8259 §7): text made mostly of control characters may not fit.
    pub ndjson_line: usize,
}

impl RequestLimits {
    /// The limits for `cfg`'s endpoints.
    pub fn for_config(cfg: &Config) -> RequestLimits {
        let message = cfg
            .endpoints
            .values()
            .map(|ep| ep.max_message_size)
            .max()
            .unwrap_or(DEFAULT_MESSAGE);
        RequestLimits::for_message(message)
    }

    /// The limits for messages of up to `message` bytes.
    pub fn for_message(message: usize) -> RequestLimits {
        RequestLimits {
            message,
            grpc_request: message.saturating_add(ENVELOPE),
            ndjson_line: base64_len(message).saturating_add(ENVELOPE),
        }
    }
}

/// Length of `n` bytes in padded base64.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3).saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn a_binary_message_at_the_limit_fits_as_base64_with_its_envelope() {
        for n in [0usize, 1, 2, 3, 4, 1024, 16 << 20] {
            let encoded = base64::engine::general_purpose::STANDARD.encode(vec![0xffu8; n]);
            assert_eq!(base64_len(n), encoded.len(), "{n} bytes");
        }
        let l = RequestLimits::for_message(16 << 20);
        assert_eq!(l.grpc_request, (16 << 20) + ENVELOPE);
        assert_eq!(l.ndjson_line, (16 << 20) / 3 * 4 + 4 + ENVELOPE);
        assert_eq!(
            RequestLimits::for_message(usize::MAX).ndjson_line,
            usize::MAX
        );
    }
}
