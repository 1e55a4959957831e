"""subscribe() against the real daemon: messages, resume across daemon restarts, resume files
across app restarts, gaps."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from conftest import feed_config
from helpers import take, texts, wait_until

import ws_sidecar


def test_subscribe_yields_messages_with_their_seq_kind_and_filters(upstream, make_daemon):
    d = make_daemon(feed_config(upstream.url))
    upstream.wait_connected()
    with ws_sidecar.connect(d.address) as sc:
        everything = sc.subscribe("feed", states=True)
        trades = sc.subscribe("feed", filters={"/type": "trade", "/px": 2})
        upstream.send('{"type":"quote","px":1}')
        upstream.send('{"type":"trade","px":2}')
        upstream.send(b"\x00\xffraw")
        got = take(everything, 3)
        assert isinstance(got[0], ws_sidecar.StateChange)
        assert got[0].state == ws_sidecar.State.CONNECTED
        msgs = [i for i in got if isinstance(i, ws_sidecar.Message)]
        assert [m.data for m in msgs] == [
            b'{"type":"quote","px":1}',
            b'{"type":"trade","px":2}',
            b"\x00\xffraw",
        ]
        assert [m.binary for m in msgs] == [False, False, True]
        assert msgs[1].json() == {"type": "trade", "px": 2}
        assert [m.seq for m in msgs] == [msgs[0].seq, msgs[0].seq + 1, msgs[0].seq + 2]
        assert all(m.endpoint == "feed" for m in msgs)
        assert texts(take(trades, 1)) == ['{"type":"trade","px":2}']
        everything.close()
        trades.close()
        with pytest.raises(ws_sidecar.NotFound):
            next(iter(sc.subscribe("nope")))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_subscribe_continues_across_daemon_restarts_with_no_duplicate_and_no_hole(
    upstream, make_daemon, sig
):
    d = make_daemon(feed_config(upstream.url))
    upstream.wait_connected(1)
    with ws_sidecar.connect(d.address) as sc:
        sub = sc.subscribe("feed")  # live: from now on
        for n in range(3):
            upstream.send(f"m{n}")
        first = take(sub, 3)
        # While the app is busy, the daemon restarts and more messages come before the app
        # reads again: they must be replayed to it, and the first three not again.
        d.kill(sig)
        d.start()
        upstream.wait_connected(2)
        for n in range(3, 6):
            upstream.send(f"m{n}")
        with ws_sidecar.connect(d.address) as probe:
            wait_until(
                lambda: probe.status("feed").last_seq >= first[-1].seq + 3, what="m3..m5 stored"
            )
        rest = take(sub, 3)
        sub.close()
    items = first + rest
    # States were not asked for: only messages (and gaps) come.
    assert all(isinstance(i, (ws_sidecar.Message, ws_sidecar.Gap)) for i in items), items
    assert texts(items) == [f"m{n}" for n in range(6)]
    seqs = [i.seq for i in items if isinstance(i, ws_sidecar.Message)]
    assert seqs == sorted(set(seqs)), seqs
    gaps = [i for i in items if isinstance(i, ws_sidecar.Gap)]
    if sig == signal.SIGTERM:
        assert gaps == [] and seqs == list(range(seqs[0], seqs[0] + 6))
    else:
        # Seqs reserved before the crash and never used: named, not a hole in the data.
        assert all(g.reason == ws_sidecar.GapReason.DAEMON_RESTART for g in gaps), gaps


APP = """
import os, sys, ws_sidecar
address, path, how = sys.argv[1], sys.argv[2], sys.argv[5]
count, fail_at = int(sys.argv[3]), int(sys.argv[4])
with ws_sidecar.connect(address) as sc:
    with sc.subscribe("feed", from_seq=0, resume_file=path) as sub:
        n = 0
        for item in sub:
            if isinstance(item, ws_sidecar.Message):
                n += 1
                if n == fail_at:
                    if how == "crash":  # no cleanup at all, as with kill -9
                        os._exit(3)
                    raise SystemExit("failed while handling " + item.text)
                print(item.text, flush=True)
                if n == count:
                    break
"""


def run_app(
    address: str, path: pathlib.Path, count: int, fail_at: int = 0, how: str = "raise"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", APP, address, str(path), str(count), str(fail_at), how],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("WS_SIDECAR")},
    )


def test_a_resume_file_lets_a_new_process_continue_where_the_last_one_stopped(
    upstream, make_daemon, tmp_path
):
    d = make_daemon(feed_config(upstream.url))
    upstream.wait_connected()
    for n in range(6):
        upstream.send(f"m{n}")
    with ws_sidecar.connect(d.address) as sc:
        wait_until(lambda: sc.status("feed").last_seq >= 6, what="6 messages")
    pos = tmp_path / "feed.pos"
    first = run_app(d.address, pos, 2)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["m0", "m1"]
    assert json.loads(pos.read_text()) == {"endpoint": "feed", "seq": 2}
    # An app that fails while handling a message gets that message again next time.
    failed = run_app(d.address, pos, 10, fail_at=2)
    assert failed.returncode == 1 and "failed while handling m3" in failed.stderr
    assert failed.stdout.split() == ["m2"]
    # One that dies without any cleanup has its position of the last message it was done with.
    crashed = run_app(d.address, pos, 10, fail_at=3, how="crash")
    assert crashed.returncode == 3 and crashed.stdout.split() == ["m3", "m4"]
    assert json.loads(pos.read_text()) == {"endpoint": "feed", "seq": 5}
    again = run_app(d.address, pos, 1)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["m5"]
    # The file names its endpoint: another endpoint's file is refused, not overwritten.
    with ws_sidecar.connect(d.address) as sc:
        with pytest.raises(ws_sidecar.ResumeFileError, match="'feed', not 'other'"):
            sc.subscribe("other", resume_file=pos)
        bad = tmp_path / "bad.pos"
        bad.write_text("garbage")
        with pytest.raises(ws_sidecar.ResumeFileError, match="not a resume file"):
            sc.subscribe("feed", resume_file=bad)
        assert bad.read_text() == "garbage"


def test_a_gap_is_yielded_when_retention_ran_out(upstream, make_daemon):
    d = make_daemon(feed_config(upstream.url, extra="messages = 3"))
    upstream.wait_connected()
    for n in range(10):
        upstream.send(f"m{n}")
    with ws_sidecar.connect(d.address) as sc:
        wait_until(lambda: sc.status("feed").last_seq >= 10, what="10 messages")
        with sc.subscribe("feed", from_seq=1) as sub:
            assert next(sub) == ws_sidecar.Gap("feed", 2, 7, ws_sidecar.GapReason.REPLAY_EXPIRED)
            # Past the gap: a resumed stream must not report it again.
            assert sub.last_seq == 7
            assert texts(take(sub, 3)) == ["m7", "m8", "m9"]
            assert sub.last_seq == 10


def test_a_message_larger_than_grpcios_default_limit_arrives(upstream, make_daemon):
    d = make_daemon(feed_config(upstream.url))
    upstream.wait_connected()
    big = b"x" * (6 << 20)
    with ws_sidecar.connect(d.address) as sc:
        with sc.subscribe("feed") as sub:
            upstream.send(big)
            assert take(sub, 1)[-1].data == big
