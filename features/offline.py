"""The offline store: one Parquet table per feature view, replaced atomically.

    <offline>/<view>/data.parquet     key, event_timestamp, created_timestamp, features
    <offline>/<view>/_manifest.json   rows, sha256, build run, inputs (lake partitions), spec hash

The table has a fixed name because Feast's FileSource points at it; a build writes a new
file beside it and renames it over the old one, so Feast and our readers always see a whole
table. A ranged build rewrites only the days of its range and keeps the rest.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from millrace.features.errors import NothingBuilt
from millrace.contracts import storage

DATA, MANIFEST = "data.parquet", "_manifest.json"


def view_dir(offline: str, view: str) -> str:
    return storage.join(offline, storage.safe_name(view))


def data_path(offline: str, view: str) -> str:
    return storage.join(view_dir(offline, view), DATA)


def read_view(offline: str, view: str) -> pa.Table:
    path = data_path(offline, view)
    if not storage.exists(path):
        raise NothingBuilt(f"feature view '{view}' has no offline table at {path} "
                           f"(fix: run `millrace features build` first)")
    return pq.read_table(io.BytesIO(storage.read_bytes(path)))


def read_manifest(offline: str, view: str) -> dict | None:
    path = storage.join(view_dir(offline, view), MANIFEST)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def merge(existing: pa.Table | None, fresh: pa.Table, first: dt.date | None, last: dt.date | None) -> pa.Table:
    """Replace the snapshot days [first, last] of ``existing`` with ``fresh``."""
    if existing is None or (first is None and last is None):
        return fresh
    day = pc.subtract(existing.column("event_timestamp"), pa.scalar(dt.timedelta(days=1), pa.duration("us")))
    keep = pa.repeat(pa.scalar(True), existing.num_rows)
    if first is not None:
        keep = pc.and_(keep, pc.less(day, pa.scalar(dt.datetime.combine(first, dt.time(), dt.timezone.utc))))
    if last is not None:
        outside = pc.greater(day, pa.scalar(dt.datetime.combine(last, dt.time(23, 59, 59), dt.timezone.utc)))
        keep = pc.or_(keep, outside) if first is not None else outside
    return pa.concat_tables([existing.filter(keep).cast(fresh.schema), fresh])


def write_view(offline: str, view: str, table: pa.Table, info: dict, run_id: str) -> dict:
    key = table.column_names[0]
    table = table.take(pc.sort_indices(table, sort_keys=[(key, "ascending"), ("event_timestamp", "ascending")]))
    directory = view_dir(offline, view)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    storage.write_atomically(storage.join(directory, DATA), data, run_id)
    manifest = {"view": view, "rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "run_id": run_id, "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "entities": pc.count_distinct(table.column(key)).as_py() if table.num_rows else 0, **info}
    storage.write_atomically(storage.join(directory, MANIFEST), json.dumps(manifest, indent=1).encode(), run_id)
    return manifest
