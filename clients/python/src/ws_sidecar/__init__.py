"""Python client for ws-sidecar: one resilient upstream WebSocket per endpoint, shared by local
apps. `connect()` finds the daemon like the `ws-sidecar` CLI; `Client.subscribe()` yields
messages and gaps and resumes across daemon restarts with no duplicate and no hole.

    import ws_sidecar

    with ws_sidecar.connect() as sc:
        sc.publish("prices", {"op": "ping"})
        for item in sc.subscribe("prices", from_seq=0, resume_file="prices.pos"):
            if isinstance(item, ws_sidecar.Message):
                print(item.seq, item.text)
            else:
                print("missed", item)
"""

from .client import DEFAULT_TIMEOUT, Client, connect
from .discover import Found, discover
from .errors import (
    DeadlineExceeded,
    DiscoveryError,
    Error,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ResumeFileError,
    RpcError,
    Unavailable,
    Unreachable,
)
from .events import (
    ClusterRole,
    EndpointStatus,
    Gap,
    GapReason,
    KeyChange,
    KeyState,
    Message,
    Reply,
    State,
    StateChange,
    UpstreamSubscription,
)
from .subscription import Subscription

__all__ = [
    "DEFAULT_TIMEOUT",
    "Client",
    "connect",
    "Found",
    "discover",
    "DeadlineExceeded",
    "DiscoveryError",
    "Error",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ResumeFileError",
    "RpcError",
    "Unavailable",
    "Unreachable",
    "ClusterRole",
    "EndpointStatus",
    "Gap",
    "GapReason",
    "KeyChange",
    "KeyState",
    "Message",
    "Reply",
    "State",
    "StateChange",
    "UpstreamSubscription",
    "Subscription",
]
