"""One rule for every name that comes from configuration, and one check for every path.

Source, entity, view, feature and model names end up in file paths, Feast objects, generated
code, MLflow experiment names and metric labels; checking them once where they are loaded keeps
each of those places simple. Paths from configuration must stay inside their root.
"""
from __future__ import annotations

import re
from pathlib import Path

from millrace.contracts.errors import ContractError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
NAME_RULE = "start with a letter; letters, digits and '_' only; at most 63 characters"


def check_name(value: object, file: str | Path, field: str) -> str:
    """``value`` if it is a valid name, else a ContractError naming the file and the field."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ContractError(file, field, f"{value!r} is not a valid name", f"use a name that {NAME_RULE}")
    return value


def check_inside(root: str | Path, path: str | Path, file: str | Path, field: str) -> Path:
    """``path`` (relative to ``root`` unless absolute) resolved, refused when it leaves ``root``."""
    base = Path(root).resolve()
    resolved = (base / path).resolve()
    if resolved != base and base not in resolved.parents:
        raise ContractError(file, field, f"'{path}' is outside {base}", "use a path inside that folder")
    return resolved
