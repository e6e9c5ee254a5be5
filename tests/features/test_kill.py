"""Feature builds and materialization killed with SIGKILL at each of their crash points
(contracts/faults.py FEATURE_POINTS), then rerun: the offline tables, the online store and the
record of what it holds equal those of a run that was never killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from millrace.contracts.faults import FEATURE_POINTS
from millrace.features import feast_repo, offline
from millrace.features.materialize import _state_path, materialize
from millrace.pipelines.features_build import build
from tests.features.test_feast_and_online import (VIEWS, all_keys, assert_same_tables, by_view, clone_state,
                                                  expected_values, make_state, offline_tables, online)

BUILD_POINTS = ("after_view_data", "after_view_commit")


def test_every_feature_crash_point_is_covered():
    assert set(BUILD_POINTS) | {"mid_materialize"} == set(FEATURE_POINTS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A lake built and materialized without interruption."""
    with pytest.MonkeyPatch.context() as mp:
        e = make_state(mp, tmp_path_factory.mktemp("kill-reference"))
        materialize(e.project, e.features, store=feast_repo.apply(e.project, e.features))
    return e


def _killed(e, point: str, call: str) -> None:
    """Run ``call`` (build or materialize) in a fresh interpreter told to die at ``point``."""
    code = textwrap.dedent(f"""
        from millrace.contracts.project import load_project
        from millrace.features.materialize import materialize
        from millrace.features.spec import load_features
        from millrace.pipelines.features_build import build
        project = load_project({str(e.root)!r})
        {call}(project, load_features(project))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(MILLRACE_STATE_DIR=str(e.state), MILLRACE_KILL_AT=point)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: rc={proc.returncode}\n{proc.stderr[-2000:]}"


def _leftovers(e) -> list[Path]:
    return [p for p in Path(e.project.offline).rglob("*") if p.is_file() and p.name not in (offline.DATA, offline.MANIFEST)]


@pytest.mark.slow
@pytest.mark.parametrize("point", BUILD_POINTS)
def test_a_killed_build_converges_on_rerun(reference, point, tmp_path, monkeypatch):
    e = clone_state(monkeypatch, reference, tmp_path / "state", parts=("landing", "lake"))
    _killed(e, point, "build")
    reports = build(e.project, e.features)
    assert [r.status for r in reports] == ["built"] * len(VIEWS)
    assert_same_tables(offline_tables(e), offline_tables(reference))
    for view in VIEWS:
        offline.read_view(e.project.offline, view)  # every manifest matches its table
    assert _leftovers(e) == []


@pytest.mark.slow
@pytest.mark.parametrize("nth", [1, 3])
def test_a_killed_materialize_converges_on_rerun(reference, nth, tmp_path, monkeypatch):
    e = clone_state(monkeypatch, reference, tmp_path / "state")
    feast_repo.apply(e.project, e.features)
    _killed(e, f"mid_materialize:{nth}", "materialize")
    rerun = materialize(e.project, e.features)
    assert sum(by_view(rerun).values()) > 0  # the killed run left work undone
    for view in VIEWS:
        keys = all_keys(e, view)
        assert online(e, view, keys) == expected_values(e, view, keys) == online(reference, view, keys), view
        ours = pq.read_table(_state_path(e.project, view)).replace_schema_metadata(None)
        theirs = pq.read_table(_state_path(reference.project, view)).replace_schema_metadata(None)
        assert ours.sort_by(ours.column_names[0]).equals(theirs.sort_by(theirs.column_names[0])), view
    assert by_view(materialize(e.project, e.features)) == {v: 0 for v in VIEWS}
