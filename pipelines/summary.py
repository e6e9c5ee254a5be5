"""Progress while a run works, and the one-screen summary at its end."""
from __future__ import annotations

from millrace.contracts.project import Project
from millrace.pipelines.errors import LandingInvalid, RunFailed


def run_ingest_with_summary(console, project: Project, source: str, start, end, beam_args, expectations: bool,
                            as_json: bool = False, changed_only: bool = False,
                            partitions: frozenset[str] | None = None, lock_wait: float = 0.0):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from millrace.pipelines.ingest import ingest

    try:
        with Progress(TextColumn(f"[bold]{source}[/] partitions"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("ingest", total=None)
            result = ingest(project, source, start, end, beam_args, expectations,
                            progress=lambda done, total: bar.update(task, completed=done, total=total),
                            changed_only=changed_only, partitions=partitions, lock_wait=lock_wait)
    except LandingInvalid as exc:
        render_landing_problems(console, source, exc.problems)
        raise
    if as_json:
        from millrace.pipelines.cli.common import print_json

        print_json({**result.summary().model_dump(mode="json"), "table_version": result.version})
    else:
        render(console, result)
    if result.rejected:
        names = ", ".join(f"{r.key}={r.partition}" for r in result.rejected)
        raise RunFailed(f"{source}: {len(result.rejected)} partition(s) not committed: {names} "
                        f"(first: {result.rejected[0].problem})")
    return result


def render_landing_problems(console, source: str, problems) -> None:
    console.print(f"[bold]{source}[/]: {len(problems)} landing entr{'y' if len(problems) == 1 else 'ies'} not read; "
                  f"nothing was ingested:")
    from rich.markup import escape

    for p in problems:
        console.print(f"  [red]{escape(p.path)}[/]: {escape(p.problem)} (fix: {escape(p.fix)})", highlight=False)


def render(console, result) -> None:
    from rich.table import Table

    if not result.reports:
        console.print(f"[bold]{result.source}[/]: nothing to ingest ({result.selection}); the lake is up to date.")
        return
    records, good, bad = result.total("records"), result.total("good"), result.total("quarantined")
    table = Table(title=f"{result.source}: run {result.run_id}", caption=f"partitions: {result.selection}",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("records in", f"{records:,}")
    table.add_row("good", f"{good:,}")
    table.add_row("quarantined", f"{bad:,} ({bad / records:.2%})" if records else "0")
    for reason, n in result.by_reason.items():
        table.add_row(f"  {reason}", f"{n:,}")
    table.add_row("duplicate keys resolved", f"{result.total('duplicates_resolved'):,}")
    table.add_row("partitions committed", f"{len(result.committed):,}")
    table.add_row("partitions rejected", f"{len(result.rejected):,}")
    if result.version is not None:
        table.add_row("lake table version", f"{result.version}")
    table.add_row("throughput", f"{records / result.seconds:,.0f} records/s ({result.seconds:.1f} s)")
    console.print(table)
    if result.data_docs:
        console.print(f"data docs: {result.data_docs}", highlight=False)
    for r in result.rejected:
        console.print(f"[red]rejected[/] {r.key}={r.partition}: {r.problem}")
