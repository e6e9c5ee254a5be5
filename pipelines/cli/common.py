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
    # MLflow's artifact download bars would break into ours (and into --json output).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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


def console(as_json: bool = False):
    """The console of human output: stdout, or stderr when stdout carries --json. Not a terminal
    (a pipe, a file, a CI log): lines are not wrapped, unless COLUMNS says how wide."""
    from rich.console import Console

    stream = sys.stderr if as_json else sys.stdout
    unwrapped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=as_json, highlight=False, soft_wrap=unwrapped, width=10_000 if unwrapped else None)


JSON_HELP = "Print the result as JSON on stdout (the same data as the table; progress goes to stderr)."


def json_option():
    return typer.Option(False, "--json", help=JSON_HELP)


def print_json(data) -> None:
    """One JSON document on stdout: records as their JSON, dates and paths as text."""
    import json

    typer.echo(json.dumps(_plain(data), default=str, ensure_ascii=False))


def _plain(data):
    import dataclasses

    if hasattr(data, "model_dump"):  # a typed record
        return data.model_dump(mode="json")
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return _plain(dataclasses.asdict(data))
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("millrace")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


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
        app(prog_name="millrace")  # also under `python -m millrace.pipelines.cli`: help and completion name it
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
