"""The nightly as an explicit chain of stages, each timed, and the run report it leaves.

Every stage returns a :class:`Done` (what it did: rows, a one-line detail) or :class:`Skipped`
(why it had nothing to do). A stage that raises stops the chain: the stages after it are reported
``not run``, the report is written anyway, and the error leaves as :class:`StageFailed`, which
names the stage and keeps the exit code of its cause (75 when retrying may help, so a scheduler
retries only those). Committed work is never undone: each stage commits atomically on its own, so
the rerun continues where this one stopped.

The report is ``<state>/nightly/runs/<run id>.json`` (:class:`RunReport`), printed as one table at
the end of the run, or as JSON with ``--json``."""
from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from millrace.contracts.errors import EXIT_RETRYABLE, MillraceError, exit_code, is_unreachable
from millrace.contracts.project import Project
from millrace.contracts.records import Record

Outcome = Literal["done", "skipped", "failed", "not run"]


@dataclass(frozen=True)
class Done:
    rows: int | None = None
    detail: str = ""
    timed: bool = True  # False: the work ran inside another stage (no seconds of its own)


@dataclass(frozen=True)
class Skipped:
    detail: str


class StageReport(Record):
    stage: str
    outcome: Outcome
    rows: int | None = None
    seconds: float | None = None
    detail: str = ""


class TrainedModel(Record):
    """A model this run trained: its MLflow run carries the tag ``millrace.nightly.run_id``."""

    model: str
    version: str
    run_id: str
    promoted: bool


class RunReport(Record):
    """``<state>/nightly/runs/<run_id>.json``: one nightly, stage by stage."""

    format_version: Literal[1] = 1
    run_id: str
    project: str
    date: str | None
    started_at: str
    seconds: float
    outcome: Literal["ok", "failed"]
    failed_stage: str | None = None
    exit_code: int = 0
    error: str = ""
    training_triggers: list[str] = []
    drift_triggers: list[dict] = []  # the retraining triggers this run's drift stage recorded
    models_trained: list[TrainedModel] = []
    release: str | None = None
    stages: list[StageReport]


class StageFailed(MillraceError):
    """A stage of the chain raised; carries its name and the exit code of the cause."""

    def __init__(self, stage: str, cause: BaseException, code: int):
        text = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"nightly stage '{stage}' failed: {text} (committed work is kept; fix the cause and "
                         f"rerun `millrace nightly` to continue from this stage)")
        self.stage, self.exit_code, self.retryable = stage, code, code == EXIT_RETRYABLE


class Chain:
    """Runs the stages in order (``names``: the whole chain, for the report's ``not run`` rows)."""

    def __init__(self, project: Project, run_id: str, names: tuple[str, ...], date: dt.date | None = None):
        self.project, self.run_id, self.names, self.date = project, run_id, names, date
        self.started_at = dt.datetime.now(dt.timezone.utc)
        self.started = time.perf_counter()
        self.reports: list[StageReport] = []
        self.training_triggers: list[str] = []
        self.drift_triggers: list[dict] = []
        self.models_trained: list[TrainedModel] = []
        self.release: str | None = None

    def run(self, name: str, stage: Callable[[], Done | Skipped]) -> Done | Skipped:
        if name not in self.names:
            raise ValueError(f"stage '{name}' is not in the chain {self.names}")
        began = time.perf_counter()
        try:
            outcome = stage()
        except Exception as exc:  # noqa: BLE001 - recorded, then re-raised (as StageFailed when ours)
            seconds = round(time.perf_counter() - began, 3)
            self.reports.append(StageReport(stage=name, outcome="failed", seconds=seconds,
                                            detail=(" ".join(str(exc).split()) or type(exc).__name__)[:500]))
            code = _code(exc)
            self.write(failed=(name, code, str(exc)))
            if code is None:
                raise  # a bug: its traceback, the report already on disk
            raise StageFailed(name, exc, code) from exc
        seconds = round(time.perf_counter() - began, 3)
        if isinstance(outcome, Skipped):
            self.reports.append(StageReport(stage=name, outcome="skipped", seconds=seconds, detail=outcome.detail))
        else:
            self.reports.append(StageReport(stage=name, outcome="done", rows=outcome.rows,
                                            seconds=seconds if outcome.timed else None, detail=outcome.detail))
        return outcome

    def report(self, failed: tuple[str, int, str] | None = None) -> RunReport:
        ran = {r.stage for r in self.reports}
        rows = self.reports + [StageReport(stage=n, outcome="not run") for n in self.names if n not in ran]
        return RunReport(run_id=self.run_id, project=self.project.name,
                         date=self.date.isoformat() if self.date else None,
                         started_at=self.started_at.isoformat(timespec="seconds"),
                         seconds=round(time.perf_counter() - self.started, 3),
                         outcome="failed" if failed else "ok", failed_stage=failed[0] if failed else None,
                         exit_code=failed[1] if failed else 0, error=failed[2][:1000] if failed else "",
                         training_triggers=self.training_triggers, drift_triggers=self.drift_triggers,
                         models_trained=self.models_trained, release=self.release, stages=rows)

    def write(self, failed: tuple[str, int, str] | None = None) -> tuple[RunReport, str]:
        """Atomically (a temp file renamed): a report on disk is always a whole one."""
        report = self.report(failed)
        path = report_path(self.project, self.run_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(report.to_json())
        os.replace(tmp, path)
        return report, path


def report_path(project: Project, run_id: str) -> str:
    return os.path.join(project.state_dir, "nightly", "runs", f"{run_id}.json")


def _code(exc: BaseException) -> int | None:
    """The exit code a stage's error ends the run with; None for a bug (not ours to name)."""
    if isinstance(exc, MillraceError):
        return exit_code(exc)
    if is_unreachable(exc):
        return EXIT_RETRYABLE
    return None


def render(console, report: RunReport, path: str) -> None:
    from rich.table import Table

    table = Table(title=f"nightly {report.run_id}" + (f" ({report.date})" if report.date else ""),
                  caption=f"report: {path}")
    table.add_column("stage", style="bold")
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("detail", overflow="fold")
    colour = {"done": "green", "skipped": "dim", "failed": "red", "not run": "dim"}
    for s in report.stages:
        table.add_row(s.stage, f"[{colour[s.outcome]}]{s.outcome}[/]", "" if s.rows is None else f"{s.rows:,}",
                      "" if s.seconds is None else f"{s.seconds:.1f}", s.detail)
    console.print(table)
