"""The columnar encoder of features/online_write.py against Feast's own conversion, byte for byte:
Values of every feature type (nulls, NaN, empty lists, null elements, negative and pre-1970
values, unicode), SQLite value_text and times, Redis timestamps, and entity keys with one or
several key columns (Feast sorts those by name)."""
from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pyarrow as pa
import pytest

from millrace.contracts.arrow import TIMESTAMP
from millrace.features import online_write, wire

UTC = dt.timezone.utc


def _feast_values(array: pa.Array) -> list[bytes]:
    """Feast's path: the column through _columns_to_proto_values (as _convert_arrow_to_proto)."""
    import feast.types as ft
    from feast.utils import _columns_to_proto_values

    from millrace.features.feast_repo import feast_type

    name = feast_type(array.type)
    dtype = ft.Array(getattr(ft, name[6:-1])) if name.startswith("Array(") else getattr(ft, name)
    batch = pa.record_batch([array], names=["c"])
    return [v.SerializeToString() for v in _columns_to_proto_values(batch, [("c", dtype.to_value_type())])["c"]]


def _times(rng: random.Random, n: int, nulls: float) -> list:
    base = dt.datetime(1969, 12, 31, 23, 59, 58, tzinfo=UTC)
    return [None if rng.random() < nulls else base + dt.timedelta(microseconds=rng.randint(-10 ** 7, 10 ** 15))
            for _ in range(n)]


def _columns(n: int = 400, seed: int = 3) -> dict[str, pa.Array]:
    rng = random.Random(seed)
    pick = lambda make, nulls=0.2: [None if rng.random() < nulls else make() for _ in range(n)]  # noqa: E731
    text = lambda: "".join(rng.choice("ab zé-ü\u4e2d") for _ in range(rng.randint(0, 9)))  # noqa: E731
    floats = lambda: rng.choice([0.0, -0.0, float("nan"), 1e-7, 1e300, rng.uniform(-1e6, 1e6), 0.1])  # noqa: E731
    lists = lambda make, elem_nulls=0.0: pick(lambda: [None if rng.random() < elem_nulls else make()  # noqa: E731
                                                       for _ in range(rng.randint(0, 5))])
    return {
        "int64": pa.array(pick(lambda: rng.choice([0, -1, 2 ** 53, -2 ** 53, rng.randint(-10 ** 9, 10 ** 9)])), pa.int64()),
        "int64_big": pa.array([rng.choice([2 ** 63 - 1, -2 ** 63, 2 ** 62 + 1, 5]) for _ in range(n)], pa.int64()),
        "int32": pa.array(pick(lambda: rng.randint(-2 ** 31, 2 ** 31 - 1)), pa.int32()),
        "double": pa.array(pick(floats), pa.float64()),
        "float": pa.array(pick(floats), pa.float32()),
        "string": pa.array(pick(text), pa.string()),
        "bool": pa.array(pick(lambda: rng.random() < 0.5), pa.bool_()),
        "timestamp": pa.array(_times(rng, n, 0.2), TIMESTAMP),
        "int64_list": pa.array(lists(lambda: rng.randint(-2 ** 62, 2 ** 62)), pa.list_(pa.int64())),
        "int32_list": pa.array(lists(lambda: rng.randint(-2 ** 31, 2 ** 31 - 1)), pa.list_(pa.int32())),
        "double_list": pa.array(lists(floats, 0.2), pa.list_(pa.float64())),
        "float_list": pa.array(lists(floats, 0.2), pa.list_(pa.float32())),
        "string_list": pa.array(lists(text, 0.2), pa.list_(pa.string())),
        "bool_list": pa.array(lists(lambda: rng.random() < 0.5, 0.2), pa.list_(pa.bool_())),
        "timestamp_list": pa.array(pick(lambda: _times(rng, rng.randint(0, 4), 0.2)), pa.list_(TIMESTAMP)),
    }


@pytest.mark.parametrize("name", list(_columns()))
def test_values_equal_feasts_conversion(name):
    column = _columns()[name]
    assert online_write.encode_values(column).to_pylist() == _feast_values(column)
    sliced = column.slice(37, 150)  # a slice of a larger array (offsets not at 0)
    assert online_write.encode_values(sliced).to_pylist() == _feast_values(sliced)
    chunked = pa.chunked_array([column.slice(0, 10), column.slice(10)])
    assert online_write.encode_values(chunked).to_pylist() == _feast_values(column)


@pytest.mark.parametrize("name", ["double", "string", "timestamp_list", "int64_list"])
def test_columns_without_nulls_or_only_nulls(name):
    column = _columns()[name]
    for array in (column.drop_null(), pa.nulls(7, column.type), column.slice(0, 0)):
        assert online_write.encode_values(array).to_pylist() == (_feast_values(array) if len(array) else [])


def test_value_text_equals_feasts_extract_text():
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value

    for name, column in _columns().items():
        theirs = [extract_text_and_num(Value.FromString(b), False)[0] for b in _feast_values(column)]
        assert online_write.value_texts(column) == theirs, name


def test_sqlite_times_equal_feasts_adapter():
    from feast.infra.online_stores.sqlite import adapt_datetime_epoch
    from feast.utils import to_naive_utc

    times = _times(random.Random(5), 500, 0.0)
    micros = pa.array(times, TIMESTAMP).cast(pa.int64()).to_numpy()
    assert online_write.sqlite_times(micros) == [adapt_datetime_epoch(to_naive_utc(t)) for t in times]


def test_redis_timestamps_equal_feasts():
    from google.protobuf.timestamp_pb2 import Timestamp

    times = _times(random.Random(6), 500, 0.0) + [dt.datetime(1970, 1, 1, tzinfo=UTC)]
    micros = pa.array(times, TIMESTAMP).cast(pa.int64()).to_numpy()
    theirs = []
    for t in times:
        ts = Timestamp()
        ts.FromDatetime(t)
        theirs.append(ts.SerializeToString())
    assert online_write.redis_timestamps(micros).to_pylist() == theirs
    assert [online_write.nanos_of(b) for b in theirs] == [int(m) * 1000 for m in micros]


def _feast_key(names: list[str], values: list, types: list[pa.DataType]) -> bytes:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    field = {pa.int64(): "int64_val", pa.int32(): "int32_val", pa.string(): "string_val"}
    return serialize_entity_key(EntityKey(join_keys=names, entity_values=[
        Value(**{field[t]: v}) for v, t in zip(values, types)]), 3)


@pytest.mark.parametrize("keys", [
    {"userId": pa.int64()}, {"account": pa.string()}, {"n": pa.int32()},
    {"origin": pa.string(), "dest": pa.string()},            # declared out of name order
    {"origin": pa.string(), "dep_hour": pa.int64()},
    {"z": pa.int32(), "a": pa.int64(), "m": pa.string()}])
def test_entity_keys_equal_feasts_serialization(keys):
    rng = random.Random(9)
    gen = {pa.int64(): lambda: rng.choice([0, -1, 2 ** 63 - 1, -2 ** 63, rng.randint(-10 ** 12, 10 ** 12)]),
           pa.int32(): lambda: rng.randint(-2 ** 31, 2 ** 31 - 1),
           pa.string(): lambda: "".join(rng.choice("aé z\u4e2d") for _ in range(rng.randint(0, 6)))}
    rows = [{k: gen[t]() for k, t in keys.items()} for _ in range(200)]
    table = pa.Table.from_pylist(rows, schema=pa.schema(list(keys.items())))
    names, types = list(keys), list(keys.values())
    theirs = [_feast_key(names, [r[k] for k in names], types) for r in rows]
    assert online_write.encode_keys(table, names).to_pylist() == theirs
    codes = [online_write.KEY_TYPES[t] for t in types]
    assert [wire.entity_key(names, [r[k] for k in names], codes) for r in rows] == theirs
    if len(names) == 1:
        assert [wire.entity_key(names[0], r[names[0]], codes[0]) for r in rows] == theirs


def test_null_or_unsupported_keys_are_one_line_errors():
    from millrace.features.errors import FeatureError

    with pytest.raises(FeatureError, match=r"null 'userId'.*\(fix: "):
        online_write.encode_keys(pa.table({"userId": pa.array([1, None])}), ["userId"])
    with pytest.raises(FeatureError, match=r"'userId' is double.*\(fix: "):
        online_write.encode_keys(pa.table({"userId": pa.array([1.5])}), ["userId"])
    with pytest.raises(ValueError, match="no field twice"):
        wire.entity_key(["a", "a"], [1, 2], [wire.INT64, wire.INT64])


def test_big_batches_encode_in_bulk():
    """A million values: the encoder stays vectorized (no per-value protobuf objects)."""
    import time

    column = pa.array(np.random.default_rng(1).uniform(0, 5, 1_000_000))
    started = time.perf_counter()
    encoded = online_write.encode_values(column)
    assert len(encoded) == 1_000_000 and encoded[0].as_py()[0] == 0x29
    assert time.perf_counter() - started < 2.0  # Feast's conversion takes ~10 s for this on the test box
