"""Feature platform: millrace vs stock Feast (and a DuckDB reference) on generated feature tables.

    /tmp/venv/bin/python bench/features.py                     # default: 120k users, ~1.2M snapshot rows
    /tmp/venv/bin/python bench/features.py --spine 200000      # smaller training-set spine
    /tmp/venv/bin/python bench/features.py --skip redis        # no Redis parts

Generates the offline tables of user_activity (>= 100k users, daily snapshots) and
movie_popularity once, in the exact schema features.yaml implies, and measures in one run:
  materialize   millrace materialize(full=True) vs Feast store.materialize (= `feast materialize`),
                into SQLite and into Redis; target >= 3x
  training set  millrace training_set vs Feast get_historical_features (file offline store) vs a
                DuckDB ASOF JOIN reference; targets >= 5x Feast and >= 0.5x DuckDB
  online read   1 and 100 entities, millrace OnlineReader.read vs Feast get_online_features;
                target p99 <= Feast's
Every comparison also checks that the engines agree on the values.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `features` package: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# Import everything before timing, so import cost counts for no engine.
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import redis
from feast.infra.offline_stores.dask import DaskOfflineStore  # noqa: F401  (Feast's "file" store)
from feast.infra.online_stores.redis import RedisOnlineStore  # noqa: F401
from feast.infra.online_stores.sqlite import SqliteOnlineStore  # noqa: F401

from contracts.project import load_project
from features import feast_repo, offline
from features.materialize import materialize
from features.online import OnlineReader
from features.spec import load_features

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "movielens"
TS = pa.timestamp("us", tz="UTC")
FIRST_DAY = dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc)
BUILT_AT = dt.datetime(2017, 6, 1, tzinfo=dt.timezone.utc)
VIEWS = ("user_activity", "movie_popularity")


# -- data ------------------------------------------------------------------------------------

def snapshots(rng, keys: int, per_key: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (key, day) pairs sorted by key and day: about per_key days of activity per key."""
    n = rng.integers(1, 2 * per_key, keys)                       # mean per_key
    key = np.repeat(np.arange(1, keys + 1), n)
    day = rng.integers(0, days, len(key))
    code = np.unique(key * days + day)                            # drops the few repeated days
    return code // days, code % days


def feature_column(rng, name: str, dtype: pa.DataType, rows: int) -> pa.Array:
    if pa.types.is_list(dtype):                                   # recent_movies: 1..10 movie ids
        lengths = rng.integers(1, 11, rows)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(1, 60_000, offsets[-1])))
    if pa.types.is_integer(dtype):
        return pa.array(rng.integers(0, 5_000, rows), dtype)
    if "mean" in name or "rating" in name and "count" not in name:
        return pa.array(np.round(rng.uniform(0.5, 5.0, rows), 3), dtype)
    return pa.array(rng.uniform(0, 50_000, rows), dtype)


def generate(features, rng, keys: int, per_key: int, days: int, view: str) -> pa.Table:
    """A view's offline table in exactly the schema millrace builds: key, event and created
    timestamps (end of the snapshot day), then the features."""
    types = features.types[view]
    key, day = snapshots(rng, keys, per_key, days)
    event = (np.datetime64(FIRST_DAY.replace(tzinfo=None), "us") + (day + 1) * np.timedelta64(1, "D"))
    cols = {features.join_key(view): pa.array(key, types[features.join_key(view)]),
            "event_timestamp": pa.array(event).cast(TS), "created_timestamp": pa.repeat(pa.scalar(BUILT_AT, TS), len(key))}
    for name, dtype in types.items():
        if name not in cols:
            cols[name] = feature_column(rng, name, dtype, len(key))
    return pa.table(cols)


def setup(workdir: Path, name: str, online_store: str | None):
    """(project, features, feast store) of a fresh copy of the example with its own state dir."""
    root = workdir / name
    if not root.exists():
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".millrace"))
        text = (root / "millrace.yaml").read_text().replace("name: movielens", f"name: bench_{name}")
        (root / "millrace.yaml").write_text(text)
    os.environ["MILLRACE_STATE_DIR"] = str(workdir / f"{name}-state")
    os.environ["MILLRACE_OFFLINE_URI"] = str(workdir / "offline")      # one offline store for all
    os.environ.pop("MILLRACE_ONLINE_STORE", None)
    if online_store:
        os.environ["MILLRACE_ONLINE_STORE"] = online_store
    project = load_project(root)
    features = load_features(project)
    return project, features, feast_repo.apply(project, features)


# -- materialization ----------------------------------------------------------------------------

def clear_online(project, url: str | None) -> None:
    """The same empty online store before each engine."""
    if url:
        redis.Redis.from_url(url).flushdb()
    else:
        path = Path(feast_repo.repo_dir(project)) / "online.db"
        path.unlink(missing_ok=True)
    shutil.rmtree(Path(feast_repo.repo_dir(project)) / "materialized", ignore_errors=True)


def bench_materialize(workdir: Path, backend: str, url: str | None, entities: int, sample: dict) -> dict:
    project, features, store = setup(workdir, backend, url)
    until = dt.datetime.now(dt.timezone.utc)
    out = {}
    for engine in ("millrace", "feast"):
        clear_online(project, url)
        store = feast_repo.apply(project, features)           # recreates the SQLite tables
        started = time.perf_counter()
        if engine == "millrace":
            materialize(project, features, until=until, views=list(VIEWS), full=True, store=store)
        else:
            store.materialize(FIRST_DAY - dt.timedelta(days=1), until, feature_views=list(VIEWS))
        seconds = time.perf_counter() - started
        out[engine] = {"seconds": round(seconds, 2), "entities_per_s": round(entities / seconds),
                       "values": read_back(store, features, sample)}
        print(f"materialize {backend:<6} {engine:<8} {seconds:7.1f} s {entities / seconds:>11,.0f} entities/s", flush=True)
    out["ratio"] = round(out["feast"]["seconds"] / out["millrace"]["seconds"], 2)
    out["agree"] = out["millrace"].pop("values") == out["feast"].pop("values")
    print(f"materialize {backend:<6} millrace/feast: {out['ratio']:.2f}x, same values: {out['agree']}", flush=True)
    return out


def read_back(store, features, sample: dict) -> dict:
    """Feast's own view of the online store for a sample of entities of each view."""
    got = {}
    for view, keys in sample.items():
        refs = [f"{view}:{n}" for n in features.feature_names(view)]
        got[view] = store.get_online_features(refs, [{features.join_key(view): int(k)} for k in keys]).to_dict()
    return got


# -- training set -------------------------------------------------------------------------------

def make_spine(rng, rows: int, users: int, movies: int, days: int) -> pa.Table:
    """Examples (user, movie, time, label); ~2% unknown users and some times before a user's first
    snapshot, so the joins must produce nulls."""
    seconds = rng.integers(0, (days + 30) * 86_400, rows) * 1_000_000
    start = int(FIRST_DAY.timestamp()) * 1_000_000
    return pa.table({"row_id": pa.array(np.arange(rows)), "userId": pa.array(rng.integers(1, int(users * 1.02) + 1, rows)),
                     "movieId": pa.array(rng.integers(1, movies + 1, rows)),
                     "event_timestamp": pa.array(start + seconds).cast(TS), "label": pa.array(rng.integers(0, 2, rows))})


def duckdb_training_set(project, features, spine: pa.Table, refs: dict[str, list[str]]) -> pa.Table:
    """Reference: DuckDB ASOF LEFT JOINs straight on the offline Parquet files, Feast's rule
    (latest event_timestamp <= spine time within the ttl; the generated data has no ties)."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("spine", spine)
    select, joins = ["s.*"], []
    for i, (view, names) in enumerate(refs.items()):
        key, days = features.join_key(view), int(features.view(view).ttl.rstrip("d"))
        joins.append(f"ASOF LEFT JOIN read_parquet('{offline.data_path(project.offline, view)}') v{i} "
                     f"ON s.{key} = v{i}.{key} AND s.event_timestamp >= v{i}.event_timestamp")
        live = f"v{i}.event_timestamp >= s.event_timestamp - INTERVAL {days} DAYS" if days else "true"
        select += [f"CASE WHEN {live} THEN v{i}.{n} END AS {view}__{n}" for n in names]
    table = con.sql(f"SELECT {', '.join(select)} FROM spine s {' '.join(joins)} ORDER BY s.row_id").to_arrow_table()
    con.close()
    return table


def differing(expected: pa.Table, got: pa.Table, columns: list[str]) -> dict[str, int]:
    """Rows (matched on row_id) whose value differs, per column; `got` may lack rows."""
    at = pc.index_in(got.column("row_id"), expected.column("row_id"))
    want = expected.take(at)
    out = {}
    for c in columns:
        a, b = want.column(c), got.column(c)
        if a.type != b.type:
            b = b.cast(a.type)
        same = pc.fill_null(pc.equal(a, b), False) if not pa.types.is_list(a.type) else \
            pa.array([x == y for x, y in zip(a.to_pylist(), b.to_pylist())])
        same = pc.or_(same, pc.and_(pc.is_null(a), pc.is_null(b)))
        if bad := len(a) - pc.sum(same).as_py():
            out[c] = bad
    return out
