"""``millrace contracts ...``: check and compare data contracts."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Check and compare data contracts.")


@app.command("lint")
def lint(paths: list[Path] = typer.Argument(..., help="Contract files to check."),
         as_json: bool = typer.Option(False, "--json", help="Print one JSON result per file on stdout.")):
    """Check ODCS contract files: schema, types, keys, rules, partitioning. Exit 2 when any is wrong
    (one line per wrong file on stderr: file, field, problem, fix). A deprecated spelling gets one
    `warning` line per field on stderr, with its fix, and exit 0."""
    from millrace.contracts.errors import EXIT_BAD_INPUT, ContractError
    from millrace.contracts.loader import load_contract

    failed, results = 0, []
    for path in paths:
        try:
            c = load_contract(path)
            results.append({"path": str(path), "ok": True, "id": c.id, "version": c.version,
                            "fields": len(c.fields), "key": list(c.key_fields)})
            results[-1]["warnings"] = [str(w) for w in c.warnings]
            if not as_json:
                typer.echo(f"ok    {path}: {c.id} {c.version}, {len(c.fields)} fields, key {list(c.key_fields)}")
            for warning in c.warnings:  # a deprecated spelling: still read, exit 0
                typer.echo(f"warning {warning}", err=True)
        except ContractError as exc:
            failed += 1
            results.append({"path": str(path), "ok": False, "error": str(exc)})
            typer.echo(f"error {exc}", err=True)
    if as_json:
        import json

        typer.echo(json.dumps(results))
    raise typer.Exit(EXIT_BAD_INPUT if failed else 0)


@app.command("diff")
def diff(old: Path = typer.Argument(..., help="The contract as it was."),
         new: Path = typer.Argument(..., help="The contract as proposed."),
         as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (a DiffRecord, format_version 1).")):
    """Classify each change as breaking or compatible; exit 1 on a breaking change without a major bump."""
    from millrace.contracts.diff import diff_contracts
    from millrace.contracts.loader import load_contract

    report = diff_contracts(load_contract(old), load_contract(new))
    if as_json:
        typer.echo(report.record().to_json())
        raise typer.Exit(1 if report.fails else 0)
    for change in report.changes:
        typer.echo(f"{'BREAKING ' if change.breaking else 'compatible'} {change.where}: {change.what}")
    if not report.changes:
        typer.echo("no changes")
    typer.echo(report.verdict)
    raise typer.Exit(1 if report.fails else 0)
