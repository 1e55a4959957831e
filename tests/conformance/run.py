#!/usr/bin/env python3
"""RFC 6455 conformance of ws-sidecar's upstream client, by the Autobahn|Testsuite fuzzingserver.

The fuzzingserver plays a WebSocket server that runs one test case per connection. For each case
this runner starts one real daemon (the debug binary, its own temp dir, config, sockets and
store) whose only endpoint is `ws://127.0.0.1:PORT/runCase?case=N&agent=ws-sidecar`, and an app
that echoes every message back through the daemon: it subscribes over gRPC and publishes each
message back over gRPC as it came (text stays text, binary stays binary, and the 16 MiB messages
of the 9.* cases fit). Then it asks the server to write its reports and checks them against
`expected.txt`. fuzzingserver.py installs, starts and questions the server.

A case must run once: the endpoint's backoff is one hour and its `reset_after` a year, so the
daemon cannot connect again within the case (there is no "never reconnect" setting, and the
runner needs none: it stops the daemon, with SIGTERM, as soon as the endpoint leaves
`connected`, i.e. its StateChange to backoff or failed reaches the echo app; the close frame
has been answered by then).

Cases 12.* and 13.* (permessage-deflate) are excluded: the client offers no extension.

Exit status: 0 when every case ran and every result is OK or listed in `expected.txt`; 1 on any
FAILED case, any other result not listed there, a case without a result, a daemon that did not
stop cleanly or panicked; 2 on a usage or setup error. Without Python 2.7 it says why and exits
0, or 1 when CI=true (CI never goes green without running it).

Needs Python 3.11 with the `ws_sidecar` client (clients/python) and `websockets` (its test
extras), and Python 2.7 for the fuzzingserver, installed by this script from the pinned, hashed
requirements next to it into `${CARGO_TARGET_DIR:-target}/autobahn-venv`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

# No __pycache__ beside the sources for the import below: nothing to ignore in git.
sys.dont_write_bytecode = True
from fuzzingserver import (  # noqa: E402
    AGENT,
    FuzzingServer,
    SetupError,
    ensure_autobahn,
    find_python2,
    log,
)

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENDPOINT = "ab"
#: Compression (permessage-deflate): the client offers no extension.
EXCLUDED = ["12.*", "13.*"]
#: Top-level case groups of the suite (there is no 8 nor 11), as the reports name them.
GROUPS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "9": "Limits/Performance",
    "10": "Auto-Fragmentation",
}
COLUMNS = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED"]
#: Cases in the suite without 12.* and 13.* (autobahntestsuite 25.10.1, the same as 0.8.2).
FULL_SUITE = 301


def target_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target").resolve()


# ---------------------------------------------------------------------------------------------
# One case: one daemon and its echo app


@dataclass
class CaseRun:
    """How running one case went on the runner's side (the verdict is the server's)."""

    n: int
    case: str
    seconds: float = 0.0
    echoed: int = 0
    #: What went wrong on this side: the daemon did not start, did not stop cleanly, panicked.
    problems: list[str] = field(default_factory=list)


def daemon_config(dir: pathlib.Path, url: str) -> str:
    # proxy = "": a proxy in the environment must not stand between the daemon and 127.0.0.1.
    return f"""
[log]
level = "info"
[grpc]
listen = ["unix:{dir}/grpc.sock"]
[stream]
path = "{dir}/stream.sock"
[http]
listen = ""
[store]
path = "{dir}/store"

[endpoints.{ENDPOINT}]
url = "{url}"
proxy = ""

# One connection per case: the next attempt would run the case again.
[endpoints.{ENDPOINT}.backoff]
initial = "1h"
max = "1h"
min_delay = "1h"
reset_after = "365d"
"""


def start_daemon(binary: pathlib.Path, dir: pathlib.Path, url: str, log_path: pathlib.Path):
    """Starts the daemon and waits for READY=1 on a notify socket of ours, as systemd would."""
    config = dir / "config.toml"
    config.write_text(daemon_config(dir, url))
    notify_path = dir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_SIDECAR")}
    env.pop("RUST_LOG", None)
    env["NOTIFY_SOCKET"] = str(notify_path)
    with open(log_path, "wb") as f:
        proc = subprocess.Popen(
            [str(binary), "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 30
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise RuntimeError("daemon not ready in 30s")
            notify.settimeout(min(left, 0.5))
            try:
                msg = notify.recv(4096)
            except socket.timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited {proc.returncode} before READY=1") from None
                continue
            if b"READY=1" in msg.split(b"\n"):
                return proc
    finally:
        notify.close()


def echo_until_closed(address: str, run: CaseRun) -> None:
    """Echoes every message back until the endpoint leaves `connected` (or never reaches it)."""
    import ws_sidecar

    with ws_sidecar.connect(address) as sc:
        # from_seq=0: what arrived before this subscription (the server starts the case as soon
        # as the handshake is done) is replayed first; the stream starts with the current state.
        sub = sc.subscribe(ENDPOINT, from_seq=0, states=True, reconnect=False)
        with sub:
            for item in sub:
                if isinstance(item, ws_sidecar.Message):
                    sc.publish(ENDPOINT, item.data, binary=item.binary)
                    run.echoed += 1
                elif isinstance(item, ws_sidecar.Gap):
                    run.problems.append(f"gap in the echo app's stream: {item}")
                elif isinstance(item, ws_sidecar.StateChange):
                    # With a one-hour backoff, any state but these means the case is over.
                    if item.state not in (ws_sidecar.State.CONNECTING, ws_sidecar.State.CONNECTED):
                        return


def run_case(
    binary: pathlib.Path, port: int, n: int, case: str, logs: pathlib.Path, limit: float
) -> CaseRun:
    run = CaseRun(n, case)
    started = time.monotonic()
    url = f"ws://127.0.0.1:{port}/runCase?case={n}&agent={AGENT}"
    log_path = logs / f"{case}.log"
    with tempfile.TemporaryDirectory(prefix="ws-sidecar-ab-") as tmp:
        dir = pathlib.Path(tmp)
        try:
            proc = start_daemon(binary, dir, url, log_path)
        except RuntimeError as e:
            run.problems.append(str(e))
            return run
        # Bounds the case: a stuck one is killed, which also ends the echo app's stream.
        timer = threading.Timer(limit, lambda: proc.poll() is None and proc.kill())
        timer.start()
        try:
            echo_until_closed(f"unix:{dir}/grpc.sock", run)
        except Exception as e:  # noqa: BLE001 -- any failure of the echo app is reported
            run.problems.append(f"echo app: {type(e).__name__}: {e}")
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
                run.problems.append("daemon did not stop within 15s of SIGTERM")
        run.seconds = time.monotonic() - started
        if run.seconds >= limit:
            run.problems.append(f"case not over within {limit:.0f}s: daemon killed")
        elif code != 0:
            run.problems.append(f"daemon exited {code} after SIGTERM")
    text = log_path.read_text(errors="replace")
    if "panicked" in text:
        run.problems.append("daemon panicked (see its log)")
    return run


# ---------------------------------------------------------------------------------------------
# Verdict


def load_expected(path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """`case behavior reason` lines: the results other than OK that are accepted, and why."""
    expected: dict[str, tuple[str, str]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise SetupError(f"{path.name}:{i}: want `case behavior reason`, got {line!r}")
        case, behavior, reason = parts
        if case in expected:
            raise SetupError(f"{path.name}:{i}: case {case} listed twice")
        expected[case] = (behavior, reason)
    return expected


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case.split("."))


def verdict(
    ids: list[str],
    results: dict,
    runs: dict[str, CaseRun],
    expected: dict[str, tuple[str, str]],
    full: bool,
    out: pathlib.Path,
) -> list[str]:
    """Prints the per-group table; returns every reason to fail. `full`: the whole suite ran."""
    failures: list[str] = []
    table: dict[str, dict[str, int]] = {}
    for case in sorted(ids, key=case_key):
        group = case.split(".")[0]
        row = table.setdefault(group, dict.fromkeys(COLUMNS + ["other"], 0))
        run = runs.get(case)
        if run is not None:
            failures += [f"{case}: {p}" for p in run.problems]
        r = results.get(case)
        if r is None:
            row["other"] += 1
            failures.append(f"{case}: no result (the case did not run to the end)")
            continue
        behavior, close = r.get("behavior"), r.get("behaviorClose")
        row[behavior if behavior in COLUMNS else "other"] += 1
        want = expected.get(case, ("OK", ""))[0]
        # The closing handshake has its own verdict: OK, or as open as the case itself.
        close_ok = close == "OK" or close == behavior == want
        if behavior != want or not close_ok:
            if behavior == "OK" and close_ok:
                log(f"note: {case} is now OK; remove it from expected.txt")
            else:
                echoed = f"; the app echoed {run.echoed}" if run is not None else ""
                failures.append(
                    f"{case}: {behavior}, closing {close} (expected {want}): "
                    f"{describe(out, r)}{echoed}"
                )
    if full:
        for case in sorted(set(expected) - set(ids), key=case_key):
            failures.append(f"{case}: listed in expected.txt but not in the suite")
        if len(ids) != FULL_SUITE:
            failures.append(
                f"the suite has {len(ids)} cases, not {FULL_SUITE}: a case went missing"
            )
    print_table(table)
    return failures


def describe(out: pathlib.Path, r: dict) -> str:
    """The server's own words on a case, from its report."""
    try:
        report = json.loads((out / r["reportfile"]).read_text())
        said = f"{report.get('result')} / {report.get('resultClose')}"
        if report.get("wasNotCleanReason"):
            said += f" ({report['wasNotCleanReason']})"
    except (OSError, KeyError, ValueError) as e:
        said = f"(no report: {e})"
    return f"{said} (close code {r.get('remoteCloseCode')}, {r.get('reportfile')})"


def print_table(table: dict[str, dict[str, int]]) -> None:
    cols = COLUMNS + ["other"]
    head = f"{'group':<26}" + "".join(f"{c:>15}" for c in cols)
    log(head)
    totals = dict.fromkeys(cols, 0)
    for group in sorted(table, key=int):
        row = table[group]
        name = f"{group} {GROUPS.get(group, '')}"
        log(f"{name:<26}" + "".join(f"{row[c]:>15}" for c in cols))
        for c in cols:
            totals[c] += row[c]
    log(f"{'total':<26}" + "".join(f"{totals[c]:>15}" for c in cols))


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bin",
        type=pathlib.Path,
        default=target_dir() / "debug" / "ws-sidecar",
        help="the daemon binary (default: $CARGO_TARGET_DIR or target, /debug/ws-sidecar)",
    )
    ap.add_argument(
        "--cases",
        action="append",
        metavar="PATTERN",
        help='cases to run, e.g. "6.4.*" (default: all; a subset does not fail on missing cases)',
    )
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PATTERN",
        help='more cases to exclude, e.g. "9.*" (the compression cases 12.* and 13.* always are)',
    )
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument(
        "--case-timeout", type=float, default=120, help="seconds one case may take (default 120)"
    )
    ap.add_argument("--python2", help="the Python 2.7 to run the fuzzingserver with")
    ap.add_argument(
        "--out",
        type=pathlib.Path,
        default=target_dir() / "autobahn",
        help="reports and daemon logs (default: $CARGO_TARGET_DIR or target, /autobahn)",
    )
    ap.add_argument(
        "--expected", type=pathlib.Path, default=HERE / "expected.txt", help=argparse.SUPPRESS
    )
    args = ap.parse_args()

    try:
        import websockets  # noqa: F401
        import ws_sidecar  # noqa: F401
    except ImportError as e:
        log(f"rfc 6455 conformance: {e}: run this with the Python of the client's test venv")
        log("(python3 -m venv target/py-venv && pip install './clients/python[test]' into it)")
        return 2
    if not os.access(args.bin, os.X_OK):
        log(f"rfc 6455 conformance: {args.bin}: no daemon binary (cargo build, or --bin)")
        return 2
    python2 = find_python2(args.python2)
    if python2 is None:
        ci = os.environ.get("CI") == "true"
        log(
            f"rfc 6455 conformance: {'FAILED' if ci else 'skipped'}: no Python 2.7 here, and the "
            "Autobahn|Testsuite fuzzingserver needs it (pyenv install 2.7.18, or --python2 or "
            "$AUTOBAHN_PYTHON2 naming one)"
            + ("; CI must not pass without this suite" if ci else "")
        )
        return 1 if ci else 0

    try:
        expected = load_expected(args.expected)
        env_dir = target_dir() / "autobahn-venv"
        ensure_autobahn(python2, env_dir)
    except SetupError as e:
        log(f"rfc 6455 conformance: {e}")
        return 2
    shutil.rmtree(args.out, ignore_errors=True)
    logs = args.out / "daemon-logs"
    logs.mkdir(parents=True)
    try:
        server = FuzzingServer(
            python2, env_dir, args.out, args.cases or ["*"], EXCLUDED + args.skip
        )
    except SetupError as e:
        log(f"rfc 6455 conformance: {e}")
        return 2
    started = time.monotonic()
    try:
        count = server.case_count()
        ids = [server.case_id(n) for n in range(1, count + 1)]
        log(
            f"{count} cases ({', '.join(EXCLUDED + args.skip)} excluded), {args.jobs} at a time, "
            f"daemon {args.bin}"
        )
        runs: dict[str, CaseRun] = {}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(run_case, args.bin, server.port, n, case, logs, args.case_timeout)
                for n, case in enumerate(ids, 1)
            ]
            for fut in concurrent.futures.as_completed(futures):
                run = fut.result()
                runs[run.case] = run
        results = server.update_reports()
    except Exception as e:  # noqa: BLE001 -- the server's side of a failure is in its log
        tail = "\n".join(server.log().splitlines()[-20:])
        log(f"rfc 6455 conformance: {type(e).__name__}: {e}\nfuzzingserver log:\n{tail}")
        return 2
    finally:
        server.stop()

    slowest = sorted(runs.values(), key=lambda r: -r.seconds)[:3]
    log(f"\nAutobahn|Testsuite against ws-sidecar ({count} cases):")
    failures = verdict(
        ids,
        results,
        runs,
        expected,
        full=not args.cases and not args.skip,
        out=args.out / "reports" / "clients",
    )
    log(
        f"{time.monotonic() - started:.0f}s for the cases; slowest: "
        + ", ".join(f"{r.case} {r.seconds:.1f}s" for r in slowest)
    )
    log(f"reports: {args.out / 'reports' / 'clients' / 'index.html'}; daemon logs: {logs}")
    if failures:
        log(f"\nrfc 6455 conformance: {len(failures)} problem(s):")
        for f in failures:
            log(f"  {f}")
        return 1
    log("rfc 6455 conformance ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
