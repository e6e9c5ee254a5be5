"""``millrace features materialize``: the latest offline values per entity into Feast's online store.

Incremental and idempotent: the (key, event time) last written per view is kept beside the
Feast repository, and only entities whose latest offline row is newer are written, so a value
never goes back in time, and a rerun writes nothing. Rows are written by ``features.online_write``,
columnar, in exactly the bytes Feast's own online store writers produce (one upsert per batch
into SQLite, pipelines into Redis, with Redis's skip of rows older than a hash holds), so Feast's
readers (``get_online_features``, the feast CLI) and ``features.online`` see what Feast would
have written. Around the write: one Parquet read, the latest row per key with Arrow, and skipping
entities that did not change. Views keyed on several columns are keyed on all of them.

The record is trusted only while the store still holds the token written with it (a marker per
view inside the store, ``stores.read_marker``): a deleted SQLite file or a flushed Redis has lost
its marker, and the next run rewrites every entity. A run killed mid-write is rerun against the
old record, so it rewrites whatever it had not recorded (tests/features/test_kill.py).
"""
from __future__ import annotations

import datetime as dt
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
from millrace.features.online_write import OnlineWriter
from millrace.features.records import MaterializeReport, StoreRecord
from millrace.features.spec import Features

BATCH_VALUES = 500_000  # feature values per write (one SQLite transaction, one Redis pipeline pair)


def _keys(key: str | list[str]) -> list[str]:
    return [key] if isinstance(key, str) else list(key)


def latest_per_key(table: pa.Table, key: str | list[str], until: dt.datetime | None) -> pa.Table:
    """The newest row per key (one or several columns) with event_timestamp <= until (ties: newest
    created_timestamp). Rows with a null key are dropped: no read can ask for them."""
    keys = _keys(key)
    if until is not None:
        table = table.filter(pc.less_equal(table.column("event_timestamp"), pa.scalar(until, TIMESTAMP)))
    for k in keys:
        if table.column(k).null_count:
            table = table.filter(pc.is_valid(table.column(k)))
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[*((k, "ascending") for k in keys), ("event_timestamp", "ascending"),
                                              ("created_timestamp", "ascending")]).to_numpy()
    last = np.zeros(len(order), dtype=bool)
    last[-1] = True
    for k in keys:
        values = table.column(k).take(order).to_numpy(zero_copy_only=False)
        last[:-1] |= values[1:] != values[:-1]
    return table.take(order[last])


def _state_path(project: Project, view: str) -> str:
    """What was written, per online store: switching stores starts from nothing."""
    return stores.record_path(project, view)


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


def changed(latest: pa.Table, key: str | list[str], written: pa.Table | None) -> pa.Table:
    """Rows newer than what the online store already holds for their key."""
    return _against_written(latest, key, written, pc.greater)


def not_older(latest: pa.Table, key: str | list[str], written: pa.Table | None) -> pa.Table:
    """Rows at least as new as what the online store holds for their key."""
    return _against_written(latest, key, written, pc.greater_equal)


def _against_written(latest: pa.Table, key, written: pa.Table | None, compare) -> pa.Table:
    """Rows whose key was never written, or whose event time ``compare``s true against the written one."""
    keys = _keys(key)
    if written is None or latest.num_rows == 0:
        return latest
    previous = written.rename_columns([*keys, "_written_ts"])
    slim = latest.select([*keys, "event_timestamp"]).append_column("_row", pa.array(np.arange(latest.num_rows)))
    joined = slim.join(previous, keys, join_type="left outer")  # only flat columns: Acero cannot carry lists
    keep = pc.or_kleene(pc.is_null(joined.column("_written_ts")),
                        compare(joined.column("event_timestamp"), joined.column("_written_ts")))
    rows = np.sort(joined.column("_row").filter(pc.fill_null(keep, False)).to_numpy())
    return latest.take(rows)


def materialize(project: Project, features: Features, until: dt.datetime | None = None,
                views: list[str] | None = None, full: bool = False, store=None) -> list[MaterializeReport]:
    """Write every online view's changed entities; ``full`` rewrites all of them."""
    store = store or feature_store(project)
    until = until or dt.datetime.now(dt.timezone.utc)
    writer = OnlineWriter(project, features)
    reports = []
    try:
        for name in views or [n for n, v in features.views.items() if v.online]:
            reports.append(_materialize_view(project, features, store, writer, name, until, full))
    finally:
        writer.close()
    return reports


def _materialize_view(project: Project, features: Features, store, writer: OnlineWriter, name: str,
                      until: dt.datetime, full: bool) -> MaterializeReport:
    started = time.time()
    keys = features.join_keys(name)
    try:
        table = offline.read_view(project.offline, name)
    except NothingBuilt:
        raise NothingBuilt(f"nothing to materialize for '{name}': it has no offline table "
                           f"(fix: run `millrace features build` first)") from None
    latest = latest_per_key(table, keys, until)
    with registry_errors(project), _unreachable(project), record_lock(project, name):
        fv = store.get_feature_view(name)
        written, record = _written(project, name)
        if written is not None and written.column_names != [*keys, "event_timestamp"]:
            written = None  # the view's key changed since: the record says nothing about this store
        trusted = written is not None and record is not None and stores.read_marker(project, name) == record.token
        if not trusted:  # first run, or the store lost what the record says: (re)create, rewrite all
            writer.ensure(name)
        todo = latest if full or not trusted else changed(latest, keys, written)
        step = max(1, BATCH_VALUES // max(1, len(features.feature_names(name))))
        for start in range(0, todo.num_rows, step):
            writer.write(name, todo.slice(start, step))
            checkpoint("mid_materialize")  # entities in the store that the record does not list yet
        token = record.token if trusted else uuid.uuid4().hex
        if not trusted:
            stores.write_marker(project, name, token)
        _remember(project, name, keys, todo.select([*keys, "event_timestamp"]), written if trusted else None, token)
        first = pc.min(latest.column("event_timestamp")).as_py() if latest.num_rows else until
        store.registry.apply_materialization(fv, store.project, first, until)
    return MaterializeReport(
        view=name, entities=latest.num_rows, written=todo.num_rows, skipped_unchanged=latest.num_rows - todo.num_rows,
        refilled=record is not None and not trusted, until=until.isoformat(), seconds=time.time() - started)


def update_online(project: Project, features: Features, writer: OnlineWriter, view: str, latest: pa.Table) -> int:
    """Write the newest snapshot rows of some entities (a stream's micro-batch), except where the
    store holds a newer one: a row at the same event time replaces the stored one (a late row
    within the lateness changes that day's values), an older one never does. The record is the
    one materialization keeps, so a nightly materialize after it writes only what is newer still.
    Returns the entities written."""
    keys = features.join_keys(view)
    with _unreachable(project), record_lock(project, view):
        written, record = _written(project, view)
        if written is not None and written.column_names != [*keys, "event_timestamp"]:
            written = None
        trusted = written is not None and record is not None and stores.read_marker(project, view) == record.token
        if not trusted:
            writer.ensure(view)
        todo = not_older(latest, keys, written) if trusted else latest
        if todo.num_rows:
            writer.write(view, todo)
        token = record.token if trusted else uuid.uuid4().hex
        if not trusted:
            stores.write_marker(project, view, token)
        _remember(project, view, keys, todo.select([*keys, "event_timestamp"]), written if trusted else None, token)
    return todo.num_rows


class record_lock:
    """One writer at a time of a view's online values and their record (a nightly's materialize
    and a stream's updates): both read the record, write the store, then rewrite the record."""

    def __init__(self, project: Project, view: str):
        self.path = _state_path(project, view) + ".lock"

    def __enter__(self):
        import fcntl

        if storage.is_uri(self.path):
            self.fd = None
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # held for one batch: a short wait, released by any exit
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
        return False


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


def _remember(project: Project, view: str, key: str | list[str], written: pa.Table, previous: pa.Table | None,
              token: str) -> None:
    """Merge what was just written into the record (the newest time per key wins), with its token."""
    if previous is not None:
        both = pa.concat_tables([previous, written.cast(previous.schema)])
        written = latest_per_key(both.append_column("created_timestamp", pa.nulls(both.num_rows, TIMESTAMP)),
                                 key, None).select([*_keys(key), "event_timestamp"])
    record = StoreRecord(view=view, store=stores.store_id(project), token=token, entities=written.num_rows,
                         written_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    sink = io.BytesIO()
    pq.write_table(written.replace_schema_metadata({_RECORD_KEY: record.to_json().encode()}), sink)
    storage.write_atomically(_state_path(project, view), sink.getvalue(), f"{os.getpid()}")
