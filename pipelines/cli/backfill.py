"""``millrace backfill``: rebuild a range of partitions, resumably."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("backfill", context_settings=common.PASS_THROUGH)
def backfill(ctx: typer.Context,
             start: str = typer.Option(..., "--from", metavar="YYYY-MM-DD", help="First landing date of the range."),
             end: str = typer.Option(..., "--to", metavar="YYYY-MM-DD", help="Last landing date of the range."),
             stages: Optional[str] = typer.Option(None, "--stages", metavar="A,B", help="Some of ingest, features, "
                                                  "materialize, train (default: the first three)."),
             chunk: int = typer.Option(12, "--chunk", min=1, help="Partitions per ingest run: the unit a killed "
                                       "backfill resumes after."),
             workers: int = typer.Option(1, "--workers", min=1, help="Sources rebuilt at the same time (one "
                                         "source's partitions always go one chunk after another)."),
             promote: bool = typer.Option(False, "--promote", help="Train, move champion to each version that "
                                          "passes its gates, then index and release (without it, champion never "
                                          "moves)."),
             expectations: bool = typer.Option(True, help="Run the Great Expectations suites."),
             show_plan: bool = typer.Option(False, "--plan", help="Only list the partitions the range holds "
                                            "(source, partition, landing dates) and stop."),
             as_json: bool = common.json_option()):
    """Re-ingest every partition with a landing date in --from..--to, chunk by chunk (a killed backfill
    rerun with the same range resumes after its last committed chunk), then rebuild and materialize
    the features. Champion stays where it is unless --promote."""
    from millrace.pipelines.backfill import DEFAULT_STAGES, plan
    from millrace.pipelines.backfill import backfill as run_backfill

    first, last = common.date_range(None, start, end)
    if show_plan:
        planned = plan(common.project(), first, last)
        if as_json:
            common.print_json(planned)
            return
        for p in planned:
            typer.echo(f"{p.source}\t{p.partition}\t{p.first_landing}..{p.last_landing}")
        return
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else DEFAULT_STAGES
    record = run_backfill(common.console(as_json), common.project(), first, last, chosen, chunk, workers,
                          list(ctx.args), expectations, promote)
    if as_json:
        common.print_json(record)
