"""What materialize stores (features/online_write.py, no Feast) against what Feast's own writers store
for the same rows (``_convert_arrow_to_proto`` + ``online_write_batch``, the path materialize took
before): the SQLite rows and the Redis hashes are equal byte for byte, and Feast's
``get_online_features`` and our OnlineReader read the same values; Redis keeps Feast's rule for
existing hashes (a row no newer than the stored time is skipped, the epoch never blocks, the newest
of repeated keys wins); the SQLite table is created as Feast creates it."""
from __future__ import annotations

import datetime as dt
import sqlite3

import pyarrow as pa
import pytest

from millrace.contracts.arrow import TIMESTAMP
from millrace.features import offline, online_write, stores, wire
from millrace.features.materialize import latest_per_key
from tests.features.typed_state import assert_same_reads, typed_state

UTC = dt.timezone.utc
VIEWS = ("account_typed", "user_typed")


def feast_write(project, features, store, view: str, table: pa.Table | None = None) -> None:
    """Feast's own conversion and writer, the reference."""
    from feast.utils import _convert_arrow_to_proto

    fv = store.get_feature_view(view)
    if table is None:
        table = latest_per_key(offline.read_view(project.offline, view), features.join_keys(view), None)
    join_keys = {c.name: c.dtype.to_value_type() for c in fv.entity_columns}
    rows = _convert_arrow_to_proto(table.combine_chunks(), fv, join_keys)
    store._get_provider().online_write_batch(store.config, fv, rows, progress=None)


def sqlite_rows(project, view: str) -> list[tuple]:
    con = sqlite3.connect(stores.sqlite_path(project))
    try:
        return sorted(con.execute(f'SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, '
                                  f'created_ts FROM "{project.name}_{view}"'))
    finally:
        con.close()


def redis_hashes(project, client) -> dict[bytes, dict]:
    suffix = project.name.encode()
    keys = set(client.scan_iter(match=b"*" + suffix, count=1000)) - {b"millrace.marker:" + suffix}
    return {k: client.hgetall(k) for k in keys}


def test_sqlite_rows_equal_feasts_writer(tmp_path, monkeypatch):
    project, features, store = typed_state(tmp_path, monkeypatch)  # materialized by us
    ours = {v: sqlite_rows(project, v) for v in VIEWS}
    assert {v: len(rows) for v, rows in ours.items()} == {"account_typed": 5 * 14, "user_typed": 5 * 4}
    assert_same_reads(project, features, store)  # Feast's reader and ours agree on what we wrote
    con = sqlite3.connect(stores.sqlite_path(project))
    with con:
        for view in VIEWS:
            con.execute(f'DELETE FROM "{project.name}_{view}"')
    con.close()
    for view in VIEWS:
        feast_write(project, features, store, view)
    assert {v: sqlite_rows(project, v) for v in VIEWS} == ours


def test_sqlite_table_is_created_as_feast_creates_it(tmp_path, monkeypatch):
    project, features, store = typed_state(tmp_path, monkeypatch)
    table = f"{project.name}_user_typed"
    feast_db = tmp_path / "feast.db"
    online_store = store._get_provider().online_store
    online_store._conn = sqlite3.connect(feast_db)
    online_store.update(store.config, tables_to_delete=[], tables_to_keep=[store.get_feature_view("user_typed")],
                        entities_to_delete=[], entities_to_keep=[], partial=True)
    online_store._conn.commit()
    ours = sqlite3.connect(":memory:")
    online_write.ensure_sqlite_table(ours, table)
    schema = "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? ORDER BY name"
    feasts = online_store._conn.execute(schema, (table,)).fetchall()
    assert ours.execute(schema, (table,)).fetchall() == feasts
    assert len(feasts) == 3  # the table, its primary key and Feast's entity_key index
    online_store._conn.close()
    online_store._conn = None


@pytest.mark.redis
def test_redis_hashes_equal_feasts_writer(typed_redis):
    project, features, store, client = typed_redis  # materialized by us
    ours = redis_hashes(project, client)
    assert len(ours) == 10 and all(len(h) > 3 for h in ours.values())
    assert_same_reads(project, features, store)
    client.delete(*ours)
    for view in VIEWS:
        feast_write(project, features, store, view)
    assert redis_hashes(project, client) == ours


def _batch(features, view: str, keys: list, seconds: list[int]) -> pa.Table:
    """Rows of ``view`` with the given keys and event times (values: the key's position)."""
    types = features.types[view]
    key = features.join_key(view)
    columns = {key: pa.array(keys, types[key]),
               "event_timestamp": pa.array([dt.datetime.fromtimestamp(s, UTC) for s in seconds], TIMESTAMP),
               "created_timestamp": pa.array([dt.datetime(2021, 4, 1, tzinfo=UTC)] * len(keys), TIMESTAMP)}
    for name in features.feature_names(view):
        if types[name] == pa.int64():
            columns[name] = pa.array(list(range(len(keys))), pa.int64())
        else:
            columns[name] = pa.nulls(len(keys), types[name])
    return pa.table(columns)


@pytest.mark.redis
def test_redis_existing_hashes_follow_feasts_rule(typed_redis):
    """Stored times newer, equal, older and the epoch; repeated keys in one batch: the same hashes
    as Feast's writer leaves."""
    project, features, store, client = typed_redis
    view = "user_typed"
    first = _batch(features, view, [1, 2, 3, 7], [1_600_000_000, 1_600_000_000, 1_600_000_000, 0])
    second = _batch(features, view, [1, 2, 3, 7, 2 ** 40, 2 ** 40, 2 ** 40, 5, 5],
                    [1_500_000_000, 1_600_000_000, 1_700_000_000, 10, 5, 9, 9, 3, 2])
    second = second.set_column(second.column_names.index("events_all"), "events_all",
                               pa.array([100 + i for i in range(second.num_rows)], pa.int64()))
    results = {}
    for writer in ("feast", "ours"):
        for key in redis_hashes(project, client):
            client.delete(key)
        for batch in (first, second):
            if writer == "feast":
                feast_write(project, features, store, view, batch)
            else:
                online_write.write_redis(client, project.name, online_write.OnlineWriter(project, features)
                                         .encode(view, batch), chunk=2)
        results[writer] = redis_hashes(project, client)
    assert results["ours"] == results["feast"]
    field = wire.redis_field(view, "events_all")
    got = {k: wire.decode_value(h[field]) for k, h in results["ours"].items()}
    key = lambda u: wire.entity_key("user", u, wire.INT64) + project.name.encode()  # noqa: E731
    # older and equal times kept the first batch; newer, epoch-stored and new keys took the second
    assert got == {key(1): 0, key(2): 1, key(3): 102, key(7): 103, key(2 ** 40): 105, key(5): 107}


def test_sqlite_writes_repeated_keys_as_feast(tmp_path, monkeypatch):
    project, features, store = typed_state(tmp_path, monkeypatch)
    view = "user_typed"
    batch = _batch(features, view, [1, 1, 2, 1], [1_600_000_000, 1_500_000_000, 5, 1_550_000_000])
    online_write.OnlineWriter(project, features).write(view, batch)
    ours = sqlite_rows(project, view)
    feast_write(project, features, store, view, batch)
    assert sqlite_rows(project, view) == ours
