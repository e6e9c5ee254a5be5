"""The ``millrace`` command line. Thin: parse, call a function, print a summary.

Each command imports its package lazily so ``millrace --help`` stays fast.
Errors print one line (file, field, fix) and exit non-zero; no tracebacks.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="millrace: contracts, ingestion, validation, features and models for AI backends.")
contracts_app = typer.Typer(no_args_is_help=True, help="Check and compare data contracts.")
example_app = typer.Typer(no_args_is_help=True, help="The bundled MovieLens example.")
lake_app = typer.Typer(no_args_is_help=True, help="Look at the lake and its quarantine.")
features_app = typer.Typer(no_args_is_help=True, help="Feature views: build, Feast, materialize, training sets.")
models_app = typer.Typer(no_args_is_help=True, help="Registered models: versions, aliases, promotion, rollback.")
app.add_typer(contracts_app, name="contracts")
app.add_typer(example_app, name="example")
app.add_typer(lake_app, name="lake")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")

BUNDLED_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "movielens"
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
_state = {"project": None}


def _default_project() -> str:
    return os.environ.get("MILLRACE_PROJECT", str(BUNDLED_EXAMPLE))


@app.callback()
def main_options(
    project: str = typer.Option(None, "--project", "-p", help="Project folder (holds millrace.yaml). "
                                "Default: $MILLRACE_PROJECT or the bundled MovieLens example."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
):
    _state["project"] = project or _default_project()
    level = logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for handler in logging.getLogger().handlers:
        # Some libraries set INFO on their own loggers; the handler decides what is shown.
        handler.setLevel(level)


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _project():
    from millrace.contracts.project import load_project

    return load_project(_state["project"])


def _handled(fn):
    """Run a command body, turning known errors into one line and an exit code."""
    from millrace.contracts.errors import ContractError
    from millrace.features.errors import FeatureError
    from millrace.pipelines.errors import PipelineError, RunFailed
    from millrace.training.errors import ModelSpecError, TrainingError, UnknownModel

    try:
        return fn()
    except RunFailed as exc:
        _fail(str(exc), 1)
    except (ContractError, PipelineError, FeatureError, ModelSpecError, UnknownModel) as exc:
        _fail(str(exc), 2)
    except TrainingError as exc:  # the run itself refused the model (data, loss, export, INT8 gate)
        _fail(str(exc), 1)


# -- contracts --------------------------------------------------------------------------------

@contracts_app.command("lint")
def contracts_lint(paths: list[Path] = typer.Argument(..., help="Contract files to check.")):
    """Check ODCS contract files: schema, types, keys, rules, partitioning."""
    from millrace.contracts.errors import ContractError
    from millrace.contracts.loader import load_contract

    failed = 0
    for path in paths:
        try:
            c = load_contract(path)
            typer.echo(f"ok    {path}: {c.id} {c.version}, {len(c.fields)} fields, key {list(c.key_fields)}")
        except ContractError as exc:
            failed += 1
            typer.echo(f"error {exc}", err=True)
    raise typer.Exit(1 if failed else 0)


@contracts_app.command("diff")
def contracts_diff(old: Path = typer.Argument(..., help="The contract as it was."),
                   new: Path = typer.Argument(..., help="The contract as proposed.")):
    """Classify each change as breaking or compatible; exit 1 on a breaking change without a major bump."""
    from millrace.contracts.diff import diff_contracts
    from millrace.contracts.loader import load_contract

    def run():
        report = diff_contracts(load_contract(old), load_contract(new))
        for change in report.changes:
            typer.echo(f"{'BREAKING ' if change.breaking else 'compatible'} {change.where}: {change.what}")
        if not report.changes:
            typer.echo("no changes")
        typer.echo(report.verdict)
        raise typer.Exit(1 if report.fails else 0)

    _handled(run)


# -- example ----------------------------------------------------------------------------------

@example_app.command("land")
def example_land(force: bool = typer.Option(False, help="Land again even if files are there."),
                 seed: int = typer.Option(7, help="Seed for where bad records are planted.")):
    """Write the MovieLens data into the landing zone as a producer would (with ~0.5% bad records)."""
    def run():
        from millrace.pipelines.example import land

        project = _project()
        for source, landed in land(project, seed=seed, force=force).items():
            if landed.skipped:
                typer.echo(f"{source}: already landed under {project.landing} (use --force to land again)")
            else:
                typer.echo(f"{source}: {landed.records:,} records in {landed.files:,} files, "
                           f"{landed.planted} planted bad records")

    _handled(run)


# -- ingest -----------------------------------------------------------------------------------

def _range(date: Optional[str], start: Optional[str], end: Optional[str]):
    from millrace.pipelines.errors import NothingToIngest
    from millrace.pipelines.landing import parse_date

    if date and (start or end):
        raise NothingToIngest("use either --date or --from/--to, not both")
    if date:
        d = parse_date(date, "--date")
        return d, d
    return (parse_date(start, "--from") if start else None), (parse_date(end, "--to") if end else None)


@app.command("ingest", context_settings=PASS_THROUGH)
def ingest_command(
    ctx: typer.Context,
    source: str = typer.Option(..., "--source", "-s", help="Source name from millrace.yaml."),
    date: Optional[str] = typer.Option(None, "--date", help="Rebuild the partition(s) holding this landing date."),
    start: Optional[str] = typer.Option(None, "--from", help="First landing date of a range (backfill)."),
    end: Optional[str] = typer.Option(None, "--to", help="Last landing date of a range (backfill)."),
    expectations: bool = typer.Option(True, help="Run the Great Expectations suite before each commit."),
):
    """Ingest landing files into the lake. Without a range: every partition with new or changed files.

    Unknown options go to Beam, e.g. --runner=DirectRunner --direct_running_mode=multi_processing
    --direct_num_workers=2.
    """
    def run():
        from millrace.pipelines.summary import run_ingest_with_summary

        project = _project()
        lo, hi = _range(date, start, end)
        run_ingest_with_summary(_console(), project, source, lo, hi, list(ctx.args), expectations)

    _handled(run)


@app.command("nightly", context_settings=PASS_THROUGH)
def nightly_command(ctx: typer.Context,
                    expectations: bool = typer.Option(True, help="Run the Great Expectations suites."),
                    train: Optional[bool] = typer.Option(None, "--train/--no-train", help="Retrain every model "
                                                         "(default: only when triggered: first run or new data).")):
    """The scheduled job: land the example if needed, ingest and validate, build features, train."""
    def run():
        from millrace.pipelines.nightly import nightly

        nightly(_console(), _project(), list(ctx.args), expectations, bundled=_is_bundled(), train=train)

    _handled(run)


def _is_bundled() -> bool:
    return Path(_state["project"]).resolve() == BUNDLED_EXAMPLE


# -- lake -------------------------------------------------------------------------------------

@lake_app.command("ls")
def lake_ls(source: str = typer.Option(..., "--source", "-s", help="Source name.")):
    """List committed partitions with their row and quarantine counts."""
    def run():
        from millrace.pipelines import lake

        project = _project()
        contract = project.contract(source)
        parts = lake.committed_partitions(project.lake, source, contract.partitioning.key)
        for p in parts:
            m = p.manifest
            typer.echo(f"{contract.partitioning.key}={p.value}  rows={m['rows']:>7,}  quarantined={m['quarantine']['rows']:>5,}"
                       f"  contract={m['contract']['version']}  run={m['run_id']}")
        typer.echo(f"{len(parts)} committed partitions, {sum(p.manifest['rows'] for p in parts):,} rows")

    _handled(run)


@lake_app.command("quarantine")
def lake_quarantine(source: str = typer.Option(..., "--source", "-s", help="Source name."),
                    reason: Optional[str] = typer.Option(None, help="Only this reason code."),
                    limit: int = typer.Option(20, help="Rows to show.")):
    """Show quarantined rows: partition, file, line, reason, field and the original record."""
    def run():
        import pyarrow.compute as pc

        from millrace.pipelines import lake

        project = _project()
        contract = project.contract(source)
        table = lake.read_quarantine(project.quarantine, project.lake, source, contract.partitioning.key)
        if reason and table.num_rows:
            table = table.filter(pc.equal(table.column("reason"), reason))
        for row in table.slice(0, limit).to_pylist():
            payload = (row["payload"] or b"").decode("utf-8", "backslashreplace")
            typer.echo(f"{row['partition']} {row['file']}:{row['line']} {row['reason']}({row['field']}) {payload}")
        typer.echo(f"{table.num_rows:,} quarantined rows")

    _handled(run)


# -- features ---------------------------------------------------------------------------------

@features_app.command("build", context_settings=PASS_THROUGH)
def features_build(ctx: typer.Context,
                   date: Optional[str] = typer.Option(None, "--date", help="Rebuild the snapshots of this day."),
                   start: Optional[str] = typer.Option(None, "--from", help="First day to rebuild."),
                   end: Optional[str] = typer.Option(None, "--to", help="Last day to rebuild."),
                   view: Optional[list[str]] = typer.Option(None, "--view", help="Only these views (repeatable).")):
    """Compute feature views from the committed lake into the offline store (Beam), then apply Feast."""
    def run():
        from millrace.features.feast_repo import apply
        from millrace.features.spec import load_features
        from millrace.pipelines.features_build import build

        project = _project()
        features = load_features(project)
        lo, hi = _range(date, start, end)
        console = _console()
        with console.status("building feature views..."):
            reports = build(project, features, lo, hi, view, list(ctx.args))
        for r in reports:
            if r["status"] == "built":
                console.print(f"{r['view']}: {r['rows']:,} rows ({r['entities']:,} entities), "
                              f"{r['rebuilt_rows']:,} rebuilt in {r['seconds']:.1f} s")
            else:
                console.print(f"[yellow]{r['view']}: skipped[/] ({r['problem']})")
        with console.status("applying the Feast repository..."):
            apply(project, features)
        console.print(f"Feast repository: {project.state_dir}/feast (try: feast -c {project.state_dir}/feast "
                      f"feature-views list)")

    _handled(run)


@features_app.command("materialize")
def features_materialize(
        date: Optional[str] = typer.Option(None, "--date", help="Materialize values as of the end of this day "
                                           "(default: now)."),
        view: Optional[list[str]] = typer.Option(None, "--view", help="Only these views (repeatable)."),
        full: bool = typer.Option(False, help="Rewrite every entity, not only changed ones.")):
    """Write the latest value per entity to the online store (SQLite or Redis), incrementally."""
    def run():
        import datetime as dt

        from millrace.features.materialize import materialize
        from millrace.features.spec import load_features
        from millrace.pipelines.landing import parse_date

        project = _project()
        until = None
        if date:
            day = parse_date(date, "--date")
            until = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
        console = _console()
        with console.status("materializing..."):
            reports = materialize(project, load_features(project), until, view, full)
        for r in reports:
            console.print(f"{r['view']}: {r['written']:,} entities written, {r['skipped_unchanged']:,} unchanged "
                          f"({r['seconds']:.1f} s)")

    _handled(run)


@features_app.command("training-set")
def features_training_set(
        spine: Path = typer.Option(..., help="Parquet file: entity keys, an event time column and labels."),
        features_: list[str] = typer.Option(..., "--feature", "-f", help="view:feature or view (repeatable)."),
        output: Path = typer.Option(..., help="Parquet file to write."),
        time_column: str = typer.Option("event_timestamp", help="The spine's event time column.")):
    """Point-in-time join of a spine to feature views: no value from after each row's time; every row kept."""
    def run():
        import pyarrow.parquet as pq

        from millrace.features.errors import FeatureError
        from millrace.features.spec import load_features
        from millrace.features.training_set import training_set

        project = _project()
        if not spine.exists():
            raise FeatureError(f"spine file {spine} does not exist (fix: pass a Parquet file)")
        table = training_set(project, load_features(project), pq.read_table(spine), list(features_), time_column)
        pq.write_table(table, output)
        typer.echo(f"{output}: {table.num_rows:,} rows, {table.num_columns} columns")

    _handled(run)


@features_app.command("get")
def features_get(view: str = typer.Argument(..., help="Feature view."),
                 keys: list[str] = typer.Argument(..., help="Entity keys.")):
    """Read features of some entities from the online store."""
    def run():
        from millrace.features.online import OnlineReader
        from millrace.features.spec import load_features

        project = _project()
        features = load_features(project)
        key_type = features.key_type(view)
        import pyarrow as pa

        table = OnlineReader(project, features).read(view, pa.array(keys).cast(key_type))
        for row in table.to_pylist():
            typer.echo(row)

    _handled(run)


from millrace.pipelines import cli_models  # noqa: E402,F401  (registers `train` and `models`)


def main():
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # python -m millrace.pipelines.cli: run the package module, where cli_models registered
    from millrace.pipelines.cli import main as package_main

    package_main()
