"""``python -m millrace.serving [--project DIR] [--host H] [--port 8001] [--release ID] [--variant fp32]``:
serve a project's current release (or a pinned ``--release``) until SIGTERM or SIGINT.

Settings come from millrace.yaml's ``serving:`` block (docs/serving.md); the flags override it.
Without ``--release`` the server follows the release pointer and hot-swaps new releases. SIGTERM:
health turns NOT_SERVING (calls still answered for serving.drain_notice_seconds), then new calls are
refused and calls in flight finish (up to 10 s), exit 0.

Reads the project file through ``contracts`` only; never imports pipelines, training's trainer,
Beam, torch, MLflow or Feast (import-linter and tests/serving check it)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

DRAIN_SECONDS = 10


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="millrace serve", description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=os.environ.get("MILLRACE_PROJECT"), help="Project folder (millrace.yaml).")
    parser.add_argument("--host", help="Address to listen on (default serving.host, 127.0.0.1; 0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, help="gRPC port (default serving.port, 8001; 0: any free port, printed).")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (default serving.metrics_port, 8002; "
                        "0: any free port; -1: off).")
    parser.add_argument("--release", help="Serve this release id and do not follow the pointer (default: the "
                        "current one, hot-swapping new ones).")
    parser.add_argument("--variant", choices=("int8", "fp32"), help="Serve this variant of every model "
                        "(default: what each bundle serves, INT8 when quantized).")
    parser.add_argument("--log-level", default=os.environ.get("MILLRACE_LOG_LEVEL", "INFO"),
                        help="JSON logs on stderr at this level (DEBUG: one line per call).")
    args = parser.parse_args(argv)

    from millrace.contracts.errors import MillraceError, exit_code
    from millrace.contracts.project import load_project
    from millrace.serving import logs

    log = logs.configure(args.log_level.upper())
    try:
        if not args.project:
            raise SystemExit("error: no project (fix: pass --project DIR or set MILLRACE_PROJECT)")
        project = load_project(args.project)
        running = _start(project, args, log)
    except MillraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    server, port, health, live, watcher, metrics, metrics_port = running
    release = live.current.release.id
    print(f"serving release {release} ({', '.join(sorted(live.current.models))}) on {running_host(args, project)}:"
          f"{port}, ready in {time.perf_counter() - started:.2f} s"
          + (f"; metrics on :{metrics_port}/metrics" if metrics_port else ""), flush=True)
    log.info("ready", extra={"fields": {"release": release, "port": port, "metrics_port": metrics_port}})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    _drain(server, health, live, watcher, metrics, log, project.config.serving.drain_notice_seconds)
    return 0


def running_host(args, project) -> str:
    return args.host or project.config.serving.host


def _start(project, args, log):
    from millrace.indexing.release import release_root
    from millrace.serving import repository
    from millrace.serving.metrics import Metrics
    from millrace.serving.reload import Watcher
    from millrace.serving.server import Live, build_server

    config = project.config.serving
    metrics = Metrics()
    root = release_root(project.state_dir)

    def load(release_id=None):
        return repository.load(root, release_id, args.variant, config.onnx_threads, project=project, config=config,
                               metrics=metrics)

    interceptors, credentials = _security(project, config, metrics)  # before the release: fail fast
    live = Live(load(args.release))
    live.current.warm(config.warmup_requests)
    metrics.release(live.current.release.id)
    port = config.port if args.port is None else args.port
    server, port, health = build_server(live, _version(), running_host(args, project), port, config.workers,
                                        config.max_message_bytes, metrics=metrics, interceptors=interceptors,
                                        credentials=credentials)
    metrics_port = config.metrics_port if args.metrics_port is None else args.metrics_port
    metrics_port = None if metrics_port is None or metrics_port < 0 else \
        metrics.serve(running_host(args, project), metrics_port)
    server.start()
    watcher = None
    if args.release is None:
        watcher = Watcher(root, live, load, seconds=config.reload_seconds, warmup=config.warmup_requests,
                          metrics=metrics)
        watcher.start()
    return server, port, health, live, watcher, metrics, metrics_port


def _security(project, config, metrics):
    from millrace.serving.security import BearerAuth, load_tokens, server_credentials

    def path(p):
        return None if p is None else p if os.path.isabs(p) else str(project.root / p)

    interceptors, credentials = [], None
    if config.auth is not None:
        tokens = load_tokens(path(config.auth.tokens_file), config.auth.tokens_env)
        interceptors.append(BearerAuth(tokens, on_denied=metrics.denied))
    if config.tls is not None:
        credentials = server_credentials(path(config.tls.cert), path(config.tls.key), path(config.tls.client_ca))
    return interceptors, credentials


def _drain(server, health, live, watcher, metrics, log, notice: float) -> None:
    """Health NOT_SERVING first, still answering for ``notice`` seconds (load balancers probing
    health stop sending), then refuse new calls and let the calls in flight finish."""
    health.enter_graceful_shutdown()
    live.draining = True
    time.sleep(notice)
    if watcher is not None:
        watcher.stop()
    in_flight = live.in_flight()
    log.info("draining", extra={"fields": {"in_flight": in_flight}})
    server.stop(grace=DRAIN_SECONDS).wait()
    if live.current is not None:
        live.current.close()
    metrics.stop()
    log.info("stopped", extra={"fields": {"answered_while_draining": in_flight}})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("millrace")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    from millrace.contracts.shutdown import run_to_exit

    run_to_exit(main)
