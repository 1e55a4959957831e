"""The Python examples of README.md's "### Python" section work as written against a real
daemon: the package's and the raw grpcio recipe (with its stub generation command)."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from daemon import REPO

SECTION = re.compile(r"^### Python\n(.*?)^### ", re.S | re.M)


def blocks(lang: str) -> list[str]:
    section = SECTION.search((REPO / "README.md").read_text()).group(1)
    return re.findall(rf"^```{lang}\n(.*?)^```", section, re.S | re.M)


def run_until(args: list[str], cwd: pathlib.Path, env: dict[str, str], want: int) -> list[str]:
    """Runs an endless example until it printed `want` lines, then stops it."""
    p = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    try:
        for line in p.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if len(lines) == want:
                break
    finally:
        p.kill()
        _, err = p.communicate(timeout=10)
    assert len(lines) == want, f"example printed {lines}; stderr:\n{err}"
    return lines


@pytest.mark.parametrize("which", ["package", "raw"])
def test_the_readme_python_examples_publish_and_subscribe(upstream, make_daemon, tmp_path, which):
    d = make_daemon(
        f"""
[endpoints.prices]
url = "{upstream.url}"
"""
    )
    upstream.wait_connected()
    upstream.send('{"price":1}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_SIDECAR")}
    env["WS_SIDECAR_GRPC"] = d.address
    py = blocks("python")
    code = py[0] if which == "package" else py[1]
    if which == "raw":
        for cmd in blocks("sh")[1].replace("\\\n", " ").splitlines():
            cmd = cmd.split("#")[0].strip()
            if cmd.startswith("python -m grpc_tools.protoc"):
                cmd = cmd.replace("-I proto", f"-I {REPO}/proto").replace(
                    " proto/", f" {REPO}/proto/"
                )
                args = [sys.executable] + shlex.split(cmd)[1:]
                subprocess.run(args, cwd=tmp_path, check=True, timeout=60)
        assert (tmp_path / "ws_sidecar/v1/sidecar_pb2_grpc.py").exists()
        # The generated stubs are byte for byte the package's (test_stubs), and with the package
        # installed its regular package wins over the generated namespace directory.
        code = code.replace("unix:/run/ws-sidecar/grpc.sock", d.address)
    script = tmp_path / "example.py"
    script.write_text(code)
    lines = run_until(
        [sys.executable, str(script)], tmp_path, env, want=2 if which == "package" else 1
    )
    if which == "package":
        assert lines[0].isdigit()  # the outbox id
        assert lines[1] == '1 {"price":1}'
    else:
        assert lines[0] == "1 b'{\"price\":1}'"
    assert upstream.wait_received(1) == ['{"op":"ping"}']
