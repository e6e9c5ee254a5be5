"""``nightly`` owes what it has not finished: killed after the feature rebuild, or in the middle of a
model's first training, the next run does that work instead of finding "nothing new"."""
from __future__ import annotations

import csv
import datetime as dt
import json
import signal
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from millrace.contracts.project import load_project
from millrace.pipelines.errors import CorruptFile
from millrace.pipelines.nightly import Pending, pending_path, read_pending, write_pending
from tests.conftest import MILLRACE, cli_env
from tests.training.conftest import TINY_MODELS, synthetic

MODELS = ("retrieval", "likes")
SPLIT_DAY = dt.date(2020, 4, 20)  # landed first: the days before; later, as new data: the rest


def test_pending_round_trip_and_corruption(tmp_path, project_dir):
    project = load_project(project_dir)
    assert read_pending(project) == Pending()
    owed = Pending(features=True, train=("likes",), since="2026-12-01T00:00:00+00:00", reasons=("new data",))
    write_pending(project, owed)
    assert read_pending(project) == owed
    Path(pending_path(project)).write_text('{"features": tru')
    with pytest.raises(CorruptFile, match="pending.json: not a pending-work record"):
        read_pending(project)


def _tiny_project(project_dir: Path) -> None:
    models = {"models": {name: TINY_MODELS["models"][name] for name in MODELS}}
    (project_dir / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))


def _land(landing: Path, ratings: pa.Table, movies: pa.Table | None, days) -> None:
    by_day: dict[dt.date, list[dict]] = {}
    for row in ratings.to_pylist():
        by_day.setdefault(row["timestamp"].date(), []).append(row)
    for day in sorted(d for d in by_day if days(d)):
        folder = landing / "ratings" / day.isoformat()
        folder.mkdir(parents=True)
        with open(folder / "ratings.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["userId", "movieId", "rating", "timestamp"])
            for r in by_day[day]:
                out.writerow([r["userId"], r["movieId"], r["rating"], int(r["timestamp"].timestamp())])
    if movies is not None:
        folder = landing / "movies" / "2020-01-01"
        folder.mkdir(parents=True)
        with open(folder / "movies.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["movieId", "title", "year", "genres"])
            out.writerows([m["movieId"], m["title"], m["year"], m["genres"]] for m in movies.to_pylist())


def _nightly(project_dir: Path, state: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env(state, **({"MILLRACE_KILL_AT": kill_at} if kill_at else {}))
    return subprocess.run(MILLRACE + ["--project", str(project_dir), "nightly", *extra], capture_output=True,
                          text=True, env=env, timeout=900)


def _owed(state: Path) -> dict:
    return json.loads((state / "nightly" / "pending.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_killed_nightly_leaves_its_work_to_the_next_run(project_dir, tmp_path):
    _tiny_project(project_dir)
    state = tmp_path / "state"
    ratings, movies = synthetic()
    _land(state / "landing", ratings, movies, lambda day: day < SPLIT_DAY)

    # The first training of the first model dies with its version registered, no alias moved.
    first = _nightly(project_dir, state, kill_at="after_register")
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    assert _owed(state)["train"] == list(MODELS) and not _owed(state)["features"]

    # The next run has nothing to ingest, but still owes both trainings and does them.
    second = _nightly(project_dir, state)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("nothing to ingest") == 2, second.stdout
    assert "features user_activity" not in second.stdout  # the rebuild itself had finished
    assert "movielens.retrieval version 2" in second.stdout, second.stdout  # v1 was registered, then killed
    assert "movielens.likes version 1" in second.stdout, second.stdout
    assert _owed(state)["train"] == [] and not _owed(state)["features"]

    # New data lands; a forced run dies after rebuilding the features on it, before training.
    _land(state / "landing", ratings, None, lambda day: day >= SPLIT_DAY)
    third = _nightly(project_dir, state, "--force-train", kill_at="before_training")
    assert third.returncode == -signal.SIGKILL, third.stdout + third.stderr
    assert "features user_activity" in third.stdout and "partitions committed" in third.stdout
    assert _owed(state)["train"] == list(MODELS) and not _owed(state)["features"]

    # The rerun sees no new landing files, yet trains both models on the rebuilt features.
    fourth = _nightly(project_dir, state)
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    assert fourth.stdout.count("nothing to ingest") == 2, fourth.stdout
    assert "nothing new to train" not in fourth.stdout
    assert "movielens.retrieval version 3" in fourth.stdout and "movielens.likes version 2" in fourth.stdout
    assert _owed(state) == {**_owed(state), "features": False, "train": [], "ingesting": False}


def _report(state: Path, stdout: str) -> dict:
    runs = sorted((state / "nightly" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    assert runs, stdout
    return json.loads(runs[-1].read_text())


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_failing_stage_stops_the_chain_with_its_name_and_the_rerun_completes(project_dir, tmp_path):
    """The MLflow store is down when the drift stage first needs it: the stages before it stay
    committed, the ones after it do not run, the exit code is the retryable one; the rerun trains
    and releases without ingesting again."""
    _tiny_project(project_dir)
    state = tmp_path / "state"
    ratings, movies = synthetic()
    _land(state / "landing", ratings, movies, lambda day: day < SPLIT_DAY)
    down = cli_env(state, MILLRACE_MLFLOW_URI="postgresql+psycopg://postgres@127.0.0.1:1/none")
    failed = subprocess.run(MILLRACE + ["--project", str(project_dir), "nightly"], capture_output=True, text=True,
                            env=down, timeout=900)
    assert failed.returncode == 75, failed.stdout + failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: nightly stage 'drift' failed: "), failed.stderr
    report = _report(state, failed.stdout)
    outcomes = {s["stage"]: s["outcome"] for s in report["stages"]}
    assert outcomes == {"ingest": "done", "validate": "done", "features": "done", "materialize": "done",
                        "drift": "failed", "train": "not run", "index": "not run", "release": "not run"}, report
    assert (report["outcome"], report["failed_stage"], report["exit_code"]) == ("failed", "drift", 75)
    assert "cannot reach the MLflow store" in report["error"]
    assert not (state / "releases").exists() or not any((state / "releases").iterdir())

    rerun = _nightly(project_dir, state)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    report = _report(state, rerun.stdout)
    outcomes = {s["stage"]: s["outcome"] for s in report["stages"]}
    assert outcomes["ingest"] == "skipped" and outcomes["features"] == "skipped", report  # kept, not redone
    assert outcomes["train"] == outcomes["release"] == "done" and report["outcome"] == "ok", report
    assert report["release"] and report["release"] in rerun.stdout
    assert report["training_triggers"] == ["first training"], report
