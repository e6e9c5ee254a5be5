"""Online reads for the serving tier: many entities and features in one call, returned as Arrow.

The SQLite and Redis online stores are read directly, with the key and value encoding Feast 0.67
writes (``features.wire``), so the inference tier never pays for ``import feast`` (~11 s, ~370 MB)
and this module imports neither Beam, torch nor MLflow (tests/features/test_online_imports.py).
Feature views, keys and types come from features.yaml, the same declarations the Feast
repository is generated from. Feast reads the same rows: tests/features/test_online_wire.py writes
with Feast and compares our read with Feast's, value for value.
"""
from __future__ import annotations

import datetime as dt
import os
import struct
import threading
from functools import lru_cache

import pyarrow as pa

from millrace.contracts.errors import is_unreachable
from millrace.contracts.project import Project
from millrace.features import stores, wire
from millrace.features.errors import FeatureError, NothingBuilt, StoreUnavailable, UnknownFeature
from millrace.features.spec import Features, duration

_KEY_TYPES = {pa.int64(): wire.INT64, pa.int32(): wire.INT32, pa.string(): wire.STRING}
_CHUNK = 500  # keys per SQL statement / Redis pipeline
FOUND, MISSING, EXPIRED = "found", "missing", "expired"  # per key, from read_with_status
UTC = dt.timezone.utc


def wall_clock() -> dt.datetime:
    """The current time: the default "now" of the ttl."""
    return dt.datetime.now(UTC)


_PROJECT_CLOCK = object()  # the default: what millrace.yaml's feature_store.ttl_clock says


class OnlineReader:
    def __init__(self, project: Project, features: Features, *, clock=_PROJECT_CLOCK):
        """``clock()`` is "now" for the ttl (an aware datetime). Default: the project's
        ``feature_store.ttl_clock``: the current time ('wall'), or the newest event time
        materialized for the view ('data', for a replay of historical data). None: no expiry, as
        Feast's ``get_online_features``, which applies no ttl."""
        self.project, self.features = project, features
        self.clock = (wall_clock if project.ttl_clock == "wall" else None) if clock is _PROJECT_CLOCK else clock
        self._data_clock = clock is _PROJECT_CLOCK and project.ttl_clock == "data"
        self._newest: dict[str, tuple[float, dt.datetime | None]] = {}
        self.kind = stores.online_kind(project)
        self._local = threading.local()
        self._redis = None
        self._tables: set[str] = set()

    def read(self, view: str, keys, feature_names: list[str] | None = None) -> pa.Table:
        """One row per key, in order: the key column(s), then each feature (null where the store has none).

        ``keys``: the values of a one-key view (a list or an Arrow array); for a view keyed on
        several columns, a mapping of each key column to its values (or an Arrow table with those
        columns), e.g. ``{"origin": ["JFK"], "dest": ["LAX"]}``. A key with a null part reads as nulls.

        A key whose stored event time is older than ``clock() - ttl`` of the view reads as all
        nulls, as the point-in-time join treats it; a ttl of 0 (the default) never expires; without a
        clock (``clock=None``) nothing expires."""
        return self.read_with_status(view, keys, feature_names)[0]

    def read_with_status(self, view: str, keys, feature_names: list[str] | None = None) -> tuple[pa.Table, list[str]]:
        """``read``, and per key whether the store had it: FOUND, MISSING (never materialized, or a
        key with a null part) or EXPIRED (older than the view's ttl)."""
        self.features.view(view)  # UnknownFeature with the valid names
        names = list(feature_names or self.features.feature_names(view))
        types = self.features.types[view]
        key_types = self.features.key_types(view)
        unknown = [n for n in names if n not in types or n in key_types]
        if unknown:
            raise UnknownFeature(f"unknown feature(s) {unknown} in view '{view}' "
                                 f"(fix: use some of {self.features.feature_names(view)})")
        columns = _key_columns(view, keys, key_types)
        encoded = _encode_keys(view, columns, key_types)
        try:
            raw = self._read_sqlite(view, encoded, names) if self.kind == stores.SQLITE else \
                self._read_redis(view, encoded, names)
        except FeatureError:
            raise
        except Exception as exc:
            if is_unreachable(exc):
                raise StoreUnavailable(f"cannot read the online store ({self._where()}): "
                                       f"{(str(exc).splitlines() or [type(exc).__name__])[0][:200]} "
                                       f"(fix: start it or check feature_store.online_store)") from None
            raise
        status = [MISSING if row is None else FOUND for row in raw]
        ttl = duration(self.features.view(view).ttl)
        now = self._newest_event(view) if self._data_clock else self.clock() if self.clock else None
        if ttl and now is not None:  # None ('all') or 0: values never expire
            oldest = now - ttl
            status = [EXPIRED if s == FOUND and row[1] is not None and row[1] < oldest else s
                      for s, row in zip(status, raw)]
        raw = [row[0] if s == FOUND else None for s, row in zip(status, raw)]
        out = {key: pa.array(values, key_types[key]) for key, values in columns.items()}
        for i, name in enumerate(names):
            out[name] = _column(view, name, types[name], [row[i] if row else None for row in raw])
        return pa.table(out), status

    def _newest_event(self, view: str) -> dt.datetime | None:
        """The newest event time materialization wrote for ``view`` (the 'data' clock), re-read
        when its record changes; None before the first materialization."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = stores.record_path(self.project, view)
        try:
            stamp = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return None
        if self._newest.get(view, (None,))[0] != stamp:
            times = pq.read_table(path, columns=["event_timestamp"]).column("event_timestamp")
            newest = pc.max(times).as_py() if len(times) else None
            self._newest[view] = (stamp, newest)
        return self._newest[view][1]

    def _where(self) -> str:
        return stores.sqlite_path(self.project) if self.kind == stores.SQLITE else stores.store_id(self.project)

    # -- SQLite: table "<project>_<view>", one row per (entity_key, feature_name) -----------------------

    def _read_sqlite(self, view: str, keys: list[bytes | None], names: list[str]) -> list[tuple | None]:
        """Per key: (values in ``names`` order, the latest stored event time or None)."""
        import sqlite3

        path = stores.sqlite_path(self.project)
        table = f"{self.project.name}_{view}"
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            raise NothingBuilt(f"{path}: the online store does not exist "
                               f"(fix: run `millrace features materialize`)") from None
        # one read-only connection per thread: concurrent readers (the inference tier's handler
        # threads) never queue on one connection; a new file (a refilled store) is reopened
        local = self._local
        if getattr(local, "inode", None) != inode:
            if getattr(local, "con", None) is not None:
                local.con.close()
            local.inode, local.tables = inode, set()
            local.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        con = local.con
        if table not in local.tables:
            found = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
            if not found:
                raise NothingBuilt(f"{path}: feature view '{view}' is not in the online store "
                                   f"(fix: run `millrace features build` and `millrace features materialize`)")
            local.tables.add(table)
        position = {n: i for i, n in enumerate(names)}
        found_rows: dict[bytes, list] = {}
        stamps: dict[bytes, dt.datetime] = {}
        wanted = [k for k in dict.fromkeys(keys) if k is not None]
        quoted = '"' + table.replace('"', '""') + '"'
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            sql = (f"SELECT entity_key, feature_name, value, event_ts FROM {quoted} WHERE entity_key IN "
                   f"({','.join('?' * len(chunk))}) AND feature_name IN ({','.join('?' * len(names))})")
            for key, feature, value, event_ts in con.execute(sql, [*chunk, *names]):
                found_rows.setdefault(key, [None] * len(names))[position[feature]] = value
                at = _sqlite_time(event_ts)
                if at is not None and (key not in stamps or at > stamps[key]):
                    stamps[key] = at
        return [(found_rows[k], stamps.get(k)) if k in found_rows else None for k in keys]

    # -- Redis: hash "<entity key><project>", field murmur3("<view>:<feature>") ------------------------

    def _read_redis(self, view: str, keys: list[bytes | None], names: list[str]) -> list[tuple | None]:
        """Per key: (values in ``names`` order, the ``_ts:<view>`` event time or None)."""
        if self._redis is None:
            self._redis = stores.redis_client(self.project.online_store)
        fields = [_field(view, n) for n in names] + [f"_ts:{view}".encode("utf-8")]
        suffix = self.project.name.encode("utf-8")
        wanted = [k for k in keys if k is not None]
        replies: list = []
        if len(wanted) == 1:  # one entity: one round trip without a pipeline's overhead
            replies = [self._redis.hmget(wanted[0] + suffix, fields)]
        for start in range(0, len(wanted) if len(wanted) > 1 else 0, _CHUNK):
            with self._redis.pipeline(transaction=False) as pipe:
                for key in wanted[start:start + _CHUNK]:
                    pipe.hmget(key + suffix, fields)
                replies += pipe.execute()
        it = iter(replies)
        rows = [next(it) if k is not None else None for k in keys]
        return [None if r is None else (r[:-1], _redis_time(r[-1])) for r in rows]


def _key_columns(view: str, keys, key_types: dict[str, pa.DataType]) -> dict[str, list]:
    """The key values per key column, in the view's declared order."""
    names = list(key_types)
    if isinstance(keys, (pa.Table, pa.RecordBatch)):
        keys = {n: keys.column(n) for n in names if n in keys.column_names}
    if isinstance(keys, dict):
        missing, extra = [n for n in names if n not in keys], [n for n in keys if n not in key_types]
        if missing or extra:
            raise FeatureError(f"keys of view '{view}' must be given for exactly {names}, got {list(keys)} "
                               f"(fix: pass {{{', '.join(repr(n) + ': [...]' for n in names)}}})")
        columns = {n: _values(keys[n]) for n in names}
        if len({len(v) for v in columns.values()}) > 1:
            raise FeatureError(f"keys of view '{view}': the columns {names} have different lengths "
                               f"{[len(v) for v in columns.values()]} (fix: pass one value per key column and entity)")
        return columns
    if len(names) != 1:
        raise FeatureError(f"view '{view}' is keyed on {names}: pass a mapping of each to its values or an Arrow "
                           f"table with those columns (fix: read(view, {{{', '.join(repr(n) + ': [...]' for n in names)}}}))")
    return {names[0]: _values(keys)}


def _values(values) -> list:
    return values.to_pylist() if isinstance(values, (pa.Array, pa.ChunkedArray)) else list(values)


def _encode_keys(view: str, columns: dict[str, list], key_types: dict[str, pa.DataType]) -> list[bytes | None]:
    """Serialized entity keys (None where a part is None), as Feast's ``serialize_entity_key`` v3."""
    names = list(columns)
    try:
        codes = [_KEY_TYPES[key_types[n]] for n in names]
        if len(names) == 1:
            name, code = names[0], codes[0]
            return [None if v is None else wire.entity_key(name, v, code) for v in columns[name]]
        return [None if any(v is None for v in row) else wire.entity_key(names, list(row), codes)
                for row in zip(*columns.values())]
    except (ValueError, TypeError, struct.error, KeyError):
        if len(names) == 1:
            name, dtype = names[0], key_types[names[0]]
            raise FeatureError(f"keys of view '{view}' must be {dtype} ('{name}'), got {columns[name][:5]} "
                               f"(fix: pass {dtype} keys)") from None
        want = ", ".join(f"'{n}' {key_types[n]}" for n in names)
        raise FeatureError(f"keys of view '{view}' must be {want}, got {({n: columns[n][:5] for n in names})} "
                           f"(fix: pass keys of those types)") from None


@lru_cache(maxsize=4096)
def _field(view: str, feature: str) -> bytes:
    return wire.redis_field(view, feature)  # pure-Python murmur3: once per feature, not per read


def _sqlite_time(value) -> dt.datetime | None:
    """Feast's SQLite ``event_ts``: epoch seconds of the naive UTC time read as local time (its last
    registered adapter), read back as Feast does (``fromtimestamp`` local, then UTC); or ISO text."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(int(value)).replace(tzinfo=UTC)
    text = value.decode() if isinstance(value, bytes) else str(value)
    if text.lstrip("-").isdigit():
        return dt.datetime.fromtimestamp(int(text)).replace(tzinfo=UTC)
    at = dt.datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # Feast writes naive UTC


def _redis_time(data: bytes | None) -> dt.datetime | None:
    """``_ts:<view>``: a serialized google.protobuf.Timestamp."""
    if not data:
        return None
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp.FromString(data)
    return dt.datetime.fromtimestamp(ts.seconds, tz=UTC) + dt.timedelta(microseconds=ts.nanos // 1000)


def _column(view: str, name: str, dtype: pa.DataType, raw: list[bytes | None]) -> pa.Array:
    """One feature's stored bytes as an Arrow column of the type features.yaml gives it."""
    try:
        return pa.array([wire.decode_value(b) for b in raw], dtype)
    except (ValueError, TypeError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise FeatureError(f"online store: {view}:{name} holds values that are not {dtype} ({exc}) "
                           f"(fix: run `millrace features materialize --full`)") from None
