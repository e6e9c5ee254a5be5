"""What every millrace task does: run the ``millrace`` CLI, map its exit code to Airflow's view.

Exit 0 is success; 75 (a service unreachable or busy: ``contracts.errors.EXIT_RETRYABLE``) fails
the try and lets the task's retries run; any other code (bad input, refused data, a bug) fails the
task without retries, since a retry would fail the same way. Imports only the standard library at
module level: a DAG file that imports this stays cheap to parse."""
from __future__ import annotations

import json
import os
import subprocess
import sys

EXIT_RETRYABLE = 75  # contracts.errors.EXIT_RETRYABLE (not imported: it would load millrace at parse time)
DRIFT_ASSET = "millrace_drift_trigger"  # the asset the drift task emits and millrace_retrain is scheduled on
TAIL = 4000  # characters of the CLI's output kept in the task log on failure


def command(args: list[str], project: str | None = None) -> list[str]:
    project = project or os.environ.get("MILLRACE_PROJECT")
    return [sys.executable, "-m", "millrace.pipelines.cli", *(["--project", project] if project else []), *args]


def run(args: list[str], project: str | None = None, timeout: float | None = None) -> dict | list | None:
    """Run ``millrace <args>`` (``--json`` added); returns its JSON answer."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    cmd = command([*args, "--json"], project)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr[-TAIL:])  # the CLI's progress and errors, in the task log
    if proc.returncode == 0:
        return json.loads(proc.stdout) if proc.stdout.strip() else None
    last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
    message = f"`{' '.join(cmd[3:])}` exited {proc.returncode}: {last}"
    if proc.returncode == EXIT_RETRYABLE:
        raise AirflowException(message)  # retryable: the task's retries apply
    raise AirflowFailException(message)  # a retry would fail the same way


def stage(name: str, project: str | None = None) -> dict:
    """One stage of the nightly chain (``millrace nightly --stages <name>``); its run report."""
    return run(["nightly", "--stages", name], project)
