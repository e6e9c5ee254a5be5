"""``millrace release ...``: create, list, show and roll back releases (model versions + index +
feature builds behind one pointer)."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer(no_args_is_help=True, help="Releases: what the inference tier serves, as one unit.")


@app.command("create")
def create(model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Model to release (repeatable; "
                                                     "default: every model of models.yaml)."),
           as_json: bool = common.json_option()):
    """Release the champions (with their passing indexes) and make the release current."""
    from millrace.indexing.release import current
    from millrace.pipelines.release import create as create_release
    from millrace.pipelines.release import describe, release_root

    project = common.project()
    release = create_release(project, list(model) if model else None)
    if as_json:
        common.print_json(release)
        return
    pointer = current(release_root(project))
    for line in describe(release, pointer.release if pointer else None):
        typer.echo(line)


@app.command("list")
def list_releases(as_json: bool = common.json_option()):
    """Every release, oldest first; the current one is marked."""
    from millrace.indexing.release import current, ids, read
    from millrace.pipelines.release import release_root

    root = release_root(common.project())
    pointer = current(root)
    rows = []
    for release_id in ids(root):
        r = read(root, release_id)
        rows.append({"id": r.id, "current": bool(pointer and pointer.release == r.id), "created_at": r.created_at,
                     "models": {name: m.version for name, m in r.models.items()}})
    if as_json:
        common.print_json(rows)
        return
    if not rows:
        typer.echo(f"no release yet in {root} (millrace release create)")
    for row in rows:
        models = ", ".join(f"{name} v{v}" for name, v in row["models"].items())
        typer.echo(f"{'*' if row['current'] else ' '} {row['id']}  {row['created_at']}  {models}")


@app.command("show")
def show(release_id: Optional[str] = typer.Argument(None, metavar="[ID]", help="Release id (default: the current one)."),
         as_json: bool = common.json_option()):
    """A release's models, index, feature builds and contracts, its files checked."""
    from millrace.indexing.release import current, verify
    from millrace.pipelines.release import describe, release_root

    root = release_root(common.project())
    checked = verify(root, release_id)
    pointer = current(root)
    if as_json:
        common.print_json({"release": checked.release, "current": bool(pointer and pointer.release ==
                                                                         checked.release.id), "verified": True})
        return
    for line in describe(checked.release, pointer.release if pointer else None):
        typer.echo(line)
    typer.echo("  verified: every file's SHA-256 matches, each index is bound to its encoder")


@app.command("rollback")
def rollback(to: Optional[str] = typer.Option(None, "--to", help="Release to make current (default: the one "
                                              "created before the current one).")):
    """Point the release pointer back at an earlier release (checked before the move)."""
    from millrace.pipelines.release import rollback as roll_back

    pointer = roll_back(common.project(), to)
    typer.echo(f"release {pointer.release} is current ({pointer.reason})")
