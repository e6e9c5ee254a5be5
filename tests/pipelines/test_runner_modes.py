"""The same landing set ingested in-process and with Beam's multi-processing DirectRunner
(``--direct_running_mode=multi_processing --direct_num_workers=2``, passed through the CLI)
gives the same lake: same rows, same quarantine, same manifests up to run ids."""
from __future__ import annotations

import calendar
import datetime as dt
import json
import os
import posixpath
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest

from millrace.contracts.project import load_project
from millrace.pipelines import lake

pytestmark = pytest.mark.slow  # Beam in two processes, the CLI in subprocesses

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "movielens"
SOURCE, KEY = "ratings", "month"
ENV_OVERRIDES = ("MILLRACE_KILL_AT", "MILLRACE_PROJECT", "MILLRACE_STATE_DIR", "MILLRACE_LANDING_URI",
                 "MILLRACE_LAKE_URI", "MILLRACE_QUARANTINE_URI")
MULTI = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def _epoch(d: dt.date, hour: int) -> int:
    return calendar.timegm((d.year, d.month, d.day, hour, 0, 0))


def build_landing(root: Path) -> dict:
    """3 months x 4 daily files (CSV and JSON lines) x 15 ratings, plus per month one bad row and one
    newer copy of an existing key. Returns the expected partition row counts and quarantine reasons."""
    for mi in (4, 5, 6):
        for i, day in enumerate((2, 11, 19, 28)):
            d = dt.date(2016, mi, day)
            rows = [(u, 100 * mi + day, (0.5, 2.0, 3.0, 4.5, 5.0)[u % 5], _epoch(d, u)) for u in range(1, 16)]
            if day == 19:   # the latest rating of (1, movie of day 2) wins; the day-2 one is a duplicate
                rows.insert(4, (1, 100 * mi + 2, 2.0, _epoch(d, 23)))
            if i % 2 == 0:
                lines = ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r},{t}" for u, m, r, t in rows]
                if day == 2:
                    lines.insert(3, f"77,{100 * mi + day},5.5,{_epoch(d, 1)}")          # out of range
            else:
                lines = [json.dumps({"userId": u, "movieId": m, "rating": r, "timestamp": t}) for u, m, r, t in rows]
            folder = root / SOURCE / d.isoformat()
            folder.mkdir(parents=True)
            (folder / f"ratings-{d}.{'csv' if i % 2 == 0 else 'jsonl'}").write_text("\n".join(lines) + "\n")
    months = ("2016-04", "2016-05", "2016-06")
    return {"rows": {m: 60 for m in months},
            "reasons": {m: Counter({"out_of_range": 1, "duplicate_key": 1}) for m in months}}


def ingest(project: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["MILLRACE_STATE_DIR"] = str(state)
    cmd = [sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project), "ingest", "--source", SOURCE, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=state.parent)
    assert proc.returncode == 0, f"ingest {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def read_lake(project: Path, state: Path) -> dict:
    """The lake as readers see it, without run ids, times or absolute paths; checks it is tidy."""
    with mock.patch.dict(os.environ, {"MILLRACE_STATE_DIR": str(state)}):
        for name in ENV_OVERRIDES:
            if name != "MILLRACE_STATE_DIR":
                os.environ.pop(name, None)
        p = load_project(project)
        lake_uri, quarantine_uri = p.lake, p.quarantine
    committed = lake.committed_partitions(lake_uri, SOURCE, KEY)
    rows: dict[str, list] = {}
    for r in lake.read_source(lake_uri, SOURCE, KEY).to_pylist():
        rows.setdefault(r[KEY], []).append((r["userId"], r["movieId"], r["rating"], r["timestamp"].isoformat()))
    keys = [(u, m) for part in rows.values() for u, m, _, _ in part]
    assert len(keys) == len(set(keys)), "duplicate keys in the lake"
    quarantine = sorted((r["partition"], posixpath.basename(r["file"]), r["line"], r["reason"], r["field"] or "",
                         r["payload"])
                        for r in lake.read_quarantine(quarantine_uri, lake_uri, SOURCE, KEY).to_pylist())
    stats = {}
    for c in committed:
        m = c.manifest
        listed = {f.name for f in m.files} | {lake.manifest_name(m.run_id)}
        if m.expectations:
            listed.add(m.expectations.results)
        assert set(os.listdir(c.directory)) == listed, f"stray or missing files in {c.directory}"
        assert set(os.listdir(m.quarantine.directory)) == set(m.quarantine.files)
        stats[c.value] = (m.rows, m.quarantine.rows, m.quarantine.by_reason, m.duplicates_resolved,
                          sorted(posixpath.basename(i.path) for i in m.inputs),
                          (m.expectations.success if m.expectations else None))
    assert sorted(os.listdir(state / "lake" / SOURCE)) == ["_delta_log"] + [f"{KEY}={c.value}" for c in committed]
    return {"rows": {p: sorted(r) for p, r in rows.items()}, "quarantine": quarantine, "stats": stats}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    project = root / "project"
    project.mkdir()
    shutil.copy(EXAMPLE / "millrace.yaml", project / "millrace.yaml")
    shutil.copytree(EXAMPLE / "contracts", project / "contracts")
    expected = build_landing(root / "landing")
    return root, project, expected


def _state(root: Path, name: str) -> Path:
    state = root / name
    shutil.copytree(root / "landing" / SOURCE, state / "landing" / SOURCE)
    return state


def test_multi_processing_lake_equals_in_process_lake(setup):
    root, project, expected = setup
    in_process, multi = _state(root, "in_process"), _state(root, "multi")
    ingest(project, in_process)
    proc = ingest(project, multi, *MULTI)
    # Beam's SDK harness logs from its worker processes: the option reached the runner.
    assert "sdk harness starting" in proc.stderr.lower(), "multi_processing mode did not start workers"

    want = read_lake(project, in_process)
    got = read_lake(project, multi)
    assert {p: len(r) for p, r in want["rows"].items()} == expected["rows"]
    assert {p: Counter(q[3] for q in want["quarantine"] if q[0] == p) for p in want["rows"]} == expected["reasons"]
    assert all(s[5] is True for s in want["stats"].values()), "expectation suites must run and pass"
    assert got == want
