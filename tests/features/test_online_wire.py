"""The online read without Feast against Feast itself: Feast's own writer fills the store (its
``online_write_batch``; materialize's own writer is compared with it in test_online_write.py), then
``OnlineReader`` (ours, no ``import feast``) and Feast's ``get_online_features`` read the same keys;
the values must be equal for every type the contracts produce, with nulls, empty lists, expired
(ttl 1d on 2021 data) and ttl-less views, string and int entity keys. The encodings themselves
(entity keys, Redis keys and hash fields, Value field numbers) are compared with Feast's functions
byte for byte."""
from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest

from millrace.contracts.arrow import TIMESTAMP
from millrace.features import stores, wire
from millrace.features.online import OnlineReader
from tests.features.typed_state import ACCOUNTS, BEFORE_DATA, USERS, assert_same_reads, feast_rows, typed_state

UTC = dt.timezone.utc


# -- encodings against Feast's own functions ---------------------------------------------------------

def test_value_field_numbers_match_feasts_descriptor():
    from feast.protos.feast.types.Value_pb2 import Value

    theirs = {f.name: f.number for f in Value.DESCRIPTOR.oneofs_by_name["val"].fields}
    assert wire.FIELD_NUMBERS == {name: theirs[name] for name in wire.FIELD_NUMBERS}
    ours = wire.value_class().DESCRIPTOR
    for name, number in wire.FIELD_NUMBERS.items():
        mine, feast = ours.fields_by_name[name], Value.DESCRIPTOR.fields_by_name[name]
        assert (mine.number, mine.type) == (feast.number, feast.type), name
        if feast.message_type is not None:
            assert mine.message_type.fields[0].type == feast.message_type.fields_by_name["val"].type, name


@pytest.mark.parametrize("join_key,value,value_type,field", [
    ("userId", 1, wire.INT64, "int64_val"), ("userId", -5, wire.INT64, "int64_val"),
    ("userId", 2 ** 62, wire.INT64, "int64_val"), ("n", 7, wire.INT32, "int32_val"),
    ("account", "abc", wire.STRING, "string_val"), ("account", "zoë with space", wire.STRING, "string_val"),
    ("clé", "", wire.STRING, "string_val")])
def test_entity_keys_equal_feasts_serialization(join_key, value, value_type, field):
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=[join_key], entity_values=[Value(**{field: value})])
    assert wire.entity_key(join_key, value, value_type) == serialize_entity_key(key, 3)
    assert wire.entity_key(join_key, value, value_type) + b"proj" == _redis_key("proj", key, 3)


def test_redis_fields_equal_feasts_murmur3():
    from feast.infra.online_stores.helpers import _mmh3

    rng = random.Random(7)
    names = ["", "a", "ab", "abc", "abcd", "abcde", "é", "user_activity"]
    names += ["".join(rng.choice("abcxyz_0ü") for _ in range(rng.randint(0, 40))) for _ in range(200)]
    for view in names[:20]:
        for feature in names:
            assert wire.redis_field(view, feature) == _mmh3(f"{view}:{feature}"), (view, feature)


def test_values_decode_as_feast_converts_them():
    from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
    from feast.value_type import ValueType

    now = dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    cases = {ValueType.INT64: [1, None, -2 ** 63], ValueType.INT32: [3, None], ValueType.DOUBLE: [2.5, None, -0.0],
             ValueType.FLOAT: [1.5, None], ValueType.STRING: ["x", "", None, "zoë"], ValueType.BOOL: [True, False, None],
             ValueType.UNIX_TIMESTAMP: [now, None], ValueType.INT64_LIST: [[1, 2], [], None],
             ValueType.DOUBLE_LIST: [[1.0, 2.5], [], None], ValueType.STRING_LIST: [["a", "b"], [], None],
             ValueType.BOOL_LIST: [[True, False], [], None], ValueType.UNIX_TIMESTAMP_LIST: [[now], [], None]}
    for value_type, values in cases.items():
        for proto in python_values_to_proto_values(values, value_type):
            assert wire.decode_value(proto.SerializeToString()) == feast_value_type_to_python_type(proto), value_type


def test_a_value_of_an_unknown_type_is_an_error_not_a_null():
    from feast.protos.feast.types.Value_pb2 import Value

    with pytest.raises(ValueError):
        wire.decode_value(Value(json_val='{"a": 1}').SerializeToString())


# -- written by Feast, read by us and by Feast --------------------------------------------------------

def _rewrite_with_feast(project, features, store, delete) -> None:
    from tests.features.test_online_write import VIEWS, feast_write

    delete()
    for view in VIEWS:
        feast_write(project, features, store, view)


def test_sqlite_written_by_feast_read_by_us_equals_feast(tmp_path, monkeypatch):
    import sqlite3

    project, features, store = typed_state(tmp_path, monkeypatch)

    def delete():
        with sqlite3.connect(stores.sqlite_path(project)) as con:
            for view in ("account_typed", "user_typed"):
                con.execute(f'DELETE FROM "{project.name}_{view}"')

    _rewrite_with_feast(project, features, store, delete)
    assert_same_reads(project, features, store)
    con = sqlite3.connect(stores.sqlite_path(project))
    stored = {r[0] for r in con.execute(f'SELECT entity_key FROM "{project.name}_account_typed"')}
    assert stored == {wire.entity_key("account", a, wire.STRING) for a in ACCOUNTS}
    stored = {r[0] for r in con.execute(f'SELECT entity_key FROM "{project.name}_user_typed"')}
    assert stored == {wire.entity_key("user", u, wire.INT64) for u in USERS}
    con.close()


def test_feature_subset_order_and_duplicate_keys(tmp_path, monkeypatch):
    project, features, store = typed_state(tmp_path, monkeypatch)
    keys = ["zoë", "a1", "zoë", None]
    got = OnlineReader(project, features, clock=lambda: BEFORE_DATA).read(
        "account_typed", pa.array(keys), ["seen", "flag_last"])
    assert got.column_names == ["account", "seen", "flag_last"]
    assert got.schema.field("seen").type == pa.list_(TIMESTAMP)
    full = feast_rows(store, features, "account_typed", ["zoë", "a1"])
    assert got.to_pylist()[:3] == [{k: full[i][k] for k in got.column_names} for i in (0, 1, 0)]
    assert got.to_pylist()[3] == {"account": None, "seen": None, "flag_last": None}


@pytest.mark.redis
def test_redis_written_by_feast_read_by_us_equals_feast(typed_redis):
    project, features, store, client = typed_redis
    suffix = project.name.encode()
    _rewrite_with_feast(project, features, store, lambda: client.delete(*(
        set(client.scan_iter(match=b"*" + suffix, count=1000)) - {b"millrace.marker:" + suffix})))
    assert_same_reads(project, features, store)
    keys = set(client.scan_iter(match=b"*" + suffix, count=1000)) - {b"millrace.marker:" + suffix}
    assert keys == {wire.entity_key("account", a, wire.STRING) + suffix for a in ACCOUNTS} | {
        wire.entity_key("user", u, wire.INT64) + suffix for u in USERS}
    fields = set(client.hkeys(wire.entity_key("account", "a1", wire.STRING) + suffix))
    assert fields == {wire.redis_field("account_typed", n) for n in features.feature_names("account_typed")} | {
        b"_ts:account_typed"}


def test_keys_of_the_wrong_type_are_one_line(tmp_path, monkeypatch):
    from millrace.features.errors import FeatureError

    project, features, _ = typed_state(tmp_path, monkeypatch)
    with pytest.raises(FeatureError, match=r"keys of view 'user_typed' must be int64 .*\(fix: "):
        OnlineReader(project, features).read("user_typed", ["not a number"])
