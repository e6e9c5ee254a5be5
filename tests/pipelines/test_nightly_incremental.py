"""The incremental nightly does the new data's work only, and ends where a whole rebuild would: the
feature views are rebuilt from the first day the new partitions can change, the Feast repository
is applied only when it changed, and the champions' facts are read from MLflow only when its
registry changed."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from dataclasses import replace

import pytest

from millrace.contracts.project import load_project
from millrace.features.spec import load_features
from millrace.pipelines.features_build import first_changed_day, rebuildable_from
from millrace.pipelines.nightly import Pending, _owe
from tests.conftest import MILLRACE, cli_env
from tests.pipelines.tables import assert_same_contents, committed_contents
from tests.pipelines.test_nightly import SPLIT_DAY, _land, _nightly, _report
from tests.training.conftest import synthetic


def test_the_first_changed_day_is_the_earliest_new_partition_of_an_event_time_source(project_dir):
    project = load_project(project_dir)
    features = load_features(project)
    assert first_changed_day(project, features, {"ratings": ["2016-10", "2016-08"]}) == dt.date(2016, 8, 1)
    assert first_changed_day(project, features, {"ratings": [], "movies": []}) is None  # nothing committed
    # the catalogue is read whole (a static view, the genres lookup): every day may change
    assert first_changed_day(project, features, {"ratings": ["2016-10"], "movies": ["2016-10-16"]}) is None
    # views never built: nothing to merge into
    assert rebuildable_from(project, features, dt.date(2016, 8, 1)) is None


def test_landing_dated_partitions_hold_events_of_any_day(project_dir, monkeypatch):
    project = load_project(project_dir)
    features = load_features(project)
    ratings = project.contract("ratings")
    by_landing_date = replace(ratings, partitioning=replace(ratings.partitioning, field=None))
    monkeypatch.setattr(project, "contract", lambda source: by_landing_date if source == "ratings" else None)
    assert first_changed_day(project, features, {"ratings": ["2016-10-16"]}) is None


def test_owed_rebuilds_widen_to_the_earliest_day_and_every_day_wins():
    day = dt.date(2020, 4, 1)
    owed = _owe(Pending(), "new data", features=True, features_from=day)
    assert (owed.features, owed.features_from) == (True, "2020-04-01")
    assert _owe(owed, "new data", features=True, features_from=dt.date(2020, 3, 1)).features_from == "2020-03-01"
    assert _owe(owed, "new data", features=True, features_from=dt.date(2020, 5, 1)).features_from == "2020-04-01"
    assert _owe(owed, "a kill mid-ingest", features=True).features_from == ""  # every day
    whole = _owe(Pending(), "views never built", features=True)
    assert _owe(whole, "new data", features=True, features_from=day).features_from == ""
    assert _owe(owed, "drift", train=("likes",)).features_from == "2020-04-01"  # training owes no rebuild


@pytest.mark.timeout(900)
def test_a_nightly_on_new_days_rebuilds_from_them_and_equals_a_whole_rebuild(project_dir, tmp_path):
    state = tmp_path / "state"
    ratings, movies = synthetic()
    _land(state / "landing", ratings, movies, lambda day: day < SPLIT_DAY)
    stages = ("--stages", "ingest,features,materialize")
    first = _nightly(project_dir, state, *stages)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (state / "feast" / "applied.sha256").exists()

    _land(state / "landing", ratings, None, lambda day: day >= SPLIT_DAY)
    second = _nightly(project_dir, state, *stages)
    assert second.returncode == 0, second.stdout + second.stderr
    detail = {s["stage"]: s["detail"] for s in _report(state, second.stdout)["stages"]}
    month = SPLIT_DAY.replace(day=1)  # ratings are partitioned by month of their event time
    assert f"the days from {month} on" in detail["features"], detail
    assert json.loads((state / "nightly" / "pending.json").read_text())["features_from"] == ""

    whole = tmp_path / "whole"
    shutil.copytree(state, whole, symlinks=True)
    rebuilt = subprocess.run(MILLRACE + ["--project", str(project_dir), "features", "build"], capture_output=True,
                             text=True, env=cli_env(whole), timeout=600)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert_same_contents(committed_contents(project_dir, state), committed_contents(project_dir, whole))
