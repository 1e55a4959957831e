//! One view of an endpoint's status, rendered by gRPC `GetStatus`, the NDJSON `status` op and
//! `ws-sidecar status`.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::endpoint::{Endpoint, State};
use crate::proto;

/// Status of one endpoint; every field is safe to show (the URL is redacted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub name: String,
    pub url: String,
    pub state: String,
    pub reason: String,
    pub since_unix_nanos: u64,
    pub last_seq: u64,
    pub reconnects: u64,
    pub messages_received: u64,
    pub subscribers: u32,
    pub outbox_depth: u64,
    pub rtt_micros: u64,
    pub auth_expires_at_unix_nanos: u64,
    pub last_upstream_id: String,
    /// Frames that waited for the send rate limit, and how long they waited in all.
    pub rate_limited: u64,
    pub rate_limit_wait_micros: u64,
    /// Upstream subscriptions held by apps, by key (`subscriptions`).
    #[serde(default)]
    pub upstream_subscriptions: Vec<crate::share::KeyStatus>,
    /// Requests waiting for their reply, and those that timed out so far (`requests`).
    #[serde(default)]
    pub requests_in_flight: u64,
    #[serde(default)]
    pub request_timeouts: u64,
    /// Confirmed publishes waiting for the upstream's reply (`wait = confirmed`).
    #[serde(default)]
    pub confirm_depth: u64,
    /// The endpoint's part in a fleet; `None` when it is not clustered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
}

/// A clustered endpoint's role, lease and lag (`crate::cluster::slot::ClusterStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `joining`, `follower` or `leader`.
    pub role: String,
    /// The leader's `cluster.name`, empty when unknown.
    pub leader: String,
    /// The lease epoch last seen.
    pub lease_epoch: u64,
    /// Stream messages not delivered locally yet.
    pub stream_lag: u64,
    /// Why this daemon last stopped leading; empty if it never did.
    pub stepped_down: String,
}

impl ClusterView {
    fn of(ep: &Endpoint) -> Option<ClusterView> {
        use crate::cluster::slot::Role;
        let s = ep.cluster.status();
        (s.role != Role::Standalone).then(|| ClusterView {
            role: s.role.as_str().to_owned(),
            leader: s.leader.unwrap_or_default(),
            lease_epoch: s.epoch,
            stream_lag: s.lag,
            stepped_down: s.stepped_down.unwrap_or_default(),
        })
    }
}

impl EndpointStatus {
    /// Reads the endpoint's current figures.
    pub fn of(ep: &Endpoint) -> Self {
        let st = ep.state();
        EndpointStatus {
            name: ep.name.clone(),
            url: ep.url(),
            state: st.state.as_str().to_owned(),
            reason: st.reason,
            since_unix_nanos: st.at,
            last_seq: ep.log.last_seq(),
            reconnects: ep.stats.reconnects.load(Ordering::Relaxed),
            messages_received: ep.stats.messages_received.load(Ordering::Relaxed),
            subscribers: ep.log.subscribers() as u32,
            outbox_depth: ep.outbox.depth() as u64,
            rtt_micros: ep.stats.rtt_micros.load(Ordering::Relaxed),
            auth_expires_at_unix_nanos: ep.stats.auth_expires_at.load(Ordering::Relaxed),
            last_upstream_id: ep.last_upstream_id(),
            rate_limited: ep.rate.throttled(),
            rate_limit_wait_micros: u64::try_from(ep.rate.waited().as_micros()).unwrap_or(u64::MAX),
            upstream_subscriptions: ep.share.keys(),
            requests_in_flight: ep.share.in_flight() as u64,
            request_timeouts: ep.share.stats.timeouts.load(Ordering::Relaxed),
            confirm_depth: ep.share.confirm_depth() as u64,
            cluster: ClusterView::of(ep),
        }
    }
}

/// The proto enum for a state.
pub fn proto_state(s: State) -> proto::State {
    match s {
        State::Connecting => proto::State::Connecting,
        State::Connected => proto::State::Connected,
        State::Backoff => proto::State::Backoff,
        State::Failed => proto::State::Failed,
        State::Closed => proto::State::Closed,
    }
}

/// The endpoint state named by a proto enum value, if any.
fn state_from_proto(v: i32) -> Option<State> {
    Some(match proto::State::try_from(v).ok()? {
        proto::State::Connecting => State::Connecting,
        proto::State::Connected => State::Connected,
        proto::State::Backoff => State::Backoff,
        proto::State::Failed => State::Failed,
        proto::State::Closed => State::Closed,
        proto::State::Unspecified => return None,
    })
}

impl From<EndpointStatus> for proto::EndpointStatus {
    fn from(s: EndpointStatus) -> Self {
        let state = [
            State::Connecting,
            State::Connected,
            State::Backoff,
            State::Failed,
            State::Closed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s.state)
        .map_or(proto::State::Unspecified, proto_state);
        proto::EndpointStatus {
            name: s.name,
            url: s.url,
            state: state as i32,
            reason: s.reason,
            since_unix_nanos: s.since_unix_nanos,
            last_seq: s.last_seq,
            reconnects: s.reconnects,
            messages_received: s.messages_received,
            subscribers: s.subscribers,
            outbox_depth: s.outbox_depth,
            rtt_micros: s.rtt_micros,
            auth_expires_at_unix_nanos: s.auth_expires_at_unix_nanos,
            last_upstream_id: s.last_upstream_id,
            rate_limited: s.rate_limited,
            rate_limit_wait_micros: s.rate_limit_wait_micros,
            upstream_subscriptions: s
                .upstream_subscriptions
                .into_iter()
                .map(|k| proto::UpstreamSubscription {
                    key: k.key,
                    holders: k.holders as u32,
                    state: k.state,
                })
                .collect(),
            requests_in_flight: s.requests_in_flight,
            request_timeouts: s.request_timeouts,
            confirm_depth: s.confirm_depth,
            cluster: s.cluster.map(|c| proto::ClusterRole {
                role: c.role,
                leader: c.leader,
                lease_epoch: c.lease_epoch,
                stream_lag: c.stream_lag,
                stepped_down: c.stepped_down,
            }),
        }
    }
}

impl From<proto::EndpointStatus> for EndpointStatus {
    fn from(s: proto::EndpointStatus) -> Self {
        let state = state_from_proto(s.state).map_or("unknown", State::as_str);
        EndpointStatus {
            name: s.name,
            url: s.url,
            state: state.to_owned(),
            reason: s.reason,
            since_unix_nanos: s.since_unix_nanos,
            last_seq: s.last_seq,
            reconnects: s.reconnects,
            messages_received: s.messages_received,
            subscribers: s.subscribers,
            outbox_depth: s.outbox_depth,
            rtt_micros: s.rtt_micros,
            auth_expires_at_unix_nanos: s.auth_expires_at_unix_nanos,
            last_upstream_id: s.last_upstream_id,
            rate_limited: s.rate_limited,
            rate_limit_wait_micros: s.rate_limit_wait_micros,
            upstream_subscriptions: s
                .upstream_subscriptions
                .into_iter()
                .map(|k| crate::share::KeyStatus {
                    key: k.key,
                    holders: k.holders as usize,
                    state: crate::share::KeyState::named(&k.state).to_owned(),
                })
                .collect(),
            requests_in_flight: s.requests_in_flight,
            request_timeouts: s.request_timeouts,
            confirm_depth: s.confirm_depth,
            cluster: s.cluster.map(|c| ClusterView {
                role: c.role,
                leader: c.leader,
                lease_epoch: c.lease_epoch,
                stream_lag: c.stream_lag,
                stepped_down: c.stepped_down,
            }),
        }
    }
}
