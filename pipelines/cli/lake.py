"""``millrace lake ...``: committed partitions and the quarantine."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer(no_args_is_help=True, help="Look at the lake and its quarantine.")


@app.command("ls")
def ls(source: str = typer.Option(..., "--source", "-s", help="Source name."),
       as_json: bool = common.json_option()):
    """List the committed partitions (the lake table's current snapshot) with their row and quarantine counts."""
    from millrace.pipelines import lake

    project = common.project()
    contract = project.contract(source)
    parts = lake.committed_partitions(project.lake, source, contract.partitioning.key)
    if as_json:
        common.print_json({"source": source, "key": contract.partitioning.key,
                           "partitions": [{"value": p.value, **p.manifest.model_dump(mode="json")} for p in parts],
                           "rows": sum(p.manifest.rows for p in parts),
                           "table_version": parts[0].version if parts else None})
        return
    for p in parts:
        m = p.manifest
        typer.echo(f"{contract.partitioning.key}={p.value}  rows={m.rows:>7,}  quarantined={m.quarantine.rows:>5,}"
                   f"  contract={m.contract.version}  run={m.run_id}")
    version = f" (table version {parts[0].version})" if parts else ""
    typer.echo(f"{len(parts)} committed partitions, {sum(p.manifest.rows for p in parts):,} rows{version}")


@app.command("quarantine")
def quarantine(source: str = typer.Option(..., "--source", "-s", help="Source name."),
               reason: Optional[str] = typer.Option(None, help="Only this reason code."),
               limit: int = typer.Option(20, help="Rows to show."),
               as_json: bool = common.json_option()):
    """Show quarantined rows: partition, file, line, reason, field and the original record."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from millrace.pipelines import lake

    project = common.project()
    contract = project.contract(source)
    table = lake.read_quarantine(project.quarantine, project.lake, source, contract.partitioning.key)
    from millrace.pipelines.stream_files import read_stream_quarantine

    streamed = read_stream_quarantine(project.quarantine, source)  # too late, or no usable event time
    if streamed.num_rows:
        table = pa.concat_tables([table, streamed.cast(table.schema)])
    if reason and table.num_rows:
        table = table.filter(pc.equal(table.column("reason"), reason))
    if as_json:
        rows = [{**r, "payload": (r["payload"] or b"").decode("utf-8", "backslashreplace")}
                for r in table.slice(0, limit).to_pylist()]
        common.print_json({"source": source, "quarantined": table.num_rows, "rows": rows})
        return
    for row in table.slice(0, limit).to_pylist():
        payload = (row["payload"] or b"").decode("utf-8", "backslashreplace")
        typer.echo(f"{row['partition']} {row['file']}:{row['line']} {row['reason']}({row['field']}) {payload}")
    typer.echo(f"{table.num_rows:,} quarantined rows")
