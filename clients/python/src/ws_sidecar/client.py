"""The client: `connect()` finds the daemon and checks that it answers; `Client` wraps each call
of the gRPC API with what an app would otherwise have to remember (the `:authority` over a Unix
socket, message size limits, waiting through a daemon restart, typed results and errors)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import grpc

from . import events as ev
from .discover import Found, discover
from .errors import NotFound, Unreachable, from_grpc
from .resume import ResumeFile
from .subscription import Subscription
from .v1 import sidecar_pb2 as pb
from .v1 import sidecar_pb2_grpc as rpc

#: How long a call waits (for a daemon that is restarting included) unless told otherwise.
DEFAULT_TIMEOUT = 60.0

_WAIT = {"stored": pb.STORED, "sent": pb.SENT, "confirmed": pb.CONFIRMED}

Filters = Mapping[str, Any] | Iterable[tuple[str, Any]]


def _channel_options(found: Found) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        # An upstream message may be up to max_message_size (16 MiB by default, more if set):
        # grpcio's default receive limit, 4 MiB, would fail the stream on a large one.
        ("grpc.max_receive_message_length", -1),
        # A daemon restart takes a moment: retry the socket soon, not after grpcio's 1 s..120 s.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if found.unix is not None:
        # grpcio sends the socket path as the HTTP/2 :authority, which the daemon (hyper) refuses.
        opts.append(("grpc.default_authority", "localhost"))
    return opts


def connect(
    address: str | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    check: bool = True,
    timeout: float = 10.0,
) -> "Client":
    """Finds the daemon like the ws-sidecar CLI does and returns a client for it.

    `address` is ``unix:PATH`` or ``HOST:PORT``; `config` a config file whose `grpc.listen`
    to use; else `$WS_SIDECAR_GRPC`, `$WS_SIDECAR_CONFIG`, then the default sockets (see
    `ws_sidecar.discover`). With `check` (the default) one status call, within `timeout`
    seconds, makes sure the daemon answers there, and raises `Unreachable` saying why not;
    pass ``check=False`` for an app that may start before the daemon.
    """
    found = discover(address, config)
    client = Client(found)
    if check:
        try:
            client._stub.GetStatus(pb.GetStatusRequest(), timeout=timeout)
        except grpc.RpcError as e:
            client.close()
            raise _unreachable(found, e) from None
    return client


def _unreachable(found: Found, e: grpc.RpcError) -> Unreachable:
    hint = "start the daemon, or pass address=/config= or set WS_SIDECAR_GRPC"
    if found.looked and found.unix is not None and not found.unix.exists():
        places = ", ".join(str(p) for p in found.looked)
        msg = f"no ws-sidecar daemon found: no socket at {places}: {hint}"
    elif found.unix is not None and not found.unix.exists():
        msg = f"no ws-sidecar socket at {found.unix} ({found.found_from}): {hint}"
    else:
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        msg = f"ws-sidecar does not answer at {found.address} ({found.found_from}): {details}"
    return Unreachable(msg, found.address, found.found_from)


def _filters(filters: Filters | None) -> list[pb.Filter]:
    if filters is None:
        return []
    items = filters.items() if isinstance(filters, Mapping) else filters
    out = []
    for pointer, equals in items:
        if not isinstance(pointer, str):
            raise TypeError(f"filter pointer must be a string, got {pointer!r}")
        if isinstance(equals, str):
            text = equals
        elif equals is None or isinstance(equals, (bool, int, float)):
            # The daemon matches a number, boolean or null by its JSON text.
            text = json.dumps(equals)
        else:
            raise TypeError(f"filter value of {pointer} must be a string, number, boolean or None")
        out.append(pb.Filter(pointer=pointer, equals=text))
    return out


def _json_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (dict, list)):
        return json.dumps(data, separators=(",", ":")).encode("utf-8")
    raise TypeError(f"expected a dict, list, str or bytes, got {type(data).__name__}")


def _check_seq(from_seq: int | None) -> None:
    if from_seq is not None and (not isinstance(from_seq, int) or from_seq < 0):
        raise ValueError(f"from_seq must be a non-negative integer, got {from_seq!r}")


class Client:
    """A connection to one daemon; thread-safe. Close it (or use ``with``) when done."""

    def __init__(self, found: Found) -> None:
        #: Where the daemon is and why there.
        self.found = found
        self._channel = grpc.insecure_channel(found.grpc_target, options=_channel_options(found))
        self._stub = rpc.SidecarStub(self._channel)

    def close(self) -> None:
        """Closes the channel; open subscriptions end."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        # wait_for_ready: a call made while the daemon restarts waits for it (up to timeout)
        # instead of failing at once; it is not sent before the daemon is there.
        try:
            return method(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            raise from_grpc(e) from None

    def status(
        self, endpoint: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Any:
        """One endpoint's `EndpointStatus` (NotFound if there is none), or with no name a dict of
        every endpoint's by name."""
        req = pb.GetStatusRequest() if endpoint is None else pb.GetStatusRequest(endpoint=endpoint)
        resp = self._unary(self._stub.GetStatus, req, timeout)
        all_ = {s.name: ev.status_of(s) for s in resp.endpoints}
        if endpoint is None:
            return all_
        if endpoint not in all_:
            raise NotFound(grpc.StatusCode.NOT_FOUND, f"no endpoint {endpoint!r}")
        return all_[endpoint]

    def publish(
        self,
        endpoint: str,
        data: str | bytes | dict[str, Any] | list[Any],
        *,
        binary: bool | None = None,
        idempotency_key: str = "",
        wait: str = "stored",
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> int:
        """Queues `data` for the upstream and returns its outbox id.

        A str (or a dict/list, sent as compact JSON) goes as a text frame, bytes as a binary
        frame; `binary` overrides that. `wait`: "stored" (committed to the outbox), "sent"
        (written to the upstream socket) or "confirmed" (answered by the upstream; endpoints
        with `requests` only). A publish with an `idempotency_key` is retried when the daemon
        goes away during the call (the key makes a second copy impossible); without one that
        is `Unavailable`, and the message may or may not have been queued.
        """
        if isinstance(data, (dict, list)):
            payload, is_binary = _json_bytes(data), False
        elif isinstance(data, str):
            payload, is_binary = data.encode("utf-8"), False
        elif isinstance(data, (bytes, bytearray, memoryview)):
            payload, is_binary = bytes(data), True
        else:
            raise TypeError(f"data must be str, bytes, dict or list, got {type(data).__name__}")
        if binary is not None:
            is_binary = binary
        if wait not in _WAIT:
            raise ValueError(f"wait must be one of {', '.join(_WAIT)}, got {wait!r}")
        req = pb.PublishRequest(
            endpoint=endpoint,
            data=payload,
            kind=pb.BINARY if is_binary else pb.TEXT,
            idempotency_key=idempotency_key,
            wait=_WAIT[wait],
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._stub.Publish(req, timeout=left, wait_for_ready=True).outbox_id
            except grpc.RpcError as e:
                retry = (
                    idempotency_key
                    and isinstance(e, grpc.Call)
                    and e.code() == grpc.StatusCode.UNAVAILABLE
                    and (deadline is None or time.monotonic() + delay < deadline)
                )
                if not retry:
                    raise from_grpc(e) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def request(
        self,
        endpoint: str,
        data: str | bytes | dict[str, Any] | list[Any],
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> ev.Reply:
        """Sends a JSON request upstream (an endpoint with `requests`) and returns its reply.

        An error the upstream answers with is a reply too, with ``error`` set. Failures raise:
        DeadlineExceeded (no reply within `requests.timeout`), Unavailable (the connection
        dropped with the request in flight: it may have reached the upstream), and so on.
        """
        req = pb.UpstreamRequest(endpoint=endpoint, data=_json_bytes(data))
        return ev.reply_of(self._unary(self._stub.Request, req, timeout))

    def request_stream(
        self, endpoint: str, data: str | bytes | dict[str, Any] | list[Any]
    ) -> Iterator[ev.Reply]:
        """Like `request`, for replies that keep coming (``eth_subscribe``, GraphQL
        subscriptions): yields every reply until the last (``end`` set). Closing the iterator
        early (``break``, ``close()``) cancels the stream upstream. Not resumed after a daemon
        restart: it ends with Unavailable."""
        req = pb.UpstreamRequest(endpoint=endpoint, data=_json_bytes(data))
        call = self._stub.RequestStream(req, wait_for_ready=True)

        def replies() -> Iterator[ev.Reply]:
            try:
                for r in call:
                    yield ev.reply_of(r)
            except grpc.RpcError as e:
                raise from_grpc(e) from None
            finally:
                call.cancel()

        return replies()

    def reconnect(self, endpoint: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Drops the endpoint's upstream connection and connects again (also leaves `failed`)."""
        self._unary(self._stub.Reconnect, pb.ReconnectRequest(endpoint=endpoint), timeout)

    def reset_resume(self, endpoint: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Forgets the endpoint's upstream resume position; returns the one forgotten."""
        req = pb.ResetResumeRequest(endpoint=endpoint)
        return self._unary(self._stub.ResetResume, req, timeout).previous_id

    def subscribe(
        self,
        endpoint: str,
        from_seq: int | None = None,
        filters: Filters | None = None,
        resume_file: str | os.PathLike[str] | None = None,
        *,
        states: bool = False,
        reconnect: bool = True,
    ) -> Subscription:
        """The endpoint's messages, as `Message` and `Gap` objects (and `StateChange` with
        ``states=True``), resumed without loss or duplicate across daemon restarts.

        `from_seq`: None for messages from now on; N for every retained message after seq N
        first (0: from the oldest retained). `filters`: ``{"/type": "trade"}`` (JSON pointer to
        value; all must match). `resume_file`: where the position is kept across runs of the
        app; when the file exists it wins over `from_seq`. `reconnect=False` ends the
        iteration (or raises) when the stream breaks instead.
        """
        _check_seq(from_seq)
        flt = _filters(filters)

        def open_call(position: int | None) -> Iterator[pb.Event]:
            req = pb.SubscribeRequest(endpoint=endpoint, filters=flt)
            if position is not None:
                req.from_seq = position
            return self._stub.Subscribe(req)

        return self._subscription(endpoint, open_call, from_seq, resume_file, states, reconnect)

    def attach(
        self,
        endpoint: str,
        keys: Sequence[str],
        params: str | dict[str, Any] | list[Any] | None = None,
        from_seq: int | None = None,
        resume_file: str | os.PathLike[str] | None = None,
        *,
        states: bool = False,
        reconnect: bool = True,
    ) -> Subscription:
        """Holds shared upstream subscriptions (the endpoint's `subscriptions`) and yields their
        messages, gaps and `KeyChange` (each key's state: pending, subscribed, refused), resumed
        across daemon restarts like `subscribe`. The keys are let go when the subscription is
        closed. `params` fills ``{{params}}`` in the subscribe frame (JSON text or a value)."""
        if isinstance(keys, str):
            keys = [keys]
        _check_seq(from_seq)
        if params is None:
            ptext = ""
        elif isinstance(params, str):
            ptext = params
        else:
            ptext = json.dumps(params, separators=(",", ":"))

        def open_call(position: int | None) -> Iterator[pb.Event]:
            req = pb.AttachRequest(endpoint=endpoint, keys=list(keys), params=ptext)
            if position is not None:
                req.from_seq = position
            return self._stub.Attach(req)

        return self._subscription(endpoint, open_call, from_seq, resume_file, states, reconnect)

    def _subscription(
        self,
        endpoint: str,
        open_call: Any,
        from_seq: int | None,
        resume_file: str | os.PathLike[str] | None,
        states: bool,
        reconnect: bool,
    ) -> Subscription:
        resume = ResumeFile(resume_file, endpoint) if resume_file is not None else None
        stored = resume.load() if resume is not None else None
        position = stored if stored is not None else from_seq
        if position is None and (reconnect or resume is not None):
            # "From now on" as a position, so that a stream broken before its first message
            # resumes from here too rather than from whenever it reconnects.
            req = pb.GetStatusRequest(endpoint=endpoint)
            try:
                resp = self._stub.GetStatus(req, timeout=10.0)
            except grpc.RpcError as e:
                if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                    raise from_grpc(e) from None
                resp = None  # the daemon is not there yet: live from when it is
            position = (
                next((s.last_seq for s in resp.endpoints if s.name == endpoint), None)
                if resp
                else None
            )
        return Subscription(
            endpoint, open_call, position, stored, resume, states, reconnect, self.found.address
        )
