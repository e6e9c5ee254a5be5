"""``millrace stream produce``: a source's landed records into its Redis stream, at a rate."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer(no_args_is_help=True, help="Redis Streams sources.")


@app.command("produce")
def produce(source: str = typer.Option(..., "--source", "-s", help="Source whose landed records are replayed."),
            rate: float = typer.Option(1000.0, "--rate", help="Entries per second."),
            late_share: float = typer.Option(0.0, "--late-share", help="Share of records held back and sent after "
                                             "all the others (far later than any allowed lateness)."),
            bad_share: float = typer.Option(0.0, "--bad-share", help="Share of entries cut short (not JSON)."),
            limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Send at most this many records."),
            seed: int = typer.Option(7, "--seed", help="Seed of the late and bad draws."),
            as_json: bool = common.json_option()):
    """Replay the source's landed records (e.g. the example's, after `millrace example land`) into
    the stream <streaming.prefix>:<source>: one record per entry, JSON, with its production time."""
    from millrace.pipelines.stream_produce import produce as send

    console = common.console(as_json)
    project = common.project()
    with console.status(f"producing into {project.stream_key(source)}...") as status:
        report = send(project, source, rate, late_share, bad_share, limit, seed,
                      progress=lambda sent: status.update(f"producing into {project.stream_key(source)}: "
                                                          f"{sent:,} sent"))
    if as_json:
        common.print_json({**report.__dict__, "rate": report.rate})
        return
    console.print(f"{report.stream}: {report.entries:,} entries in {report.seconds:.1f} s ({report.rate:,.0f}/s); "
                  f"{report.late:,} held back and sent last (late), {report.bad:,} cut short (bad)")
