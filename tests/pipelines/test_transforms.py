"""Each pipeline stage in memory: beam.Create + assert_that, as Beam's own examples test them."""
import time

import apache_beam as beam
from hypothesis import given, settings
from hypothesis import strategies as st
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from millrace.contracts.loader import load_contract
from millrace.pipelines import commit, lake
from millrace.pipelines.decode import DecodeUnderContract, LandingFile, decode_file
from millrace.pipelines.records import STAGED
from millrace.pipelines.write import COMMITTED, REJECTED, Locations, WritePartitions, resolve_duplicates, write_partition
from tests.conftest import EXAMPLE

RATINGS = load_contract(EXAMPLE / "contracts" / "ratings.yaml")
NOW_US = int(time.time() * 1_000_000)
HEADER = "userId,movieId,rating,timestamp\n"


def _landing(tmp_path, day: str, text: str, name="r.csv") -> LandingFile:
    path = tmp_path / "landing" / "ratings" / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return LandingFile(str(path), day, day[:7], path.stat().st_size, path.stat().st_mtime)


def test_decode_under_contract(tmp_path):
    a = _landing(tmp_path, "2009-12-14", HEADER + "1,2,4.0,1260759144\n1,x,4.0,1260759144\n")
    b = _landing(tmp_path, "2010-01-02", HEADER + "3,4,5.0,1262434000\n")
    with TestPipeline() as p:
        out = (p | beam.Create([("2009-12", [a]), ("2010-01", [b])]) | DecodeUnderContract(RATINGS, "ratings", NOW_US, "run")
               | beam.Map(lambda kv: (kv[0], kv[1][0].good.num_rows, kv[1][0].quarantine.column("reason").to_pylist())))
        assert_that(out, equal_to([("2009-12", 1, ["type_mismatch"]), ("2010-01", 1, [])]))


def test_write_partitions_stages_for_the_runs_commit_and_resolves_duplicates(tmp_path):
    day1 = _landing(tmp_path, "2009-12-14", HEADER + "1,2,4.0,1260759144\n1,3,4.0,1260759144\n")
    # the same key a day later: the later event wins, the earlier one goes to quarantine
    day2 = _landing(tmp_path, "2009-12-15", HEADER + "1,2,2.0,1260845544\n")
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    decoded = [decode_file(RATINGS, "ratings", d, open(d.path, "rb").read(), NOW_US, "run", i)
               for i, d in enumerate((day1, day2))]
    with TestPipeline() as p:
        reports = (p | beam.Create([("2009-12", decoded)]) | WritePartitions(RATINGS, "ratings", where, "run")
                   | beam.Map(lambda r: (r.partition, r.status, r.good, r.by_reason)))
        assert_that(reports, equal_to([("2009-12", STAGED, 2, {"duplicate_key": 1})]))
    # staged: written under the run id, in no snapshot until the driver commits the run
    assert lake.committed_partitions(where.lake, "ratings", "month") == []
    staged = lake.read_manifest(lake.partition_dir(where.lake, "ratings", "month", "2009-12"), "run")
    version = commit.commit_run(where.lake, where.quarantine, "ratings", RATINGS, [staged], "run")
    assert version == 0 and [c.value for c in lake.committed_partitions(where.lake, "ratings", "month")] == ["2009-12"]
    table = lake.read_source(where.lake, "ratings", "month")
    assert sorted(zip(table["movieId"].to_pylist(), table["rating"].to_pylist())) == [(2, 2.0), (3, 4.0)]
    q = lake.read_quarantine(where.quarantine, where.lake, "ratings", "month").to_pylist()
    assert [(r["reason"], r["line"], r["payload"]) for r in q] == [("duplicate_key", 2, b"1,2,4.0,1260759144")]


def test_resolve_duplicates_keeps_latest_then_last_landed():
    t = pa.table({"userId": [1, 1, 1, 2], "movieId": [5, 5, 5, 5], "rating": [1.0, 2.0, 3.0, 4.0],
                  "timestamp": pa.array([10, 30, 30, 10], pa.timestamp("us", tz="UTC")),
                  "_file": pa.array([0, 0, 1, 0], pa.int32()), "_line": [2, 3, 2, 4]})
    kept, lost = resolve_duplicates(RATINGS, t)
    assert sorted(kept["rating"].to_pylist()) == [3.0, 4.0]
    assert sorted(lost["rating"].to_pylist()) == [1.0, 2.0]


def _decoded(tmp_path, text: str):
    d = _landing(tmp_path, "2009-12-14", HEADER + text)
    return decode_file(RATINGS, "ratings", d, open(d.path, "rb").read(), NOW_US, "run")


def test_threshold_rejects_partition_and_keeps_previous_commit(tmp_path):
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    good = _decoded(tmp_path, "1,2,4.0,1260759144\n")
    assert write_partition(RATINGS, "ratings", "2009-12", [good], where, "run1").status == COMMITTED
    bad = _decoded(tmp_path, "1,2,4.0,1260759144\n" + "1,2,9.0,1260759144\n" * 3)
    report = write_partition(RATINGS, "ratings", "2009-12", [bad], where, "run2")
    assert report.status == REJECTED and "threshold" in report.problem
    [committed] = lake.committed_partitions(where.lake, "ratings", "month")
    assert committed.manifest.run_id == "run1"  # readers still see the last good commit
    assert lake.read_partition(committed).num_rows == 1


def test_blocking_expectation_stops_commit_and_warning_does_not(tmp_path):
    from millrace.validation.expectations import SuiteRunner

    text = (EXAMPLE / "contracts" / "ratings.yaml").read_text().replace("mustBeGreaterThan: 0", "mustBeGreaterThan: 5")
    strict_path = tmp_path / "strict.yaml"
    strict_path.write_text(text)
    strict = load_contract(strict_path)
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    decoded = _decoded(tmp_path, "1,2,4.0,1260759144\n")
    report = write_partition(strict, "ratings", "2009-12", [decoded], where, "run", SuiteRunner(strict))
    assert report.status == REJECTED
    assert "expect_table_row_count_to_be_between" in report.problem
    assert lake.committed_partitions(where.lake, "ratings", "month") == []
    warn_path = tmp_path / "warn.yaml"
    warn_path.write_text(text.replace("severity: error", "severity: warning"))
    warn = load_contract(warn_path)
    report = write_partition(warn, "ratings", "2009-12", [decoded], where, "run", SuiteRunner(warn))
    assert report.status == COMMITTED
    assert report.expectations.failed_warnings and not report.expectations.failed_blocking
    [c] = lake.committed_partitions(where.lake, "ratings", "month")
    results = lake.read_bytes(lake.join(c.directory, c.manifest.expectations.results))
    assert b'"success": true' in results
    assert report.expectations.data_docs.endswith("/month=2009-12.html")  # its own page, warnings shown
    assert (tmp_path / "state" / "runs" / "ratings" / "run" / "validations" / "month=2009-12.json").exists()


def test_unsafe_partition_names_are_refused(tmp_path):
    with pytest.raises(ValueError):
        lake.partition_dir(str(tmp_path), "ratings", "month", "../../etc")


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(0, 5), st.integers(0, 2)),
                     max_size=40))
def test_duplicates_resolve_to_the_latest_row_per_key(rows):
    t = pa.table({"userId": [r[0] for r in rows], "movieId": [r[1] for r in rows], "rating": [4.0] * len(rows),
                  "timestamp": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
                  "_file": pa.array([r[3] for r in rows], pa.int32()), "_line": list(range(len(rows)))})
    kept, lost = resolve_duplicates(RATINGS, t)
    assert kept.num_rows + lost.num_rows == t.num_rows
    keys = list(zip(kept["userId"].to_pylist(), kept["movieId"].to_pylist()))
    assert len(keys) == len(set(keys)) == len({(r[0], r[1]) for r in rows})
    best = {}
    for line, (u, m, ts, f) in enumerate(rows):
        best[(u, m)] = max(best.get((u, m), (-1, -1, -1)), (ts, f, line))
    assert sorted(zip(keys, kept["_line"].to_pylist())) == sorted((k, v[2]) for k, v in best.items())
    times = [v.value for v in kept["timestamp"]]
    assert times == sorted(times)  # written in event-time order
