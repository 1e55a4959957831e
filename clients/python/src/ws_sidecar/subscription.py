"""A stream of events that survives daemon restarts: `Client.subscribe()` and `Client.attach()`
return one.

It remembers the position of the last item it yielded, and when the stream breaks
(`UNAVAILABLE`, or the daemon ends it) it opens it again from there, after a backoff, so the
app sees every message once: the daemon replays what came meanwhile, and anything at or before
the position is dropped should it come again. With a resume file, the position the app is done
with (the item before the one it is now handling, or the last one once the subscription is
closed normally) is kept in the file for the next run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Iterator, Union

import grpc

from . import events as ev
from .errors import from_grpc
from .resume import ResumeFile
from .v1 import sidecar_pb2 as pb

log = logging.getLogger("ws_sidecar")

#: What a subscription yields.
Item = Union[ev.Message, ev.Gap, ev.StateChange, ev.KeyChange]

# A stream that breaks with these is opened again; anything else is the app's to handle.
# CANCELLED is what grpcio reports when the daemon resets the stream at shutdown.
_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
_BACKOFF_INITIAL = 0.05
_BACKOFF_MAX = 2.0


class Subscription:
    """Iterate it for `Message`, `Gap` (and `KeyChange`, `StateChange` where asked for).

    Use it in a ``with`` block, or call `close()`, so the last position is saved on the way out.
    `close()` may be called from another thread; iteration then ends.
    """

    def __init__(
        self,
        endpoint: str,
        open_call: Callable[[int | None], Iterator[pb.Event]],
        position: int | None,
        stored: int | None,
        resume: ResumeFile | None,
        states: bool,
        reconnect: bool,
        address: str,
    ) -> None:
        self.endpoint = endpoint
        self._open_call = open_call
        self._last = position
        self._acked = position
        self._stored = stored
        self._resume = resume
        self._states = states
        self._reconnect = reconnect
        self._address = address
        self._call: Iterator[pb.Event] | None = None
        self._closed = False
        self._stop = threading.Event()
        self._attempt = 0
        self._down_since: float | None = None
        self._last_state: ev.StateChange | None = None
        self._keys: dict[str, ev.KeyChange] = {}
        self._upstream_gap: ev.Gap | None = None
        self._lock = threading.Lock()
        # Open at once, so a live subscription starts now rather than at the first next().
        self._call = open_call(self._last)

    @property
    def last_seq(self) -> int | None:
        """The position of the last item yielded: a resumed stream continues after it."""
        return self._last

    def __iter__(self) -> "Subscription":
        return self

    def __next__(self) -> Item:
        self._ack()
        while True:
            if self._closed:
                raise StopIteration
            call = self._call
            if call is None:
                call = self._call = self._open_call(self._last)
            try:
                event = next(call)
            except StopIteration:
                if self._closed:
                    raise
                self._lost("the daemon ended the stream")
                continue
            except grpc.RpcError as e:
                if self._closed:
                    raise StopIteration from None
                if self._reconnect and isinstance(e, grpc.Call) and e.code() in _RETRY:
                    self._lost(f"{e.code().name.lower()}: {e.details()}")
                    continue
                self._call = None
                raise from_grpc(e) from None
            self._up()
            item = self._item(event)
            if item is not None:
                return item

    def close(self) -> None:
        """Ends the stream; the position of the last item yielded is saved (and fsynced)."""
        self._shut(self._last)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # An exception while handling the last item: it was not handled, so keep the one before.
        self._shut(self._last if exc_type is None else self._acked)

    def _shut(self, position: int | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        _cancel(self._call)
        if self._resume is not None and position is not None:
            self._resume.store(position, durable=True)
            self._stored = position

    def _ack(self) -> None:
        # The app asks for the next item: it is done with the last one.
        self._acked = self._last
        if self._resume is not None and self._last is not None and self._last != self._stored:
            self._resume.store(self._last)
            self._stored = self._last

    def _lost(self, why: str) -> None:
        _cancel(self._call)
        self._call = None
        if not self._reconnect:
            self._closed = True
            return
        delay = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2**self._attempt)
        delay *= random.uniform(0.5, 1.0)
        self._attempt += 1
        after = "live" if self._last is None else f"after seq {self._last}"
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "ws-sidecar stream of %s lost (%s); resubscribing at %s %s",
                self.endpoint,
                why,
                self._address,
                after,
            )
        else:
            log.info(
                "ws-sidecar stream of %s: attempt %d failed (%s)", self.endpoint, self._attempt, why
            )
        self._stop.wait(delay)

    def _up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "ws-sidecar stream of %s resumed after %.1fs",
                self.endpoint,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        self._attempt = 0

    def _item(self, event: pb.Event) -> Item | None:
        which = event.WhichOneof("event")
        if which == "message":
            if self._last is not None and event.message.seq <= self._last:
                return None  # replayed again after a reconnect: already yielded
            self._last = event.message.seq
            self._upstream_gap = None
            return ev.message_of(event.message)
        if which == "gap":
            g = ev.gap_of(event.gap)
            if g.counts_seqs:
                if self._last is not None and g.to_seq <= self._last:
                    return None
                self._last = g.to_seq
            else:
                # Upstream ids, not seqs: only a repeat of the one just yielded is known to be one.
                if g == self._upstream_gap:
                    return None
                self._upstream_gap = g
            return g
        if which == "state":
            s = ev.state_of(event.state)
            # Every stream starts with the current state: after a reconnect it may be the same.
            if not self._states or s == self._last_state:
                return None
            self._last_state = s
            return s
        if which == "key":
            k = ev.key_of(event.key)
            if self._keys.get(k.key) == k:
                return None
            self._keys[k.key] = k
            return k
        return None  # an event kind newer than these stubs


def _cancel(call: object) -> None:
    # grpcio's stream object is both the iterator and the call (a grpc.Future).
    cancel = getattr(call, "cancel", None)
    if cancel is not None:
        cancel()
