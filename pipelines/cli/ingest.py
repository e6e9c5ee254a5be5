"""``millrace ingest``: landing files into the lake."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("ingest", context_settings=common.PASS_THROUGH)
def ingest(
    ctx: typer.Context,
    source: str = typer.Option(..., "--source", "-s", help="Source name from millrace.yaml."),
    date: Optional[str] = typer.Option(None, "--date", help="Rebuild the partition(s) holding this landing date."),
    start: Optional[str] = typer.Option(None, "--from", help="First landing date of a range (backfill)."),
    end: Optional[str] = typer.Option(None, "--to", help="Last landing date of a range (backfill)."),
    partition: Optional[list[str]] = typer.Option(None, "--partition", metavar="VALUE", help="Only this partition "
                                                  "(repeatable; with a range: those of the range)."),
    lock_wait: float = typer.Option(0.0, "--lock-wait", metavar="SECONDS", min=0, help="Wait this long for another "
                                    "writer of the source to finish (default: fail at once, exit 75)."),
    expectations: bool = typer.Option(True, help="Run the Great Expectations suite before each commit."),
    as_json: bool = common.json_option(),
):
    """Ingest landing files into the lake. Without a range: every partition with new or changed files.

    Unknown options go to Beam, e.g. --runner=DirectRunner --direct_running_mode=multi_processing
    --direct_num_workers=2.

    Exit 1: some partitions were rejected; 2: bad input (a landing entry that cannot be read, a corrupt
    lake file); 75: another run is writing this source (the message names it), retry later.
    """
    from millrace.pipelines.summary import run_ingest_with_summary

    project = common.project()
    lo, hi = common.date_range(date, start, end)
    run_ingest_with_summary(common.console(as_json), project, source, lo, hi, list(ctx.args), expectations, as_json,
                            partitions=frozenset(partition) if partition else None, lock_wait=lock_wait)
