//! The local APIs: gRPC (`grpc`) and NDJSON (`stream`), sharing subscriptions and publishing;
//! and HTTP (`http`) for metrics and health.

pub mod call;
pub mod grpc;
pub mod http;
pub mod ndjson;
pub mod share_ops;
pub mod stream;
pub mod subscription;
pub mod wire;

use bytes::Bytes;

use crate::access::{self, Denied, Op, Peer};
use crate::endpoint::State;
use crate::log::Kind;
use crate::outbox::{self, SentOutcome};
use crate::registry::Registry;

/// Why a publish was refused; each API maps it to its own error code.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("unknown endpoint {0:?}")]
    NotFound(String),
    #[error("endpoint {0:?} is failed; run `ws-sidecar reconnect` after fixing the cause")]
    Failed(String),
    #[error("text message is not valid UTF-8")]
    InvalidText,
    #[error(transparent)]
    Outbox(#[from] outbox::PublishError),
    #[error("message expired in the outbox before it could be sent")]
    Expired,
    #[error("daemon is shutting down")]
    Closed,
    #[error(transparent)]
    Denied(#[from] Denied),
}

impl PublishError {
    /// True when the refusal is about room (outbox limits or a full disk).
    pub fn is_exhausted(&self) -> bool {
        matches!(
            self,
            PublishError::Outbox(
                outbox::PublishError::Full { .. }
                    | outbox::PublishError::TooLarge(_)
                    | outbox::PublishError::StoreFull(_)
            )
        )
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
    let ep = registry
        .get(endpoint)
        .ok_or_else(|| PublishError::NotFound(endpoint.to_owned()))?;
    access::check(&ep.config().access, &ep.name, Op::Publish, peer)?;
    if ep.state().state == State::Failed {
        return Err(PublishError::Failed(endpoint.to_owned()));
    }
    if kind == Kind::Text && std::str::from_utf8(&data).is_err() {
        return Err(PublishError::InvalidText);
    }
    let (id, rx) = ep
        .outbox
        .push(kind, data, idempotency_key, wait_sent)
        .await?;
    if let Some(rx) = rx {
        match rx.await {
            Ok(SentOutcome::Sent) => {}
            Ok(SentOutcome::Expired) => return Err(PublishError::Expired),
            Err(_) => return Err(PublishError::Closed),
        }
    }
    Ok(id)
}
