"""``python -m millrace.serving [--project DIR] [--host H] [--port 8001] [--release ID] [--variant fp32]``:
serve a project's current release (or ``--release``) until SIGTERM or SIGINT.

Reads the project file through ``contracts`` only; never imports pipelines, training's trainer,
Beam, torch, MLflow or Feast (import-linter and tests/serving check it)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="millrace serve", description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=os.environ.get("MILLRACE_PROJECT"), help="Project folder (millrace.yaml).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (0: any free port, printed).")
    parser.add_argument("--release", help="Release id (default: the current one).")
    parser.add_argument("--variant", choices=("int8", "fp32"), help="Serve this variant of every model "
                        "(default: what each bundle serves, INT8 when quantized).")
    args = parser.parse_args(argv)

    from millrace.contracts.errors import MillraceError, exit_code
    from millrace.contracts.project import load_project

    try:
        if not args.project:
            raise SystemExit("error: no project (fix: pass --project DIR or set MILLRACE_PROJECT)")
        from millrace.indexing.release import release_root
        from millrace.serving import repository
        from millrace.serving.server import build_server

        project = load_project(args.project)
        loaded = repository.load(release_root(project.state_dir), args.release, args.variant)
        server, port, _health = build_server(loaded, _version(), args.host, args.port)
    except MillraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    server.start()
    print(f"serving release {loaded.release.id} ({', '.join(sorted(loaded.models))}) on {args.host}:{port}, "
          f"ready in {time.perf_counter() - started:.2f} s", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=10).wait()
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("millrace")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
