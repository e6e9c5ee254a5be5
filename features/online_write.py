"""Columnar writes to the online store, byte for byte what Feast 0.67's writers store, without Feast.

A batch is an Arrow table: the view's key columns, ``event_timestamp``, ``created_timestamp``
(optional) and its features. Entity keys, ``feast.types.Value`` messages and Redis timestamps are
encoded for whole columns at once with numpy and Arrow (a Value is a tag, then a varint, fixed or
length-delimited payload), never one protobuf object per value; then

- SQLite: one ``executemany`` upsert per batch in one transaction, into the table, columns and
  encodings of Feast's ``SqliteOnlineStore`` (``entity_key, feature_name, value, value_text,
  event_ts, created_ts``; ``event_ts`` as Feast's registered adapter writes it);
- Redis: one pipeline reading each hash's ``_ts:<view>``, one writing the rows that are newer
  (an ``HSET`` per entity of every feature field and ``_ts:<view>``), as ``RedisOnlineStore``:
  a row no newer than the stored time is skipped (a stored time of 0, the epoch, never blocks,
  as in Feast), and of several rows of one key the newest wins.

Feast's readers and ``features.online`` read it back unchanged (tests/features/test_online_write.py
compares the stored bytes with Feast's own writers', every type, nulls included). Where Feast's
conversion goes through pandas the bytes are Feast's (a NaN float and a null are both an empty
Value; a scalar timestamp rounds down to the second, one in a list towards zero; a null timestamp
is -2**63); two cases differ on purpose: int64 values above 2**53 in a column with nulls stay exact
(Feast rounds them through float64) and a null inside an integer list is 0 (Feast's default for it;
its conversion raises instead).

No Feast, Beam, torch or MLflow import: the streaming job writes with this module too.
"""
from __future__ import annotations

import datetime as dt
import os
import sqlite3
from dataclasses import dataclass, field
from itertools import chain, repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.features import stores, wire
from millrace.features.errors import FeatureError
from millrace.features.spec import Features

KEY_TYPES = {pa.int64(): wire.INT64, pa.int32(): wire.INT32, pa.string(): wire.STRING}
SQLITE_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
_EMPTY = pa.array([], pa.binary())
# SQLite's default page cache (2 MB) is far smaller than a batch's three B-trees (table, primary
# key, Feast's entity_key index): with it a 80k-value upsert spills pages mid-transaction and runs
# about 3x slower.
SQLITE_CACHE_KB = 256 * 1024


# -- bytes of many rows at once ----------------------------------------------------------------------

def _rows(matrix: np.ndarray, lengths: np.ndarray) -> pa.BinaryArray:
    """Row i of the result is the first ``lengths[i]`` bytes of ``matrix[i]``."""
    lengths = lengths.astype(np.int64)
    if lengths.sum() >= 2 ** 31:
        raise FeatureError("an online write batch of 2 GB or more (fix: write it in smaller batches)")
    keep = np.arange(matrix.shape[1]) < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = np.ascontiguousarray(matrix[keep], np.uint8)
    return pa.BinaryArray.from_buffers(pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _regroup(parts: pa.BinaryArray, bounds: np.ndarray) -> pa.BinaryArray:
    """Row i: parts[bounds[i]:bounds[i+1]] concatenated (parts built here: offset 0, no nulls)."""
    offsets = np.frombuffer(parts.buffers()[1], np.int32, len(parts) + 1)[bounds]
    return pa.BinaryArray.from_buffers(pa.binary(), len(bounds) - 1,
                                       [None, pa.py_buffer(np.ascontiguousarray(offsets)), parts.buffers()[2]])


def _fixed(values: np.ndarray) -> pa.BinaryArray:
    """Each value's little-endian bytes (float64, float32, int64, int32, uint8)."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), values.dtype.itemsize)
    return _rows(raw, np.full(len(values), values.dtype.itemsize))


def _varint_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints (negative int64: ten bytes, two's complement): (n x 10 bytes, lengths)."""
    x = values.astype(np.int64).view(np.uint64)
    out = np.empty((len(x), 10), np.uint8)
    lengths = np.ones(len(x), np.int64)
    for k in range(10):
        rest = x >> np.uint64(7)
        more = rest != 0
        out[:, k] = (x & np.uint64(0x7F)).astype(np.uint8) | (more.astype(np.uint8) << 7)
        lengths += more
        x = rest
    return out, np.minimum(lengths, 10)


def _varints(values: np.ndarray) -> pa.BinaryArray:
    return _rows(*_varint_matrix(values))


def _prefixed(prefix: bytes, lengths: np.ndarray, valid: np.ndarray | None = None) -> pa.BinaryArray:
    """``prefix`` + varint(length) per row; an empty row where ``valid`` is False."""
    matrix, size = _varint_matrix(lengths)
    head = np.frombuffer(prefix, np.uint8)
    full = np.empty((len(lengths), len(head) + 10), np.uint8)
    full[:, :len(head)] = head
    full[:, len(head):] = matrix
    size = size + len(head)
    return _rows(full, size if valid is None else np.where(valid, size, 0))


def _join(*parts) -> pa.BinaryArray:
    """Row-wise concatenation (a null part makes a null row); bytes parts are the same in every row."""
    return pc.binary_join_element_wise(*parts, _constant(b""))


def _constant(data: bytes) -> pa.Scalar:
    return pa.scalar(data, pa.binary())


def _tag(number: int, wire_type: int) -> bytes:
    return _varint_bytes((number << 3) | wire_type)


def _varint_bytes(value: int) -> bytes:
    matrix, size = _varint_matrix(np.array([value], np.int64))
    return matrix[0, :size[0]].tobytes()


# -- Value messages ------------------------------------------------------------------------------------

# Field numbers from features/wire.py (checked against Feast's descriptor in test_online_wire.py).
_PROTO = {"int64": "int64", "int32": "int32", "double": "double", "float": "float", "string": "string",
          "bool": "bool", "timestamp": "unix_timestamp"}
_SCALAR_FIELD = {kind: wire.FIELD_NUMBERS[f"{name}_val"] for kind, name in _PROTO.items()}
_LIST_FIELD = {kind: wire.FIELD_NUMBERS[f"{name}_list_val"] for kind, name in _PROTO.items()}


def _kind(dtype: pa.DataType) -> str:
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    kinds = {pa.int64(): "int64", pa.int32(): "int32", pa.float64(): "double", pa.float32(): "float",
             pa.string(): "string", pa.large_string(): "string", pa.bool_(): "bool"}
    if dtype not in kinds:
        raise FeatureError(f"feature type {dtype} has no Feast online encoding "
                           f"(fix: use int, float, string, bool, timestamp or a list of those)")
    return kinds[dtype]


def _seconds(array: pa.Array, toward_zero: bool) -> np.ndarray:
    """Epoch seconds of a timestamp array: rounded down (Feast's scalars, numpy's datetime64[s]) or
    towards zero (its lists, ``int(datetime.timestamp())``); nulls are Feast's null timestamp."""
    unit = {"s": 1, "ms": 10 ** 3, "us": 10 ** 6, "ns": 10 ** 9}[array.type.unit]
    raw = pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    if toward_zero:
        out = np.trunc(raw.astype(np.float64) / unit).astype(np.int64)  # as Python's float timestamp()
    else:
        out = raw // unit
    if array.null_count:
        out = np.where(array.is_null().to_numpy(zero_copy_only=False), wire.NULL_TIMESTAMP, out)
    return out


def _null_mask(array: pa.Array) -> np.ndarray:
    """Rows Feast writes as an empty Value: nulls, and NaN floats (its pandas sees them as null)."""
    null = array.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(array.type):
        null = null | pc.fill_null(pc.is_nan(array), False).to_numpy(zero_copy_only=False)
    return null


def _scalars(array: pa.Array, kind: str) -> pa.BinaryArray:
    tag = _tag(_SCALAR_FIELD[kind], 2 if kind == "string" else 1 if kind == "double" else 5 if kind == "float" else 0)
    if kind == "timestamp":  # a null timestamp is a value (-2**63), not an empty message
        body = _varints(_seconds(array, toward_zero=False))
        return _join(_constant(tag), body)
    null = _null_mask(array)
    if kind == "string":
        data = array.cast(pa.binary())
        sizes = pc.fill_null(pc.binary_length(data), 0).to_numpy(zero_copy_only=False)
        return _join(_prefixed(tag, sizes, ~null), pc.fill_null(data, b""))
    if kind in ("int64", "int32"):
        matrix, size = _varint_matrix(pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False))
    elif kind == "bool":
        bits = pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(np.uint8)
        matrix, size = bits[:, None], np.ones(len(array), np.int64)
    else:
        dtype = np.float64 if kind == "double" else np.float32
        values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False).astype(dtype)
        matrix, size = values.view(np.uint8).reshape(len(values), -1), np.full(len(values), values.itemsize)
    full = np.empty((len(array), 1 + matrix.shape[1]), np.uint8)
    full[:, 0] = tag[0]
    full[:, 1:] = matrix
    return _rows(full, np.where(null, 0, size + 1))


def _lists(array: pa.ListArray, kind: str) -> pa.BinaryArray:
    """``<list field> <len> [0x0a <len> packed elements]`` (strings: one ``0x0a <len> bytes`` each);
    a null list is an empty Value, an empty list an empty list message."""
    bounds = array.offsets.to_numpy().astype(np.int64)  # into the unsliced child array
    child = array.values
    if kind == "string":
        data = pc.fill_null(child.cast(pa.binary()), b"")
        elements = _join(_prefixed(b"\x0a", pc.binary_length(data).to_numpy(zero_copy_only=False)), data)
        inner = _regroup(elements, bounds)
    else:
        if kind == "timestamp":
            elements = _varints(_seconds(child, toward_zero=True))
        elif kind in ("int64", "int32"):
            elements = _varints(pc.fill_null(child.cast(pa.int64()), 0).to_numpy(zero_copy_only=False))
        elif kind == "bool":
            elements = _fixed(pc.fill_null(child, False).to_numpy(zero_copy_only=False).astype(np.uint8))
        else:  # a null float element is NaN, as Feast's numpy conversion makes it
            dtype = np.float64 if kind == "double" else np.float32
            elements = _fixed(pc.fill_null(child.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False).astype(dtype))
        payload = _regroup(elements, bounds)
        sizes = pc.binary_length(payload).to_numpy(zero_copy_only=False)
        inner = _join(_prefixed(b"\x0a", sizes, sizes > 0), payload)  # proto3: an empty packed field is left out
    valid = ~array.is_null().to_numpy(zero_copy_only=False)
    sizes = pc.binary_length(inner).to_numpy(zero_copy_only=False)
    out = _join(_prefixed(_tag(_LIST_FIELD[kind], 2), sizes, valid), inner)
    return out if valid.all() else pc.if_else(pa.array(valid), out, pa.scalar(b"", pa.binary()))


def encode_values(column: pa.Array | pa.ChunkedArray) -> pa.BinaryArray:
    """The serialized ``feast.types.Value`` of every row of a feature column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return _EMPTY
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return _lists(array, _kind(array.type.value_type))
    return _scalars(array, _kind(array.type))


def value_texts(column: pa.Array | pa.ChunkedArray) -> list:
    """SQLite ``value_text`` as Feast's ``extract_text_and_num`` fills it: the text of a string,
    ``str()`` of an int, float or bool; None for empty Values, timestamps and lists."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = None if pa.types.is_list(array.type) or pa.types.is_large_list(array.type) else _kind(array.type)
    if kind in (None, "timestamp"):
        return [None] * len(array)
    if kind == "string":
        return array.to_pylist()
    if kind in ("int64", "int32"):
        return array.cast(pa.string()).to_pylist()  # Arrow's decimal text is Python's str(int)
    null = _null_mask(array)
    if kind == "bool":
        texts = np.where(pc.fill_null(array, False).to_numpy(zero_copy_only=False), "True", "False").tolist()
    else:  # repr of the double (a float32 widened, as protobuf returns it): Python's shortest text
        texts = list(map(repr, pc.fill_null(array, 0).to_numpy(zero_copy_only=False).astype(np.float64).tolist()))
    if null.any():
        for i in np.flatnonzero(null).tolist():
            texts[i] = None
    return texts


# -- entity keys -------------------------------------------------------------------------------------

def encode_keys(table: pa.Table, keys: list[str]) -> pa.BinaryArray:
    """``serialize_entity_key`` v3 of every row: the key columns sorted by name, as Feast sorts them."""
    names = sorted(keys)
    head = np.uint32(len(names)).tobytes() + b"".join(
        np.array([wire.STRING, len(n.encode())], "<u4").tobytes() + n.encode() for n in names)
    parts = [_constant(head)]
    for name in names:
        column = table.column(name).combine_chunks()
        if column.null_count:
            raise FeatureError(f"{column.null_count} rows have a null '{name}': an entity key cannot be null "
                               f"(fix: drop or fill those rows before writing)")
        kind = KEY_TYPES.get(column.type)
        if kind is None:
            raise FeatureError(f"entity key '{name}' is {column.type}: Feast keys are int64, int32 or string "
                               f"(fix: cast the key column)")
        if kind == wire.STRING:
            data = column.cast(pa.binary())
            sizes = pc.binary_length(data).to_numpy(zero_copy_only=False).astype("<u4")
            header = np.empty((len(sizes), 8), np.uint8)
            header[:, :4] = np.frombuffer(np.uint32(kind).tobytes(), np.uint8)
            header[:, 4:] = sizes.view(np.uint8).reshape(-1, 4)
            parts += [_rows(header, np.full(len(sizes), 8)), data]
        else:
            values = column.to_numpy().astype("<i8" if kind == wire.INT64 else "<i4")
            header = np.array([kind, values.itemsize], "<u4").tobytes()
            parts += [_constant(header), _fixed(values)]
    return _join(*parts)


# -- timestamps -------------------------------------------------------------------------------------

def _micros(column) -> tuple[np.ndarray, np.ndarray]:
    """(epoch microseconds, null mask) of a timestamp column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.timestamp("us", tz="UTC"))
    null = array.is_null().to_numpy(zero_copy_only=False)
    return pc.fill_null(array.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), null


def sqlite_times(micros: np.ndarray, null: np.ndarray | None = None) -> list:
    """Feast's SQLite ``event_ts``/``created_ts``: ``int(naive_utc.timestamp())``, its last registered
    datetime adapter (which reads the naive time in the machine's zone), once per distinct time."""
    distinct, where = np.unique(micros, return_inverse=True)
    epoch = dt.datetime(1970, 1, 1)
    texts = np.array([int((epoch + dt.timedelta(microseconds=int(u))).timestamp()) for u in distinct.tolist()],
                     np.int64)
    out = texts[where].tolist()
    if null is not None and null.any():
        for i in np.flatnonzero(null).tolist():
            out[i] = None
    return out


def redis_timestamps(micros: np.ndarray) -> pa.BinaryArray:
    """``google.protobuf.Timestamp`` bytes (``FromDatetime``: seconds rounded down, nanos >= 0)."""
    seconds, rest = np.divmod(micros, 10 ** 6)
    fields = []
    for tag, values in ((0x08, seconds), (0x10, rest * 1000)):  # proto3: a 0 field is left out
        matrix, size = _varint_matrix(values)
        full = np.empty((len(values), 11), np.uint8)
        full[:, 0], full[:, 1:] = tag, matrix
        fields.append(_rows(full, np.where(values != 0, size + 1, 0)))
    return _join(*fields)


def nanos_of(data: bytes | None) -> int:
    """A stored ``_ts`` as Feast compares it: seconds * 1e9 + nanos (0 when absent)."""
    if not data:
        return 0
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp.FromString(data)
    return ts.seconds * 1_000_000_000 + ts.nanos


# -- a batch, encoded -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """One batch of a view, ready for either store."""

    view: str
    keys: list[bytes]                   # serialized entity keys, one per row
    event_us: np.ndarray                # event_timestamp, epoch microseconds
    created_us: np.ndarray | None       # created_timestamp (None: no column)
    created_null: np.ndarray | None
    values: dict[str, pa.BinaryArray]   # feature -> serialized Value per row
    table: pa.Table = field(repr=False)  # the batch (for SQLite's value_text)

    @property
    def rows(self) -> int:
        return len(self.keys)


def encode(view: str, table: pa.Table, keys: list[str], features: list[str]) -> Encoded:
    """Encode a batch: ``keys`` and ``features`` name its columns; every row needs an event time."""
    missing = [c for c in [*keys, "event_timestamp", *features] if c not in table.column_names]
    if missing:
        raise FeatureError(f"online write of '{view}': the batch has no column(s) {missing} "
                           f"(fix: pass the key columns, event_timestamp and every feature of the view)")
    event, null = _micros(table.column("event_timestamp"))
    if null.any():
        raise FeatureError(f"online write of '{view}': {int(null.sum())} rows have no event_timestamp "
                           f"(fix: drop them; a value without a time cannot be ordered)")
    created, created_null = (None, None)
    if "created_timestamp" in table.column_names:
        created, created_null = _micros(table.column("created_timestamp"))
    return Encoded(view=view, keys=encode_keys(table, keys).to_pylist(), event_us=event, created_us=created,
                   created_null=created_null, values={f: encode_values(table.column(f)) for f in features},
                   table=table)


# -- SQLite ---------------------------------------------------------------------------------------

def sqlite_table(project: str, view: str) -> str:
    return f"{project}_{view}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ensure_sqlite_table(con: sqlite3.Connection, table: str) -> None:
    """The view's table and index as Feast's ``SqliteOnlineStore.update`` creates them."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {_quote(table)} (entity_key BLOB, feature_name TEXT, value BLOB, "
                f"value_text TEXT,  vector_value BLOB, event_ts timestamp, created_ts timestamp,  "
                f"PRIMARY KEY(entity_key, feature_name))")
    con.execute(f"CREATE INDEX IF NOT EXISTS {_quote(table + '_ek')} ON {_quote(table)} (entity_key);")


def write_sqlite(con: sqlite3.Connection, table: str, batch: Encoded) -> int:
    """Upsert every (entity, feature) of the batch in one transaction; returns the rows (entities)."""
    if batch.rows == 0:
        return 0
    event = sqlite_times(batch.event_us)
    created = sqlite_times(batch.created_us, batch.created_null) if batch.created_us is not None \
        else [None] * batch.rows
    columns = ", ".join(SQLITE_COLUMNS)
    sql = (f"INSERT INTO {_quote(table)} ({columns}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) "
           f"DO UPDATE SET value = excluded.value, value_text = excluded.value_text, "
           f"event_ts = excluded.event_ts, created_ts = excluded.created_ts")
    # Rows in primary key order (entity key, then feature name): the B-trees fill in order, ~1.5x
    # faster than in column order. The sort is stable, so of a key repeated in the batch the last
    # row still wins, as in Feast's row-by-row upsert.
    order = pc.sort_indices(pa.array(batch.keys, pa.binary()))
    positions = order.to_pylist()

    def take(values) -> list:
        return values.take(order).to_pylist() if isinstance(values, pa.Array) else [values[i] for i in positions]

    keys, event, created = take(batch.keys), take(event), take(created)
    per_feature = [zip(keys, repeat(name), take(batch.values[name]), take(value_texts(batch.table.column(name))),
                       event, created) for name in sorted(batch.values)]
    with con:
        con.executemany(sql, chain.from_iterable(zip(*per_feature)))
    return batch.rows


# -- Redis ------------------------------------------------------------------------------------------
# Commands go out as one RESP payload per chunk, built for all rows at once with Arrow (redis-py's
# per-command pipeline costs ~15 us a command, several times the rest of the write); the replies
# are read back with redis-py's connection (hiredis when installed).

def _bulk(data) -> list:
    """RESP bulk string parts ``$<len>\r\n<data>\r\n`` of a binary column (or one bytes value)."""
    if isinstance(data, bytes):
        return [_constant(b"$%d\r\n%s\r\n" % (len(data), data))]
    sizes = pc.binary_length(data).cast(pa.string()).cast(pa.binary())
    return [_constant(b"$"), sizes, _constant(b"\r\n"), data, _constant(b"\r\n")]


def _payload(rows: pa.BinaryArray) -> bytes:
    """The rows' bytes back to back (no nulls; a slice gives its own rows only)."""
    offsets = np.frombuffer(rows.buffers()[1], np.int32, len(rows) + 1, rows.offset * 4)
    return rows.buffers()[2][int(offsets[0]):int(offsets[-1])].to_pybytes()


def _command(name: bytes, *args) -> pa.BinaryArray:
    """One command per row; each argument a binary column or a bytes constant."""
    parts = [_constant(b"*%d\r\n" % (1 + len(args)))] + _bulk(name)
    for arg in args:
        parts += _bulk(arg)
    return _join(*parts)


def _send(client, commands: pa.BinaryArray) -> list:
    """Send the commands in one write, read one reply per command (an error reply raises after all
    are read, so the connection stays in step)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([_payload(commands)])
        replies, error = [], None
        for _ in range(len(commands)):
            try:
                replies.append(conn.read_response())
            except Exception as exc:  # noqa: BLE001 - a reply error: keep reading, raise the first
                import redis

                if not isinstance(exc, redis.ResponseError):
                    raise
                error = error or exc
                replies.append(None)
        if error is not None:
            raise error
        return replies
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def write_redis(client, project: str, batch: Encoded, chunk: int = 10_000) -> int:
    """Write the rows newer than what each hash holds (Feast's rule); returns how many were written."""
    if batch.rows == 0:
        return 0
    ts_field = f"_ts:{batch.view}".encode("utf-8")
    hashes = _join(pa.array(batch.keys, pa.binary()), _constant(project.encode("utf-8")))
    stored: list = []
    for start in range(0, batch.rows, chunk):
        stored += _send(client, _command(b"HGET", hashes.slice(start, chunk), ts_field))
    new = batch.event_us * 1000  # nanos
    before = np.array([nanos_of(s) for s in stored], np.int64) if any(stored) else np.zeros(len(new), np.int64)
    rows = _newest_first_rows(batch.keys, new)  # of repeated keys, the first of the newest
    rows = rows[(before[rows] == 0) | (new[rows] > before[rows])]
    if len(rows) == 0:
        return 0
    take = pa.array(rows)
    args = [hashes.take(take), ts_field, redis_timestamps(batch.event_us).take(take)]
    for name, values in batch.values.items():
        args += [wire.redis_field(batch.view, name), values.take(take)]
    commands = _command(b"HSET", *args)
    for start in range(0, len(commands), chunk):
        _send(client, commands.slice(start, chunk))
    return len(rows)


def _newest_first_rows(keys: list[bytes], nanos: np.ndarray) -> np.ndarray:
    """Row numbers to write, one per distinct key: its newest row (the first of equal times), as
    Feast's writer ends up after skipping, in a batch, rows no newer than one already queued."""
    if len(set(keys)) == len(keys):
        return np.arange(len(keys))
    codes = pa.array(keys, pa.binary()).dictionary_encode().indices.to_numpy()
    order = np.lexsort((np.arange(len(keys)), -nanos, codes))
    first = np.ones(len(order), bool)
    first[1:] = codes[order][1:] != codes[order][:-1]
    return np.sort(order[first])


# -- the store of a project ---------------------------------------------------------------------------

class OnlineWriter:
    """Writes batches of a project's views into its online store (SQLite file or Redis)."""

    def __init__(self, project, features: Features):
        self.project, self.features = project, features
        self.kind = stores.online_kind(project)
        self._client = None

    def ensure(self, view: str) -> None:
        """Create the view's SQLite table if missing (a deleted file, a dropped table); Redis: nothing."""
        if self.kind == stores.SQLITE:
            path = stores.sqlite_path(self.project)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            con = sqlite3.connect(path)
            try:
                with con:
                    ensure_sqlite_table(con, sqlite_table(self.project.name, view))
            finally:
                con.close()

    def encode(self, view: str, table: pa.Table) -> Encoded:
        return encode(view, table, self.features.join_keys(view), self.features.feature_names(view))

    def write(self, view: str, table: pa.Table) -> int:
        """One batch: SQLite in one transaction, Redis in two pipelines; returns the entities written."""
        batch = self.encode(view, table)
        if self.kind == stores.SQLITE:
            con = sqlite3.connect(stores.sqlite_path(self.project))
            try:
                con.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KB}")  # this connection only: not stored in the file
                return write_sqlite(con, sqlite_table(self.project.name, view), batch)
            finally:
                con.close()
        if self._client is None:
            self._client = stores.redis_client(self.project.online_store)
        return write_redis(self._client, self.project.name, batch)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
