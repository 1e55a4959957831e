"""The committed stubs are exactly what the pinned grpcio-tools makes of proto/ today."""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gen_stubs  # noqa: E402


def test_committed_stubs_match_the_proto(tmp_path: pathlib.Path) -> None:
    gen_stubs.generate(tmp_path)
    for name in gen_stubs.FILES:
        fresh = (tmp_path / "ws_sidecar" / "v1" / name).read_bytes()
        committed = (gen_stubs.OUT / "ws_sidecar" / "v1" / name).read_bytes()
        assert fresh == committed, (
            f"src/ws_sidecar/v1/{name} is stale: run python clients/python/gen_stubs.py"
        )
