"""``millrace stream --source NAME``: consume a source's Redis stream; ``millrace stream produce``: replay
a source's landed records into it, at a rate."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer(no_args_is_help=True, help="Redis Streams sources: consume one (--source), or produce into it.")


@app.callback(invoke_without_command=True)
def consume(ctx: typer.Context,
            source: Optional[str] = typer.Option(None, "--source", "-s", help="Source whose stream is consumed."),
            until_idle: Optional[float] = typer.Option(None, "--until-idle", min=0, help="Stop after this many "
                                                       "seconds without a new entry."),
            max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=0, help="Stop after this long."),
            metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics "
                                                       "on this port."),
            as_json: bool = common.json_option()):
    """Consume <streaming.prefix>:<source> through the consumer group: rows checked under the contract,
    windows with allowed lateness (too-late rows quarantined), streaming feature views updated online
    every micro-batch, the lake committed every streaming.commit_seconds, entries acknowledged after.
    Runs until --until-idle, --max-seconds, SIGTERM or Ctrl-C (each commits and acknowledges first)."""
    if ctx.invoked_subcommand is not None:
        return
    if source is None:
        common.fail("millrace stream: --source NAME is required (or a command: produce)")
    import threading

    from millrace.pipelines.stream import Metrics, StreamJob, install_stop_signals

    console = common.console(as_json)
    project = common.project()
    metrics = None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        metrics = Metrics()
        start_http_server(metrics_port)
    stop = threading.Event()
    install_stop_signals(stop)
    job = StreamJob(project, source, metrics=metrics, say=console.print)
    with console.status(f"consuming {job.key} (group {job.config.group})..."):
        report = job.run(until_idle=until_idle, max_seconds=max_seconds, stop=stop)
    if as_json:
        common.print_json(report.to_dict())
        return
    p50, p99 = report.percentile(50), report.percentile(99)
    seen = "online" if job.views else "landed"  # a source with no streaming views: its rows landed
    fresh = f"; {seen} p50 {p50:.2f} s, p99 {p99:.2f} s after production" if p50 is not None else ""
    console.print(f"{report.stream}: {report.entries:,} entries in {report.seconds:.1f} s "
                  f"({report.reclaimed:,} reclaimed, {report.redelivered:,} already landed); {report.good:,} good, "
                  f"{report.quarantined:,} quarantined, {report.too_late:,} too late; {report.lake_commits} lake "
                  f"commit(s) of {len(report.partitions)} partition(s), {report.acknowledged:,} acknowledged"
                  f"{fresh}; stopped: {report.stopped}")


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
