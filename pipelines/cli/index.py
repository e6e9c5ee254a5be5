"""``millrace index``: the FAISS index of a two_tower model's item catalogue."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("index")
def index(model: str = typer.Option(..., "--model", "-m", help="A two_tower model from models.yaml."),
          version: Optional[str] = typer.Option(None, "--version", help="Registered version (default: the champion)."),
          alias: Optional[str] = typer.Option(None, "--alias", help="Version under this alias (e.g. challenger)."),
          as_json: bool = common.json_option()):
    """Embed the item catalogue, build a FAISS index, gate its recall on the holdout users, store it."""
    if version is not None and alias is not None:
        common.fail("--version and --alias both name a version (fix: give one of them)")
    from millrace.pipelines.index import index_with_summary

    outcome = index_with_summary(common.console(as_json), common.project(), model, version, alias)
    if as_json:
        common.print_json({"model": outcome.model, "registered_name": outcome.registered_name,
                           "version": outcome.version, "folder": outcome.folder, "manifest": outcome.manifest})
