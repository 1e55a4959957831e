#!/usr/bin/env python3
"""Daemon CPU per inbound message on the durable ingest path (resume configured: each message's
seq, upstream id and payload hash are committed before subscribers see it).

A Python `websockets` upstream on 127.0.0.1 sends N small JSON messages as fast as it can; the
release binary ingests them with no subscriber; the daemon's CPU time (utime + stime from
/proc) is read before the flood and once `status` shows the last seq.

    pip install websockets
    cargo build --release --locked
    python3 benches/durable_ingest.py target/release/ws-sidecar 400000 resume   # or: plain, dialogue

The upstream (one Python process) is the throughput limit here, about 100k messages/s: compare
CPU per message between builds, not the rate.
"""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import websockets


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The dialogue on every message: a capture and two rules looked at for each (one matches and
# replies to one message in 1000; the other never matches), on top of resume.
DIALOGUE = (
    'captures.last = { pointer = "/id" }\n'
    'rules = [{ match = { pointer = "/type", equals = "ping" }, reply = \'{"pong":{{capture.last}}}\', drop = true },'
    ' { match = { text = "never" }, drop = true }]\n'
)


async def main(binary, n, mode):
    resume = mode != "plain"
    messages = [
        json.dumps({"id": i, "type": "ping" if i % 1000 == 0 else "tick", "payload": "x" * 40})
        for i in range(1, n + 1)
    ]
    go = asyncio.Event()

    async def upstream(ws):
        await go.wait()
        for m in messages:
            await ws.send(m)
        await asyncio.sleep(3600)

    server = await websockets.serve(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    d = tempfile.mkdtemp(prefix="ws-sidecar-bench-")
    section = DIALOGUE if mode == "dialogue" else ""
    if resume:
        section += '[endpoints.f.resume]\nid_pointer = "/id"\nquery = "since"\n'
    with open(f"{d}/config.toml", "w") as f:
        f.write(
            f'[grpc]\nlisten = ["unix:{d}/grpc.sock"]\n[stream]\npath = ""\n[http]\nlisten = ""\n'
            f'[store]\npath = "{d}/store"\n[endpoints.f]\nurl = "ws://127.0.0.1:{port}/"\n{section}'
        )
    daemon = subprocess.Popen(
        [binary, "run", "--config", f"{d}/config.toml"], stderr=open(f"{d}/daemon.log", "w")
    )
    try:
        while not os.path.exists(f"{d}/grpc.sock"):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        cpu0, t0 = cpu_seconds(daemon.pid), time.time()
        go.set()
        status = [binary, "status", "--json", "--grpc", f"unix:{d}/grpc.sock"]
        # Pings are answered and dropped, not delivered.
        expected = n - (n // 1000 if mode == "dialogue" else 0)
        while json.loads(subprocess.run(status, capture_output=True).stdout)[0]["last_seq"] < expected:
            await asyncio.sleep(0.05)
        elapsed, cpu = time.time() - t0, cpu_seconds(daemon.pid) - cpu0
        print(
            f"{binary} {mode}: {n} messages in {elapsed:.2f} s, "
            f"daemon CPU {cpu / n * 1e6:.2f} us/message"
        )
    finally:
        daemon.terminate()
        daemon.wait()
        server.close()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in ("resume", "plain", "dialogue"):
        sys.exit("usage: durable_ingest.py BINARY N resume|plain|dialogue")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
