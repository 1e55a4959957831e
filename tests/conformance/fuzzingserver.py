"""The Autobahn|Testsuite fuzzingserver for run.py: finding Python 2.7, installing the pinned
suite, and talking to the server (case count and ids, reports)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: The name results are filed under in the reports.
AGENT = "ws-sidecar"


def log(msg: str) -> None:
    print(msg, flush=True)


class SetupError(Exception):
    """Something this runner needs is not there; the message says what."""


def find_python2(given: str | None) -> str | None:
    """The first Python 2.7 that runs: --python2, $AUTOBAHN_PYTHON2, python2.7 on PATH, pyenv's."""
    candidates = [given, os.environ.get("AUTOBAHN_PYTHON2"), shutil.which("python2.7")]
    roots = []
    if shutil.which("pyenv"):
        r = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        roots.append(r.stdout.strip())
    roots.append(os.path.expanduser("~/.pyenv"))
    for root in filter(None, roots):
        candidates += sorted(glob.glob(os.path.join(root, "versions", "2.7*", "bin", "python2.7")))
    for c in filter(None, candidates):
        try:
            # A pyenv shim is on PATH even when 2.7 is not the selected version: it then fails.
            r = subprocess.run(
                [c, "-c", "import sys; print(sys.version_info[:2] == (2, 7))"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if r.returncode == 0 and r.stdout.strip() == "True":
            return c
    return None


def ensure_autobahn(python2: str, env_dir: pathlib.Path) -> None:
    """Installs the pinned fuzzingserver into `env_dir` unless it is already there.

    Python 2.7 has no `venv`, so this is `pip install --target` (put on the path with
    site.addsitedir, which reads the namespace-package .pth files that zope.interface needs).
    Four dependencies come as sources; wsaccel's declares Cython as its build requirement but
    ships its C files, so they are built without build isolation against the pinned setuptools
    and wheel of requirements-build.txt: nothing is installed that is not pinned and hashed.
    """
    reqs = [HERE / "requirements-build.txt", HERE / "requirements.txt"]
    version = subprocess.run(
        [python2, "-c", "import sys; print(sys.version)"], capture_output=True, text=True
    ).stdout
    stamp = hashlib.sha256(
        b"".join(p.read_bytes() for p in reqs) + python2.encode() + version.encode()
    ).hexdigest()
    stamp_file = env_dir / "installed"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    log(f"installing the fuzzingserver into {env_dir} (pinned: {reqs[1].relative_to(REPO)})")
    shutil.rmtree(env_dir, ignore_errors=True)
    pip = [python2, "-s", "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    pip += ["--no-warn-script-location", "--require-hashes"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    build, lib = env_dir / "build", env_dir / "lib"
    for cmd in (
        pip + ["--target", str(build), "-r", str(reqs[0])],
        pip + ["--no-build-isolation", "--target", str(lib), "-r", str(reqs[1])],
    ):
        r = subprocess.run(cmd, env=env | {"PYTHONPATH": str(build)}, check=False)
        if r.returncode != 0:
            raise SetupError(f"pip install failed ({r.returncode}): {' '.join(cmd)}")
    stamp_file.write_text(stamp)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FuzzingServer:
    """The fuzzingserver, on 127.0.0.1 at a free port, writing its reports under `out`."""

    def __init__(
        self,
        python2: str,
        env_dir: pathlib.Path,
        out: pathlib.Path,
        cases: list[str],
        exclude: list[str],
    ):
        self.port = free_port()
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        spec = {
            "url": f"ws://127.0.0.1:{self.port}",
            "outdir": str(out / "reports" / "clients"),
            "cases": cases,
            "exclude-cases": exclude,
            "exclude-agent-cases": {},
            # The server waits 1 s by default for the client's answer to its close, timed in its
            # one Twisted reactor, which also parses the other running case's frames in pure
            # Python. In one CI run 9.3.9 came out UNCLEAN with close code None although the
            # daemon answers closes at once: most likely a 4 MiB case beside it held the reactor
            # past that second. 10 s costs nothing when the client answers; a client that never
            # does is still UNCLEAN.
            "options": {"closeHandshakeTimeout": 10},
        }
        (out / "fuzzingserver.json").write_text(json.dumps(spec, indent=2))
        boot = (
            "import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = 'wstest'; "
            "from autobahntestsuite.wstest import run; run()"
        )
        self.log_path = out / "fuzzingserver.log"
        with open(self.log_path, "wb") as f:
            self.proc = subprocess.Popen(
                [python2, "-s", "-c", boot, str(env_dir / "lib"), "-m", "fuzzingserver"]
                + ["-s", str(out / "fuzzingserver.json")],
                cwd=out,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SetupError(f"fuzzingserver exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SetupError(f"fuzzingserver not listening in 60s:\n{self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ask(self, path: str) -> str | None:
        """Opens a WebSocket to `path`; the first text message, or None if it only closes."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        uri = f"ws://127.0.0.1:{self.port}{path}"
        with connect(uri, open_timeout=30, close_timeout=30, max_size=None) as ws:
            try:
                return ws.recv(timeout=300)
            except ConnectionClosed:
                return None

    def case_count(self) -> int:
        return int(self._ask("/getCaseCount") or "0")

    def case_id(self, n: int) -> str:
        return json.loads(self._ask(f"/getCaseInfo?case={n}") or "{}")["id"]

    def update_reports(self) -> dict:
        self._ask(f"/updateReports?agent={AGENT}")
        index = self.out / "reports" / "clients" / "index.json"
        return json.loads(index.read_text()).get(AGENT, {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
