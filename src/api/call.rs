//! A request through an endpoint's shared connection (`crate::share`), as both APIs make it:
//! checks, the wait for the reply under `requests.timeout`, and the errors each API maps to
//! its own codes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::access::{self, Denied, Op, Peer};
use crate::cluster::calls::Remote;
use crate::endpoint::State;
use crate::registry::Registry;
use crate::share::{Pending, Reply, ShareError};

/// Why a request could not be made or did not get its reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    NotFound(#[from] crate::registry::UnknownEndpoint),
    #[error("endpoint {0:?} has no requests configured: replies cannot be told apart")]
    NotShared(String),
    #[error("endpoint {0:?} is failed; run `ws-sidecar reconnect` after fixing the cause")]
    Failed(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Share(#[from] ShareError),
}

impl CallError {
    /// The gRPC code's name in lowercase, as NDJSON error lines carry it.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NotFound(_) => "not_found",
            CallError::NotShared(_)
            | CallError::Failed(_)
            | CallError::Share(ShareError::NotJoined(_)) => "failed_precondition",
            CallError::Invalid(_) | CallError::Share(ShareError::NoIdPlace(_)) => {
                "invalid_argument"
            }
            CallError::Denied(_) => "permission_denied",
            CallError::Share(ShareError::Timeout(_)) => "deadline_exceeded",
            CallError::Share(
                ShareError::TooManyKeys(_) | ShareError::TooManyRequests(_) | ShareError::Slow,
            ) => "resource_exhausted",
            CallError::Share(ShareError::Unavailable(_) | ShareError::Closed) => "unavailable",
        }
    }

    /// As a gRPC status.
    pub fn status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self.code() {
            "not_found" => Code::NotFound,
            "failed_precondition" => Code::FailedPrecondition,
            "invalid_argument" => Code::InvalidArgument,
            "permission_denied" => Code::PermissionDenied,
            "deadline_exceeded" => Code::DeadlineExceeded,
            "resource_exhausted" => Code::ResourceExhausted,
            _ => Code::Unavailable,
        };
        tonic::Status::new(code, self.to_string())
    }
}

/// A request in this host's share, or one sent to the fleet's leader.
enum Waiting {
    Local(Pending),
    Fleet(Remote),
}

impl Waiting {
    async fn next(&mut self) -> Option<Result<Reply, ShareError>> {
        match self {
            Waiting::Local(p) => p.next().await,
            Waiting::Fleet(r) => r.next().await,
        }
    }

    /// A timeout, counted; true when the request had been sent (or taken by the leader).
    fn timed_out(&mut self, ep: &crate::endpoint::Endpoint) -> bool {
        match self {
            Waiting::Local(p) => p.timed_out(),
            Waiting::Fleet(r) => {
                ep.share.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                r.accepted()
            }
        }
    }
}

/// One request waiting for its replies.
pub struct Call {
    pub endpoint: Arc<str>,
    /// For the state shown when a request was never sent.
    ep: Arc<crate::endpoint::Endpoint>,
    pending: Waiting,
    timeout: Duration,
    /// Whether the first reply is waited for within `timeout`: always for a request, for a
    /// stream only where the upstream answers at once by naming it (`requests.stream.id`).
    first_bounded: bool,
    answered: bool,
}

impl Call {
    /// Sends `data` (a JSON object or array) to `endpoint` for `peer`, who needs publish
    /// access; `stream` keeps the call open for every reply until the stream ends.
    pub fn start(
        registry: &Registry,
        endpoint: &str,
        data: &[u8],
        stream: bool,
        peer: Peer,
    ) -> Result<Call, CallError> {
        let ep = registry.lookup(endpoint)?;
        let cfg = ep.config();
        access::check(&cfg.access, &ep.name, Op::Publish, peer)?;
        let Some(reqs) = cfg.requests.as_ref() else {
            return Err(CallError::NotShared(endpoint.to_owned()));
        };
        let doc: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| CallError::Invalid(format!("the request is not JSON: {e}")))?;
        if !doc.is_object() && !doc.is_array() {
            return Err(CallError::Invalid(
                "the request must be a JSON object or array".into(),
            ));
        }
        // Refused now rather than after waiting for the connection: the id must have a place.
        let socketio = cfg.framing == crate::config::Framing::SocketIo;
        if !socketio && !crate::share::key::set(&mut doc.clone(), &reqs.id, serde_json::Value::Null)
        {
            return Err(ShareError::NoIdPlace(reqs.id.clone()).into());
        }
        if ep.state().state == State::Failed {
            return Err(CallError::Failed(endpoint.to_owned()));
        }
        // Where the endpoint says which requests open a stream, a plain request must not open one
        // (nothing would ever end it) and a stream request that opens none is a plain one.
        let opens = &reqs.stream.opens;
        let stream = if opens.is_empty() {
            stream
        } else {
            let m = crate::dialogue::matching::Message {
                text: None,
                doc: Some(&doc),
            };
            let opening = opens
                .iter()
                .any(|c| crate::dialogue::matching::Match::new(c).holds(m));
            if opening && !stream {
                return Err(CallError::Invalid(
                    "this request opens a stream (requests.stream.opens), which a plain request would never end: use RequestStream (ws-sidecar request --stream)".into(),
                ));
            }
            stream && opening
        };
        // Another host holds the connection (or none does yet): through the fleet.
        let pending = if ep.cluster.is_clustered() && ep.cluster.leading().is_none() {
            let calls = ep.cluster.calls().ok_or_else(|| {
                ShareError::Unavailable("the endpoint has not joined its fleet yet".into())
            })?;
            ep.share.stats.requests.fetch_add(1, Ordering::Relaxed);
            Waiting::Fleet(calls.request(&doc, stream))
        } else {
            Waiting::Local(
                ep.share
                    .request(doc, &reqs.id, stream, reqs.max_in_flight)?,
            )
        };
        Ok(Call {
            endpoint: Arc::clone(&ep.key),
            ep: Arc::clone(&ep),
            pending,
            timeout: reqs.timeout,
            first_bounded: !stream || reqs.stream.id.is_some(),
            answered: false,
        })
    }

    /// The next reply; `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Reply, CallError>> {
        let r = if self.answered || !self.first_bounded {
            self.pending.next().await
        } else {
            match tokio::time::timeout(self.timeout, self.pending.next()).await {
                Ok(r) => r,
                Err(_) => {
                    let sent = self.pending.timed_out(&self.ep);
                    self.answered = true;
                    self.first_bounded = false;
                    // Dropping the call forgets the request; a late reply is an orphan.
                    let mut waited = crate::fmt::duration(self.timeout);
                    if !sent {
                        let st = self.ep.state();
                        waited.push_str(&format!(
                            "; it was never sent: the endpoint is {} ({})",
                            st.state.as_str(),
                            st.reason
                        ));
                    }
                    return Some(Err(CallError::Share(ShareError::Timeout(waited))));
                }
            }
        };
        self.answered = true;
        r.map(|r| r.map_err(CallError::from))
    }
}
