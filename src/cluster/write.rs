//! The fenced log's write side: appends for one leader term, each at the seq it names, as
//! `stream.rs` describes (the headers, and why each is there). [`Writer::append`] awaits one
//! append; the pipeline (`append.rs`) builds each with [`Writer::prepare`], sends it and reads
//! its ack later.

use async_nats::jetstream::{
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    message::PublishMessage,
    publish::PublishAck,
};
use bytes::Bytes;

use super::encode_header;
use super::stream::{header, EndpointStream, Meta, NatsError, TERM, UPSTREAM_ID};

/// Why an append did not land.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer already stored this seq: this host is not (or no longer) the leader and
    /// must stop writing.
    #[error("fenced: seq {seq} of {endpoint} is already in the stream, written by another leader (term {other_term:?}, ours {term}); stop leading")]
    Fenced {
        /// The endpoint.
        endpoint: String,
        /// The seq this writer tried.
        seq: u64,
        /// This writer's term.
        term: u64,
        /// The term of the writer whose message holds the seq, if it could be read.
        other_term: Option<u64>,
    },
    /// The stream ends before `seq - 1`: the caller skipped a seq. A bug, not a race.
    #[error("out of order: {endpoint} seq {seq} appended but the stream ends at {last}")]
    OutOfOrder {
        /// The endpoint.
        endpoint: String,
        /// The seq this writer tried.
        seq: u64,
        /// The stream's last seq.
        last: u64,
    },
    /// The message (payload and headers) is larger than the server's `max_payload` (1 MB
    /// unless nats-server's config raises it, up to 64 MB): no retry can store it.
    #[error("a message of {size} bytes (payload and headers) for {endpoint} seq {seq} exceeds the NATS server's max_payload of {max} bytes; raise max_payload in the nats-server config (up to 64 MB)")]
    TooLarge {
        /// The endpoint.
        endpoint: String,
        /// The seq this writer tried.
        seq: u64,
        /// The message's size in bytes, payload and headers, as the server counts it.
        size: usize,
        /// The server's `max_payload` as the client last learnt it.
        max: usize,
    },
    /// The server did not take `seq` as following this writer's `seq - 1`, which is the
    /// stream's last message and this writer's own: the server forgot its last message id (a
    /// restart when that message was older than the duplicate window). Send `seq` again
    /// without the chain ([`Outgoing::unchain`]); the seq fence still holds.
    #[error("{endpoint} seq {seq}: the server does not know seq {} as the last message", seq - 1)]
    Unchained {
        /// The endpoint.
        endpoint: String,
        /// The seq this writer tried.
        seq: u64,
    },
    /// The server refused otherwise or did not answer; the append may or may not have landed,
    /// and retrying the same seq is safe.
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// An append that landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored now at the seq asked for.
    Stored,
    /// An earlier attempt of this writer already stored it (a retry after a lost ack); the
    /// stream did not advance.
    Duplicate,
}

/// Appends for one leader term, in seq order: awaited one by one ([`Writer::append`]), or
/// pipelined ([`crate::cluster::append`]) with [`Writer::prepare`], `send` and `confirm`.
#[derive(Clone, Debug)]
pub struct Writer {
    /// The stream appended to.
    stream: EndpointStream,
    /// The term of the leader writing, in every message id.
    term: u64,
}

/// One append as it goes on the wire; a retry sends it again as it is.
#[derive(Clone, Debug)]
pub struct Outgoing {
    seq: u64,
    payload: Bytes,
    /// Every header but the chain, in the order written.
    headers: Vec<(&'static str, String)>,
    /// `Nats-Expected-Last-Msg-Id`'s value, when the append must follow this writer's own
    /// `seq - 1`.
    chain: Option<String>,
}

/// Bytes of a header block around its lines (`NATS/1.0\r\n` … `\r\n`), as the server counts
/// them.
const HEADER_BLOCK: usize = b"NATS/1.0\r\n".len() + b"\r\n".len();

fn header_line(name: &str, value: &str) -> usize {
    name.len() + b": ".len() + value.len() + b"\r\n".len()
}

impl Outgoing {
    /// The seq it is for.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Payload plus headers, as the server counts them against its `max_payload` (and as
    /// async-nats checks before sending).
    pub fn size(&self) -> usize {
        let lines: usize = self.headers.iter().map(|(n, v)| header_line(n, v)).sum();
        let chain = self
            .chain
            .as_deref()
            .map_or(0, |c| header_line(NATS_EXPECTED_LAST_MSG_ID, c));
        HEADER_BLOCK + lines + chain + self.payload.len()
    }

    /// Drops the chain: the append is then fenced by its seq alone.
    pub fn unchain(&mut self) {
        self.chain = None;
    }

    fn publish(&self) -> PublishMessage {
        let mut publish = PublishMessage::build().payload(self.payload.clone());
        for (name, value) in &self.headers {
            publish = publish.header(*name, value.as_str());
        }
        if let Some(chain) = &self.chain {
            publish = publish.header(NATS_EXPECTED_LAST_MSG_ID, chain.as_str());
        }
        publish
    }
}

/// The header JetStream checks against the stream's last message id.
const NATS_EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";

impl Writer {
    pub(super) fn new(stream: EndpointStream, term: u64) -> Writer {
        Writer { stream, term }
    }

    /// The endpoint it writes for.
    pub fn endpoint(&self) -> &str {
        &self.stream.endpoint
    }

    fn message_id(&self, seq: u64) -> String {
        format!("{}:{seq}:{}", self.stream.endpoint, self.term)
    }

    /// The message for `seq`, with every header. `chained`: this writer stored `seq - 1`
    /// itself (every append of a term but the first), so the server must find that message
    /// last; a writer fenced at `seq - 1` then cannot store `seq` either, which the expected
    /// last seq alone would let it.
    pub fn prepare(
        &self,
        seq: u64,
        payload: Bytes,
        upstream_id: Option<&str>,
        meta: &Meta,
        chained: bool,
    ) -> Outgoing {
        let mut headers = vec![
            ("Nats-Msg-Id", self.message_id(seq)),
            (
                "Nats-Expected-Last-Sequence",
                seq.saturating_sub(1).to_string(),
            ),
            (TERM, self.term.to_string()),
        ];
        if let Some(id) = upstream_id {
            headers.push((UPSTREAM_ID, encode_header(id)));
        }
        meta.write(&mut headers);
        Outgoing {
            seq,
            payload,
            headers,
            chain: (chained && seq > 1).then(|| self.message_id(seq - 1)),
        }
    }

    /// The server's `max_payload` (payload plus headers) as the client last learnt it from
    /// the server's `INFO`; what async-nats checks every publish against.
    pub fn max_payload(&self) -> usize {
        self.stream.js.client().max_payload()
    }

    /// Writes `out` to the client; the future resolves to the server's answer.
    pub(crate) async fn send(&self, out: &Outgoing) -> Result<PublishAckFuture, PublishError> {
        let s = &self.stream;
        s.js.send_publish(s.subject.clone(), out.publish()).await
    }

    /// Reads the server's answer to `out`, finding out whose a refused seq is.
    ///
    /// # Errors
    /// As [`append`](Self::append), and [`AppendError::Unchained`].
    pub(crate) async fn confirm(
        &self,
        out: &Outgoing,
        ack: Result<PublishAck, PublishError>,
    ) -> Result<Appended, AppendError> {
        let s = &self.stream;
        let seq = out.seq;
        match ack {
            Ok(ack) if ack.sequence == seq => Ok(if ack.duplicate {
                Appended::Duplicate
            } else {
                Appended::Stored
            }),
            Ok(ack) => Err(s
                .error(format!(
                    "asked to store seq {seq}, the server stored {}",
                    ack.sequence
                ))
                .into()),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.refused(seq, false).await
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastMessageId => {
                self.refused(seq, true).await
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(AppendError::TooLarge {
                    endpoint: s.endpoint.clone(),
                    seq,
                    size: out.size(),
                    max: self.max_payload(),
                })
            }
            Err(e) => Err(s.error(e).into()),
        }
    }

    /// Appends `payload` as `seq` and waits for the server's ack (a stored message is durable
    /// on as many replicas as the stream has).
    ///
    /// # Errors
    /// [`AppendError::Fenced`] when another writer holds `seq`: stop leading.
    /// [`AppendError::OutOfOrder`] when `seq - 1` is not the stream's last seq yet.
    /// [`AppendError::TooLarge`] when the message exceeds the server's `max_payload`.
    /// [`AppendError::Nats`] when the server did not answer: retry the same seq.
    pub async fn append(
        &self,
        seq: u64,
        payload: Bytes,
        upstream_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        self.append_with(seq, payload, upstream_id, &Meta::default())
            .await
    }

    /// [`append`](Self::append) with the message's [`Meta`].
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub async fn append_with(
        &self,
        seq: u64,
        payload: Bytes,
        upstream_id: Option<&str>,
        meta: &Meta,
    ) -> Result<Appended, AppendError> {
        let out = self.prepare(seq, payload, upstream_id, meta, false);
        let ack = match self.send(&out).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        self.confirm(&out, ack).await
    }

    /// The expected last sequence (or, `by_id`, message id) did not match: find out whether
    /// `seq` is ours (an append whose ack was lost past the duplicate window), another
    /// writer's, or not there yet.
    async fn refused(&self, seq: u64, by_id: bool) -> Result<Appended, AppendError> {
        let s = &self.stream;
        let (_, last) = s.bounds().await?;
        if last < seq {
            if by_id && last + 1 == seq {
                // `seq - 1` is the last message but the server did not match its id.
                return match self.term_of(last).await {
                    Some(t) if t != self.term => Err(AppendError::Fenced {
                        endpoint: s.endpoint.clone(),
                        seq: last,
                        term: self.term,
                        other_term: Some(t),
                    }),
                    // Ours, or gone: nothing but the seq fence to go by.
                    _ => Err(AppendError::Unchained {
                        endpoint: s.endpoint.clone(),
                        seq,
                    }),
                };
            }
            return Err(AppendError::OutOfOrder {
                endpoint: s.endpoint.clone(),
                seq,
                last,
            });
        }
        // The seq may have been dropped by retention since; then nobody can tell whose it was,
        // and treating it as another writer's is the safe answer.
        let other_term = self.term_of(seq).await;
        if other_term == Some(self.term) {
            return Ok(Appended::Duplicate);
        }
        Err(AppendError::Fenced {
            endpoint: s.endpoint.clone(),
            seq,
            term: self.term,
            other_term,
        })
    }

    /// The term of the writer of `seq`, when the message is there and says.
    async fn term_of(&self, seq: u64) -> Option<u64> {
        match self.stream.stream.get_raw_message(seq).await {
            Ok(message) => header(&message.headers, TERM).and_then(|t| t.parse::<u64>().ok()),
            Err(_) => None,
        }
    }
}
