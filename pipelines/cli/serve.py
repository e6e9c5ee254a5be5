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
def serve(port: int = typer.Option(8001, help="gRPC port (0: any free port, printed)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
          release: Optional[str] = typer.Option(None, "--release", help="Release id (default: the current one)."),
          variant: Optional[str] = typer.Option(None, help="int8 | fp32 (default: what each bundle serves).")):
    """Serve the current release over gRPC (Open Inference Protocol) until SIGTERM or Ctrl-C."""
    if variant not in (None, "int8", "fp32"):
        common.fail(f"--variant {variant!r}: not a variant (fix: use int8 or fp32)")
    project = common.project()
    args = [sys.executable, "-m", "millrace.serving", "--project", str(project.root), "--host", host,
            "--port", str(port)]
    args += ["--release", release] if release else []
    args += ["--variant", variant] if variant else []
    sys.stdout.flush()
    os.execv(sys.executable, args)
