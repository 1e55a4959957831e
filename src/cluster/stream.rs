//! The fenced log: one JetStream stream per endpoint, whose stream sequence is the endpoint seq.
//!
//! The stream is created with `first_seq` = the endpoint's next seq, and every append says which
//! seq it is for (`Nats-Expected-Last-Sequence: seq-1`), so the stream never assigns a seq the
//! writer did not mean, and of two writers only the first to a seq lands: the other is
//! [`AppendError::Fenced`]. That is what stops a partitioned old leader (a zombie).
//!
//! Headers of every message:
//! - `Nats-Expected-Last-Msg-Id: <endpoint>:<seq-1>:<term>` on every append of a term but its
//!   first (see [`Writer::prepare`]): the seq fence alone refuses a writer's append of a seq that
//!   is taken, but not its *next* ones, whose expected last seq is the taken one; with appends
//!   pipelined, a fenced writer has several of those in flight.
//! - `Nats-Msg-Id: <endpoint>:<seq>:<term>`: a retry after a lost ack is deduplicated by the
//!   server (within [`Retention::duplicate_window`]). The writer's term (the lease revision that
//!   made it leader, [`crate::cluster::lease::Held::term`]) is part of the id on purpose: with
//!   `<endpoint>:<seq>` alone, a zombie's append of a seq the new leader already wrote has the
//!   same id, so the server answers "duplicate" (deduplication is checked before the expected
//!   sequence) and the zombie believes its own payload was stored.
//! - [`UPSTREAM_ID`] (`Ws-Sidecar-Upstream-Id`): the message's upstream id, when it has one; a
//!   new leader resumes the upstream from the last one ([`EndpointStream::tail`]). It and
//!   [`KEY`] come from the upstream's messages, so they are percent-encoded (`%`, space,
//!   control characters, non-ASCII): a header value cannot hold a line break.
//! - [`TERM`] (`Ws-Sidecar-Term`): the writer's term, so an append that landed but whose ack
//!   was lost past the duplicate window is still recognised as the writer's own.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, DeliverPolicy},
    stream::{DiscardPolicy, StorageType},
};
use bytes::Bytes;
use futures_util::StreamExt;

use std::sync::Arc;

pub use super::write::{AppendError, Appended, Outgoing, Writer};
use super::{stream_name, subject};
use crate::log::{GapReason, IdBreak, Kind};

/// Header carrying a message's upstream id.
pub const UPSTREAM_ID: &str = "Ws-Sidecar-Upstream-Id";

/// Header carrying the term of the leader that wrote a message.
pub const TERM: &str = "Ws-Sidecar-Term";

/// Header marking a binary message (absent: text).
pub const KIND: &str = "Ws-Sidecar-Kind";

/// Header carrying when the leader received the message, Unix nanoseconds.
pub const RECEIVED_AT: &str = "Ws-Sidecar-Received-At";

/// Header carrying the shared-subscription key the message belongs to (`crate::share`).
pub const KEY: &str = "Ws-Sidecar-Key";

/// Header carrying a break in the upstream's ids before the message: `<REASON> <from> <to>`.
pub const GAP: &str = "Ws-Sidecar-Gap";

/// What a message carries besides its payload and upstream id, the same on every host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// A binary message (text otherwise), as the upstream sent it.
    pub binary: bool,
    /// When the leader received it, Unix nanoseconds; 0 when not said.
    pub received_at: u64,
    /// The shared-subscription key it was routed to.
    pub key: Option<Arc<str>>,
    /// A break in the upstream's ids just before it.
    pub gap: Option<IdBreak>,
}

impl Meta {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        if self.binary {
            Kind::Binary
        } else {
            Kind::Text
        }
    }

    pub(super) fn write(&self, headers: &mut Vec<(&'static str, String)>) {
        if self.binary {
            headers.push((KIND, "binary".to_string()));
        }
        if self.received_at != 0 {
            headers.push((RECEIVED_AT, self.received_at.to_string()));
        }
        if let Some(key) = &self.key {
            headers.push((KEY, super::encode_header(key)));
        }
        if let Some(g) = &self.gap {
            headers.push((GAP, format!("{} {} {}", g.reason.as_str(), g.from, g.to)));
        }
    }

    /// Reads what [`Meta::write`] wrote; a header it cannot read is left out, never an error,
    /// so a message from a newer daemon still reaches subscribers.
    fn read(headers: Option<&async_nats::HeaderMap>) -> Meta {
        let Some(h) = headers else {
            return Meta::default();
        };
        let gap = header(h, GAP).and_then(|g| {
            let mut parts = g.split(' ');
            let reason = GapReason::parse(parts.next()?)?;
            let from = parts.next()?.parse().ok()?;
            let to = parts.next()?.parse().ok()?;
            Some(IdBreak { from, to, reason })
        });
        Meta {
            binary: header(h, KIND).as_deref() == Some("binary"),
            received_at: header(h, RECEIVED_AT)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            key: header(h, KEY).map(|k| Arc::from(super::decode_header(&k))),
            gap,
        }
    }
}

/// How much of an endpoint's history the stream keeps: its replay window across the fleet.
/// JetStream drops the oldest messages past any limit.
#[derive(Clone, Debug)]
pub struct Retention {
    /// At most this many messages; `None`: no count limit.
    pub max_messages: Option<u64>,
    /// At most this many bytes; `None`: no size limit.
    pub max_bytes: Option<u64>,
    /// Messages older than this go; `None`: no age limit.
    pub max_age: Option<Duration>,
    /// How long the server remembers message ids to deduplicate retries (JetStream default 2
    /// minutes).
    pub duplicate_window: Duration,
    /// Copies JetStream keeps (1, 3 or 5). One is enough for tests; a fleet's guarantees need
    /// 3 (see `docs/cluster.md`).
    pub replicas: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_messages: None,
            max_bytes: None,
            max_age: None,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// The server refused or did not answer; retrying is safe.
#[derive(Debug, thiserror::Error)]
#[error("stream {stream}: {reason}")]
pub struct NatsError {
    /// The stream name.
    pub stream: String,
    /// What the client said.
    pub reason: String,
}

/// Why a read could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The seq asked for is gone (the stream's retention limits dropped it); maps to
    /// `REPLAY_EXPIRED`.
    #[error("seq {requested} of {endpoint} expired; first available is {first_available}")]
    Expired {
        /// The endpoint.
        endpoint: String,
        /// The seq asked for (or the next one a reader expected).
        requested: u64,
        /// The oldest seq the stream still has.
        first_available: u64,
    },
    /// The server refused or did not answer.
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// The last message of an endpoint's stream: where a new leader goes on from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    /// The last seq stored; the next leader appends `seq + 1`.
    pub seq: u64,
    /// The upstream id stored with it, to resume the upstream from; `None` when that message
    /// had none.
    pub upstream_id: Option<String>,
}

/// A message read back from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The endpoint seq (= stream sequence).
    pub seq: u64,
    /// The payload, as the upstream sent it.
    pub payload: Bytes,
    /// The upstream id stored with it.
    pub upstream_id: Option<String>,
    /// Kind, receipt time, key and id break, as the leader wrote them.
    pub meta: Meta,
}

/// An endpoint's stream. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EndpointStream {
    /// The JetStream context, for publishing.
    pub(super) js: jetstream::Context,
    /// The stream handle, for info, direct reads and consumers.
    pub(super) stream: jetstream::stream::Stream,
    /// The endpoint this stream is for.
    pub(super) endpoint: String,
    /// `ws-sidecar.<endpoint>`.
    pub(super) subject: String,
}

impl EndpointStream {
    /// Opens `endpoint`'s stream, creating it with `first_seq = next_seq` (the endpoint's next
    /// seq) and `retention` if it does not exist. An existing stream is used as it is: its seqs
    /// are the fleet's, whatever this host's `next_seq`.
    ///
    /// # Errors
    /// [`NatsError`] when the server refused (e.g. JetStream off) or did not answer.
    pub async fn open(
        js: &jetstream::Context,
        endpoint: &str,
        next_seq: u64,
        retention: &Retention,
    ) -> Result<EndpointStream, NatsError> {
        let name = stream_name(endpoint);
        let subject = subject(endpoint);
        let err = |e: &dyn std::fmt::Display| NatsError {
            stream: name.clone(),
            reason: e.to_string(),
        };
        let limit = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok()).unwrap_or(-1);
        let stream = match js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(_) => js
                .create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    description: Some(format!(
                        "ws-sidecar: endpoint {endpoint}, seq = stream sequence"
                    )),
                    subjects: vec![subject.clone()],
                    first_sequence: Some(next_seq.max(1)),
                    max_messages: limit(retention.max_messages),
                    max_bytes: limit(retention.max_bytes),
                    max_age: retention.max_age.unwrap_or_default(),
                    discard: DiscardPolicy::Old,
                    duplicate_window: retention.duplicate_window,
                    num_replicas: retention.replicas,
                    storage: StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(&e))?,
        };
        Ok(EndpointStream {
            js: js.clone(),
            stream,
            endpoint: endpoint.to_string(),
            subject,
        })
    }

    /// A writer for the leader of term `term` ([`crate::cluster::lease::Held::term`]).
    pub fn writer(&self, term: u64) -> Writer {
        Writer::new(self.clone(), term)
    }

    pub(super) fn error(&self, e: impl std::fmt::Display) -> NatsError {
        NatsError {
            stream: self.stream.cached_info().config.name.clone(),
            reason: e.to_string(),
        }
    }

    /// The stream's first and last seq now: `(first, last)`; `first == last + 1` when empty.
    ///
    /// # Errors
    /// [`NatsError`] when the server did not answer.
    pub async fn bounds(&self) -> Result<(u64, u64), NatsError> {
        let info = self.stream.get_info().await.map_err(|e| self.error(e))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// The last message stored and its upstream id: what a new leader resumes from. `None`
    /// when the stream is empty.
    ///
    /// # Errors
    /// [`NatsError`] when the server did not answer.
    pub async fn tail(&self) -> Result<Option<Tail>, NatsError> {
        let (first, last) = self.bounds().await?;
        if last < first {
            return Ok(None);
        }
        let message = self
            .stream
            .get_raw_message(last)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Some(Tail {
            seq: message.sequence,
            upstream_id: header(&message.headers, UPSTREAM_ID).map(|id| super::decode_header(&id)),
        }))
    }

    /// Reads from `seq` on, in order, with an ordered consumer (no state on the server beyond
    /// the read).
    ///
    /// # Errors
    /// [`ReadError::Expired`] when `seq` is older than the first seq the stream still has.
    pub async fn read_from(&self, seq: u64) -> Result<Reader, ReadError> {
        let (first, _) = self.bounds().await?;
        if seq < first {
            return Err(self.expired(seq, first));
        }
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: seq,
                },
                // The client's idle heartbeat is half the pull's expiry, and it recreates the
                // consumer after two missed ones: with its default 30 s expiry a consumer lost
                // with its NATS node (a consumer has one replica) stalls the feed ~30 s.
                max_expires: READER_EXPIRES,
                ..Default::default()
            })
            .await
            .map_err(|e| self.error(e))?;
        let messages = consumer.messages().await.map_err(|e| self.error(e))?;
        Ok(Reader {
            stream: self.clone(),
            messages,
            next: seq,
            pending: 0,
        })
    }

    fn expired(&self, requested: u64, first_available: u64) -> ReadError {
        ReadError::Expired {
            endpoint: self.endpoint.clone(),
            requested,
            first_available,
        }
    }
}

/// How long one pull of a [`Reader`] waits at the server: the reader notices a lost
/// consumer (its NATS node died) within about this long.
const READER_EXPIRES: Duration = Duration::from_secs(2);
/// Messages from a seq on, in order. A seq dropped by retention while the reader lagged is an
/// error ([`ReadError::Expired`]), never a silent skip.
pub struct Reader {
    /// The stream, for errors and bounds.
    stream: EndpointStream,
    /// The ordered consumer's messages.
    messages: pull::Ordered,
    /// The seq the next message must have.
    next: u64,
    /// Messages in the stream after the last one read, as the server last said.
    pending: u64,
}

impl Reader {
    /// How many messages the stream held after the last one read, when it was delivered: the
    /// reader's lag behind the stream.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// The next message; waits for it when the reader is at the end. Cancel-safe.
    ///
    /// # Errors
    /// [`ReadError::Expired`] when the next seq was dropped before it was read;
    /// [`ReadError::Nats`] when the consumer failed (start a new reader at the same seq).
    pub async fn next(&mut self) -> Result<Entry, ReadError> {
        let (message, seq) = loop {
            let message = match self.messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(self.stream.error(e).into()),
                None => return Err(self.stream.error("the consumer ended").into()),
            };
            let info = message.info().map_err(|e| self.stream.error(e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            self.pending = pending;
            // An ordered consumer recreated after a hiccup may start again before `next`.
            if seq >= self.next {
                break (message, seq);
            }
        };
        if seq > self.next {
            return Err(self.stream.expired(self.next, seq));
        }
        self.next = seq + 1;
        let headers = message.headers.as_ref();
        let upstream_id = headers
            .and_then(|h| header(h, UPSTREAM_ID))
            .map(|id| super::decode_header(&id));
        let meta = Meta::read(headers);
        Ok(Entry {
            seq,
            payload: message.message.payload,
            upstream_id,
            meta,
        })
    }
}

pub(super) fn header(headers: &async_nats::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_string())
}
