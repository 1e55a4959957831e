"""Fixtures: a fake upstream and a real daemon per test, each in the test's temp dir."""

from __future__ import annotations

import pathlib
import sys
from typing import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from daemon import Daemon  # noqa: E402
from fake_upstream import FakeNode, FakeUpstream  # noqa: E402


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def node() -> Iterator[FakeNode]:
    with FakeNode() as n:
        yield n


def feed_config(url: str, extra: str = "") -> str:
    """An endpoint `feed` on `url` that reconnects fast and keeps its replay window on disk."""
    return f"""
[endpoints.feed]
url = "{url}"
backoff = {{ initial = "10ms", max = "50ms", min_delay = "10ms" }}
[endpoints.feed.replay]
persist = true
{extra}
"""


@pytest.fixture
def make_daemon(tmp_path: pathlib.Path) -> Iterator:
    started: list[Daemon] = []

    def make(endpoints: str, start: bool = True) -> Daemon:
        d = (
            Daemon(tmp_path / f"d{len(started)}", endpoints)
            if started
            else Daemon(tmp_path, endpoints)
        )
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        d.kill()
        # Shown by pytest only when the test failed.
        print(f"--- daemon log {d.log}:\n{d.log_text()[-20000:]}")
