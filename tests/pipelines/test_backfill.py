"""``millrace backfill``: a backfill killed midway resumes after its last committed chunk and ends
with the same lake and offline features as one that was never interrupted; it trains nothing."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MILLRACE, cli_env
from tests.pipelines.tables import assert_same_contents, committed_contents
from tests.pipelines.test_nightly import _land
from tests.training.conftest import synthetic

RANGE = ["--from", "2020-01-01", "--to", "2020-04-30"]


def _backfill(project_dir: Path, state: Path, *extra: str, kill_at: str | None = None):
    env = cli_env(state, **({"MILLRACE_KILL_AT": kill_at} if kill_at else {}))
    return subprocess.run(MILLRACE + ["--project", str(project_dir), "backfill", *RANGE, "--chunk", "1", *extra],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_killed_backfill_resumes_and_ends_equal_to_an_uninterrupted_one(project_dir, tmp_path):
    ratings, movies = synthetic()
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for state in (whole, killed):
        _land(state / "landing", ratings, movies, lambda day: True)

    done = _backfill(project_dir, whole, "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no model trained: champion unchanged" in done.stdout

    # Killed on the third commit: after a chunk committed, before the record says so.
    first = _backfill(project_dir, killed, kill_at="after_commit:3")
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    record = json.loads(next((killed / "backfills").glob("*.json")).read_text())
    assert record["finished_at"] == "" and sum(map(len, record["done"].values())) == 2, record

    resumed = _backfill(project_dir, killed)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming the backfill started" in resumed.stdout and "2 partition(s) already committed" in resumed.stdout
    record = json.loads(next((killed / "backfills").glob("*.json")).read_text())
    assert record["finished_at"] and record["features_built"] and record["materialized"], record

    assert_same_contents(committed_contents(project_dir, killed), committed_contents(project_dir, whole))
    assert not (killed / "mlflow.db").exists() and not (killed / "releases").exists()  # nothing trained


def _models(project_dir: Path, state: Path) -> dict[str, dict]:
    proc = subprocess.run(MILLRACE + ["--project", str(project_dir), "models", "list", "--json"], capture_output=True,
                          text=True, env=cli_env(state), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {m["model"]: m for m in json.loads(proc.stdout)}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_backfill_moves_champion_only_with_promote(project_dir, tmp_path):
    from tests.pipelines.test_nightly import MODELS, _tiny_project

    _tiny_project(project_dir)
    state = tmp_path / "state"
    ratings, movies = synthetic()
    _land(state / "landing", ratings, movies, lambda day: True)

    trained = _backfill(project_dir, state, "--stages", "ingest,features,materialize,train", "--chunk", "12")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "champion not moved" in trained.stdout and "new versions are challengers" in trained.stdout
    models = _models(project_dir, state)
    assert all((models[m]["versions"], models[m]["champion"], models[m]["challenger"]) == (1, None, "1")
               for m in MODELS), models
    assert not (state / "releases").exists()

    promoted = _backfill(project_dir, state, "--stages", "train", "--promote")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    record = json.loads((state / "backfills" / "2020-01-01_2020-04-30.json").read_text())
    assert record["promote"] and sorted(record["trained"]) == sorted(MODELS) and record["release"], record
    models = _models(project_dir, state)
    assert all(models[m]["champion"] == "2" for m in MODELS), models
    assert (state / "releases" / "CURRENT").exists() and record["release"] in promoted.stdout
