"""The CLI end to end, as a user runs it: the example nightly, reruns, and bad input.

Every test here runs the CLI in a subprocess through a real command, so each is marked `slow`
(`pytest -m "not slow"` skips them), except `--help`, whose start-up time is the point. The nightly
is the session's one run (tests/conftest.py `nightly_run`), read only; tests that change state use
`nightly_copy`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from millrace.contracts.project import load_project
from millrace.pipelines import lake
from tests.conftest import EXAMPLE

MILLRACE = [sys.executable, "-m", "millrace.pipelines.cli"]


def run(args, env_state: Path, project: Path | None = None, check: bool = True, timeout: int = 600, **extra: str):
    env = dict(os.environ, MILLRACE_STATE_DIR=str(env_state), COLUMNS="120", **extra)
    env.pop("MILLRACE_KILL_AT", None)
    cmd = MILLRACE + (["--project", str(project)] if project else []) + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def nightly_state(nightly_run):
    """The session's one nightly run of the bundled example (tests/conftest.py), read only."""
    return nightly_run.state, nightly_run.stdout


@pytest.mark.slow
def test_nightly_ingests_every_landed_record(nightly_state):
    state, out = nightly_state
    assert "nightly done" in out
    os.environ["MILLRACE_STATE_DIR"] = str(state)
    project = load_project(EXAMPLE)
    for source, key, good_rows in (("ratings", "month", 100_004), ("movies", "dt", 9_066)):
        parts = lake.committed_partitions(project.lake, source, key)
        landed = sum(i.records for p in parts for i in p.manifest.inputs)
        good = lake.read_source(project.lake, source, key)
        quarantine = lake.read_quarantine(project.quarantine, project.lake, source, key)
        assert good.num_rows + quarantine.num_rows == landed
        assert good.num_rows == good_rows  # every real MovieLens record is kept
        planted = json.loads(Path(state, "example", f"planted-{source}.json").read_text())
        got = {(r["file"], r["line"]): r["reason"] for r in quarantine.select(["file", "line", "reason"]).to_pylist()}
        assert len(planted) == quarantine.num_rows
        for p in planted:
            assert got.get((p["file"], p["line"])) == p["reason"], p
    assert len(lake.committed_partitions(project.lake, "ratings", "month")) == 246
    assert Path(state, "data_docs", "index.html").exists() and Path(state, "gx", "great_expectations.yml").exists()


@pytest.mark.slow
def test_nightly_rerun_is_a_no_op(nightly_copy):
    out = run(["nightly"], nightly_copy.state, **nightly_copy.env).stdout
    assert out.count("nothing to ingest") == 2
    assert "nothing new to train" in out and "version 2" not in out


@pytest.mark.slow
def test_ingest_date_rebuilds_one_partition_without_duplicates(nightly_copy):
    state, env = nightly_copy.state, nightly_copy.env
    before = run(["lake", "ls", "--source", "ratings"], state, **env).stdout
    out = run(["ingest", "--source", "ratings", "--date", "2016-10-03"], state, **env).stdout
    assert "partitions committed" in out
    after = run(["lake", "ls", "--source", "ratings"], state, **env).stdout
    rows = lambda text: [line.split("run=")[0] for line in text.splitlines()]  # noqa: E731
    *parts_before, total_before = rows(before)
    *parts_after, total_after = rows(after)
    assert parts_before == parts_after and "month=2016-10" in after
    version = lambda total: int(total.rsplit("table version ", 1)[1].rstrip(")"))  # noqa: E731
    assert total_before.split(" (")[0] == total_after.split(" (")[0]
    assert version(total_after) == version(total_before) + 1, "one commit for the rebuilt partition"


@pytest.mark.slow
def test_quarantine_can_be_inspected(nightly_state):
    state, _ = nightly_state
    out = run(["lake", "quarantine", "--source", "ratings", "--reason", "bad_encoding", "--limit", "3"], state).stdout
    assert out.count("bad_encoding(") == 3
    assert "40 quarantined rows" in out


def _assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_unknown_source(tmp_path):
    _assert_one_line_error(run(["ingest", "--source", "nope"], tmp_path, check=False), "unknown source 'nope'", "ratings")


@pytest.mark.slow
def test_missing_landing_folder(tmp_path):
    _assert_one_line_error(run(["ingest", "--source", "ratings"], tmp_path, check=False), "landing folder", "does not exist")


@pytest.mark.slow
def test_empty_range(nightly_state):
    state, _ = nightly_state
    proc = run(["ingest", "--source", "ratings", "--from", "1980-01-01", "--to", "1980-12-31"], state, check=False)
    _assert_one_line_error(proc, "no landing files", "1980-01-01")


@pytest.mark.slow
def test_bad_date(tmp_path):
    _assert_one_line_error(run(["ingest", "--source", "ratings", "--date", "13/01/2020"], tmp_path, check=False),
                           "--date", "YYYY-MM-DD")


@pytest.mark.slow
def test_malformed_contract(project_dir, tmp_path):
    contract = project_dir / "contracts" / "ratings.yaml"
    contract.write_text(contract.read_text().replace("logicalType: integer", "logicalType: int", 1))
    proc = run(["ingest", "--source", "ratings"], tmp_path, project=project_dir, check=False)
    _assert_one_line_error(proc, str(contract), "logicalType")
    lint = run(["contracts", "lint", str(contract), str(project_dir / "contracts" / "movies.yaml")], tmp_path, check=False)
    # A wrong contract is bad input: exit 2 (README "Exit codes"); 1 is for runs that refused work.
    assert lint.returncode == 2 and "ok    " in lint.stdout and "logicalType" in lint.stderr


@pytest.mark.slow
def test_malformed_project_file(project_dir, tmp_path):
    (project_dir / "millrace.yaml").write_text("name: x\nsources:\n  ratings:\n    contrakt: a.yaml\n")
    proc = run(["ingest", "--source", "ratings"], tmp_path, project=project_dir, check=False)
    _assert_one_line_error(proc, "millrace.yaml", "sources.ratings")


@pytest.mark.slow
def test_unreadable_file_fails_the_run_naming_it(project_dir, tmp_path):
    folder = tmp_path / "landing" / "ratings" / "2009-12-14"
    folder.mkdir(parents=True)
    (folder / "good.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,1260759144\n")
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    proc = run(["ingest", "--source", "ratings"], tmp_path, project=project_dir, check=False)
    assert proc.returncode == 1
    assert "broken.parquet" in proc.stderr and "month=2009-12" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lake.committed_partitions(str(tmp_path / "lake"), "ratings", "month") == []


@pytest.mark.slow
def test_over_threshold_partition_fails_run_naming_it(project_dir, tmp_path):
    folder = tmp_path / "landing" / "ratings" / "2009-12-14"
    folder.mkdir(parents=True)
    (folder / "r.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,1260759144\n1,3,11,1260759144\n")
    other = tmp_path / "landing" / "ratings" / "2010-01-05"
    other.mkdir(parents=True)
    (other / "r.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,1262700000\n")
    proc = run(["ingest", "--source", "ratings"], tmp_path, project=project_dir, check=False)
    assert proc.returncode == 1
    assert "month=2009-12" in proc.stderr and "threshold" in proc.stderr
    committed = [p.value for p in lake.committed_partitions(str(tmp_path / "lake"), "ratings", "month")]
    assert committed == ["2010-01"]


HELP_SECONDS = 2.0  # measured here: about 0.4 s on an idle 2-core machine


def test_help_is_fast_and_lists_commands(tmp_path):
    took = []
    for _ in range(3):  # the best of three: one busy moment on a shared machine is not the CLI's cost
        started = time.perf_counter()
        proc = run(["--help"], tmp_path)
        took.append(time.perf_counter() - started)
    for command in ("nightly", "ingest", "contracts", "example", "lake"):
        assert command in proc.stdout
    assert min(took) < HELP_SECONDS, f"millrace --help took {min(took):.2f} s (best of 3)"


@pytest.mark.slow
def test_nightly_builds_features_and_serves_them_online(nightly_state, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    state, out = nightly_state
    assert "online user_activity" in out
    got = run(["features", "get", "user_activity", "1", "15"], state).stdout.splitlines()
    assert len(got) == 2 and "'rating_count_all': 20" in got[0]
    # user 2 last rated in 1996: older than the 3650d ttl before the newest rating (ttl_clock: data)
    old = run(["features", "get", "user_activity", "1", "2"], state, check=False)
    assert old.returncode == 1 and old.stdout.count("{") == 1
    assert old.stderr.strip() == "error: user_activity: 2: expired (older than the view's ttl 3650d)"
    spine = tmp_path / "spine.parquet"
    times = pa.array([1_300_000_000_000_000, 1_500_000_000_000_000], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"userId": [1, 1], "movieId": [31, 31], "event_timestamp": times, "label": [1, 0]}), spine)
    output = tmp_path / "train.parquet"
    res = run(["features", "training-set", "--spine", str(spine), "-f", "user_activity:rating_count_all",
               "-f", "movie_metadata:title", "--output", str(output)], state)
    assert "2 rows" in res.stdout
    rows = pq.read_table(output).to_pylist()
    assert [r["user_activity__rating_count_all"] for r in rows] == [20, 20]  # user 1 rated 20 movies on 2009-12-14
    assert rows[0]["movie_metadata__title"] == "Dangerous Minds"


@pytest.mark.slow
def test_feature_errors_are_one_line(nightly_state, tmp_path):
    state, _ = nightly_state
    _assert_one_line_error(run(["features", "get", "nope", "1"], state, check=False), "unknown feature view 'nope'")
    _assert_one_line_error(run(["features", "materialize"], tmp_path, check=False), "features build")


@pytest.mark.slow
def test_nightly_trains_both_families_and_promotes(nightly_state):
    _, out = nightly_state
    for name in ("movielens.movie_retrieval", "movielens.will_like"):
        assert f"{name} version 1" in out, out
    assert out.count("champion: pass") == 2, out  # first run: no champion yet, the metric gates pass
    assert "vs popularity baseline" in out


@pytest.mark.slow
def test_models_commands(nightly_state):
    state, _ = nightly_state
    listed = run(["models", "list"], state).stdout
    assert "movie_retrieval" in listed and "champion=1" in listed and "will_like" in listed
    shown = run(["models", "show", "will_like"], state).stdout
    assert "version 1" in shown and "champion" in shown and "contract.ratings" in shown and "auc=" in shown
    assert "champion of movielens.will_like" in run(["models", "show", "will_like", "--at", "2000-01-01"], state).stdout
    assert ": none" in run(["models", "show", "will_like", "--at", "2000-01-01"], state).stdout
    today = run(["models", "show", "will_like", "--at", "2999-01-01"], state).stdout
    assert today.strip().endswith(": 1")
    _assert_one_line_error(run(["models", "promote", "will_like", "7", "--reason", "x"], state, check=False),
                           "no version 7")
    _assert_one_line_error(run(["models", "rollback", "will_like", "--reason", "x"], state, check=False),
                           "no earlier champion")
    _assert_one_line_error(run(["train", "--model", "nope"], state, check=False), "unknown model 'nope'",
                           "movie_retrieval")
    _assert_one_line_error(run(["models", "show", "nope"], state, check=False), "unknown model 'nope'")


@pytest.mark.slow
def test_nightly_date_skips_committed_work_unless_rerun(nightly_copy):
    state, env = nightly_copy.state, nightly_copy.env
    again = json.loads(run(["nightly", "--date", "2016-10-03", "--no-train", "--json"], state, **env).stdout)
    stages = {s["stage"]: s for s in again["stages"]}
    assert stages["ingest"]["outcome"] == "skipped" and stages["features"]["outcome"] == "skipped", again

    redo = json.loads(run(["nightly", "--date", "2016-10-03", "--rerun", "--no-train", "--json"], state, **env).stdout)
    stages = {s["stage"]: s for s in redo["stages"]}
    assert stages["ingest"]["outcome"] == "done" and "1 partition(s) committed" in stages["ingest"]["detail"], redo
    assert stages["features"]["outcome"] == "done", redo
    assert "0 row(s) newer than" in stages["drift"]["detail"], redo  # the champions saw that day: nothing new
    assert stages["train"]["outcome"] == "skipped" and redo["models_trained"] == [], redo


@pytest.mark.slow
def test_backfill_plan_lists_the_partitions_of_the_range(nightly_state):
    state, _ = nightly_state
    planned = json.loads(run(["backfill", "--from", "2016-09-01", "--to", "2016-10-16", "--plan", "--json"],
                             state).stdout)
    assert [(p["source"], p["partition"]) for p in planned] == [
        ("ratings", "2016-09"), ("ratings", "2016-10"), ("movies", "2016-10-16")], planned
    assert planned[1]["first_landing"] == "2016-10-03" and planned[1]["last_landing"] == "2016-10-16", planned


@pytest.mark.slow
@pytest.mark.parametrize("args, needles", [
    (["nightly", "--rerun"], ("--rerun", "needs --date")),
    (["backfill", "--from", "2016-02-01", "--to", "2016-01-01"], ("is after --to", "swap them")),
    (["backfill", "--from", "2016-01-01", "--to", "2016-02-01", "--stages", "ingest,deploy"], ("unknown stage", "deploy")),
])
def test_backfill_and_rerun_bad_input_is_one_line(tmp_path, args, needles):
    proc = run(args, tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _assert_one_line_error(proc, *needles)
