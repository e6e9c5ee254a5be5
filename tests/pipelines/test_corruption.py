"""A corrupt lake is one line naming the file and the fix (exit 2), never a traceback and never
different rows: truncated or emptied manifests, swapped or truncated data and quarantine files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from millrace.contracts.project import load_project
from millrace.pipelines import lake, landing
from millrace.pipelines.decode import decode_file
from millrace.pipelines.errors import CorruptFile
from millrace.pipelines.ingest import plan
from millrace.pipelines.write import Locations, write_partition

HEADER = "userId,movieId,rating,timestamp\n"
FIX = "millrace ingest --source ratings --from 2009-12-01 --to 2009-12-31"


@pytest.fixture
def committed(project_dir):
    """The example project with two committed partitions (2009-12, 2010-01) built from its landing zone."""
    project = load_project(project_dir)
    for day, ts, users in (("2009-12-14", 1260759144, 30), ("2010-01-02", 1262434000, 40)):
        folder = os.path.join(project.landing, "ratings", day)
        os.makedirs(folder)
        with open(os.path.join(folder, "r.csv"), "w") as fh:
            fh.write(HEADER + "".join(f"{u},{u + 1},4.0,{ts}\n" for u in range(1, users + 1)) + f"1,x,4.0,{ts}\n")
    contract = project.contract("ratings")
    where = Locations(project.lake, project.quarantine, project.state_dir)
    for f in landing.scan(project.landing, "ratings", contract).files:
        decoded = decode_file(contract, "ratings", f, open(f.path, "rb").read(), 2**62, "run1")
        assert write_partition(contract, "ratings", f.partition, [decoded], where, "run1").status == "committed"
    return project


def _dir(project, value: str) -> str:
    return lake.partition_dir(project.lake, "ratings", "month", value)


def _manifest(project, value="2009-12") -> str:
    return os.path.join(_dir(project, value), lake.manifest_name("run1"))


def _data(project, value="2009-12") -> str:
    return os.path.join(_dir(project, value), "part-run1-00000.parquet")


def _read(project):
    return lake.read_source(project.lake, "ratings", "month")


def test_the_fixture_reads_back(committed):
    assert _read(committed).num_rows == 70
    assert lake.read_quarantine(committed.quarantine, committed.lake, "ratings", "month").num_rows == 2


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b[: len(b) // 2], "not a valid PartitionManifest (truncated or not JSON: EOF while parsing"),
    (lambda b: b"", "not a valid PartitionManifest (empty file)"),
    (lambda b: b"[]", "not a valid PartitionManifest ((top level)"),
])
def test_a_truncated_or_emptied_manifest_names_the_file_and_the_rebuild(committed, damage, problem):
    path = _manifest(committed)
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(damage(data))
    for read in (lambda: lake.committed_partitions(committed.lake, "ratings", "month"), lambda: _read(committed)):
        with pytest.raises(CorruptFile) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{path}: {problem}") and FIX in message and "\n" not in message
        assert info.value.exit_code == 2
    # Plain ingest sees the partition as never committed and rebuilds it; the other one is up to date.
    chosen = plan(committed, "ratings")
    assert {f.partition for f in chosen.files} == {"2009-12"}


def test_an_intact_lake_is_up_to_date(committed):
    assert plan(committed, "ratings").files == []


def test_a_swapped_data_file_raises_instead_of_yielding_other_rows(committed):
    shutil.copy(_data(committed, "2010-01"), _data(committed, "2009-12"))   # a valid Parquet file, other rows
    with pytest.raises(CorruptFile) as info:
        _read(committed)
    message = str(info.value)
    assert message.startswith(f"{_data(committed)}: SHA-256 differs from the manifest's") and FIX in message


def test_a_truncated_data_file_raises(committed):
    path = _data(committed)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CorruptFile, match="truncated, swapped or rewritten"):
        _read(committed)


def test_a_deleted_data_file_raises_when_the_manifest_did_not_change(committed):
    os.remove(_data(committed))
    with pytest.raises(CorruptFile, match="listed in the manifest but missing"):
        _read(committed)


def test_a_truncated_quarantine_file_raises(committed):
    [path] = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(committed.quarantine, "ratings", "month=2009-12"))
              for f in files]
    with open(path, "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(CorruptFile, match="not a readable Parquet file"):
        lake.read_quarantine(committed.quarantine, committed.lake, "ratings", "month")


@pytest.mark.slow
def test_lake_ls_on_a_corrupt_manifest_is_one_line_and_exit_2(committed, project_dir):
    open(_manifest(committed), "w").close()
    env = {**os.environ, "MILLRACE_STATE_DIR": committed.state_dir}
    proc = subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project_dir), "lake", "ls",
                           "--source", "ratings"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {_manifest(committed)}: not a valid PartitionManifest")


def test_a_missing_manifest_of_a_committed_run_names_it(committed):
    os.remove(_manifest(committed))
    with pytest.raises(CorruptFile) as info:
        _read(committed)
    assert str(info.value).startswith(f"{_manifest(committed)}: is missing") and FIX in str(info.value)
    assert {f.partition for f in plan(committed, "ratings").files} == {"2009-12"}  # plain ingest rebuilds it


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"{not json\n"])
def test_a_damaged_table_log_is_one_line_naming_the_log(committed, damage):
    log = os.path.join(committed.lake, "ratings", "_delta_log")
    newest = max(f for f in os.listdir(log) if f.endswith(".json"))
    path = os.path.join(log, newest)
    data = open(path, "rb").read()
    open(path, "wb").write(damage(data))
    with pytest.raises(CorruptFile) as info:
        _read(committed)
    message = str(info.value)
    assert message.startswith(f"{log}: the table cannot be read") and "\n" not in message
    assert info.value.exit_code == 2


def test_quarantine_of_a_source_with_nothing_committed_is_empty_with_its_schema(tmp_path):
    """No committed partition: zero rows with the quarantine columns (a column-less table lists phantom rows)."""
    from millrace.pipelines import lake
    from millrace.validation.quarantine import SCHEMA

    table = lake.read_quarantine(str(tmp_path / "quarantine"), str(tmp_path / "lake"), "ratings", "month")
    assert table.num_rows == 0 and table.schema.names == SCHEMA.names
    assert table.slice(0, 20).to_pylist() == []


def test_a_manifest_rewritten_after_it_was_read_is_read_again(committed):
    """Manifests are parsed once per process while unchanged; a damaged one read before is not trusted."""
    path = _manifest(committed)
    assert lake.read_manifest(_dir(committed, "2009-12"), "run1").rows == 30
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(CorruptFile, match="not a valid PartitionManifest"):
        lake.read_manifest(_dir(committed, "2009-12"), "run1")
