"""What a subscription yields and what calls return, as plain typed objects (the generated
protobuf classes stay an implementation detail)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from .v1 import sidecar_pb2 as pb


class State(str, enum.Enum):
    """An endpoint's connection state (SPEC section 5); compares equal to its lowercase name."""

    UNSPECIFIED = "unspecified"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    FAILED = "failed"
    CLOSED = "closed"


class GapReason(str, enum.Enum):
    """Why a range was not delivered (see the proto's GapReason)."""

    UNSPECIFIED = "unspecified"
    REPLAY_EXPIRED = "replay_expired"
    SLOW_SUBSCRIBER = "slow_subscriber"
    UPSTREAM_GAP = "upstream_gap"
    DAEMON_RESTART = "daemon_restart"
    UPSTREAM_RESET = "upstream_reset"


class KeyState(str, enum.Enum):
    """The state of a shared upstream subscription held by `attach()`."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    REFUSED = "refused"


def _enum(cls: Any, pb_enum: Any, value: int) -> Any:
    try:
        name = pb_enum.Name(value)
    except ValueError:
        return cls.UNSPECIFIED  # a value newer than these stubs
    name = name.removeprefix("STATE_").removeprefix("GAP_REASON_").removeprefix("KEY_STATE_")
    return cls.__members__.get(name, cls.UNSPECIFIED)


@dataclass(frozen=True)
class Message:
    """One upstream message, as every subscriber of the endpoint sees it."""

    endpoint: str
    #: The endpoint's sequence number: 1, 2, 3, … never reused, also across daemon restarts.
    seq: int
    #: The payload as it came (for a text frame: UTF-8).
    data: bytes
    #: True for a binary WebSocket frame, False for a text frame.
    binary: bool
    received_at_unix_nanos: int

    @property
    def text(self) -> str:
        """The payload as text (a binary payload that is not UTF-8 raises UnicodeDecodeError)."""
        return self.data.decode("utf-8")

    def json(self) -> Any:
        """The payload parsed as JSON (json.JSONDecodeError if it is not)."""
        return json.loads(self.data)


@dataclass(frozen=True)
class Gap:
    """Messages `from_seq..=to_seq` were not delivered to this subscriber.

    For `UPSTREAM_GAP` and `UPSTREAM_RESET` the two numbers are the upstream's own ids, not seqs.
    """

    endpoint: str
    from_seq: int
    to_seq: int
    reason: GapReason

    @property
    def counts_seqs(self) -> bool:
        """Whether from_seq/to_seq are the endpoint's seqs (not upstream ids)."""
        return self.reason not in (GapReason.UPSTREAM_GAP, GapReason.UPSTREAM_RESET)


@dataclass(frozen=True)
class StateChange:
    """The endpoint's upstream connection changed state (yielded with ``states=True``)."""

    endpoint: str
    state: State
    reason: str
    at_unix_nanos: int


@dataclass(frozen=True)
class KeyChange:
    """A shared subscription held by `attach()` changed state."""

    endpoint: str
    key: str
    state: KeyState
    #: For REFUSED: the upstream's answer, or why the frame could not be made.
    reason: str


@dataclass(frozen=True)
class Reply:
    """One reply to `request()` or `request_stream()`."""

    endpoint: str
    #: The upstream's reply as JSON text, with the app's own id back in it.
    data: bytes
    #: The reply is the upstream's error object (matched `requests.error`).
    error: bool
    #: The last reply of the call.
    end: bool
    received_at_unix_nanos: int

    def json(self) -> Any:
        """The reply parsed."""
        return json.loads(self.data)


@dataclass(frozen=True)
class UpstreamSubscription:
    """A shared upstream subscription, in `EndpointStatus`."""

    key: str
    holders: int
    #: "pending", "subscribed" or "refused".
    state: str


@dataclass(frozen=True)
class ClusterRole:
    """A clustered endpoint's part in its fleet (README "Running a fleet")."""

    #: "joining", "follower" or "leader".
    role: str
    #: `cluster.name` of the daemon holding the upstream connection ("" when unknown).
    leader: str
    lease_epoch: int
    #: Messages in the endpoint's stream this daemon has not delivered locally yet.
    stream_lag: int
    #: Why this daemon last stopped leading ("" if it never did).
    stepped_down: str


@dataclass(frozen=True)
class EndpointStatus:
    """State and counters of one endpoint (see the proto's EndpointStatus for each field)."""

    name: str
    url: str
    state: State
    reason: str
    since_unix_nanos: int
    last_seq: int
    reconnects: int
    messages_received: int
    subscribers: int
    outbox_depth: int
    rtt_micros: int
    auth_expires_at_unix_nanos: int
    last_upstream_id: str
    rate_limited: int
    rate_limit_wait_micros: int
    requests_in_flight: int
    request_timeouts: int
    confirm_depth: int
    upstream_subscriptions: list[UpstreamSubscription] = field(default_factory=list)
    #: None unless the endpoint has `cluster = true`.
    cluster: ClusterRole | None = None


def message_of(m: pb.Message) -> Message:
    """The typed form of a proto Message."""
    return Message(m.endpoint, m.seq, m.data, m.kind == pb.BINARY, m.received_at_unix_nanos)


def gap_of(g: pb.Gap) -> Gap:
    """The typed form of a proto Gap."""
    return Gap(g.endpoint, g.from_seq, g.to_seq, _enum(GapReason, pb.GapReason, g.reason))


def state_of(s: pb.StateChange) -> StateChange:
    """The typed form of a proto StateChange."""
    return StateChange(s.endpoint, _enum(State, pb.State, s.state), s.reason, s.at_unix_nanos)


def key_of(k: pb.KeyChange) -> KeyChange:
    """The typed form of a proto KeyChange."""
    return KeyChange(k.endpoint, k.key, _enum(KeyState, pb.KeyState, k.state), k.reason)


def reply_of(r: pb.UpstreamReply) -> Reply:
    """The typed form of a proto UpstreamReply."""
    return Reply(r.endpoint, r.data, r.error, r.end, r.received_at_unix_nanos)


def status_of(s: pb.EndpointStatus) -> EndpointStatus:
    """The typed form of a proto EndpointStatus."""
    return EndpointStatus(
        name=s.name,
        url=s.url,
        state=_enum(State, pb.State, s.state),
        reason=s.reason,
        since_unix_nanos=s.since_unix_nanos,
        last_seq=s.last_seq,
        reconnects=s.reconnects,
        messages_received=s.messages_received,
        subscribers=s.subscribers,
        outbox_depth=s.outbox_depth,
        rtt_micros=s.rtt_micros,
        auth_expires_at_unix_nanos=s.auth_expires_at_unix_nanos,
        last_upstream_id=s.last_upstream_id,
        rate_limited=s.rate_limited,
        rate_limit_wait_micros=s.rate_limit_wait_micros,
        requests_in_flight=s.requests_in_flight,
        request_timeouts=s.request_timeouts,
        confirm_depth=s.confirm_depth,
        upstream_subscriptions=[
            UpstreamSubscription(u.key, u.holders, u.state) for u in s.upstream_subscriptions
        ],
        cluster=(
            ClusterRole(
                s.cluster.role,
                s.cluster.leader,
                s.cluster.lease_epoch,
                s.cluster.stream_lag,
                s.cluster.stepped_down,
            )
            if s.HasField("cluster")
            else None
        ),
    )
