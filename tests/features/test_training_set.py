"""Point-in-time training sets: no leakage, the pandas merge_asof reference, and Feast's answer."""
from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.contracts.project import load_project
from millrace.features import offline
from millrace.features.errors import FeatureError, NothingBuilt, UnknownFeature
from millrace.features.spec import load_features
from millrace.features.training_set import (KeyTypeMismatch, SpineError, feast_training_set, point_in_time_join,
                                   training_set)

UTC = dt.timezone.utc
TS = pa.timestamp("us", tz="UTC")
T = dt.datetime(2020, 6, 1, 12, 0, tzinfo=UTC)
US = dt.timedelta(microseconds=1)
ENGINES = ["duckdb", "numpy"]


def _view(rows: list[tuple]) -> pa.Table:
    """(key, event_timestamp, created_timestamp, value) rows, in the given (unsorted) order."""
    key, event, created, value = zip(*rows)
    return pa.table({"userId": pa.array(key, pa.int64()), "event_timestamp": pa.array(event, TS),
                     "created_timestamp": pa.array(created, TS), "v": pa.array(value, pa.int64())})


C0, C1 = dt.datetime(2021, 1, 1, tzinfo=UTC), dt.datetime(2021, 1, 2, tzinfo=UTC)
LEAKY = _view([
    (1, T + US, C0, 13),                     # just after the spine time: must never show at T
    (2, T + dt.timedelta(seconds=0.5), C0, 21),
    (1, T, C1, 12),                          # exactly at T, created later: wins the tie
    (1, T - dt.timedelta(seconds=1), C0, 10),
    (2, T - dt.timedelta(seconds=0.5), C0, 20),
    (1, T, C0, 11),                          # exactly at T, created earlier
    (3, T - dt.timedelta(days=10), C0, 30),  # ages out with a 10-day ttl
])
# (key, spine time, expected with ttl None, expected with a 10-day ttl)
CASES = [
    (1, T, 12, 12),                                   # at T: the T rows count, tie -> latest created
    (2, T + dt.timedelta(seconds=1), 21, 21),
    (1, T - US, 10, 10),                              # 1 us before T: the T rows are the future
    (1, T - dt.timedelta(seconds=1) - US, None, None),  # key known, but nothing earlier yet
    (2, T, 20, 20),                                   # interleaved key: its own latest, not key 1's
    (3, T, 30, 30),                                   # exactly ttl old: still valid
    (3, T + US, 30, None),                            # ttl expired 1 us ago
    (4, T, None, None),                               # key never seen
    (None, T, None, None),                            # null key
    (1, None, None, None),                            # null time
    (1, T, 12, 12),                                   # duplicate spine rows are all kept
    (1, T + dt.timedelta(days=3650), 13, None),       # long after: the latest row, unless expired
]


def _spine(cases, time_type=TS) -> pa.Table:
    times = pa.array([c[1] for c in cases], TS)
    return pa.table({"rid": pa.array(range(len(cases)), pa.int64()),
                     "userId": pa.array([c[0] for c in cases], pa.int64()),
                     "event_timestamp": pc.cast(times, time_type) if time_type != TS else times})


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("ttl,expected", [(None, 2), (dt.timedelta(0), 2), (dt.timedelta(days=10), 3)])
def test_no_leakage_exact_values(engine, ttl, expected):
    spine = _spine(CASES)
    out = point_in_time_join(spine, "userId", "event_timestamp", LEAKY, "userId", ["v"], ttl, engine=engine)
    assert out.column_names == ["rid", "userId", "event_timestamp", "v"]
    assert out.num_rows == len(CASES)
    assert out.select(["rid", "userId", "event_timestamp"]).equals(spine)  # every row, in order, untouched
    assert out.column("v").to_pylist() == [c[expected] for c in CASES]


@pytest.mark.parametrize("engine", ENGINES)
def test_spine_time_zones_and_units(engine):
    """tz-naive spines read as UTC; tz-aware ones compare in UTC; ns precision is not rounded."""
    for time_type in (pa.timestamp("ns"), pa.timestamp("us"), pa.timestamp("ms", tz="UTC"),
                      pa.timestamp("ns", tz="America/New_York"), pa.timestamp("us", tz="Asia/Kolkata")):
        cases = [c for c in CASES if time_type.unit != "ms" or c[1] is None or c[1].microsecond % 1000 == 0]
        spine = _spine(cases, time_type)
        out = point_in_time_join(spine, "userId", "event_timestamp", LEAKY, "userId", ["v"], None, engine=engine)
        assert out.column("v").to_pylist() == [c[2] for c in cases], time_type
        assert out.schema.field("event_timestamp").type == time_type
    # 500 ns before T: the rows stamped at T (microseconds) are still in the future
    ns = pa.array([int(T.timestamp()) * 10**9 - 500], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    spine = pa.table({"userId": pa.array([1], pa.int64()), "event_timestamp": ns})
    out = point_in_time_join(spine, "userId", "event_timestamp", LEAKY, "userId", ["v"], None, engine=engine)
    assert out.column("v").to_pylist() == [10]


@pytest.mark.parametrize("engine", ENGINES)
def test_edge_shapes(engine):
    empty_view = LEAKY.slice(0, 0)
    spine = _spine(CASES[:3])
    out = point_in_time_join(spine, "userId", "event_timestamp", empty_view, "userId", ["v"], None, engine=engine)
    assert out.column("v").to_pylist() == [None] * 3 and out.schema.field("v").type == pa.int64()
    out = point_in_time_join(spine.slice(0, 0), "userId", "event_timestamp", LEAKY, "userId", ["v"], None,
                             engine=engine)
    assert out.num_rows == 0 and out.column_names[-1] == "v"
    # string keys, a chunked spine, and a view with a null key
    view = LEAKY.set_column(0, "userId", pc.cast(LEAKY["userId"], pa.string()))
    view = pa.concat_tables([view, view.slice(0, 1).set_column(0, "userId", pa.nulls(1, pa.string()))])
    s = _spine(CASES)
    s = s.set_column(1, "userId", pc.cast(s["userId"], pa.string()))
    s = pa.concat_tables([s.slice(0, 5), s.slice(5)])
    out = point_in_time_join(s, "userId", "event_timestamp", view, "userId", ["v"], None, engine=engine)
    assert out.column("v").to_pylist() == [c[2] for c in CASES]


# -------------------------------------------------------------------- property: pandas merge_asof

_row = st.tuples(st.integers(0, 4), st.integers(0, 40), st.integers(0, 3), st.integers(-1000, 1000))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(view_rows=st.lists(_row, max_size=40), spine_rows=st.lists(st.tuples(st.integers(0, 6), st.integers(-2, 45)),
                                                                   min_size=1, max_size=30),
       ttl_s=st.one_of(st.none(), st.integers(0, 20)))
def test_matches_pandas_merge_asof(view_rows, spine_rows, ttl_s):
    base = dt.datetime(2021, 3, 1, tzinfo=UTC)
    view = pa.table({
        "k": pa.array([r[0] for r in view_rows], pa.int64()),
        "event_timestamp": pa.array([base + dt.timedelta(seconds=r[1]) for r in view_rows], TS),
        "created_timestamp": pa.array([base + dt.timedelta(seconds=r[2]) for r in view_rows], TS),
        "f": pa.array([r[3] for r in view_rows], pa.int64()),
    })
    spine = pa.table({"k": pa.array([r[0] for r in spine_rows], pa.int64()),
                      "ts": pa.array([base + dt.timedelta(seconds=r[1]) for r in spine_rows], TS)})
    ttl = None if ttl_s is None else dt.timedelta(seconds=ttl_s)

    # reference: the view sorted by (event, created), stably, so the last tied row is the one Feast keeps
    right = view.to_pandas().sort_values(["event_timestamp", "created_timestamp"], kind="stable")
    left = spine.to_pandas().assign(rid=range(len(spine_rows))).sort_values("ts", kind="stable")
    ref = pd.merge_asof(left, right, left_on="ts", right_on="event_timestamp", by="k", direction="backward",
                        tolerance=pd.Timedelta(ttl) if ttl else None).sort_values("rid")
    want = [None if pd.isna(x) else int(x) for x in ref["f"]]
    for engine in ENGINES:
        out = point_in_time_join(spine, "k", "ts", view, "k", ["f"], ttl, engine=engine)
        assert out.column("f").to_pylist() == want, engine
        assert out.select(["k", "ts"]).equals(spine)


# -------------------------------------------------------------------- against Feast, on a project

DAY = dt.timedelta(days=1)
D0 = dt.datetime(2015, 1, 1, tzinfo=UTC)


def _typed(dtype: pa.DataType, seeds: list[int]) -> pa.Array:
    if pa.types.is_list(dtype):
        return pa.array([[_scalar(dtype.value_type, s + i) for i in range(s % 3)] for s in seeds], dtype)
    return pa.array([_scalar(dtype, s) for s in seeds], dtype)


def _scalar(dtype: pa.DataType, seed: int):
    if pa.types.is_integer(dtype):
        return seed
    if pa.types.is_floating(dtype):
        return seed / 8
    return f"s{seed}"


def _offline_rows(features, view: str, rows: list[tuple[int, dt.datetime]], created: dt.datetime) -> pa.Table:
    """A view's offline table with the compute schema: key, event, created, one value per feature."""
    types = features.types[view]
    key = features.join_key(view)
    seeds = [1 + 7 * i for i in range(len(rows))]
    columns = {key: pa.array([r[0] for r in rows], types[key]), "event_timestamp": pa.array([r[1] for r in rows], TS),
               "created_timestamp": pa.array([created] * len(rows), TS)}
    for name, dtype in types.items():
        if name != key:
            columns[name] = _typed(dtype, seeds)
    return pa.table(columns)


@pytest.fixture
def small_project(project_dir):
    """The example project with hand-made offline tables for three views (nothing ingested)."""
    project = load_project(project_dir)
    features = load_features(project)
    created = D0 + dt.timedelta(days=5000)
    user = [(u, D0 + d * DAY) for u in (1, 2, 3) for d in (1, 3, 10)] + [(5, D0 + 50 * DAY)]
    movie = [(m, D0 + d * DAY) for m in (10, 20) for d in (2, 6)] + [(30, D0 + 40 * DAY)]
    static = [(m, dt.datetime(1970, 1, 1, tzinfo=UTC)) for m in (10, 20, 30)]
    for view, rows in (("user_activity", user), ("movie_popularity", movie), ("movie_metadata", static)):
        offline.write_view(project.offline, view, _offline_rows(features, view, rows, created), {}, "test")
    return project, features


def _feast_spine() -> pa.Table:
    rows = [  # userId, movieId, days after D0 (unique per (userId, movieId, time): Feast collapses repeats)
        (1, 10, 1), (1, 10, 2.5), (2, 20, 3), (2, 10, 9.99), (3, 20, 10), (3, 30, 45),
        (1, 20, 0.5),     # user 1 and movie 20: only later rows -> Feast drops the row, we keep nulls
        (5, 30, 20),      # user 5: only a later row; movie 30: only a later row
        (4, 10, 12),      # user 4 has no rows at all
        (2, 99, 30),      # movie 99 has no rows at all (nor metadata)
        (3, 30, 3651 + 10),  # user 3's rows are older than the 3650-day ttl; movie 30's are not
        (1, 10, 3000),
    ]
    return pa.table({"rid": pa.array(range(len(rows)), pa.int64()),
                     "userId": pa.array([r[0] for r in rows], pa.int64()),
                     "movieId": pa.array([r[1] for r in rows], pa.int64()),
                     "event_timestamp": pa.array([D0 + r[2] * DAY for r in rows], TS)})


def _plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def test_equals_feast_historical_features(small_project):
    from millrace.features import feast_repo

    project, features = small_project
    refs = ["user_activity", "movie_popularity:rating_mean_all", "movie_popularity:popularity_30d",
            "movie_metadata:title", "movie_metadata:genre_list"]
    spine = _feast_spine()
    ours = training_set(project, features, spine, refs)
    assert ours.num_rows == spine.num_rows and ours.select(spine.column_names).equals(spine)
    feature_columns = ours.column_names[len(spine.column_names):]
    assert feature_columns[0] == "user_activity__rating_count_30d" and "movie_metadata__genre_list" in feature_columns
    assert ours.schema.field("user_activity__recent_movies").type == pa.list_(pa.int64())

    store = feast_repo.apply(project, features)
    theirs = feast_training_set(store, spine, refs)
    assert sorted(feature_columns) == sorted(c for c in theirs.column_names if "__" in c)

    ours_by_rid = {r["rid"]: r for r in ours.to_pylist()}
    theirs_by_rid = {r["rid"]: r for r in theirs.to_pylist()}
    assert len(theirs_by_rid) == theirs.num_rows and set(theirs_by_rid) <= set(ours_by_rid)
    for rid, row in theirs_by_rid.items():
        for column in feature_columns:
            assert _plain(ours_by_rid[rid][column]) == _plain(row[column]), (rid, column)
    assert len(theirs_by_rid) >= 6  # the comparison is not vacuous
    # Feast drops rows whose key has only later (or expired) rows; we keep them, with nulls
    dropped = set(ours_by_rid) - set(theirs_by_rid)
    assert {6, 7, 10} <= dropped
    for rid in dropped:
        assert ours_by_rid[rid]["user_activity__rating_count_all"] is None or \
            ours_by_rid[rid]["movie_popularity__rating_mean_all"] is None
    # spot checks: static metadata joins at any time; ttl expiry; a key never seen
    assert ours_by_rid[6]["movie_metadata__title"] == "s8" and ours_by_rid[6]["user_activity__rating_count_all"] is None
    assert ours_by_rid[10]["user_activity__rating_count_all"] is None
    assert ours_by_rid[10]["movie_popularity__rating_mean_all"] is not None
    assert ours_by_rid[8]["user_activity__rating_count_all"] is None and ours_by_rid[9]["movie_metadata__title"] is None
    assert ours_by_rid[0]["user_activity__rating_count_30d"] == 1  # the row stamped exactly at the spine time


def test_engines_agree_on_a_project(small_project):
    project, features = small_project
    spine = _feast_spine()
    a = training_set(project, features, spine, ["user_activity", "movie_metadata"], engine="duckdb")
    b = training_set(project, features, spine, ["user_activity", "movie_metadata"], engine="numpy")
    assert a.equals(b)


# -------------------------------------------------------------------- errors


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_references(small_project):
    project, features = small_project
    spine = _feast_spine()
    with pytest.raises(UnknownFeature) as exc:
        training_set(project, features, spine, ["user_activty:rating_count_30d"])
    assert "user_activty" in _one_line(exc) and "user_activity" in str(exc.value) and "movie_metadata" in str(exc.value)
    with pytest.raises(UnknownFeature) as exc:
        training_set(project, features, spine, ["user_activity:rating_count_7d"])
    assert "rating_count_7d" in _one_line(exc) and "rating_count_30d" in str(exc.value)
    for bad in ("a:b:c", ":title", ""):
        with pytest.raises(UnknownFeature):
            training_set(project, features, spine, [bad])
    with pytest.raises(UnknownFeature):
        point_in_time_join(spine, "userId", "event_timestamp", LEAKY, "userId", ["nope"], None)


def test_key_type_mismatch(small_project):
    project, features = small_project
    spine = _feast_spine()
    as_text = spine.set_column(1, "userId", pc.cast(spine["userId"], pa.string()))
    with pytest.raises(KeyTypeMismatch) as exc:
        training_set(project, features, as_text, ["user_activity:rating_count_all"])
    message = _one_line(exc)
    assert "'userId'" in message and "string" in message and "int64" in message and "fix:" in message
    assert isinstance(exc.value, FeatureError)
    as_float = spine.set_column(1, "userId", pc.cast(spine["userId"], pa.float64()))
    with pytest.raises(KeyTypeMismatch, match="double"):
        point_in_time_join(as_float, "userId", "event_timestamp", LEAKY, "userId", ["v"], None)
    # integer widths are compatible: the values are compared, not the types
    as_int32 = spine.set_column(1, "userId", pc.cast(spine["userId"], pa.int32()))
    assert training_set(project, features, as_int32, ["user_activity:rating_count_all"]).equals(
        training_set(project, features, spine, ["user_activity:rating_count_all"])
        .set_column(1, "userId", as_int32["userId"]))


def test_spine_errors(small_project):
    project, features = small_project
    spine = _feast_spine()
    with pytest.raises(SpineError) as exc:
        training_set(project, features, spine.drop_columns(["movieId"]), ["movie_metadata:title"])
    assert "'movieId'" in _one_line(exc) and "movie_metadata" in str(exc.value)
    with pytest.raises(SpineError) as exc:
        training_set(project, features, spine, ["user_activity"], spine_time="ts")
    assert "'ts'" in _one_line(exc)
    as_seconds = spine.set_column(3, "event_timestamp", pc.divide(pc.cast(spine["event_timestamp"], pa.int64()),
                                                                  1_000_000))
    with pytest.raises(SpineError) as exc:
        training_set(project, features, as_seconds, ["user_activity"])
    assert "'event_timestamp'" in _one_line(exc) and "int64" in str(exc.value) and "timestamp" in str(exc.value)
    with pytest.raises(NothingBuilt):
        training_set(project, features, spine, ["user_genres"])
    # a pandas spine works too
    df = spine.to_pandas()
    assert training_set(project, features, df, ["movie_metadata:title"]).column("movie_metadata__title").to_pylist() \
        == training_set(project, features, spine, ["movie_metadata:title"]).column("movie_metadata__title").to_pylist()
