"""The lake's table format: every source, and its quarantine, is a Delta Lake table.

millrace writes the Parquet files itself (under run-specific names, in Hive-style partition
folders) and commits them through deltalake's transaction API: a commit is one new JSON entry in
``<table>/_delta_log/``, created with put-if-absent, so a reader (millrace's, DuckDB's delta
extension, polars, Spark, pyarrow through deltalake) sees the snapshot before it or the snapshot
after it, on a local disk as on an object store. Files a snapshot does not list (a killed run's
output) are invisible to every reader.

Why Delta and not Iceberg: see docs/architecture.md ("The lake as a Delta table").
"""
from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass

import pyarrow as pa

from millrace.contracts.storage import is_uri, join
from millrace.pipelines.errors import SchemaChanged

LOG = "_delta_log"


@dataclass(frozen=True)
class ActiveFile:
    """A data file of the current snapshot."""

    path: str        # relative to the table root: <key>=<value>/<name>
    partition: str   # the partition value
    size: int

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


@dataclass(frozen=True)
class Snapshot:
    version: int                 # the table version: the snapshot id
    files: list[ActiveFile]


@dataclass(frozen=True)
class NewFile:
    """A Parquet file written for a commit."""

    partition: str
    name: str
    size: int
    rows: int


def table_uri(root: str) -> str:
    """deltalake takes local paths and its own store URIs (s3://, gs://, az://, abfss://)."""
    return root[len("file://"):] if root.startswith("file://") else root


def exists(root: str) -> bool:
    from millrace.contracts.storage import exists as path_exists

    return path_exists(join(root, LOG))


class TableUnreadable(Exception):
    """The table's log cannot be read (deleted or damaged log entries, a wrong layout)."""


def snapshot(root: str, key: str) -> Snapshot | None:
    """The current snapshot of the table at ``root``; None when there is no table yet."""
    from deltalake.exceptions import DeltaError

    table = _open(root)
    if table is None:
        return None
    try:
        actions = pa.table(table.get_add_actions(flatten=True))
    except (DeltaError, OSError) as exc:
        raise TableUnreadable(str(exc)) from exc
    _check_log(root)
    column = f"partition.{key}"
    if actions.num_rows and column not in actions.column_names:
        raise TableUnreadable(f"the table is partitioned by {table.metadata().partition_columns}, "
                              f"not by {key!r} as the contract says")
    files = [ActiveFile(path=p, partition=v, size=s) for p, v, s in
             zip(actions.column("path").to_pylist(), actions.column(column).to_pylist() if actions.num_rows else [],
                 actions.column("size_bytes").to_pylist())]
    return Snapshot(version=table.version(), files=sorted(files, key=lambda f: (f.partition, f.path)))


def version(root: str) -> int | None:
    """The current version of the table at ``root``; None when there is no table yet."""
    table = _open(root)
    return None if table is None else table.version()


def table_schema(data: pa.Schema, key: str) -> pa.Schema:
    """The Delta schema: the stored columns, then the partition column (a string, kept out of the
    files). The contract loader refuses a partition key that is also a field."""
    return pa.schema(list(data) + [pa.field(key, pa.string(), nullable=False)])


def replace_partitions(root: str, schema: pa.Schema, key: str, files: list[NewFile], replaced: list[str],
                       properties: dict[str, str]) -> int:
    """One commit: every file of the ``replaced`` partitions leaves the snapshot, ``files`` join it.
    Creates the table on its first commit. Returns the new version."""
    from deltalake import CommitProperties
    from deltalake.transaction import create_table_with_add_actions

    adds = [_add(key, f) for f in files]
    commit = CommitProperties(custom_metadata=properties)
    table = _open(root)
    if table is None:
        create_table_with_add_actions(table_uri(root), _delta_schema(schema), adds, mode="error", partition_by=[key],
                                      commit_properties=commit)
        return 0
    added, changed, dropped = _schema_change(table, schema)
    if changed or dropped:
        # A new contract version changed or removed stored columns: only a commit that replaces
        # every partition may change the schema, and it replaces the table's metadata with it.
        kept = {f.partition for f in snapshot(root, key).files} - set(replaced)
        if kept:
            raise SchemaChanged(root, changed, dropped, sorted(kept))
        create_table_with_add_actions(table_uri(root), _delta_schema(schema), adds, mode="overwrite",
                                      partition_by=[key], commit_properties=commit)
        table.update_incremental()
        return table.version()
    if added:  # new nullable columns, which older files read as nulls; a commit of its own, harmless alone
        table.alter.add_columns(_delta_schema(pa.schema(added)).fields)
    filters = [(key, "in", sorted(set(replaced)))] if replaced else None
    table.create_write_transaction(adds, mode="overwrite" if filters else "append", schema=_delta_schema(schema),
                                   partition_by=[key], partition_filters=filters, commit_properties=commit)
    table.update_incremental()
    return table.version()


def append(root: str, schema: pa.Schema, key: str, files: list[NewFile], properties: dict[str, str]) -> int:
    """One commit adding ``files`` (the quarantine's first step: see ``lake.commit_run``)."""
    return replace_partitions(root, schema, key, files, [], properties)


def remove(root: str, key: str, files: list[ActiveFile], properties: dict[str, str]) -> int | None:
    """One commit removing ``files`` from the snapshot (the bytes stay until cleanup)."""
    if not files:
        return None
    from deltalake import CommitProperties
    from deltalake.transaction import RemoveAction

    table = _open(root)
    now = int(time.time() * 1000)
    actions = [RemoveAction(path=f.path, data_change=True, deletion_timestamp=now, size=f.size,
                            partition_values={key: f.partition}) for f in files]
    table.create_write_transaction(actions, mode="append", schema=table.schema(), partition_by=[key],
                                   commit_properties=CommitProperties(custom_metadata=properties))
    table.update_incremental()
    return table.version()


# -- internals ------------------------------------------------------------------------------------

def _open(root: str):
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from deltalake.exceptions import DeltaError

    if not is_uri(root) and not exists(root):
        return None
    try:
        return DeltaTable(table_uri(root))
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        raise TableUnreadable(str(exc)) from exc


def _check_log(root: str) -> None:
    """deltalake reads an emptied commit file as a commit of nothing, so the partitions it
    committed would silently vanish; a writer never leaves one (a commit is one put-if-absent)."""
    if is_uri(root):
        return
    import os

    with os.scandir(join(root, LOG)) as entries:
        empty = sorted(e.name for e in entries if e.name.endswith(".json") and e.stat().st_size == 0)
    if empty:
        raise TableUnreadable(f"the commit {empty[0]} is empty")


def _add(key: str, f: NewFile):
    from deltalake.transaction import AddAction

    return AddAction(path=f"{key}={f.partition}/{f.name}", size=f.size, partition_values={key: f.partition},
                     modification_time=int(time.time() * 1000), data_change=True,
                     stats=json.dumps({"numRecords": f.rows}))


def _delta_schema(schema: pa.Schema):
    from deltalake import Schema

    # Delta has one binary and one string type: Arrow's large variants map onto them.
    plain = pa.schema([pa.field(f.name, _small(f.type), f.nullable) for f in schema])
    return Schema.from_arrow(plain)


def _small(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_string(t):
        return pa.string()
    return t


def _schema_change(table, schema: pa.Schema) -> tuple[list[pa.Field], list[str], list[str]]:
    """(added columns, columns whose type changed, removed columns) from the table's schema to ``schema``."""
    have = {f.name: f for f in pa.schema(table.schema().to_arrow())}
    wanted = [pa.field(f.name, _small(f.type), f.nullable) for f in schema]
    added = [f for f in wanted if f.name not in have]
    changed = [f.name for f in wanted if f.name in have and have[f.name].type != f.type]
    dropped = [name for name in have if name not in {f.name for f in wanted}]
    return added, changed, dropped
