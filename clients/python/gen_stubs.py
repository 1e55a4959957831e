"""Regenerates the gRPC stubs under src/ws_sidecar/v1 from the repository's proto/.

The stubs are committed so that installing the package needs no protobuf compiler; the test
tests/test_stubs.py regenerates them with the pinned grpcio-tools and fails when they differ.
Run after changing proto/ws_sidecar/v1/sidecar.proto:

    python clients/python/gen_stubs.py
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "ws_sidecar/v1/sidecar.proto"
OUT = HERE / "src"
FILES = ("sidecar_pb2.py", "sidecar_pb2.pyi", "sidecar_pb2_grpc.py")


def generate(out: pathlib.Path) -> None:
    """Writes ws_sidecar/v1/sidecar_pb2{.py,.pyi,_grpc.py} under `out`."""
    from grpc_tools import protoc  # only needed here, not at run time

    (out / "ws_sidecar" / "v1").mkdir(parents=True, exist_ok=True)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")


if __name__ == "__main__":
    generate(OUT)
    print("wrote " + ", ".join(str(OUT / "ws_sidecar" / "v1" / f) for f in FILES), file=sys.stderr)
