"""Drift end to end on a tiny project: new data like the old fires no trigger; a shifted month
does, the nightly retrains on it and files the trigger as acted on; `millrace drift` alone leaves
the trigger for the next nightly (or Airflow's retrain DAG)."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from tests.conftest import MILLRACE, cli_env
from tests.pipelines.test_nightly import _land, _nightly, _report
from tests.training.conftest import START, TINY_MODELS, synthetic

DAYS = 240
SPLIT_DAY = (START + dt.timedelta(days=160)).date()  # landed first: the days before; then the rest
# Inputs over 30-day windows: stationary once the windows have filled (all-time means narrow for as
# long as the history grows, which Evidently rightly reads as drift). The reference, the newest
# 1,100 training rows, starts well past the first 30 days, and is over 1,000 rows: compared by distance.
# At 20 ratings a day a month's volume varies by ~4% (Poisson), which moves 30-day counts by ~0.15 of
# their spread: past Evidently's default 0.1, so the columns' threshold here is 0.2.
LIKES = {**TINY_MODELS["models"]["likes"],
         "features": ["user_activity:rating_mean_30d", "user_activity:rating_count_30d",
                      "movie_popularity:popularity_30d"],
         "drift": {"share": 0.5, "reference_rows": 1100, "min_rows": 1000, "column_threshold": 0.2}}


def _project(project_dir: Path) -> None:
    (project_dir / "models.yaml").write_text(yaml.safe_dump({"models": {"likes": LIKES}}, sort_keys=False))


def _shifted(days_after: int) -> pa.Table:
    """A month of ratings after the synthetic period: three times as many, every one half a star."""
    ratings, _ = synthetic(ratings=1500, days=30, seed=1)  # 50 a day, against the history's 20
    later = pc.add(ratings.column("timestamp"), pa.scalar(dt.timedelta(days=days_after)))
    return ratings.set_column(3, "timestamp", later).set_column(2, "rating", pa.array([0.5] * ratings.num_rows))


def _stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["stage"] == name)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_drift_fires_on_shifted_data_only_and_the_nightly_acts_on_it(project_dir, tmp_path):
    _project(project_dir)
    state = tmp_path / "state"
    ratings, movies = synthetic(ratings=20 * DAYS, days=DAYS)
    _land(state / "landing", ratings, movies, lambda day: day < SPLIT_DAY)
    first = _nightly(project_dir, state)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _stage(_report(state, first.stdout), "drift")["outcome"] == "skipped"  # no champion to compare with

    # A few new days (fewer rows than drift.min_rows): the check waits, nothing is trained.
    few = SPLIT_DAY + dt.timedelta(days=5)
    _land(state / "landing", ratings, None, lambda day: SPLIT_DAY <= day < few)
    waits = _report(state, _nightly(project_dir, state).stdout)
    assert _stage(waits, "drift")["outcome"] == "skipped", waits
    assert "row(s) newer than v1's data" in _stage(waits, "drift")["detail"], waits
    assert _stage(waits, "train")["outcome"] == "skipped" and waits["models_trained"] == [], waits

    # More days of the same distribution: compared (only rows new to the champion), no trigger.
    _land(state / "landing", ratings, None, lambda day: day >= few)
    second = _nightly(project_dir, state)
    assert second.returncode == 0, second.stdout + second.stderr
    drift = _stage(_report(state, second.stdout), "drift")
    assert drift["outcome"] == "done" and drift["detail"].startswith("no trigger"), drift
    assert _stage(_report(state, second.stdout), "train")["outcome"] == "skipped"  # new data alone: no retraining
    verdicts = sorted((state / "drift").glob("*/*/verdict.json"))
    assert {p.parts[-3] for p in verdicts} == {"likes"}
    for path in verdicts:
        verdict = json.loads(path.read_text())
        assert not verdict["triggered"] and verdict["share"] <= 0.5, verdict
        assert verdict["current_rows"] >= 1000 and Path(verdict["report_html"]).stat().st_size > 10_000
    assert not (state / "drift" / "triggers").exists()

    # A shifted month: the trigger fires, the same nightly retrains on it and files it as acted on.
    _land(state / "landing", _shifted(days_after=DAYS + 10), None, lambda day: True)
    third = _nightly(project_dir, state)
    assert third.returncode == 0, third.stdout + third.stderr
    report = _report(state, third.stdout)
    assert _stage(report, "drift")["detail"].startswith("triggered: "), report
    assert any(t.startswith("drift ") for t in report["training_triggers"]), report
    assert _stage(report, "train")["outcome"] == "done"
    acted = sorted((state / "drift" / "triggers" / "acted").glob("*.json"))
    assert acted and not list((state / "drift" / "triggers").glob("*.json"))
    trigger = json.loads(acted[0].read_text())
    assert trigger["share"] > trigger["threshold"] and trigger["columns"], trigger

    # `millrace drift --date` by itself: that month against the rest of what the champion saw; the
    # report on stdout, the trigger left for whoever acts on it.
    alone = subprocess.run(MILLRACE + ["--project", str(project_dir), "drift", "--date", "2020-10-01", "--json"],
                           capture_output=True, text=True, env=cli_env(state), timeout=600)
    assert alone.returncode == 0, alone.stderr
    checked = json.loads(alone.stdout)
    assert [(c["model"], c["triggered"], c["date"]) for c in checked] == [("likes", True, "2020-10")], checked
    assert [p.stem for p in (state / "drift" / "triggers").glob("*.json")] == ["likes"]
