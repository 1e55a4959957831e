"""Bounded waits for the tests: nothing here can hang a test."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import ws_sidecar


def take(sub: ws_sidecar.Subscription, messages: int, timeout: float = 20.0) -> list[Any]:
    """Items of `sub` up to and including its `messages`-th Message; fails after `timeout`."""
    timer = threading.Timer(timeout, sub.close)
    timer.start()
    got: list[Any] = []
    try:
        for item in sub:
            got.append(item)
            if sum(isinstance(i, ws_sidecar.Message) for i in got) == messages:
                return got
    finally:
        timer.cancel()
    raise AssertionError(f"wanted {messages} messages within {timeout}s, got {got}")


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Checks `cond` every 20 ms until it is truthy (for daemon state that has no event)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def texts(items: list[Any]) -> list[str]:
    """The payloads of the Messages among `items`."""
    return [i.text for i in items if isinstance(i, ws_sidecar.Message)]
