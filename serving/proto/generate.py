"""Regenerate ``inference_pb2.py`` from ``inference.proto``: ``python -m millrace.serving.proto.generate``.

Needs grpcio-tools (the dev extra). The proto is compiled from a temporary tree laid out as the
import path (``millrace/serving/proto/``), so the generated module names itself by its real path.
``--check`` compares instead of writing and exits 1 when the committed file is stale.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "inference.proto"
GENERATED = "inference_pb2.py"


def generate() -> bytes:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp, "millrace", "serving", "proto")
        tree.mkdir(parents=True)
        shutil.copy(HERE / PROTO, tree / PROTO)
        include = Path(protoc.__file__).parent / "_proto"
        code = protoc.main(["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={tmp}",
                            f"millrace/serving/proto/{PROTO}"])
        if code != 0:
            raise SystemExit(f"protoc failed on {HERE / PROTO} (exit {code})")
        return (tree / GENERATED).read_bytes()


def main(argv: list[str]) -> int:
    fresh = generate()
    target = HERE / GENERATED
    if "--check" in argv:
        current = target.read_bytes() if target.exists() else b""
        if current != fresh:
            print(f"{target} is stale: run `python -m millrace.serving.proto.generate`", file=sys.stderr)
            return 1
        return 0
    target.write_bytes(fresh)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
