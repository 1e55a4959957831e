"""Runs the real ws-sidecar binary for a test: its own temp dir, config, Unix sockets and store,
ready when it says READY=1 on a notify socket of the test's (as it would to systemd)."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[3]


def binary() -> pathlib.Path:
    """$WS_SIDECAR_BIN, else target/debug/ws-sidecar of this checkout (or $CARGO_TARGET_DIR)."""
    if os.environ.get("WS_SIDECAR_BIN"):
        p = pathlib.Path(os.environ["WS_SIDECAR_BIN"])
    else:
        target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        p = target / "debug" / "ws-sidecar"
    if not os.access(p, os.X_OK):
        raise RuntimeError(f"{p}: no ws-sidecar binary (cargo build, or set WS_SIDECAR_BIN)")
    return p


class Daemon:
    """One daemon; `start()` it again after `kill()` to restart it on the same store."""

    def __init__(self, dir: pathlib.Path, endpoints: str) -> None:
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.run = dir / "run"
        self.run.mkdir(mode=0o700, exist_ok=True)
        self.grpc = self.run / "grpc.sock"
        #: The address a client uses.
        self.address = f"unix:{self.grpc}"
        self.config = dir / "config.toml"
        self.config.write_text(
            f"""
[log]
level = "info,ws_sidecar=debug"
[grpc]
listen = ["unix:{self.grpc}"]
[stream]
path = "{self.run / "stream.sock"}"
[http]
listen = ""
[store]
path = "{dir / "store"}"
{endpoints}
"""
        )
        self.log = dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Starts it and waits for READY=1."""
        notify_path = self.dir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WS_SIDECAR")}
        env["NOTIFY_SOCKET"] = str(notify_path)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary()), "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log_text()}")
                notify.settimeout(min(left, 0.5))
                try:
                    msg = notify.recv(4096)
                except socket.timeout:
                    if self.proc.poll() is not None:
                        raise AssertionError(
                            f"daemon exited {self.proc.returncode}:\n{self.log_text()}"
                        ) from None
                    continue
                if b"READY=1" in msg.split(b"\n"):
                    return
        finally:
            notify.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends `sig` and waits for the process to end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def log_text(self) -> str:
        """The daemon's output so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""
