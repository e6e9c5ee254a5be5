"""``millrace features ...``: feature views, Feast, materialization, training sets, online reads."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer(no_args_is_help=True, help="Feature views: build, Feast, materialize, training sets.")


@app.command("build", context_settings=common.PASS_THROUGH)
def build(ctx: typer.Context,
          date: Optional[str] = typer.Option(None, "--date", help="Rebuild the snapshots of this day."),
          start: Optional[str] = typer.Option(None, "--from", help="First day to rebuild."),
          end: Optional[str] = typer.Option(None, "--to", help="Last day to rebuild."),
          view: Optional[list[str]] = typer.Option(None, "--view", help="Only these views (repeatable)."),
          as_json: bool = common.json_option()):
    """Compute feature views from the committed lake into the offline store (Beam), then apply Feast."""
    from millrace.features.feast_repo import apply
    from millrace.features.spec import load_features
    from millrace.pipelines.features_build import build as build_views

    project = common.project()
    features = load_features(project)
    lo, hi = common.date_range(date, start, end)
    console = common.console(as_json)
    with console.status("building feature views..."):
        reports = build_views(project, features, lo, hi, view, list(ctx.args))
    with console.status("applying the Feast repository..."):
        apply(project, features)
    if as_json:
        common.print_json({"views": reports, "feast_repository": f"{project.state_dir}/feast"})
        return
    for r in reports:
        if r.status == "built":
            console.print(f"{r.view}: {r.rows:,} rows ({r.entities:,} entities), "
                          f"{r.rebuilt_rows:,} rebuilt in {r.seconds:.1f} s")
        else:
            console.print(f"[yellow]{r.view}: skipped[/] ({r.problem})")
    console.print(f"Feast repository: {project.state_dir}/feast (try: feast -c {project.state_dir}/feast "
                  f"feature-views list)")


@app.command("materialize")
def materialize(
        date: Optional[str] = typer.Option(None, "--date", help="Materialize values as of the end of this day "
                                           "(default: now)."),
        view: Optional[list[str]] = typer.Option(None, "--view", help="Only these views (repeatable)."),
        full: bool = typer.Option(False, help="Rewrite every entity, not only changed ones."),
        as_json: bool = common.json_option()):
    """Write the latest value per entity to the online store (SQLite or Redis), incrementally."""
    import datetime as dt

    from millrace.features.materialize import materialize as write_online
    from millrace.features.spec import load_features
    from millrace.pipelines.landing import parse_date

    project = common.project()
    until = None
    if date:
        day = parse_date(date, "--date")
        until = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    console = common.console(as_json)
    with console.status("materializing..."):
        reports = write_online(project, load_features(project), until, view, full)
    if as_json:
        common.print_json({"views": reports})
        return
    for r in reports:
        refilled = " (the store had lost its data: all rewritten)" if r.refilled else ""
        console.print(f"{r.view}: {r.written:,} entities written, {r.skipped_unchanged:,} unchanged "
                      f"({r.seconds:.1f} s){refilled}")


@app.command("training-set")
def training_set(
        spine: Path = typer.Option(..., help="Parquet file: entity keys, an event time column and labels."),
        features_: list[str] = typer.Option(..., "--feature", "-f", help="view:feature or view (repeatable)."),
        output: Path = typer.Option(..., help="Parquet file to write."),
        time_column: str = typer.Option("event_timestamp", help="The spine's event time column.")):
    """Point-in-time join of a spine to feature views: no value from after each row's time; every row kept."""
    import pyarrow.parquet as pq

    from millrace.features.errors import FeatureError
    from millrace.features.spec import load_features
    from millrace.features.training_set import training_set as join

    project = common.project()
    if not spine.exists():
        raise FeatureError(f"spine file {spine} does not exist (fix: pass a Parquet file)")
    table = join(project, load_features(project), pq.read_table(spine), list(features_), time_column)
    pq.write_table(table, output)
    typer.echo(f"{output}: {table.num_rows:,} rows, {table.num_columns} columns")


@app.command("get")
def get(view: str = typer.Argument(..., help="Feature view."),
        keys: list[str] = typer.Argument(..., help="Entity keys. A view keyed on several columns takes one "
                                         "argument per entity with every key column, as "
                                         "column=value pairs: origin=JFK,dest=LAX"),
        as_json: bool = common.json_option()):
    """Read features of some entities from the online store (values older than the view's ttl are
    expired). Exit 1 when a key has no values: never materialized, or expired."""
    import pyarrow as pa

    from millrace.features.errors import FeatureError
    from millrace.features.online import OnlineReader
    from millrace.features.spec import load_features

    project = common.project()
    features = load_features(project)
    features.view(view)  # an unknown view: one line with the valid names
    key_types = features.key_types(view)
    columns = _key_columns(view, keys, list(key_types)) if len(key_types) > 1 else {next(iter(key_types)): keys}
    typed = {}
    for name, values in columns.items():
        try:
            typed[name] = pa.array(values).cast(key_types[name])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise FeatureError(f"keys {values}: not all are {key_types[name]}, the type of view '{view}''s key "
                               f"'{name}' (fix: pass {key_types[name]} keys)") from None
    from millrace.features.online import FOUND

    reader = OnlineReader(project, features)
    table, status = reader.read_with_status(view, typed if len(typed) > 1 else next(iter(typed.values())))
    rows = table.to_pylist()
    if as_json:
        common.print_json([{**row, "_status": s} for row, s in zip(rows, status)])
    else:
        for row, s in zip(rows, status):
            if s == FOUND:
                typer.echo(row)
    absent = [(_shown(row, list(key_types)), s) for row, s in zip(rows, status) if s != FOUND]
    if absent:
        ttl = features.view(view).ttl
        why = {"missing": "not in the online store (unknown, or not materialized yet)",
               "expired": f"expired (older than the view's ttl {ttl})"}
        for key, s in absent:
            typer.echo(f"error: {view}: {key}: {why[s]}", err=True)
        raise typer.Exit(1)


def _shown(row: dict, keys: list[str]) -> str:
    return ",".join(f"{k}={row[k]}" for k in keys) if len(keys) > 1 else str(row[keys[0]])


def _key_columns(view: str, keys: list[str], names: list[str]) -> dict[str, list[str]]:
    """``origin=JFK,dest=LAX`` arguments as one list of values per key column."""
    from millrace.features.errors import FeatureError

    shape = ",".join(f"{n}=..." for n in names)
    columns: dict[str, list[str]] = {n: [] for n in names}
    for arg in keys:
        pairs = dict(part.split("=", 1) for part in arg.split(",") if "=" in part)
        if len(pairs) != len(arg.split(",")) or sorted(pairs) != sorted(names):
            raise FeatureError(f"key '{arg}': view '{view}' is keyed on {names} (fix: pass each entity as {shape})")
        for name in names:
            columns[name].append(pairs[name])
    return columns
