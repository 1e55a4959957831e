from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT: _ClassVar[Kind]
    BINARY: _ClassVar[Kind]

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    CONNECTING: _ClassVar[State]
    CONNECTED: _ClassVar[State]
    BACKOFF: _ClassVar[State]
    FAILED: _ClassVar[State]
    CLOSED: _ClassVar[State]

class GapReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GAP_REASON_UNSPECIFIED: _ClassVar[GapReason]
    REPLAY_EXPIRED: _ClassVar[GapReason]
    SLOW_SUBSCRIBER: _ClassVar[GapReason]
    UPSTREAM_GAP: _ClassVar[GapReason]
    DAEMON_RESTART: _ClassVar[GapReason]
    UPSTREAM_RESET: _ClassVar[GapReason]

class KeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATE_UNSPECIFIED: _ClassVar[KeyState]
    PENDING: _ClassVar[KeyState]
    SUBSCRIBED: _ClassVar[KeyState]
    REFUSED: _ClassVar[KeyState]

class Wait(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORED: _ClassVar[Wait]
    SENT: _ClassVar[Wait]
    CONFIRMED: _ClassVar[Wait]
TEXT: Kind
BINARY: Kind
STATE_UNSPECIFIED: State
CONNECTING: State
CONNECTED: State
BACKOFF: State
FAILED: State
CLOSED: State
GAP_REASON_UNSPECIFIED: GapReason
REPLAY_EXPIRED: GapReason
SLOW_SUBSCRIBER: GapReason
UPSTREAM_GAP: GapReason
DAEMON_RESTART: GapReason
UPSTREAM_RESET: GapReason
KEY_STATE_UNSPECIFIED: KeyState
PENDING: KeyState
SUBSCRIBED: KeyState
REFUSED: KeyState
STORED: Wait
SENT: Wait
CONFIRMED: Wait

class Filter(_message.Message):
    __slots__ = ("pointer", "equals")
    POINTER_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    pointer: str
    equals: str
    def __init__(self, pointer: _Optional[str] = ..., equals: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("endpoint", "from_seq", "filters")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    from_seq: int
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, endpoint: _Optional[str] = ..., from_seq: _Optional[int] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("message", "gap", "state", "key")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    message: Message
    gap: Gap
    state: StateChange
    key: KeyChange
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ..., state: _Optional[_Union[StateChange, _Mapping]] = ..., key: _Optional[_Union[KeyChange, _Mapping]] = ...) -> None: ...

class KeyChange(_message.Message):
    __slots__ = ("endpoint", "key", "state", "reason")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    key: str
    state: KeyState
    reason: str
    def __init__(self, endpoint: _Optional[str] = ..., key: _Optional[str] = ..., state: _Optional[_Union[KeyState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("endpoint", "keys", "params", "from_seq")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    params: str
    from_seq: int
    def __init__(self, endpoint: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., params: _Optional[str] = ..., from_seq: _Optional[int] = ...) -> None: ...

class UpstreamRequest(_message.Message):
    __slots__ = ("endpoint", "data")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    data: bytes
    def __init__(self, endpoint: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UpstreamReply(_message.Message):
    __slots__ = ("endpoint", "data", "error", "end", "received_at_unix_nanos")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    data: bytes
    error: bool
    end: bool
    received_at_unix_nanos: int
    def __init__(self, endpoint: _Optional[str] = ..., data: _Optional[bytes] = ..., error: _Optional[bool] = ..., end: _Optional[bool] = ..., received_at_unix_nanos: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("endpoint", "seq", "received_at_unix_nanos", "kind", "data")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    seq: int
    received_at_unix_nanos: int
    kind: Kind
    data: bytes
    def __init__(self, endpoint: _Optional[str] = ..., seq: _Optional[int] = ..., received_at_unix_nanos: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("endpoint", "from_seq", "to_seq", "reason")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    from_seq: int
    to_seq: int
    reason: GapReason
    def __init__(self, endpoint: _Optional[str] = ..., from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., reason: _Optional[_Union[GapReason, str]] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("endpoint", "state", "reason", "at_unix_nanos")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    state: State
    reason: str
    at_unix_nanos: int
    def __init__(self, endpoint: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., reason: _Optional[str] = ..., at_unix_nanos: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("endpoint", "data", "kind", "idempotency_key", "wait")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    data: bytes
    kind: Kind
    idempotency_key: str
    wait: Wait
    def __init__(self, endpoint: _Optional[str] = ..., data: _Optional[bytes] = ..., kind: _Optional[_Union[Kind, str]] = ..., idempotency_key: _Optional[str] = ..., wait: _Optional[_Union[Wait, str]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("outbox_id",)
    OUTBOX_ID_FIELD_NUMBER: _ClassVar[int]
    outbox_id: int
    def __init__(self, outbox_id: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("endpoints", "reload_refused")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    RELOAD_REFUSED_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStatus]
    reload_refused: str
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointStatus, _Mapping]]] = ..., reload_refused: _Optional[str] = ...) -> None: ...

class EndpointStatus(_message.Message):
    __slots__ = ("name", "url", "state", "reason", "since_unix_nanos", "last_seq", "reconnects", "messages_received", "subscribers", "outbox_depth", "rtt_micros", "auth_expires_at_unix_nanos", "last_upstream_id", "rate_limited", "rate_limit_wait_micros", "upstream_subscriptions", "requests_in_flight", "request_timeouts", "confirm_depth", "cluster")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RTT_MICROS_FIELD_NUMBER: _ClassVar[int]
    AUTH_EXPIRES_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    LAST_UPSTREAM_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_WAIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
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
    upstream_subscriptions: _containers.RepeatedCompositeFieldContainer[UpstreamSubscription]
    requests_in_flight: int
    request_timeouts: int
    confirm_depth: int
    cluster: ClusterRole
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., reason: _Optional[str] = ..., since_unix_nanos: _Optional[int] = ..., last_seq: _Optional[int] = ..., reconnects: _Optional[int] = ..., messages_received: _Optional[int] = ..., subscribers: _Optional[int] = ..., outbox_depth: _Optional[int] = ..., rtt_micros: _Optional[int] = ..., auth_expires_at_unix_nanos: _Optional[int] = ..., last_upstream_id: _Optional[str] = ..., rate_limited: _Optional[int] = ..., rate_limit_wait_micros: _Optional[int] = ..., upstream_subscriptions: _Optional[_Iterable[_Union[UpstreamSubscription, _Mapping]]] = ..., requests_in_flight: _Optional[int] = ..., request_timeouts: _Optional[int] = ..., confirm_depth: _Optional[int] = ..., cluster: _Optional[_Union[ClusterRole, _Mapping]] = ...) -> None: ...

class ClusterRole(_message.Message):
    __slots__ = ("role", "leader", "lease_epoch", "stream_lag", "stepped_down")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STREAM_LAG_FIELD_NUMBER: _ClassVar[int]
    STEPPED_DOWN_FIELD_NUMBER: _ClassVar[int]
    role: str
    leader: str
    lease_epoch: int
    stream_lag: int
    stepped_down: str
    def __init__(self, role: _Optional[str] = ..., leader: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., stream_lag: _Optional[int] = ..., stepped_down: _Optional[str] = ...) -> None: ...

class UpstreamSubscription(_message.Message):
    __slots__ = ("key", "holders", "state")
    KEY_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    key: str
    holders: int
    state: str
    def __init__(self, key: _Optional[str] = ..., holders: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ReconnectRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class ReconnectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetResumeRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class ResetResumeResponse(_message.Message):
    __slots__ = ("previous_id",)
    PREVIOUS_ID_FIELD_NUMBER: _ClassVar[int]
    previous_id: str
    def __init__(self, previous_id: _Optional[str] = ...) -> None: ...

class GetOutboxRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class OutboxInfo(_message.Message):
    __slots__ = ("endpoint", "depth", "bytes", "oldest_age_micros", "oldest_id", "newest_id", "durable", "expired")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AGE_MICROS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_ID_FIELD_NUMBER: _ClassVar[int]
    NEWEST_ID_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    depth: int
    bytes: int
    oldest_age_micros: int
    oldest_id: int
    newest_id: int
    durable: bool
    expired: int
    def __init__(self, endpoint: _Optional[str] = ..., depth: _Optional[int] = ..., bytes: _Optional[int] = ..., oldest_age_micros: _Optional[int] = ..., oldest_id: _Optional[int] = ..., newest_id: _Optional[int] = ..., durable: _Optional[bool] = ..., expired: _Optional[int] = ...) -> None: ...

class ClearOutboxRequest(_message.Message):
    __slots__ = ("endpoint", "up_to_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    UP_TO_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    up_to_id: int
    def __init__(self, endpoint: _Optional[str] = ..., up_to_id: _Optional[int] = ...) -> None: ...

class ClearOutboxResponse(_message.Message):
    __slots__ = ("cleared", "bytes")
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    cleared: int
    bytes: int
    def __init__(self, cleared: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("accepted", "errors", "warnings", "added", "changed", "removed", "unchanged", "need_restart", "config", "applied")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    NEED_RESTART_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    errors: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    added: _containers.RepeatedScalarFieldContainer[str]
    changed: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    need_restart: _containers.RepeatedScalarFieldContainer[str]
    config: str
    applied: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[bool] = ..., errors: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ..., added: _Optional[_Iterable[str]] = ..., changed: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ..., need_restart: _Optional[_Iterable[str]] = ..., config: _Optional[str] = ..., applied: _Optional[_Iterable[str]] = ...) -> None: ...
