"""The lake's Delta tables: what a commit records, staged files no reader sees, schema changes of
a new contract version, and a lake from before the table format converted in place."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from millrace.contracts.arrow import arrow_schema
from millrace.contracts.project import load_project
from millrace.pipelines import commit, delta, lake, landing
from millrace.pipelines.decode import decode_file
from millrace.pipelines.errors import SchemaChanged
from millrace.pipelines.ingest import ingest
from millrace.pipelines.write import Locations, write_partitions
from tests.pipelines.test_transforms import HEADER

KEY = "month"


@pytest.fixture
def project(project_dir):
    """The example project with ratings landed on two days of two months."""
    p = load_project(project_dir)
    for day, ts, users in (("2009-12-14", 1260759144, 30), ("2010-01-02", 1262434000, 40)):
        folder = os.path.join(p.landing, "ratings", day)
        os.makedirs(folder)
        with open(os.path.join(folder, "r.csv"), "w") as fh:
            fh.write(HEADER + "".join(f"{u},{u + 1},4.0,{ts}\n" for u in range(1, users + 1)) + f"1,x,4.0,{ts}\n")
    return p


def _stage(p, run_id: str, contract=None):
    contract = contract or p.contract("ratings")
    where = Locations(p.lake, p.quarantine, p.state_dir)
    items = [(f.partition, [decode_file(contract, "ratings", f, open(f.path, "rb").read(), 2**62, run_id)])
             for f in landing.scan(p.landing, "ratings", contract).files]
    return write_partitions(contract, "ratings", items, where, run_id, commit=False)


def _stock_count(p) -> int:
    return DeltaTable(os.path.join(p.lake, "ratings")).to_pyarrow_dataset().count_rows()


def test_one_commit_per_run_with_its_facts_in_the_commit_properties(project):
    result = ingest(project, "ratings", validate=False)
    assert result.version == 0 and len(result.committed) == 2
    table = DeltaTable(os.path.join(project.lake, "ratings"))
    assert table.version() == 0 and table.metadata().partition_columns == [KEY]
    info = table.history(1)[0]
    assert info["millrace.run_id"] == result.run_id and info["millrace.step"] == "commit"
    assert json.loads(info["millrace.partitions"]) == ["2009-12", "2010-01"]
    contract = project.contract("ratings")
    assert info["millrace.contract"] == f"{contract.id}@{contract.version}"
    assert _stock_count(project) == 70
    quarantine = DeltaTable(os.path.join(project.quarantine, "ratings"))
    assert quarantine.to_pyarrow_dataset().count_rows() == 2
    # the schema stock readers see: the contract's stored columns, then the partition key
    assert pa.schema(table.schema().to_arrow()).names == arrow_schema(project.contract("ratings")).names + [KEY]


def test_staged_partitions_are_invisible_until_the_commit(project):
    ingest(project, "ratings", validate=False)
    reports = _stage(project, "run2")
    assert {r.status for r in reports} == {"staged"}
    # the staged run's files sit beside the committed ones; every reader still sees the first run
    assert {c.manifest.run_id for c in lake.committed_partitions(project.lake, "ratings", KEY)} != {"run2"}
    assert _stock_count(project) == 70 and lake.read_source(project.lake, "ratings", KEY).num_rows == 70
    done, version = commit.commit_reports(project.lake, project.quarantine, "ratings", project.contract("ratings"),
                                          "run2", reports)
    assert {r.status for r in done} == {"committed"} and version == 1  # the lake table's second commit
    assert {c.manifest.run_id for c in lake.committed_partitions(project.lake, "ratings", KEY)} == {"run2"}
    for folder in lake.partition_folders(project.lake, "ratings", KEY):
        assert all("run2" in name for name in os.listdir(folder)), "the replaced run's files are removed"
    assert _stock_count(project) == 70


def test_a_new_nullable_column_joins_the_schema_and_reads_null_in_older_partitions(project):
    ingest(project, "ratings", validate=False)
    contract = project.contract("ratings")
    wider = pa.schema(list(arrow_schema(contract)) + [pa.field("source_app", pa.string())])
    root = os.path.join(project.lake, "ratings")
    delta.replace_partitions(root, delta.table_schema(wider, KEY), KEY, [], [], {"millrace.step": "test"})
    table = DeltaTable(root)
    assert "source_app" in pa.schema(table.schema().to_arrow()).names
    rows = table.to_pyarrow_dataset().to_table()
    assert rows.num_rows == 70 and rows.column("source_app").null_count == 70


def test_a_changed_column_type_needs_every_partition_rebuilt(project):
    ingest(project, "ratings", validate=False)
    contract = project.contract("ratings")
    changed = pa.schema([pa.field(f.name, pa.string() if f.name == "rating" else f.type) for f in arrow_schema(contract)])
    root = os.path.join(project.lake, "ratings")
    with pytest.raises(SchemaChanged) as info:
        delta.replace_partitions(root, delta.table_schema(changed, KEY), KEY, [], ["2009-12"], {})
    message = str(info.value)
    assert "changed type: rating" in message and "2010-01" in message and "millrace ingest" in message
    assert info.value.exit_code == 1
    # replacing every partition may change it: the table's metadata is replaced with the new schema
    old = {f.partition: f for f in delta.snapshot(root, KEY).files}
    files = [delta.NewFile(v, f.name, f.size, 0) for v, f in old.items()]
    delta.replace_partitions(root, delta.table_schema(changed, KEY), KEY, files, sorted(old), {})
    assert pa.schema(DeltaTable(root).schema().to_arrow()).field("rating").type == pa.string()


def test_a_lake_from_before_the_table_format_is_converted_by_the_next_ingest(project):
    first = ingest(project, "ratings", validate=False)
    rows = lake.read_source(project.lake, "ratings", KEY).sort_by("userId")
    # make it the old layout: no tables, each partition committed by its _manifest.json
    for area in (project.lake, project.quarantine):
        root = os.path.join(area, "ratings", delta.LOG)
        for name in os.listdir(root):
            os.remove(os.path.join(root, name))
        os.rmdir(root)
    for folder in lake.partition_folders(project.lake, "ratings", KEY):
        os.rename(os.path.join(folder, lake.manifest_name(first.run_id)), os.path.join(folder, lake.LEGACY_MANIFEST))
    with pytest.raises(lake.CorruptFile, match="predates the table format") as info:
        lake.committed_partitions(project.lake, "ratings", KEY)
    assert "millrace ingest --source ratings" in str(info.value)

    again = ingest(project, "ratings", validate=False)
    assert again.reports == []  # nothing to rebuild: the landing files did not change
    assert lake.read_source(project.lake, "ratings", KEY).sort_by("userId").equals(rows)
    assert _stock_count(project) == 70
    assert DeltaTable(os.path.join(project.quarantine, "ratings")).to_pyarrow_dataset().count_rows() == 2
    for folder in lake.partition_folders(project.lake, "ratings", KEY):
        assert lake.LEGACY_MANIFEST not in os.listdir(folder)
