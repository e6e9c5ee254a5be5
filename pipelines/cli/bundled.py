"""Where the bundled MovieLens example runs from.

In a source checkout the example folder is used in place (its state goes to
``examples/movielens/.millrace/``). An installed copy (a wheel in site-packages, or any install
that is not a checkout) is never written to: on first use it is copied to the user's data folder,
``$XDG_DATA_HOME/millrace/examples/movielens`` (default ``~/.local/share/...``), and that copy is
the project.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# In a checkout: <repo>/examples/movielens; in a wheel: <site-packages>/millrace/examples/movielens.
SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "movielens"


def user_copy() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "millrace" / "examples" / "movielens"


def in_checkout(folder: Path = SHIPPED) -> bool:
    """The example sits in a writable source checkout (pyproject.toml two levels up)."""
    installed = any(part in ("site-packages", "dist-packages") for part in folder.parts)
    return not installed and (folder.parents[1] / "pyproject.toml").is_file() and os.access(folder, os.W_OK)


def is_bundled(project: str | Path) -> bool:
    where = Path(project).resolve()
    return where in (SHIPPED, user_copy().resolve())


def project_folder(say=None) -> Path:
    """The folder to run the bundled example from, copying it out of an install on first use."""
    if in_checkout():
        return SHIPPED
    target = user_copy()
    missing = [p for p in SHIPPED.rglob("*.yaml") if not (target / p.relative_to(SHIPPED)).exists()]
    for path in missing:  # never overwrite the user's edits; add what a newer millrace ships
        dest = target / path.relative_to(SHIPPED)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    if missing and len(missing) == len(list(SHIPPED.rglob("*.yaml"))):
        (say or (lambda text: print(text, file=sys.stderr)))(
            f"the bundled example runs from {target} (the installed copy stays read-only)")
    return target
