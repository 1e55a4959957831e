"""A fake upstream WebSocket server on 127.0.0.1:0 for the tests, in threads of its own.

`FakeUpstream` is a plain feed: the test sends messages to whoever is connected and reads what
the daemon sent. `FakeNode` is a JSON-RPC 2.0 node (jsonrpc.org/specification, and geth's
`eth_subscribe` pub/sub) that answers requests and enforces the rules the daemon's `jsonrpc`
preset must keep: every request has "jsonrpc": "2.0", a string or integer id (never null or
fractional, never reused while in flight on the connection) and a method; a violation is
answered with error -32600 and recorded in `faults` for the test to check.
"""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve


class FakeUpstream:
    """A WebSocket server; `with` it, or call `stop()`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._conns: list[ServerConnection] = []
        #: Every connection ever accepted.
        self.connections = 0
        #: Every frame the daemon sent, in order (str for text, bytes for binary).
        self.received: list[str | bytes] = []
        #: While False the handshake is refused with 503 (an upstream that is down).
        self.accepting = True
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            compression=None,
            ping_interval=None,
            process_request=self._admit,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        port = self._server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"

    def __enter__(self) -> "FakeUpstream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Closes the listener and every connection."""
        self._server.shutdown()
        self._thread.join(10)

    def _admit(self, conn: ServerConnection, request: Request) -> Response | None:
        return None if self.accepting else conn.respond(503, "down for the test\n")

    def _handle(self, conn: ServerConnection) -> None:
        with self._cond:
            self._conns.append(conn)
            self.connections += 1
            self._cond.notify_all()
        try:
            for frame in conn:
                with self._cond:
                    self.received.append(frame)
                    self._cond.notify_all()
                self.on_frame(conn, frame)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                self._conns.remove(conn)
                self._cond.notify_all()
            self.on_close(conn)

    def on_close(self, conn: ServerConnection) -> None:
        """What the server does when a connection ends (a plain feed: nothing)."""

    def on_frame(self, conn: ServerConnection, frame: str | bytes) -> None:
        """What the server does with a frame from the daemon (a plain feed: nothing)."""

    def send(self, frame: str | bytes) -> None:
        """Sends `frame` on every open connection."""
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            try:
                c.send(frame)
            except ConnectionClosed:
                pass

    def wait(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
        """Blocks until `predicate(self)` holds (checked whenever a connection or frame comes)."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"fake upstream: timed out waiting for {what}")

    def wait_connected(self, total: int = 1, timeout: float = 20.0) -> None:
        """Blocks until `total` connections were accepted and one is open."""
        self.wait(
            lambda s: s.connections >= total and len(s._conns) > 0,
            timeout,
            f"connection #{total}",
        )

    def wait_received(self, n: int, timeout: float = 20.0) -> list[str | bytes]:
        """Blocks until the daemon sent at least `n` frames; returns them all."""
        self.wait(lambda s: len(s.received) >= n, timeout, f"{n} frames from the daemon")
        with self._cond:
            return list(self.received)


class FakeNode(FakeUpstream):
    """A JSON-RPC 2.0 node: `eth_blockNumber`, `echo` (result: the params), `eth_subscribe`
    (`newHeads`) and `eth_unsubscribe`; `push_head()` notifies every newHeads subscription."""

    def __init__(self) -> None:
        #: Rule violations seen, as text.
        self.faults: list[str] = []
        #: Methods called, in order.
        self.methods: list[str] = []
        self._subs: dict[str, ServerConnection] = {}
        # Held while a subscription is announced and while a block is pushed.
        self._push = threading.Lock()
        self._block = 0x10D4F
        super().__init__()

    def _error(self, conn: ServerConnection, id_: Any, code: int, message: str) -> None:
        conn.send(
            json.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}})
        )

    def on_frame(self, conn: ServerConnection, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self._fault(f"binary frame {frame!r}")
            return self._error(conn, None, -32700, "Parse error")
        try:
            req = json.loads(frame)
        except json.JSONDecodeError:
            self._fault(f"not JSON: {frame!r}")
            return self._error(conn, None, -32700, "Parse error")
        if (
            not isinstance(req, dict)
            or req.get("jsonrpc") != "2.0"
            or not isinstance(req.get("method"), str)
            or "id" not in req
            or not isinstance(req["id"], (str, int))
            or isinstance(req["id"], bool)
            or ("params" in req and not isinstance(req["params"], (list, dict)))
        ):
            self._fault(f"invalid request: {frame}")
            return self._error(conn, None, -32600, "Invalid Request")
        id_, method, params = req["id"], req["method"], req.get("params", [])
        with self._cond:
            self.methods.append(method)
            self._cond.notify_all()
        if method == "eth_blockNumber":
            result: Any = hex(self._block)
        elif method == "echo":
            result = params
        elif method == "eth_subscribe":
            if params != ["newHeads"]:
                return self._error(conn, id_, -32602, "invalid params")
            sub_id = "0x" + secrets.token_hex(16)
            reply = json.dumps({"jsonrpc": "2.0", "id": id_, "result": sub_id})
            # Announced before it is live, so no notification ever precedes this reply; and live
            # before push_head can run again, so a test that saw the reply reaches it.
            with self._push:
                conn.send(reply)
                with self._cond:
                    self._subs[sub_id] = conn
                    self._cond.notify_all()
            return
        elif method == "eth_unsubscribe":
            with self._cond:
                found = (
                    isinstance(params, list)
                    and len(params) == 1
                    and self._subs.pop(params[0], None)
                )
            if not found:
                return self._error(conn, id_, -32000, "subscription not found")
            result = True
        else:
            return self._error(conn, id_, -32601, "Method not found")
        conn.send(json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}))

    def on_close(self, conn: ServerConnection) -> None:
        # As on a real node, subscriptions die with their connection.
        with self._cond:
            for sub_id in [k for k, c in self._subs.items() if c is conn]:
                del self._subs[sub_id]
            self._cond.notify_all()

    def _fault(self, what: str) -> None:
        with self._cond:
            self.faults.append(what)
            self._cond.notify_all()

    def subscriptions(self) -> int:
        """Live newHeads subscriptions."""
        with self._cond:
            return len(self._subs)

    def push_head(self) -> int:
        """A new block: every newHeads subscription gets its notification. Returns its number."""
        with self._push:
            return self._push_head()

    def _push_head(self) -> int:
        self._block += 1
        with self._cond:
            subs = list(self._subs.items())
        for sub_id, conn in subs:
            note = {
                "jsonrpc": "2.0",
                "method": "eth_subscription",
                "params": {"subscription": sub_id, "result": {"number": hex(self._block)}},
            }
            try:
                conn.send(json.dumps(note))
            except ConnectionClosed:
                pass
        return self._block
