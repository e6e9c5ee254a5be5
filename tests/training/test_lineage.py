"""``pipelines.train.examples_and_lineage``: the examples come from the lake in one read, and the
lineage names exactly the commits (partition, ingest run, rows) and feature view builds they came from."""
from __future__ import annotations

import time

from millrace.features import offline
from millrace.pipelines.decode import LandingFile, decode_file
from millrace.pipelines.train import examples_and_lineage
from millrace.pipelines.write import COMMITTED, Locations, write_partition
from millrace.training.lineage import ContractRef, Lineage

HEADER = "userId,movieId,rating,timestamp\n"
DAYS = {"2009-12-14": "1,2,4.0,1260759144\n1,3,2.0,1260759145\n", "2010-01-02": "3,4,5.0,1262434000\n"}


def _ingest(project, tmp_path):
    contract = project.contract("ratings")
    where = Locations(project.lake, project.quarantine, project.state_dir)
    for day, rows in DAYS.items():
        path = tmp_path / "landing" / day / "r.csv"
        path.parent.mkdir(parents=True)
        path.write_text(HEADER + rows)
        landing = LandingFile(str(path), day, day[:7], path.stat().st_size, path.stat().st_mtime)
        decoded = decode_file(contract, "ratings", landing, path.read_bytes(), int(time.time() * 1e6), f"run-{day}")
        assert write_partition(contract, "ratings", day[:7], [decoded], where, f"run-{day}").status == COMMITTED
    return contract


def test_examples_and_lineage_name_the_commits_and_builds_read(tiny, tmp_path):
    contract = _ingest(tiny.project, tmp_path)
    table, time_column, lineage = examples_and_lineage(tiny.project, tiny.features, tiny.models(), "likes")
    assert table.num_rows == 3 and time_column == "timestamp"
    assert sorted(table.column(contract.partitioning.key).to_pylist()) == ["2009-12", "2009-12", "2010-01"]
    assert [(p.value, p.run_id, p.rows, p.contract_version) for p in lineage.examples.partitions] == [
        ("2009-12", "run-2009-12-14", 2, contract.version), ("2010-01", "run-2010-01-02", 1, contract.version)]
    assert lineage.examples.rows == 3 and len(lineage.examples.digest) == 64
    assert lineage.examples.contract == ContractRef(id=contract.id, version=contract.version)
    assert set(lineage.feature_views) == {"user_activity", "user_genres", "movie_popularity", "movie_metadata"}
    for view, built in lineage.feature_views.items():
        manifest = offline.read_manifest(tiny.project.offline, view)
        assert (built.sha256, built.run_id, built.rows) == (manifest.sha256, manifest.run_id, manifest.rows)
    assert set(lineage.contracts) == {"ratings", "movies"}
    assert Lineage.from_json(lineage.to_json()) == lineage
