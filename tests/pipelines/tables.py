"""What a state folder holds, as tables to compare: every committed lake row and offline feature
row, sorted, without the columns that record when a build ran."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from millrace.contracts.project import load_project
from millrace.features import offline
from millrace.features.spec import load_features
from millrace.pipelines import lake

BUILD_TIME_COLUMNS = ("created_timestamp",)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in table.column_names
                          if not pa.types.is_list(table.schema.field(c).type)])


def committed_contents(project_dir: Path, state: Path) -> dict[str, pa.Table]:
    """``lake/<source>`` (the contract's fields) and ``offline/<view>`` tables of ``state``."""
    before = os.environ.get("MILLRACE_STATE_DIR")
    os.environ["MILLRACE_STATE_DIR"] = str(state)
    try:
        project = load_project(project_dir)
        out = {}
        for source in project.sources:
            contract = project.contract(source)
            table = lake.read_source(project.lake, source, contract.partitioning.key)
            out[f"lake/{source}"] = _sorted(table.select([f.name for f in contract.fields]))
        if (project.root / "features.yaml").exists():
            for view in load_features(project).views:
                table = offline.read_view(project.offline, view)
                out[f"offline/{view}"] = _sorted(table.drop_columns(
                    [c for c in table.column_names if c in BUILD_TIME_COLUMNS]))
        return out
    finally:
        if before is None:
            del os.environ["MILLRACE_STATE_DIR"]
        else:
            os.environ["MILLRACE_STATE_DIR"] = before


def assert_same_contents(got: dict[str, pa.Table], want: dict[str, pa.Table]) -> None:
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    assert all(t.num_rows > 0 for t in want.values()), {k: t.num_rows for k, t in want.items()}
    for key in want:
        assert got[key].schema == want[key].schema, (key, got[key].schema, want[key].schema)
        assert got[key].equals(want[key]), f"{key}: {got[key].num_rows} rows vs {want[key].num_rows}"
