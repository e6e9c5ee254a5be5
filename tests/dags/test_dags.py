"""dags/: Airflow 3 loads the folder with no import error and nothing heavy at parse time; the
drift task's outlet is the retrain DAG's schedule; the CLI's exit codes decide retries; the
nightly DAG runs once end to end with dag.test() on a tiny project (slow: one such test)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, ROOT, cli_env

DAGS = ROOT / "dags"


def _airflow_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "airflow"
    home.mkdir(exist_ok=True)
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}", **extra}


def _probe(env: dict[str, str], *dag_id: str, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.dags.probe", str(DAGS), *dag_id], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> dict:
    return _probe(_airflow_env(tmp_path_factory.mktemp("dagbag")))


def test_the_dag_folder_loads_without_errors_or_heavy_imports(bag):
    assert bag["errors"] == {}
    assert bag["heavy"] == []  # the DAG files call the CLI; parsing them loads none of the pipelines
    assert set(bag["dags"]) == {"millrace_nightly", "millrace_retrain", "millrace_backfill"}


def test_the_nightly_is_one_task_per_stage_daily_without_catchup(bag):
    nightly = bag["dags"]["millrace_nightly"]
    assert nightly["tasks"] == ["ingest", "features", "materialize", "drift", "train", "index", "release"]
    assert (nightly["timetable"], nightly["cron"], nightly["catchup"]) == ("CronTriggerTimetable", "0 0 * * *", False)
    assert set(nightly["retries"].values()) == {3}


def test_the_drift_tasks_outlet_schedules_the_retrain_dag(bag):
    nightly, retrain = bag["dags"]["millrace_nightly"], bag["dags"]["millrace_retrain"]
    assert nightly["outlets"] == {"drift": ["millrace_drift_trigger"]}
    assert retrain["timetable"] == "AssetTriggeredTimetable"
    assert retrain["schedule_assets"] == nightly["outlets"]["drift"]
    assert retrain["tasks"] == ["train", "index", "release"]


def test_the_backfill_maps_one_ingest_task_per_partition_of_its_params(bag):
    backfill = bag["dags"]["millrace_backfill"]
    assert backfill["tasks"] == ["plan", "ingest", "features"]
    assert (backfill["timetable"], backfill["catchup"]) == ("NullTimetable", False)  # triggered by hand
    assert backfill["mapped"] == ["ingest"] and sorted(backfill["params"]) == ["from", "to"]


@pytest.mark.parametrize("code, error", [(75, "AirflowException"), (2, "AirflowFailException"),
                                         (1, "AirflowFailException")])
def test_only_the_retryable_exit_code_leaves_retries_to_airflow(monkeypatch, code, error):
    from airflow.sdk.exceptions import AirflowFailException

    from millrace.dags import cli

    script = f"import sys; print('error: a stage said why', file=sys.stderr); sys.exit({code})"
    monkeypatch.setattr(cli, "command", lambda args, project=None: [sys.executable, "-c", script, *args])
    with pytest.raises(Exception) as raised:
        cli.stage("train")
    assert type(raised.value).__name__ == error
    assert isinstance(raised.value, AirflowFailException) == (code != 75)
    assert f"exited {code}: error: a stage said why" in str(raised.value)


def test_a_successful_stage_returns_its_json_report(monkeypatch):
    from millrace.dags import cli

    script = "import json; print(json.dumps({'stages': [], 'drift_triggers': []}))"
    monkeypatch.setattr(cli, "command", lambda args, project=None: [sys.executable, "-c", script])
    assert cli.stage("drift") == {"stages": [], "drift_triggers": []}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_nightly_dag_runs_once_with_dag_test(tmp_path):
    """Airflow's own runner: every task calls the CLI on a tiny project; the run ends in a release."""
    from tests.pipelines.test_nightly import SPLIT_DAY, _land, _tiny_project
    from tests.training.conftest import synthetic

    project, state = tmp_path / "project", tmp_path / "state"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".millrace"))
    _tiny_project(project)
    ratings, movies = synthetic()
    _land(state / "landing", ratings, movies, lambda day: day < SPLIT_DAY)
    env = _airflow_env(tmp_path, **{k: v for k, v in cli_env(state).items() if k.startswith("MILLRACE_")},
                       MILLRACE_PROJECT=str(project))
    migrate = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    run = _probe(env, "millrace_nightly", timeout=800)["run"]
    assert run["state"] == "success", run
    assert run["tasks"] == {"ingest": "success", "features": "success", "materialize": "success",
                            "drift": "skipped", "train": "success", "index": "success", "release": "success"}, run
    reports = [json.loads(p.read_text()) for p in (state / "nightly" / "runs").glob("*.json")]
    assert sorted(s["stage"] for r in reports for s in r["stages"]) == sorted(
        ["ingest", "validate", "features", "materialize", "drift", "train", "index", "release"])
    assert any(r["release"] for r in reports) and (state / "releases" / "CURRENT").exists()
