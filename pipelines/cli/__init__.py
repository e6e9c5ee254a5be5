"""The ``millrace`` command line. Thin: parse, call a function, print a summary.

One module per noun registers its commands on the app assembled here; ``common`` holds what they
share. Each command imports its package lazily so ``millrace --help`` stays fast. Errors print one
line (file, field, fix) and exit with the code of their class (``contracts.errors.exit_code``).
"""
from __future__ import annotations

import typer

from millrace.pipelines.cli import (backfill, common, contracts, drift, example, features, index, ingest, lake, models,
                                   nightly, release, serve, stream, train)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="millrace: contracts, ingestion, validation, features and models for AI backends.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"millrace {common.version()}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    project: str = typer.Option(None, "--project", "-p", help="Project folder (holds millrace.yaml). "
                                "Default: $MILLRACE_PROJECT or the bundled MovieLens example."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print millrace's version and exit."),
):
    common.set_options(project, verbose)


# Groups get a name; a module of one top-level command (ingest, nightly, train) merges into the app.
app.add_typer(contracts.app, name="contracts")
app.add_typer(example.app, name="example")
app.add_typer(ingest.app)
app.add_typer(nightly.app)
app.add_typer(drift.app)
app.add_typer(backfill.app)
app.add_typer(lake.app, name="lake")
app.add_typer(features.app, name="features")
app.add_typer(train.app)
app.add_typer(models.app, name="models")
app.add_typer(index.app)
app.add_typer(release.app, name="release")
app.add_typer(serve.app)
app.add_typer(stream.app, name="stream")


def main() -> None:
    from millrace.contracts.shutdown import run_to_exit

    run_to_exit(lambda: common.run_app(app))
