"""A view keyed on two columns (declared [user, account]; Feast sorts them by name) through
materialize, the online store, OnlineReader and `features get`: what we store equals what Feast's
own writer stores, Feast's get_online_features and our reader read the same values, and the
incremental record is keyed on both columns."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from millrace.features import stores, wire
from millrace.features.materialize import _state_path, materialize
from millrace.features.online import OnlineReader
from tests.features.test_online_write import feast_write, redis_hashes, sqlite_rows
from tests.features.typed_state import BEFORE_DATA, events, typed_project

VIEW = "pair_typed"
PAIR_YAML = """
  pair: {join_keys: [user, account], source: events, description: A composite key declared out of name order.}
"""
VIEW_YAML = f"""
  {VIEW}:
    source: events
    entity: pair
    ttl: 0d
    aggregations:
      - {{name: events_all, function: count}}
      - {{name: amount_last, function: last, column: amount}}
      - {{name: label_last, function: last, column: label}}
      - {{name: labels, function: last_n, column: label, n: 3}}
"""


def composite_state(tmp, monkeypatch, **env):
    def with_pair_view(text: str) -> str:
        return text.replace("\nfeature_views:\n", PAIR_YAML + "\nfeature_views:\n" + VIEW_YAML)

    project, features, store = typed_project(tmp, monkeypatch, prefix="pair", edit_features=with_pair_view, **env)
    reports = materialize(project, features, store=store, views=[VIEW])
    return project, features, store, reports


def pairs() -> list[tuple[int, str]]:
    seen = {(e["user"], e["account"]) for e in events().to_pylist()}
    return sorted(seen) + [(1, "nobody"), (424242, "a1")]


def feast_read(store, features, keys: list[tuple[int, str]]) -> list[dict]:
    names = features.feature_names(VIEW)
    got = store.get_online_features(features=[f"{VIEW}:{n}" for n in names],
                                    entity_rows=[{"user": u, "account": a} for u, a in keys]).to_dict()
    return [{"user": got["user"][i], "account": got["account"][i], **{n: got[n][i] for n in names}}
            for i in range(len(keys))]


def assert_reads_equal_feasts(project, features, store):
    keys = pairs()
    reader = OnlineReader(project, features, clock=lambda: BEFORE_DATA)
    ours = reader.read(VIEW, {"user": [u for u, _ in keys], "account": [a for _, a in keys]}).to_pylist()
    assert ours == feast_read(store, features, keys)
    assert ours[0]["events_all"] > 0 and ours[-1]["events_all"] is None
    assert list(ours[0]) == ["user", "account", *features.feature_names(VIEW)]
    table = pa.table({"account": [a for _, a in keys], "user": [u for u, _ in keys]})  # columns in any order
    assert reader.read(VIEW, table).to_pylist() == ours
    assert reader.read(VIEW, {"user": [keys[0][0], None], "account": [keys[0][1], "a1"]}).to_pylist()[1] == {
        "user": None, "account": "a1", **{n: None for n in features.feature_names(VIEW)}}


def test_composite_view_materializes_as_feast_writes_it(tmp_path, monkeypatch):
    project, features, store, reports = composite_state(tmp_path, monkeypatch)
    assert features.join_keys(VIEW) == ["user", "account"]
    assert reports[0].written == len(pairs()) - 2
    assert_reads_equal_feasts(project, features, store)
    ours = sqlite_rows(project, VIEW)
    assert {r[0] for r in ours} == {wire.entity_key(["user", "account"], [u, a], [wire.INT64, wire.STRING])
                                    for u, a in pairs()[:-2]}
    con = sqlite3.connect(stores.sqlite_path(project))
    with con:
        con.execute(f'DELETE FROM "{project.name}_{VIEW}"')
    con.close()
    feast_write(project, features, store, VIEW)
    assert sqlite_rows(project, VIEW) == ours
    # the record holds both key columns; a rerun writes nothing
    record = pq.read_table(_state_path(project, VIEW))
    assert record.column_names == ["user", "account", "event_timestamp"] and record.num_rows == len(pairs()) - 2
    assert materialize(project, features, store=store, views=[VIEW])[0].written == 0


def test_composite_keys_of_a_wrong_shape_are_one_line(tmp_path, monkeypatch):
    from millrace.features.errors import FeatureError

    project, features, _, _ = composite_state(tmp_path, monkeypatch)
    reader = OnlineReader(project, features)
    with pytest.raises(FeatureError, match=r"keyed on \['user', 'account'\].*\(fix: "):
        reader.read(VIEW, [1, 2])
    with pytest.raises(FeatureError, match=r"exactly \['user', 'account'\].*\(fix: "):
        reader.read(VIEW, {"user": [1]})
    with pytest.raises(FeatureError, match=r"different lengths.*\(fix: "):
        reader.read(VIEW, {"user": [1, 2], "account": ["a1"]})
    with pytest.raises(FeatureError, match=r"'user' int64, 'account' string.*\(fix: "):
        reader.read(VIEW, {"user": ["x"], "account": ["a1"]})


@pytest.mark.redis
def test_composite_view_in_redis_as_feast_writes_it(tmp_path, monkeypatch):
    from tests.conftest import REDIS_URL
    from tests.features.typed_state import redis_db_url, redis_or_skip

    url = redis_db_url(REDIS_URL)
    client = redis_or_skip(url)
    project = None
    try:
        project, features, store, _ = composite_state(tmp_path, monkeypatch, MILLRACE_ONLINE_STORE=url)
        assert_reads_equal_feasts(project, features, store)
        ours = redis_hashes(project, client)
        assert len(ours) == len(pairs()) - 2
        client.delete(*ours)
        feast_write(project, features, store, VIEW)
        assert redis_hashes(project, client) == ours
    finally:
        if project is not None:
            keys = list(client.scan_iter(match=b"*" + project.name.encode(), count=1000))
            if keys:
                client.delete(*keys)
        client.close()


@pytest.mark.slow
def test_cli_get_takes_column_value_pairs(tmp_path, monkeypatch):
    project, features, store, _ = composite_state(tmp_path, monkeypatch)
    (u1, a1), (u2, a2) = pairs()[:2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(MILLRACE_STATE_DIR=str(tmp_path / "state"), COLUMNS="200")
    run = lambda *keys: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project.root), "features", "get", VIEW, *keys],
        capture_output=True, text=True, env=env, timeout=300)
    ok = run(f"user={u1},account={a1}", f"account={a2},user={u2}")
    assert ok.returncode == 0, ok.stderr
    expected = feast_read(store, features, [(u1, a1), (u2, a2)])
    assert ok.stdout.strip().splitlines() == [str(row) for row in expected]
    bad = run(f"{u1}")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "user=...,account=..." in bad.stderr and len([x for x in bad.stderr.splitlines() if x.strip()]) == 1
