"""What every command shares: the global options, the console, loading the project, and the one
error handler. Imports no noun module (each noun module imports this one)."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Optional

import typer

from millrace.pipelines.cli import bundled

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@dataclass(frozen=True)
class Options:
    """The global options of one invocation."""

    project: str
    verbose: bool = False


# The one piece of state the commands share: set once by the app's callback, read by `options()`.
_current: list[Options] = []


def set_options(project: Optional[str], verbose: bool) -> None:
    chosen = project or os.environ.get("MILLRACE_PROJECT")
    if not chosen or Path(chosen).resolve() == bundled.SHIPPED:  # an install is never written to
        chosen = str(bundled.project_folder())
    _current[:] = [Options(chosen, verbose)]
    level = logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for handler in logging.getLogger().handlers:
        # Some libraries set INFO on their own loggers; the handler decides what is shown.
        handler.setLevel(level)


def options() -> Options:
    if not _current:  # a command called without the app's callback (not through `millrace`)
        set_options(None, False)
    return _current[0]


def is_bundled() -> bool:
    return bundled.is_bundled(options().project)


def project():
    """The project named by --project (loaded here, once per command)."""
    from millrace.contracts.project import load_project

    return load_project(options().project)


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def date_range(date: Optional[str], start: Optional[str], end: Optional[str]):
    """--date or --from/--to as (first, last) landing dates; None where open."""
    from millrace.pipelines.errors import PipelineError
    from millrace.pipelines.landing import parse_date

    if date and (start or end):
        raise PipelineError("use either --date or --from/--to, not both")
    if date:
        d = parse_date(date, "--date")
        return d, d
    return (parse_date(start, "--from") if start else None), (parse_date(end, "--to") if end else None)


def run_app(app: typer.Typer) -> NoReturn:
    """Run the app; every error millrace raises on purpose becomes one line and its exit code."""
    from millrace.contracts.errors import EXIT_RETRYABLE, MillraceError, exit_code, is_unreachable

    try:
        app()
    except MillraceError as exc:
        _one_line(exc, exit_code(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a service dropped mid-run, past the package's own checks
        if not is_unreachable(exc):
            raise
        _one_line(exc, EXIT_RETRYABLE)
    sys.exit(0)


def _one_line(exc: BaseException, code: int) -> NoReturn:
    text = " ".join(str(exc).split()) or type(exc).__name__
    typer.echo(f"error: {text}", err=True)
    sys.exit(code)
