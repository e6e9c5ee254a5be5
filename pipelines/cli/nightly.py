"""``millrace nightly``: the scheduled job."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("nightly", context_settings=common.PASS_THROUGH)
def nightly(ctx: typer.Context,
            expectations: bool = typer.Option(True, help="Run the Great Expectations suites."),
            train: Optional[bool] = typer.Option(None, "--train/--no-train", help="Retrain every model "
                                                 "(default: only when triggered: first run or new data).")):
    """The scheduled job: land the example if needed, ingest and validate, build features, train, index, release."""
    from millrace.pipelines.nightly import nightly as run_nightly

    run_nightly(common.console(), common.project(), list(ctx.args), expectations, bundled=common.is_bundled(),
                train=train)
