"""The offline store: one Parquet table per feature view, replaced atomically.

    <offline>/<view>/data.parquet     key, event_timestamp, created_timestamp, features
    <offline>/<view>/_manifest.json   rows, sha256, build run, inputs (lake partitions), spec hash

The table has a fixed name because Feast's FileSource points at it; a build writes a new
file beside it and renames it over the old one, so Feast and our readers always see a whole
table. A ranged build rewrites only the days of its range and keeps the rest.

Every read checks the table's bytes against the SHA-256 its manifest recorded: a truncated,
swapped or half-committed table is one line naming the file and the fix, never other features.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from millrace.contracts import storage
from millrace.contracts.faults import checkpoint
from millrace.features.errors import CorruptTable, NothingBuilt
from millrace.features.records import OfflineManifest

DATA, MANIFEST = "data.parquet", "_manifest.json"


def view_dir(offline: str, view: str) -> str:
    return storage.join(offline, storage.safe_name(view))


def data_path(offline: str, view: str) -> str:
    return storage.join(view_dir(offline, view), DATA)


def read_view(offline: str, view: str) -> pa.Table:
    """The committed table of a view, after checking its bytes against the manifest."""
    path = data_path(offline, view)
    if not storage.exists(path):
        raise NothingBuilt(f"feature view '{view}' has no offline table at {path} "
                           f"(fix: run `millrace features build` first)")
    fix = f"run `millrace features build --view {view}` to rebuild it"
    manifest = read_manifest(offline, view)
    if manifest is None:
        raise CorruptTable(path, "the table has no manifest beside it", fix)
    data = storage.read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise CorruptTable(path, f"the bytes ({len(data):,}, sha256 {digest[:12]}) are not the table its manifest "
                                 f"records ({manifest.bytes:,}, sha256 {manifest.sha256[:12]}): truncated, "
                                 f"replaced or half-written", fix)
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise CorruptTable(path, f"not a readable Parquet table ({str(exc).splitlines()[0][:120]})", fix) from None


def read_manifest(offline: str, view: str) -> OfflineManifest | None:
    path = storage.join(view_dir(offline, view), MANIFEST)
    if not storage.exists(path):
        return None
    return OfflineManifest.from_json(storage.read_bytes(path), path,
                                     f"run `millrace features build --view {view}` to rebuild the view")


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


def write_view(offline: str, view: str, table: pa.Table, info: dict, run_id: str) -> OfflineManifest:
    """Commit ``table`` as the view's offline table: data renamed over, then the manifest.

    ``info``: the build's own manifest fields (inputs, features_yaml_sha256, range)."""
    keys = table.column_names[:table.column_names.index("event_timestamp")]  # one, or a composite key's fields
    table = table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys] +
                                       [("event_timestamp", "ascending")]))
    directory = view_dir(offline, view)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    manifest = OfflineManifest(
        view=view, rows=table.num_rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), run_id=run_id,
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        entities=table.select(keys).group_by(keys).aggregate([]).num_rows if table.num_rows else 0, **info)
    tmp = storage.join(directory, f"{DATA}.tmp-{run_id}")
    storage.write_bytes(tmp, data)
    checkpoint("after_view_data")  # new data beside the old table, nothing committed
    storage.write_atomically(storage.join(directory, DATA), data, run_id)
    storage.write_atomically(storage.join(directory, MANIFEST), manifest.to_json().encode(), run_id)
    storage.remove_unlisted(directory, {DATA, MANIFEST})  # the staged copy and killed runs' leftovers
    return manifest
