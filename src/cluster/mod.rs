//! Cluster primitives: one upstream connection per fleet, bridged through NATS JetStream
//! (issue 17). The design and its open questions are in `docs/cluster.md`.
//!
//! The pieces (each tested against a real `nats-server` in `tests/cluster/`):
//! - [`lease`]: leadership per endpoint, one key per endpoint in the JetStream KV bucket
//!   [`lease::BUCKET`]. Creating the key acquires the lease, updating it by its last revision
//!   renews it, and the bucket's `max_age` is the TTL: a holder that stops renewing loses the key
//!   and a follower watching it learns so from the server's delete marker. The revision is the
//!   fencing epoch.
//! - [`stream`]: the fenced log, one stream per endpoint (subject `ws-sidecar.<endpoint>`)
//!   whose stream sequence *is* the endpoint seq. A [`stream::Writer`] appends with
//!   `Nats-Expected-Last-Sequence: seq-1`, so a second writer (a zombie leader) is refused
//!   ([`stream::AppendError::Fenced`]) and a retry after a lost ack is deduplicated. A
//!   [`stream::Reader`] replays from a seq, and says exactly when that seq has expired.
//! - [`append`]: the leader's appends, pipelined: [`append::Leading::submit`] gives each
//!   inbound message the next seq and writes it to the client; one task per term reads the
//!   acks in order, sends again from the first one that failed, and ends the term when fenced.
//! - [`queue`]: the publish work-queue, one work-queue stream per endpoint (subject
//!   `ws-sidecar-publish.<endpoint>`). Any host [`queue::PublishQueue::push`]es an app's publish
//!   into it (its idempotency key as `Nats-Msg-Id`); the leader [`queue::PublishQueue::take_over`]s
//!   the queue's one consumer and drains it in order, acking each message once it is done with
//!   it, so what an old leader took but never acked comes again, first, to the next one.
//! - [`role`]: the task of a clustered endpoint (`endpoints.X.cluster = true` with
//!   `[cluster]`): join, feed the local log from the stream, follow, and lead while holding the
//!   lease ([`slot`] keeps the role for status and the leader's writer).
//! - [`drain`]: the leader takes the publish queue into its outbox for its term.
//! - [`history`]: a `from_seq` older than the local window, read from the stream.
//! - [`interest`] and [`sharing`]: shared subscriptions across hosts; every host declares its
//!   apps' keys, the leader holds the union on its connection and publishes their states.
//! - [`calls`]: requests from any host, made on the leader's connection over core NATS.
//! - [`node`]: the one NATS connection of this daemon.

pub mod append;
pub mod calls;
pub mod drain;
mod feed;
pub mod history;
pub mod interest;
pub mod lease;
pub mod node;
pub mod queue;
pub mod role;
pub mod sharing;
pub mod slot;
pub mod stream;
pub mod write;

pub use node::Node;

/// The NATS subject an endpoint's messages are stored under: `ws-sidecar.<endpoint>`.
///
/// Endpoint names are letters, digits, `_`, `.` and `-` (config validation), all valid in a
/// subject; a `.` makes more tokens (`ws-sidecar.eu.prices`), which is still one exact subject.
pub fn subject(endpoint: &str) -> String {
    format!("ws-sidecar.{endpoint}")
}

/// The NATS subject an endpoint's publish work-queue takes: `ws-sidecar-publish.<endpoint>`.
///
/// Its first token differs from [`subject`]'s (`ws-sidecar`), so no endpoint's publish subject
/// can overlap any endpoint's log subject, whatever the names.
pub fn publish_subject(endpoint: &str) -> String {
    format!("ws-sidecar-publish.{endpoint}")
}

/// The JetStream stream name for an endpoint's publish work-queue: [`stream_name`] followed by
/// `_publish`, e.g. `ws-sidecar-eu_dprices_publish`.
///
/// Not `-publish`: `-` is not escaped, so the log stream of an endpoint named `prices-publish`
/// would be the queue of `prices`. A single `_` before a letter other than `d` never occurs in
/// an escaped name, so no queue name is a log stream name, and queue names are one-to-one.
pub fn publish_stream_name(endpoint: &str) -> String {
    let mut name = stream_name(endpoint);
    name.push_str("_publish");
    name
}

/// The JetStream stream name for an endpoint: `ws-sidecar-<endpoint>` with `_` written `__` and
/// `.` written `_d`, because stream names may not contain `.`. The mapping is one-to-one, so two
/// endpoints (`eu.prices`, `eu_prices`) never share a stream.
pub fn stream_name(endpoint: &str) -> String {
    let mut name = String::with_capacity(endpoint.len() + 11);
    name.push_str("ws-sidecar-");
    escape_into(&mut name, endpoint);
    name
}

/// What [`encode_header`] escapes besides non-ASCII: `%`, space and control characters. A raw
/// `\r` or `\n` in a header value makes async-nats panic, and the server trims leading and
/// trailing blanks, so `"a"` and `" a"` would be one value.
const HEADER_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b' ');

/// Text from outside (an idempotency key, an upstream id, a key) as a NATS header value,
/// one-to-one (percent-encoded, RFC 3986 style).
fn encode_header(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, HEADER_ESCAPES).to_string()
}

/// The inverse of [`encode_header`]; a malformed escape (a message ws-sidecar did not write)
/// is kept as it is.
fn decode_header(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// The name [`escape_into`] wrote as `escaped`.
fn unescape(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        out.push(match (c, c == '_') {
            (_, true) => match chars.next() {
                Some('d') => '.',
                Some(other) => other,
                None => '_',
            },
            (c, false) => c,
        });
    }
    out
}

/// Appends `name` (letters, digits, `_`, `.`, `-`) to `out` with `_` written `__` and `.`
/// written `_d`: one-to-one, and free of `.`, so it is one token of a subject or KV key.
fn escape_into(out: &mut String, name: &str) {
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_one_to_one_and_dot_free() {
        assert_eq!(stream_name("prices"), "ws-sidecar-prices");
        assert_eq!(stream_name("eu.prices"), "ws-sidecar-eu_dprices");
        assert_eq!(stream_name("eu_prices"), "ws-sidecar-eu__prices");
        assert_ne!(stream_name("eu_d"), stream_name("eu."));
        assert_eq!(subject("eu.prices"), "ws-sidecar.eu.prices");
    }

    #[test]
    fn publish_stream_names_are_one_to_one_and_never_a_log_stream() {
        assert_eq!(publish_stream_name("prices"), "ws-sidecar-prices_publish");
        assert_eq!(
            publish_stream_name("eu.prices"),
            "ws-sidecar-eu_dprices_publish"
        );
        assert_ne!(publish_stream_name("eu_d"), publish_stream_name("eu."));
        // The names a naive `-publish` or `_publish` suffix would share with a log stream.
        for endpoint in ["prices", "prices-publish", "prices_publish", "prices_"] {
            let queue = publish_stream_name(endpoint);
            for other in [
                "prices",
                "prices-publish",
                "prices_publish",
                "prices_",
                "prices__",
            ] {
                assert_ne!(queue, stream_name(other), "{endpoint} vs {other}");
            }
            assert!(!queue.contains('.'), "{queue}");
        }
    }

    #[test]
    fn publish_subjects_never_overlap_log_subjects() {
        assert_eq!(publish_subject("eu.prices"), "ws-sidecar-publish.eu.prices");
        // A log subject's first token is `ws-sidecar`, a publish subject's `ws-sidecar-publish`:
        // no endpoint name (they hold no `*`, `>` or spaces) makes one equal the other.
        for endpoint in ["publish", "publish.prices", "prices", "ws-sidecar-publish"] {
            let first = |s: String| s.split('.').next().map(str::to_owned);
            assert_eq!(first(subject(endpoint)).as_deref(), Some("ws-sidecar"));
            assert_eq!(
                first(publish_subject(endpoint)).as_deref(),
                Some("ws-sidecar-publish")
            );
        }
    }
}
