"""Online reads honour the view's ttl: a key whose stored event time is older than now - ttl
reads as nulls (as the point-in-time join treats it), a ttl of 0 never expires. Feast's own
``get_online_features`` applies no ttl (test_online_wire.py compares at a "now" before the data):
here the expected values are Feast's where not expired, nulls where expired, on SQLite and Redis."""
from __future__ import annotations

import datetime as dt
import sqlite3

import pyarrow.parquet as pq
import pytest

from millrace.contracts.errors import ContractError
from millrace.features import stores, wire
from millrace.features.online import OnlineReader, wall_clock
from tests.features.typed_state import ACCOUNTS, USERS, feast_rows, typed_state

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)  # account_typed's ttl; user_typed has ttl 0d


def _sqlite_times(project) -> dict:
    con = sqlite3.connect(stores.sqlite_path(project))
    rows = con.execute(f'SELECT entity_key, max(event_ts) FROM "{project.name}_account_typed" GROUP BY entity_key')
    times = {key: dt.datetime.fromtimestamp(int(ts), tz=UTC) for key, ts in rows}
    con.close()
    return {a: times[wire.entity_key("account", a, wire.STRING)] for a in ACCOUNTS}


def _redis_times(project, client) -> dict:
    from google.protobuf.timestamp_pb2 import Timestamp

    out = {}
    for a in ACCOUNTS:
        raw = client.hget(wire.entity_key("account", a, wire.STRING) + project.name.encode(), b"_ts:account_typed")
        out[a] = dt.datetime.fromtimestamp(Timestamp.FromString(raw).seconds, tz=UTC)
    return out


def _check_expiry(project, features, store, times: dict) -> None:
    names = features.feature_names("account_typed")
    expected_all = feast_rows(store, features, "account_typed", ACCOUNTS)
    newest = max(times.values())
    for now in (newest + DAY, newest + DAY + dt.timedelta(seconds=1), newest + 2 * DAY):
        got = OnlineReader(project, features, clock=lambda: now).read("account_typed", ACCOUNTS).to_pylist()
        expired = {a for a in ACCOUNTS if times[a] < now - DAY}
        assert (expired == set(ACCOUNTS)) == (now > newest + DAY), (times, now)  # the edge: still valid
        for account, row, feast_row in zip(ACCOUNTS, got, expected_all):
            if account in expired:
                assert row == {"account": account, **{n: None for n in names}}, account
            else:
                assert row == feast_row and row["events_all"] > 0, account
    # the wall clock (years after the 2021 data): all expired on the 1d view, the 0d view never expires
    reader = OnlineReader(project, features, clock=wall_clock)
    assert all(v is None for row in reader.read("account_typed", ACCOUNTS).to_pylist() for k, v in row.items()
               if k != "account")
    assert reader.read("user_typed", USERS).to_pylist() == feast_rows(store, features, "user_typed", USERS)
    assert reader.read("account_typed", ACCOUNTS[:1]).to_pylist()[0]["events_all"] is None  # single-key path
    # no clock: nothing expires, as Feast's own read
    assert OnlineReader(project, features, clock=None).read("account_typed", ACCOUNTS).to_pylist() == expected_all

def test_sqlite_reads_honour_the_ttl(tmp_path, monkeypatch):
    project, features, store = typed_state(tmp_path, monkeypatch)
    _check_expiry(project, features, store, _sqlite_times(project))


@pytest.mark.redis
def test_redis_reads_honour_the_ttl(typed_redis):
    project, features, store, client = typed_redis
    _check_expiry(project, features, store, _redis_times(project, client))


def test_the_data_clock_counts_back_from_the_newest_materialized_event(tmp_path, monkeypatch):
    """feature_store.ttl_clock: data (replays of old data): the ttl is measured from the newest event
    materialized for the view, not from today; the default (wall) expires everything here."""
    project, features, store = typed_state(tmp_path, monkeypatch)
    names = features.feature_names("account_typed")
    wall = OnlineReader(project, features).read("account_typed", ACCOUNTS).to_pylist()
    assert all(row[n] is None for row in wall for n in names)  # the 2021 data, ttl 1d, read today
    monkeypatch.setenv("MILLRACE_TTL_CLOCK", "data")
    replay = OnlineReader(project, features)
    table, status = replay.read_with_status("account_typed", ACCOUNTS)
    newest = max(pq.read_table(stores.record_path(project, "account_typed")).column("event_timestamp").to_pylist())
    reference = OnlineReader(project, features, clock=lambda: newest).read("account_typed", ACCOUNTS)
    assert table == reference and "found" in status  # the newest entity is valid at its own time
    assert status.count("found") == sum(1 for row in table.to_pylist() if row["events_all"] is not None)
    monkeypatch.setenv("MILLRACE_TTL_CLOCK", "sometimes")
    with pytest.raises(ContractError, match="neither 'wall' nor 'data'"):
        OnlineReader(project, features)
