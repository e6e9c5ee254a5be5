"""``millrace features materialize``: the latest offline values per entity into Feast's online store.

Incremental and idempotent: the (key, event time) last written per view is kept beside the
Feast repository, and only entities whose latest offline row is newer are written, so a value
never goes back in time, and a rerun writes nothing. Rows go through Feast's own online store
interface (``online_write_batch``) after Feast's own Arrow-to-proto conversion, so Feast's
readers (``get_online_features``, the feast CLI) see exactly what we wrote. What is faster than
``feast materialize`` is everything around the write: one Parquet read, the latest row per key
with Arrow, and skipping entities that did not change.

The record is trusted only while the store still holds the token written with it (a marker per
view inside the store, ``stores.read_marker``): a deleted SQLite file or a flushed Redis has lost
its marker, and the next run rewrites every entity. A run killed mid-write is rerun against the
old record, so it rewrites whatever it had not recorded (tests/features/test_kill.py).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from millrace.contracts import storage
from millrace.contracts.arrow import TIMESTAMP
from millrace.contracts.errors import is_unreachable
from millrace.contracts.faults import checkpoint
from millrace.contracts.project import Project
from millrace.features import offline, stores
from millrace.features.errors import NothingBuilt, StoreUnavailable
from millrace.features.feast_repo import feature_store, registry_errors
from millrace.features.records import MaterializeReport, StoreRecord
from millrace.features.spec import Features
from millrace.features.stores import repo_dir

BATCH = 5_000


def latest_per_key(table: pa.Table, key: str, until: dt.datetime | None) -> pa.Table:
    """The newest row per key with event_timestamp <= until (ties: newest created_timestamp)."""
    if until is not None:
        table = table.filter(pc.less_equal(table.column("event_timestamp"), pa.scalar(until, TIMESTAMP)))
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[(key, "ascending"), ("event_timestamp", "ascending"),
                                              ("created_timestamp", "ascending")]).to_numpy()
    keys = table.column(key).take(order).to_numpy(zero_copy_only=False)
    last = np.ones(len(order), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    return table.take(order[last])


def _state_path(project: Project, view: str) -> str:
    """What was written, per online store: switching stores starts from nothing."""
    store = hashlib.sha256(project.online_store.encode()).hexdigest()[:12]
    return os.path.join(repo_dir(project), "materialized", store, f"{storage.safe_name(view)}.parquet")


_RECORD_KEY = b"millrace.store_record"  # Parquet metadata key of the record's StoreRecord


def _written(project: Project, view: str) -> tuple[pa.Table | None, StoreRecord | None]:
    """The keys and event times last written to this store, and the record's metadata."""
    path = _state_path(project, view)
    if not storage.exists(path):
        return None, None
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    meta = (table.schema.metadata or {}).get(_RECORD_KEY)
    record = StoreRecord.from_json(meta, path, "delete it; the next materialize rewrites every entity") if meta else None
    return table.replace_schema_metadata(None), record


def changed(latest: pa.Table, key: str, written: pa.Table | None) -> pa.Table:
    """Rows newer than what the online store already holds for their key."""
    if written is None or latest.num_rows == 0:
        return latest
    previous = written.rename_columns([key, "_written_ts"])
    slim = latest.select([key, "event_timestamp"]).append_column("_row", pa.array(np.arange(latest.num_rows)))
    joined = slim.join(previous, key, join_type="left outer")  # only flat columns: Acero cannot carry lists
    newer = pc.or_kleene(pc.is_null(joined.column("_written_ts")),
                         pc.greater(joined.column("event_timestamp"), joined.column("_written_ts")))
    rows = np.sort(joined.column("_row").filter(pc.fill_null(newer, False)).to_numpy())
    return latest.take(rows)


def materialize(project: Project, features: Features, until: dt.datetime | None = None,
                views: list[str] | None = None, full: bool = False, store=None) -> list[MaterializeReport]:
    """Write every online view's changed entities; ``full`` rewrites all of them."""
    from feast.utils import _convert_arrow_to_proto

    store = store or feature_store(project)
    until = until or dt.datetime.now(dt.timezone.utc)
    reports = []
    for name in views or [n for n, v in features.views.items() if v.online]:
        started = time.time()
        key = features.join_key(name)
        try:
            table = offline.read_view(project.offline, name)
        except NothingBuilt:
            raise NothingBuilt(f"nothing to materialize for '{name}': it has no offline table "
                               f"(fix: run `millrace features build` first)") from None
        latest = latest_per_key(table, key, until)
        with registry_errors(project), _unreachable(project):
            fv = store.get_feature_view(name)
            written, record = _written(project, name)
            trusted = record is not None and stores.read_marker(project, name) == record.token
            if not trusted:  # first run, or the store lost what the record says: (re)create, rewrite all
                _reset_tables(store, fv)
            todo = latest if full or not trusted else changed(latest, key, written)
            join_keys = {c.name: c.dtype.to_value_type() for c in fv.entity_columns}
            provider = store._get_provider()
            for start in range(0, todo.num_rows, BATCH):
                rows = _convert_arrow_to_proto(todo.slice(start, BATCH), fv, join_keys)
                provider.online_write_batch(store.config, fv, rows, progress=None)
                checkpoint("mid_materialize")  # entities in the store that the record does not list yet
            token = record.token if trusted else uuid.uuid4().hex
            if not trusted:
                stores.write_marker(project, name, token)
            _remember(project, name, key, todo.select([key, "event_timestamp"]), written if trusted else None, token)
            first = pc.min(latest.column("event_timestamp")).as_py() if latest.num_rows else until
            store.registry.apply_materialization(fv, store.project, first, until)
        reports.append(MaterializeReport(
            view=name, entities=latest.num_rows, written=todo.num_rows, skipped_unchanged=latest.num_rows - todo.num_rows,
            refilled=record is not None and not trusted, until=until.isoformat(), seconds=time.time() - started))
    return reports


class _unreachable:
    """An online store that cannot be reached: one retryable line naming it."""

    def __init__(self, project: Project):
        self.project = project

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None and not isinstance(exc, StoreUnavailable) and is_unreachable(exc):
            raise StoreUnavailable(f"cannot write to the online store ({stores.store_id(self.project)}): "
                                   f"{(str(exc).splitlines() or [kind.__name__])[0][:200]} (fix: start it or check "
                                   f"feature_store.online_store)") from None
        return False


def _reset_tables(store, fv) -> None:
    """Make sure the view's online table exists (SQLite: a deleted file has none) on a fresh connection."""
    online_store = store._get_provider().online_store
    if getattr(online_store, "_conn", None) is not None:  # Feast's SQLite store caches a connection,
        online_store._conn = None                         # which may point at a deleted file
    online_store.update(store.config, tables_to_delete=[], tables_to_keep=[fv], entities_to_delete=[],
                        entities_to_keep=[], partial=True)


def _remember(project: Project, view: str, key: str, written: pa.Table, previous: pa.Table | None,
              token: str) -> None:
    """Merge what was just written into the record (the newest time per key wins), with its token."""
    if previous is not None:
        both = pa.concat_tables([previous, written.cast(previous.schema)])
        written = latest_per_key(both.append_column("created_timestamp", pa.nulls(both.num_rows, TIMESTAMP)),
                                 key, None).select([key, "event_timestamp"])
    record = StoreRecord(view=view, store=stores.store_id(project), token=token, entities=written.num_rows,
                         written_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    sink = io.BytesIO()
    pq.write_table(written.replace_schema_metadata({_RECORD_KEY: record.to_json().encode()}), sink)
    storage.write_atomically(_state_path(project, view), sink.getvalue(), f"{os.getpid()}")
