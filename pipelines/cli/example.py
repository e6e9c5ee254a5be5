"""``millrace example ...``: the bundled MovieLens example."""
from __future__ import annotations

import typer

from millrace.pipelines.cli import common

app = typer.Typer(no_args_is_help=True, help="The bundled MovieLens example.")


@app.command("land")
def land(force: bool = typer.Option(False, help="Land again even if files are there."),
         seed: int = typer.Option(7, help="Seed for where bad records are planted.")):
    """Write the MovieLens data into the landing zone as a producer would (with ~0.5% bad records)."""
    from millrace.pipelines.example import land as land_example, refuse_other_project

    project = common.project()
    if not common.is_bundled():
        refuse_other_project(project)
    for source, landed in land_example(project, seed=seed, force=force).items():
        if landed.skipped:
            typer.echo(f"{source}: already landed under {project.landing} (use --force to land again)")
        else:
            typer.echo(f"{source}: {landed.records:,} records in {landed.files:,} files, "
                       f"{landed.planted} planted bad records")
