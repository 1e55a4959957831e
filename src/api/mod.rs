//! The local APIs: gRPC (`grpc`) and NDJSON (`stream`), sharing subscriptions and publishing;
//! and HTTP (`http`) for metrics, health and the status page (`status_page`).

pub mod call;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod ndjson;
pub mod share_ops;
pub mod status_page;
pub mod stream;
pub mod subscription;
pub mod wire;

use bytes::Bytes;

use crate::access::{self, Denied, Op, Peer};
use crate::endpoint::State;
use crate::log::Kind;
use crate::outbox::{self, SentOutcome};
use crate::registry::Registry;
use crate::share::confirm::ConfirmError;

/// Why a publish was refused; each API maps it to its own error code.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    NotFound(#[from] crate::registry::UnknownEndpoint),
    #[error("endpoint {0:?} is failed; run `ws-sidecar reconnect` after fixing the cause")]
    Failed(String),
    #[error("text message is not valid UTF-8")]
    InvalidText,
    #[error(transparent)]
    Outbox(#[from] outbox::PublishError),
    #[error("message expired in the outbox before it could be sent")]
    Expired,
    /// An operator cleared the outbox (`ClearOutbox`) before the message was sent.
    #[error("message was cleared from the outbox by an operator before it could be sent")]
    Cleared,
    #[error("daemon is shutting down")]
    Closed,
    #[error(transparent)]
    Denied(#[from] Denied),
    /// `wait = CONFIRMED` on an endpoint without `requests`: nothing could confirm it.
    #[error("endpoint {0:?} has no requests configured: the upstream's confirmation cannot be recognised")]
    NotConfirmable(String),
    /// `wait = CONFIRMED` with a message that cannot carry the daemon's id.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Confirm(#[from] ConfirmError),
    /// `wait = SENT` or `CONFIRMED` on a clustered endpoint (the wait, then the endpoint): the
    /// message goes to the fleet's publish queue, and the leader, maybe on another host,
    /// writes it upstream.
    #[error("{}", fleet_wait(.0, .1))]
    FleetWait(&'static str, String),
    /// A clustered endpoint whose host has not reached NATS yet.
    #[error("endpoint {0:?} has not joined its fleet yet (NATS not reached); try again")]
    NotJoined(String),
    #[error(transparent)]
    Queue(#[from] crate::cluster::queue::QueueError),
}

/// Why `wait` is refused on clustered `endpoint`, and what to do instead.
fn fleet_wait(wait: &str, endpoint: &str) -> String {
    let instead = if wait == "CONFIRMED" {
        "a confirmation would wait in one leader's memory, which a failover loses; send it as a \
         request (Request, `ws-sidecar request`) to get the upstream's answer"
    } else {
        "publish without it: the default wait, STORED, acknowledges once the message is in the \
         fleet's publish queue"
    };
    format!(
        "wait = {wait} is not available on clustered endpoint {endpoint:?}: the fleet's leader, \
         possibly another host, sends it; {instead}"
    )
}

impl PublishError {
    /// True when the refusal is about room (outbox limits or a full disk).
    pub fn is_exhausted(&self) -> bool {
        match self {
            PublishError::Confirm(ConfirmError::Store(e)) => e.full,
            _ => matches!(
                self,
                PublishError::Outbox(
                    outbox::PublishError::Full { .. }
                        | outbox::PublishError::TooLarge(_)
                        | outbox::PublishError::StoreFull(_)
                ) | PublishError::Confirm(ConfirmError::Full { .. })
                    | PublishError::Queue(crate::cluster::queue::QueueError::TooLarge { .. })
            ),
        }
    }

    /// The gRPC code's name in lowercase, as NDJSON error lines carry it.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::NotFound(_) => "not_found",
            PublishError::Failed(_)
            | PublishError::NotConfirmable(_)
            | PublishError::FleetWait(..) => "failed_precondition",
            PublishError::InvalidText
            | PublishError::Invalid(_)
            | PublishError::Confirm(ConfirmError::NoIdPlace(_)) => "invalid_argument",
            _ if self.is_exhausted() => "resource_exhausted",
            PublishError::Expired
            | PublishError::Confirm(ConfirmError::Expired)
            | PublishError::Queue(crate::cluster::queue::QueueError::Unconfirmed { .. }) => {
                "deadline_exceeded"
            }
            PublishError::Denied(_) => "permission_denied",
            PublishError::Cleared => "aborted",
            // Outbox and store failures, a stopping daemon.
            _ => "unavailable",
        }
    }
}

/// Appends a message from `peer` to an endpoint's outbox; with `wait_sent`, returns once it was
/// flushed to the upstream socket.
pub async fn publish(
    registry: &Registry,
    endpoint: &str,
    peer: Peer,
    kind: Kind,
    data: Bytes,
    idempotency_key: Option<&str>,
    wait_sent: bool,
) -> Result<u64, PublishError> {
    let ep = registry.lookup(endpoint)?;
    access::check(&ep.config().access, &ep.name, Op::Publish, peer)?;
    if ep.state().state == State::Failed {
        return Err(PublishError::Failed(endpoint.to_owned()));
    }
    if kind == Kind::Text && std::str::from_utf8(&data).is_err() {
        return Err(PublishError::InvalidText);
    }
    if ep.cluster.is_clustered() {
        // Any host's apps publish into the fleet's queue; the leader drains it in order.
        if wait_sent {
            return Err(PublishError::FleetWait("SENT", ep.name.clone()));
        }
        let queue = ep
            .cluster
            .queue()
            .ok_or_else(|| PublishError::NotJoined(ep.name.clone()))?;
        return Ok(queue.push(kind, data, idempotency_key).await?.seq);
    }
    let (id, rx) = ep
        .outbox
        .push(kind, data, idempotency_key, wait_sent)
        .await?;
    if let Some(rx) = rx {
        match rx.await {
            Ok(SentOutcome::Sent) => {}
            Ok(SentOutcome::Expired) => return Err(PublishError::Expired),
            Ok(SentOutcome::Cleared) => return Err(PublishError::Cleared),
            Err(_) => return Err(PublishError::Closed),
        }
    }
    Ok(id)
}

/// Queues a JSON message from `peer` on an endpoint's confirm queue (`wait = CONFIRMED`) and
/// returns its confirm id once the upstream answered it (an error reply too: the upstream got
/// it). Sent as a request with an id of the daemon's, again on every new connection until
/// answered; dropped after `outbox.max_age`.
pub async fn publish_confirmed(
    registry: &Registry,
    endpoint: &str,
    peer: Peer,
    kind: Kind,
    data: Bytes,
) -> Result<u64, PublishError> {
    let ep = registry.lookup(endpoint)?;
    let cfg = ep.config();
    access::check(&cfg.access, &ep.name, Op::Publish, peer)?;
    let Some(reqs) = cfg.requests.as_ref() else {
        return Err(PublishError::NotConfirmable(endpoint.to_owned()));
    };
    if ep.cluster.is_clustered() {
        // Confirmations are kept in the leader's share, which a failover would lose.
        return Err(PublishError::FleetWait("CONFIRMED", ep.name.clone()));
    }
    if kind != Kind::Text {
        return Err(PublishError::Invalid(
            "a confirmed publish must be a text JSON message, not binary".into(),
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| PublishError::Invalid(format!("a confirmed publish must be JSON: {e}")))?;
    if !doc.is_object() && !doc.is_array() {
        return Err(PublishError::Invalid(
            "a confirmed publish must be a JSON object or array".into(),
        ));
    }
    let socketio = cfg.framing == crate::config::Framing::SocketIo;
    if !socketio && !crate::share::key::set(&mut doc.clone(), &reqs.id, serde_json::Value::Null) {
        return Err(ConfirmError::NoIdPlace(reqs.id.clone()).into());
    }
    if ep.state().state == State::Failed {
        return Err(PublishError::Failed(endpoint.to_owned()));
    }
    let (max, max_age) = (cfg.outbox.max_messages, cfg.outbox.max_age);
    drop(cfg);
    let (_, deadline, mut rx) = ep.share.confirm(kind, data, doc, max, max_age)?;
    let deadline = tokio::time::Instant::from_std(deadline);
    let r = match tokio::time::timeout_at(deadline, &mut rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ConfirmError::Closed),
        Err(_) => ep.share.confirm_deadline(rx),
    };
    Ok(r?.id)
}
