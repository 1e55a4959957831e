//! The publish work-queue: one JetStream stream per endpoint with work-queue retention, into
//! which any host of the fleet pushes its apps' publishes, and which the endpoint's leader (the
//! host holding its upstream connection) drains in order.
//!
//! - **Push.** [`PublishQueue::push`] publishes to `ws-sidecar-publish.<endpoint>` with the kind
//!   in [`KIND`] and the idempotency key, when there is one, as `Nats-Msg-Id`, and waits for the
//!   server's PubAck. A push is durable once it returns, and pushes awaited one after the other
//!   are stored (and drained) in that order, so each publisher's order holds.
//! - **One consumer.** A work-queue stream allows one consumer per subject. The leader of term
//!   `t` owns the consumer `leader-<t>` ([`PublishQueue::take_over`]): it deletes any other
//!   (the previous leader's) and creates its own, delivering from the oldest message on.
//! - **Ack = done.** A message leaves the stream when it is acked ([`Queued::ack`], a double
//!   ack: it returns once the server confirmed). Until then it stays, and a new leader's consumer
//!   gets it again, before anything newer: what the old leader took but never acked is neither
//!   lost nor reordered. Within one term nothing is redelivered ([`ACK_WAIT`] is a day).
//! - **Fence.** The old leader learns it was replaced from the server, not from its lease: its
//!   [`Drain`] and its acks fail with [`QueueError::TakenOver`] once the consumer is gone, and
//!   a `take_over` by an older term than the consumer's is refused the same way.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    context::{ConsumerInfoErrorKind, PublishErrorKind},
    message::PublishMessage,
    stream::{RetentionPolicy, StorageType},
    AckKind,
};
use async_nats::RequestErrorKind;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::{publish_stream_name, publish_subject};
use crate::log::Kind;

/// Header carrying a queued message's kind: `text` or `binary`.
pub const KIND: &str = "Ws-Sidecar-Kind";

/// How many messages a leader may hold unacked at once; the server delivers no more until it
/// acks. It bounds what a failover hands to the next leader a second time.
pub const MAX_UNACKED: usize = 1000;

/// How long the server waits for an ack before delivering a message again. A day: within a term
/// a message comes once, and a failover does not wait for it (the new consumer starts over).
pub const ACK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How often the server tells an idle [`Drain`] its pull is still alive; two missed ones are
/// an error, so a consumer deleted without the server saying so is noticed within ~10 s.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How many take-over attempts race another host's consumer creation before giving up.
const TAKE_OVER_ATTEMPTS: usize = 3;

/// The prefix of a leader's consumer name; the term follows.
const CONSUMER_PREFIX: &str = "leader-";

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The message with its headers exceeds the server's `max_payload`; nothing was queued.
    #[error("publish to {endpoint} refused: {size} bytes of payload plus headers exceed the server's max_payload of {max} bytes")]
    TooLarge {
        /// The endpoint.
        endpoint: String,
        /// The payload's size in bytes.
        size: usize,
        /// The server's `max_payload` in bytes (payload plus headers).
        max: usize,
    },
    /// Another leader owns the queue's consumer now (or, from [`PublishQueue::take_over`], a
    /// later term already did): stop draining. Unacked messages go to that leader.
    #[error("publish queue of {endpoint} taken over: term {term} no longer drains it{}", by.map(|t| format!(" (term {t} does)")).unwrap_or_default())]
    TakenOver {
        /// The endpoint.
        endpoint: String,
        /// This drainer's term.
        term: u64,
        /// The term whose consumer holds the queue, when known.
        by: Option<u64>,
    },
    /// A message in the queue was not pushed by [`PublishQueue::push`] (no or an unknown kind
    /// header): it was removed from the queue, and the drain goes on after it.
    #[error(
        "publish queue of {endpoint}: message {seq} dropped, not a ws-sidecar publish: {reason}"
    )]
    Malformed {
        /// The endpoint.
        endpoint: String,
        /// Its stream sequence.
        seq: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The stream exists with another retention than work-queue; it was not made by this module.
    #[error(
        "stream {stream} exists but is not a work-queue stream; delete it or rename the endpoint"
    )]
    NotWorkQueue {
        /// The stream name.
        stream: String,
    },
    /// A push the server did not confirm (no answer in time, the connection down): the client
    /// may still deliver it once NATS is back, so the message may be queued and sent.
    #[error("the fleet's publish queue {stream} did not confirm the message ({reason}): it may still be queued and sent; publish it again with the same idempotency_key to have it sent once")]
    Unconfirmed {
        /// The stream name.
        stream: String,
        /// What the client said.
        reason: String,
    },
    /// The server refused or did not answer; the operation may or may not have happened.
    /// Retrying is safe: a retried push with its idempotency key is deduplicated, a retried ack
    /// is idempotent.
    #[error("publish queue {stream}: {reason}")]
    Nats {
        /// The stream name.
        stream: String,
        /// What the client said.
        reason: String,
    },
}

/// A push the server confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The stream sequence the message has (for a duplicate: the first push's).
    pub seq: u64,
    /// The idempotency key was pushed before within the duplicate window: nothing new was
    /// queued, and `seq` is the first push's.
    pub duplicate: bool,
}

/// An endpoint's publish work-queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PublishQueue {
    /// The JetStream context, for publishing.
    js: jetstream::Context,
    /// The stream handle, for info and consumers.
    stream: jetstream::stream::Stream,
    /// The endpoint this queue is for.
    endpoint: String,
    /// `ws-sidecar-publish.<endpoint>`.
    subject: String,
    /// The stream's name, for errors.
    name: String,
}

impl PublishQueue {
    /// Opens `endpoint`'s queue, creating the stream if it does not exist: file storage,
    /// work-queue retention, no size or age limits (a queued publish is only ever removed by the
    /// leader's ack), `replicas` copies and `duplicate_window` (how long the server remembers an
    /// idempotency key). An existing stream with another duplicate window or replica count is
    /// updated to these, so a changed setting takes effect.
    ///
    /// # Errors
    /// [`QueueError::NotWorkQueue`] when a stream of that name exists with another retention;
    /// [`QueueError::Nats`] when the server refused (e.g. JetStream off, replicas above the
    /// cluster size) or did not answer.
    pub async fn open(
        js: &jetstream::Context,
        endpoint: &str,
        replicas: usize,
        duplicate_window: Duration,
    ) -> Result<PublishQueue, QueueError> {
        let name = publish_stream_name(endpoint);
        let subject = publish_subject(endpoint);
        let err = |e: &dyn std::fmt::Display| QueueError::Nats {
            stream: name.clone(),
            reason: e.to_string(),
        };
        let mut stream = match js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(_) => js
                .create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    description: Some(format!(
                        "ws-sidecar: publishes to endpoint {endpoint}, drained by its leader"
                    )),
                    subjects: vec![subject.clone()],
                    retention: RetentionPolicy::WorkQueue,
                    duplicate_window,
                    num_replicas: replicas,
                    storage: StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(&e))?,
        };
        let config = stream.cached_info().config.clone();
        if config.retention != RetentionPolicy::WorkQueue {
            return Err(QueueError::NotWorkQueue { stream: name });
        }
        if config.duplicate_window != duplicate_window || config.num_replicas != replicas {
            js.update_stream(jetstream::stream::Config {
                duplicate_window,
                num_replicas: replicas,
                ..config
            })
            .await
            .map_err(|e| err(&e))?;
            stream = js.get_stream(&name).await.map_err(|e| err(&e))?;
        }
        Ok(PublishQueue {
            js: js.clone(),
            stream,
            endpoint: endpoint.to_string(),
            subject,
            name,
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> QueueError {
        QueueError::Nats {
            stream: self.name.clone(),
            reason: e.to_string(),
        }
    }

    /// Queues `data` of `kind` and waits for the server's PubAck (bounded by the JetStream
    /// context's timeout). With `idempotency_key`, a push of a key already pushed within the
    /// duplicate window is dropped by the server and comes back as [`Pushed::duplicate`], with
    /// the first push's seq, whether or not the leader has drained that one since. The window
    /// is the server's memory: a server restart forgets the keys of messages already drained.
    ///
    /// # Errors
    /// [`QueueError::TooLarge`] when the message exceeds the server's `max_payload` (nothing was
    /// sent); [`QueueError::Nats`] when the server refused or did not answer: the push may have
    /// landed, and retrying with the same key is deduplicated.
    pub async fn push(
        &self,
        kind: Kind,
        data: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Pushed, QueueError> {
        let size = data.len();
        let mut publish = PublishMessage::build()
            .payload(data)
            .header(KIND, kind_name(kind));
        if let Some(key) = idempotency_key.filter(|k| !k.is_empty()) {
            publish = publish.message_id(super::encode_header(key));
        }
        let ack = match self.js.send_publish(self.subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(Pushed {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(QueueError::TooLarge {
                    endpoint: self.endpoint.clone(),
                    size,
                    max: self.js.client().max_payload(),
                })
            }
            Err(e) => Err(QueueError::Unconfirmed {
                stream: self.name.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// How many messages the queue holds now: pushed and not yet acked, whether delivered to a
    /// leader or not.
    ///
    /// # Errors
    /// [`QueueError::Nats`] when the server did not answer.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let info = self.stream.get_info().await.map_err(|e| self.error(e))?;
        Ok(info.state.messages)
    }

    /// Makes the leader of term `term` ([`crate::cluster::lease::Held::term`]) the queue's one
    /// drainer: deletes every other consumer (the previous leader's, whose [`Drain`] then fails
    /// with [`QueueError::TakenOver`]) and creates `leader-<term>`, which delivers from the
    /// oldest message still queued: first what earlier leaders took and never acked, in order,
    /// then the rest. Calling it again with the same term starts that delivery over.
    ///
    /// The check that no later term holds the queue and the deletion are two requests, not one:
    /// two leaders taking over at the same moment both succeed in turn, and the later call wins.
    /// The lease makes that a narrow window; a drain that lost it fails as above.
    ///
    /// # Errors
    /// [`QueueError::TakenOver`] (with `by`) when a later term's consumer exists: this host is
    /// not the leader any more. [`QueueError::Nats`] when the server refused or did not answer.
    pub async fn take_over(&self, term: u64) -> Result<Drain, QueueError> {
        let name = consumer_name(term);
        let mut attempt = 0;
        let consumer = loop {
            attempt += 1;
            let others = self.consumers().await?;
            if let Some(later) = others.iter().filter_map(|c| consumer_term(c)).max() {
                if later > term {
                    return Err(self.taken_over(term, Some(later)));
                }
            }
            for other in &others {
                // Already gone (deleted by a racing take-over) is as good as deleted.
                if let Err(e) = self.stream.delete_consumer(other).await {
                    tracing::debug!(stream = %self.name, consumer = %other, "delete consumer: {e}");
                }
            }
            let created = self
                .stream
                .create_consumer(pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("ws-sidecar: the leader of term {term}")),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: i64::try_from(MAX_UNACKED).unwrap_or(i64::MAX),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(consumer) => break consumer,
                // Another host created its consumer between our delete and our create.
                Err(_) if attempt < TAKE_OVER_ATTEMPTS => continue,
                Err(e) => return Err(self.error(format!("create consumer {name}: {e}"))),
            }
        };
        let messages = consumer
            .stream()
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .map_err(|e| self.error(e))?;
        Ok(Drain {
            queue: self.clone(),
            consumer: name,
            term,
            messages,
            taken_over: false,
        })
    }

    /// The names of the stream's consumers now.
    async fn consumers(&self) -> Result<Vec<String>, QueueError> {
        self.stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(|e| self.error(format!("list consumers: {e}")))
    }

    /// The term of the latest leader's consumer, if any exists (and has a term in its name).
    async fn latest_term(&self) -> Option<u64> {
        let names = self.consumers().await.ok()?;
        names.iter().filter_map(|c| consumer_term(c)).max()
    }

    fn taken_over(&self, term: u64, by: Option<u64>) -> QueueError {
        QueueError::TakenOver {
            endpoint: self.endpoint.clone(),
            term,
            by,
        }
    }
}

/// One leader's delivery of the queue, from [`PublishQueue::take_over`]: every queued message
/// once, in stream order, until another leader takes over.
pub struct Drain {
    /// The queue, for errors and consumer checks.
    queue: PublishQueue,
    /// `leader-<term>`.
    consumer: String,
    /// This leader's term.
    term: u64,
    /// The pull consumer's messages.
    messages: pull::Stream,
    /// The consumer is known to be gone: every call fails at once.
    taken_over: bool,
}

impl Drain {
    /// The term this drain was taken over with.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The next queued message; waits while the queue is empty. Cancel-safe: a message is
    /// lost to no one by dropping the future (an undelivered one stays with the server, a
    /// delivered but unacked one comes again to the next leader).
    ///
    /// Messages the server delivered before another host took over can still come out (at most
    /// [`MAX_UNACKED`]); their [`Queued::ack`] fails, and the new leader gets them too.
    ///
    /// # Errors
    /// [`QueueError::TakenOver`] once another leader owns the queue, on this and every later
    /// call; [`QueueError::Malformed`] for a message not pushed by [`PublishQueue::push`] (it is
    /// removed; call again for the next); [`QueueError::Nats`] when the connection failed
    /// (calling again goes on once it is back).
    pub async fn next(&mut self) -> Result<Queued, QueueError> {
        if self.taken_over {
            return Err(self.queue.taken_over(self.term, None));
        }
        let message = match self.messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(self.failed(e.to_string()).await),
            None => return Err(self.failed("the consumer ended".to_string()).await),
        };
        let q = &self.queue;
        let seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => return Err(q.error(format!("a delivery without JetStream metadata: {e}"))),
        };
        let Some(reply) = message.message.reply.clone() else {
            return Err(q.error(format!("message {seq} came without an ack subject")));
        };
        let headers = message.message.headers.as_ref();
        let kind = match headers.and_then(|h| h.get(KIND)).map(|v| v.as_str()) {
            Some("text") => Kind::Text,
            Some("binary") => Kind::Binary,
            other => {
                let reason = match other {
                    Some(v) => format!("unknown {KIND} {v:?}"),
                    None => format!("no {KIND} header"),
                };
                // Terminated, not acked: the same removal from a work-queue stream, and the
                // server's advisory says why.
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    return Err(q.error(format!("drop malformed message {seq}: {e}")));
                }
                return Err(QueueError::Malformed {
                    endpoint: q.endpoint.clone(),
                    seq,
                    reason,
                });
            }
        };
        let idempotency_key = headers
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| super::decode_header(v.as_str()));
        Ok(Queued {
            seq,
            kind,
            data: message.message.payload.clone(),
            idempotency_key,
            ack: Ack {
                client: q.js.client(),
                reply,
                endpoint: q.endpoint.clone(),
                stream: q.name.clone(),
                term: self.term,
            },
        })
    }

    /// The consumer's stream failed: taken over if our consumer is gone, else a NATS error.
    async fn failed(&mut self, reason: String) -> QueueError {
        match self.queue.stream.consumer_info(&self.consumer).await {
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                self.taken_over = true;
                let by = self.queue.latest_term().await;
                self.queue.taken_over(self.term, by)
            }
            _ => self
                .queue
                .error(format!("drain of term {}: {reason}", self.term)),
        }
    }
}

/// A message taken from the queue; it stays queued until [`Queued::ack`].
#[derive(Debug)]
pub struct Queued {
    /// Its stream sequence: increasing in push order.
    pub seq: u64,
    /// Text or binary, as pushed.
    pub kind: Kind,
    /// The payload, as pushed.
    pub data: Bytes,
    /// The idempotency key it was pushed with.
    pub idempotency_key: Option<String>,
    /// Where and how to ack it.
    ack: Ack,
}

/// What [`Queued::ack`] needs.
#[derive(Debug)]
struct Ack {
    /// The client the message came on.
    client: async_nats::Client,
    /// The message's ack subject (it names the consumer).
    reply: async_nats::Subject,
    /// For errors.
    endpoint: String,
    /// For errors.
    stream: String,
    /// The drain's term, for errors.
    term: u64,
}

impl Queued {
    /// Removes the message from the queue and waits for the server's confirmation. Call it once
    /// the message is where it must not be lost from (see `docs/cluster.md`): after the ack no
    /// leader gets it again.
    ///
    /// # Errors
    /// [`QueueError::TakenOver`] when this drain's consumer is gone: the message stays queued
    /// for the new leader. [`QueueError::Nats`] when the server did not confirm in time: the ack
    /// may or may not have landed.
    pub async fn ack(self) -> Result<(), QueueError> {
        let a = self.ack;
        // Not `Message::double_ack`: it takes a no-responders status (the consumer is gone)
        // for a confirmation. A request maps that status to an error.
        match a.client.request(a.reply, Bytes::from_static(b"+ACK")).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Err(QueueError::TakenOver {
                endpoint: a.endpoint,
                term: a.term,
                by: None,
            }),
            Err(e) => Err(QueueError::Nats {
                stream: a.stream,
                reason: format!("ack of message {}: {e}", self.seq),
            }),
        }
    }
}

fn consumer_name(term: u64) -> String {
    format!("{CONSUMER_PREFIX}{term}")
}

fn consumer_term(name: &str) -> Option<u64> {
    name.strip_prefix(CONSUMER_PREFIX)?.parse().ok()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Binary => "binary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_survive_the_header_one_to_one() {
        for key in [
            "order-42",
            "a b",
            " a",
            "a ",
            "50%",
            "%20",
            "line\r\nbreak",
            "tab\t",
            "é✓",
        ] {
            let encoded = crate::cluster::encode_header(key);
            assert!(
                !encoded.contains(['\r', '\n', ' ', '\t']),
                "{key:?} -> {encoded:?}"
            );
            assert_eq!(crate::cluster::decode_header(&encoded), key);
        }
        assert_ne!(
            crate::cluster::encode_header(" a"),
            crate::cluster::encode_header("a")
        );
        assert_ne!(
            crate::cluster::encode_header("%20"),
            crate::cluster::encode_header(" ")
        );
        assert_eq!(
            crate::cluster::encode_header("order-42"),
            "order-42",
            "plain keys read as they are"
        );
        assert_eq!(
            crate::cluster::decode_header("100%"),
            "100%",
            "a stray % is kept"
        );
        assert_eq!(crate::cluster::decode_header("%zz"), "%zz");
    }

    #[test]
    fn consumer_names_carry_the_term() {
        assert_eq!(consumer_term(&consumer_name(17)), Some(17));
        assert_eq!(consumer_term("someone-else"), None);
        assert_eq!(consumer_term("leader-x"), None);
    }
}
