"""publish(), request(), request_stream(), attach() and status() against the real daemon."""

from __future__ import annotations

import json
import signal
import threading

import pytest
from conftest import feed_config
from helpers import take, wait_until

import ws_sidecar


def test_publish_reaches_the_upstream_as_text_or_binary_and_once_per_key(upstream, make_daemon):
    d = make_daemon(feed_config(upstream.url))
    upstream.wait_connected()
    with ws_sidecar.connect(d.address) as sc:
        a = sc.publish("feed", '{"op":"ping"}')
        b = sc.publish("feed", b"\x01\x02")
        c = sc.publish("feed", {"op": "sub", "ch": ["a"]}, wait="sent")
        assert a < b < c
        k1 = sc.publish("feed", "once", idempotency_key="k-1")
        assert sc.publish("feed", "once", idempotency_key="k-1") == k1
        sc.publish("feed", b"as text", binary=False)
        frames = upstream.wait_received(5)
        assert frames[:5] == [
            '{"op":"ping"}',
            b"\x01\x02",
            '{"op":"sub","ch":["a"]}',
            "once",
            "as text",
        ]
        with pytest.raises(ws_sidecar.NotFound):
            sc.publish("nope", "x")
        with pytest.raises(ValueError):
            sc.publish("feed", "x", wait="soon")
        with pytest.raises(ws_sidecar.FailedPrecondition):
            sc.publish("feed", {"id": 1}, wait="confirmed")  # the endpoint has no `requests`
    assert len(upstream.received) == 5


def test_a_publish_made_while_the_daemon_restarts_waits_for_it(upstream, make_daemon):
    d = make_daemon(feed_config(upstream.url))
    upstream.wait_connected(1)
    with ws_sidecar.connect(d.address) as sc:
        sc.publish("feed", "before")
        upstream.wait_received(1)
        # A graceful stop: after kill -9 the daemon may send "before" again (at least once).
        d.kill(signal.SIGTERM)
        result: list = []
        t = threading.Thread(target=lambda: result.append(sc.publish("feed", "during", timeout=30)))
        t.start()
        d.start()
        t.join(30)
        assert result and isinstance(result[0], int)
        assert upstream.wait_received(2) == ["before", "during"]


@pytest.mark.parametrize("key", ["", "k-1"], ids=["no-key", "key"])
def test_a_publish_cut_off_by_a_daemon_crash_is_retried_only_with_an_idempotency_key(
    upstream, make_daemon, key
):
    upstream.accepting = False  # nothing is sent: the publish waits for "sent"
    d = make_daemon(feed_config(upstream.url))
    with ws_sidecar.connect(d.address) as sc:
        result: list = []

        def publish() -> None:
            try:
                result.append(sc.publish("feed", "once", wait="sent", idempotency_key=key))
            except ws_sidecar.Error as e:
                result.append(e)

        t = threading.Thread(target=publish)
        t.start()
        wait_until(lambda: sc.status("feed").outbox_depth == 1, what="the publish queued")
        d.kill()
        if not key:
            t.join(20)
            assert isinstance(result[0], ws_sidecar.Unavailable), result
        d.start()
        upstream.accepting = True
        t.join(30)
        assert not t.is_alive()
        if key:
            assert isinstance(result[0], int), result
        sc.publish("feed", "marker", wait="sent")
        upstream.wait(lambda u: "marker" in u.received, what="the marker")
        frames = list(upstream.received)
    if key:
        # Stored before the crash or not, the retry under the key leaves exactly one copy.
        assert frames == ["once", "marker"]
    else:
        # Never acknowledged: the crash may have come before the commit. Never twice, though.
        assert frames in (["once", "marker"], ["marker"])


NODE = """
[endpoints.node]
url = "{url}"
preset = "jsonrpc"
backoff = {{ initial = "10ms", max = "50ms", min_delay = "10ms" }}
"""


def test_request_gets_its_reply_with_the_apps_own_id(node, make_daemon):
    d = make_daemon(NODE.format(url=node.url))
    node.wait_connected()
    with ws_sidecar.connect(d.address) as sc:
        r = sc.request("node", {"jsonrpc": "2.0", "id": "mine", "method": "eth_blockNumber"})
        assert r.json() == {"jsonrpc": "2.0", "id": "mine", "result": "0x10d4f"}
        assert (r.error, r.end, r.endpoint) == (False, True, "node")
        r = sc.request("node", '{"jsonrpc":"2.0","id":7,"method":"echo","params":["a",1]}')
        assert r.json()["result"] == ["a", 1] and r.json()["id"] == 7
        # The upstream's own error is a reply, marked.
        r = sc.request("node", {"jsonrpc": "2.0", "id": 8, "method": "nope"})
        assert r.error and r.json()["error"]["code"] == -32601
        with pytest.raises(ws_sidecar.InvalidArgument):
            sc.request("node", "not json")
    assert node.faults == []


def test_request_stream_yields_every_reply_and_cancels_upstream_when_closed(node, make_daemon):
    d = make_daemon(NODE.format(url=node.url))
    node.wait_connected()
    with ws_sidecar.connect(d.address) as sc:
        replies = sc.request_stream(
            "node", {"jsonrpc": "2.0", "id": "s", "method": "eth_subscribe", "params": ["newHeads"]}
        )
        first = next(replies)
        assert first.json()["id"] == "s" and first.json()["result"].startswith("0x")
        block = node.push_head()
        note = next(replies).json()
        assert note["method"] == "eth_subscription"
        assert note["params"]["result"]["number"] == hex(block)
        # The app names the stream by the first id it got.
        assert note["params"]["subscription"] == first.json()["result"]
        replies.close()
        node.wait(lambda n: "eth_unsubscribe" in n.methods, what="eth_unsubscribe")
        wait_until(lambda: node.subscriptions() == 0, what="the subscription ended upstream")
    assert node.faults == []


def test_attach_holds_a_shared_key_and_yields_its_messages(node, make_daemon):
    d = make_daemon(NODE.format(url=node.url))
    node.wait_connected()
    with ws_sidecar.connect(d.address) as sc:
        with sc.attach("node", ["newHeads"]) as sub:
            got = []
            for item in sub:
                got.append(item)
                if (
                    isinstance(item, ws_sidecar.KeyChange)
                    and item.state == ws_sidecar.KeyState.SUBSCRIBED
                ):
                    break
            assert all(isinstance(i, ws_sidecar.KeyChange) and i.key == "newHeads" for i in got)
            assert sc.status("node").upstream_subscriptions[0].key == "newHeads"
            block = node.push_head()
            msg = take(sub, 1)[-1]
            assert json.loads(msg.data)["params"]["result"]["number"] == hex(block)
        # Closed: its last holder gone, the key is unsubscribed upstream.
        node.wait(lambda n: "eth_unsubscribe" in n.methods, what="eth_unsubscribe")
    assert node.faults == []


def test_attach_holds_its_keys_again_after_a_daemon_restart(node, make_daemon):
    d = make_daemon(NODE.format(url=node.url))
    node.wait_connected(1)
    with ws_sidecar.connect(d.address) as sc:
        with sc.attach("node", ["newHeads"]) as sub:
            node.wait(lambda n: n.subscriptions() == 1, what="eth_subscribe")
            first = node.push_head()
            before = take(sub, 1)
            d.kill(signal.SIGTERM)
            d.start()
            node.wait_connected(2)
            # No holder is left in the new daemon: the subscription comes back only because
            # the client attaches again on its own.
            got = []
            for item in sub:
                got.append(item)
                if (
                    isinstance(item, ws_sidecar.KeyChange)
                    and item.state == ws_sidecar.KeyState.SUBSCRIBED
                ):
                    break
            second = node.push_head()
            after = take(sub, 1)
    heads = [
        json.loads(i.data)["params"]["result"]["number"]
        for i in before + got + after
        if isinstance(i, ws_sidecar.Message)
    ]
    assert heads == [hex(first), hex(second)]
    assert node.faults == []


def test_status_reconnect_and_reset_resume(upstream, make_daemon):
    d = make_daemon(feed_config(upstream.url, extra='[endpoints.feed.resume]\nid_pointer = "/id"'))
    upstream.wait_connected(1)
    with ws_sidecar.connect(d.address) as sc:
        upstream.send('{"id":41}')
        wait_until(lambda: sc.status("feed").last_upstream_id == "41", what="the upstream id")
        every = sc.status()
        assert list(every) == ["feed"] and every["feed"].state == ws_sidecar.State.CONNECTED
        assert every["feed"].url == upstream.url and every["feed"].messages_received == 1
        assert every["feed"].cluster is None, "not clustered: no role"
        with pytest.raises(ws_sidecar.NotFound):
            sc.status("nope")
        sc.reconnect("feed")
        upstream.wait_connected(2)
        assert sc.reset_resume("feed") == "41"
        assert sc.reset_resume("feed") == ""
