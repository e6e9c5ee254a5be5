"""The CLI's one error handler: every error class maps to its exit code, in-process and fast."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from millrace.contracts.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_RETRYABLE, ContractError, MillraceError
from millrace.pipelines.cli import common


class _Refused(MillraceError):
    exit_code = EXIT_FAILED


class _Unreachable(MillraceError):
    retryable = True


def _app_raising(exc: BaseException) -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def boom():
        raise exc

    return app


@pytest.mark.parametrize("exc, code", [
    (ContractError("millrace.yaml", "sources", "unknown source 'x'", "use one of: a"), EXIT_BAD_INPUT),
    (_Refused("2 partitions not committed"), EXIT_FAILED),
    (_Unreachable("cannot reach the store"), EXIT_RETRYABLE),
    (ConnectionRefusedError("[Errno 111] Connection refused"), EXIT_RETRYABLE),  # a driver's own error, mid-run
])
def test_errors_become_one_line_and_their_exit_code(exc, code, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["millrace"])
    with pytest.raises(SystemExit) as exited:
        common.run_app(_app_raising(exc))
    assert exited.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(exc) in err


def test_other_exceptions_are_not_hidden(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["millrace"])
    with pytest.raises(ZeroDivisionError):
        common.run_app(_app_raising(ZeroDivisionError("a bug")))


@pytest.mark.slow  # the CLI end to end in a subprocess (imports MLflow)
def test_unreachable_mlflow_store_exits_75(tmp_path):
    """Schedulers retry exit 75 only: an MLflow database that is down is retryable, not bad input."""
    env = dict(os.environ, MILLRACE_STATE_DIR=str(tmp_path),
               MILLRACE_MLFLOW_URI="postgresql+psycopg://postgres@127.0.0.1:1/none")
    proc = subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "models", "list"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_RETRYABLE, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the MLflow store" in lines[0] and "Traceback" not in proc.stderr
