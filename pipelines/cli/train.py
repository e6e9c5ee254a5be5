"""``millrace train``: train, export, quantize, log and register models."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("train")
def train(model: Optional[list[str]] = typer.Option(None, "--model", "-m",
                                                    help="Model from models.yaml (repeatable; default: all)."),
          force: bool = typer.Option(False, "--force", help="Move champion even when the current one cannot be "
                                     "re-scored on the new holdout (its metric is from another holdout)."),
          as_json: bool = common.json_option()):
    """Train, export to ONNX, quantize to INT8, log to MLflow, register; promote if the gates pass."""
    from millrace.pipelines.train import train_with_summary

    outcomes = train_with_summary(common.console(as_json), common.project(), list(model) if model else None,
                                  force=force)
    if as_json:
        common.print_json(outcomes)
