"""The exceptions the client raises: one base class, one subclass per gRPC status an app may
want to branch on, and the client's own (discovery, an unreachable daemon, a resume file)."""

from __future__ import annotations

import grpc


class Error(Exception):
    """Base of every exception this package raises."""


class DiscoveryError(Error):
    """The daemon's address could not be worked out (a bad address, an unreadable config file)."""


class Unreachable(Error):
    """Nothing answers the ws-sidecar API at the address `connect()` found."""

    def __init__(self, message: str, address: str, found_from: str) -> None:
        super().__init__(message)
        #: The address tried, e.g. ``unix:/run/ws-sidecar/grpc.sock``.
        self.address = address
        #: Why that address, e.g. ``$WS_SIDECAR_GRPC``.
        self.found_from = found_from


class ResumeFileError(Error):
    """A resume file that cannot be used; it is never overwritten then."""


class RpcError(Error):
    """The daemon refused or failed a call; `code` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name.lower()}: {details}")
        #: The gRPC status code.
        self.code = code
        #: The daemon's message.
        self.details = details


class NotFound(RpcError):
    """No such endpoint."""


class InvalidArgument(RpcError):
    """The daemon refused the request's content (a filter, a key, data that is not JSON)."""


class PermissionDenied(RpcError):
    """The endpoint's access list does not admit this process."""


class FailedPrecondition(RpcError):
    """The endpoint cannot do this (it is `failed`, or has no `requests`/`subscriptions`)."""


class ResourceExhausted(RpcError):
    """A limit was reached (a full outbox, `max_in_flight`, `max_subscribers`, a slow reader)."""


class DeadlineExceeded(RpcError):
    """No answer in time (the call's timeout or the endpoint's `requests.timeout`)."""


class Unavailable(RpcError):
    """The daemon or the upstream connection went away during the call."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_grpc(e: grpc.RpcError) -> RpcError:
    """The exception for a failed call."""
    code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (e.details() if isinstance(e, grpc.Call) else None) or str(e)
    return _BY_CODE.get(code, RpcError)(code, details)
