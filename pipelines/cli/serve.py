"""``millrace serve``: the inference tier on the project's current release. The server runs as its
own program (``python -m millrace.serving``), exec'd here, never imported into the CLI."""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("serve")
def serve(port: Optional[int] = typer.Option(None, help="gRPC port (default serving.port, 8001; 0: any free port)."),
          host: Optional[str] = typer.Option(None, help="Address to listen on (default serving.host, 127.0.0.1)."),
          metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus port (default "
                                                     "serving.metrics_port, 8002; 0: any free port; -1: off)."),
          release: Optional[str] = typer.Option(None, "--release", help="Serve this release and do not follow "
                                                "the pointer (default: the current one, hot-swapped)."),
          variant: Optional[str] = typer.Option(None, help="int8 | fp32 (default: what each bundle serves)."),
          log_level: str = typer.Option("INFO", "--log-level", help="JSON logs on stderr (DEBUG: every call).")):
    """Serve the current release over gRPC (Open Inference Protocol) until SIGTERM or Ctrl-C."""
    if variant not in (None, "int8", "fp32"):
        common.fail(f"--variant {variant!r}: not a variant (fix: use int8 or fp32)")
    project = common.project()
    args = [sys.executable, "-m", "millrace.serving", "--project", str(project.root), "--log-level", log_level]
    for flag, value in (("--host", host), ("--port", port), ("--metrics-port", metrics_port),
                        ("--release", release), ("--variant", variant)):
        args += [flag, str(value)] if value is not None else []
    sys.stdout.flush()
    os.execv(sys.executable, args)
