"""compute_view against a plain-Python reference of the documented semantics.

One row per (entity, UTC day with an event), stamped at the day's end; an event belongs to the day its
timestamp truncates to (00:00:00 opens a day); an 'Nd' window is the N calendar days ending with that day,
'all' everything up to its end. Static views: one row per key, stamped at the epoch."""
from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings, strategies as st

from millrace.contracts.loader import read_yaml
from millrace.features.compute import compute_view
from millrace.features.spec import Aggregation, Enrich, FeatureView, Transform, duration

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
START = dt.datetime(2021, 3, 1, tzinfo=UTC)
CREATED = dt.datetime(2030, 1, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
EVENTS = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "weight": pa.int64(),
          "tags": pa.string(), "timestamp": TS}
MOVIES = {"movieId": pa.int64(), "genres": pa.string(), "year": pa.int64()}
ENRICH = Enrich(source="movies", key="movieId", columns=["genres", "year"])
YAML = read_yaml(Path(__file__).resolve().parents[2] / "examples" / "movielens" / "features.yaml")
EXAMPLE = {name: FeatureView(**v) for name, v in YAML["feature_views"].items()}
SETTINGS = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def at(day: int, sec: int = 43200) -> dt.datetime:
    return START + dt.timedelta(days=day, seconds=sec)


def table(rows: list[dict], schema: dict) -> pa.Table:
    return pa.table({c: pa.array([r.get(c) for r in rows], t) for c, t in schema.items()})


def out_types(view: FeatureView, key: str, columns: dict) -> dict:
    types = {key: columns[key]}
    for a in view.aggregations:
        f = a.function
        types[a.name] = (pa.int64() if f in ("count", "distinct_count") else pa.float64() if f == "mean"
                         else pa.list_(columns[a.column]) if f == "last_n"
                         else pa.list_(pa.string()) if f == "top_n" else columns[a.column])
    for t in view.transforms:
        types[t.name] = pa.list_(pa.string()) if t.function == "split" else pa.float64()
    return types


# reference
def aggregate(a: Aggregation, window: list[dict]):
    """``window``: the events in the window, oldest first."""
    if a.function == "count":
        return len(window)
    vals = [r[a.column] for r in window if r[a.column] is not None]
    if a.function == "distinct_count":
        return len(set(vals))
    if a.function == "last_n":
        return vals[::-1][:a.n]
    if a.function == "top_n":
        tokens = Counter(t for v in vals for t in (v.split(a.split) if a.split else [str(v)]) if t != "")
        return sorted(tokens, key=lambda t: (-tokens[t], t))[:a.n]
    functions = {"sum": sum, "mean": lambda v: sum(v) / len(v), "min": min, "max": max, "last": lambda v: v[-1]}
    return functions[a.function](vals) if vals else None


def divide(a, b):  # x/0 is unknown: null
    if a is None or b is None or b == 0:
        return None
    return float(a) / b


def reference(view: FeatureView, key: str, event_time, events: list[dict], lookup, days=(None, None)) -> list[dict]:
    rows = [dict(e) for e in events if e[key] is not None]
    if view.enrich:
        found = {m[view.enrich.key]: m for m in lookup}
        for r in rows:
            r.update({c: found.get(r[view.enrich.key], {}).get(c) for c in view.enrich.columns})
    for r in rows:
        r["_ts"] = EPOCH if view.static else r[event_time]
        r["_day"] = r["_ts"].date()
    out = []
    for k in sorted({r[key] for r in rows}):
        mine = sorted((r for r in rows if r[key] == k), key=lambda r: r["_ts"])
        for d in sorted({r["_day"] for r in mine}):
            if (days[0] and d < days[0]) or (days[1] and d > days[1]):
                continue
            end = EPOCH if view.static else dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), UTC)
            row = {key: k, "event_timestamp": end, "created_timestamp": CREATED}
            for a in view.aggregations:
                span = duration(a.window)
                row[a.name] = aggregate(a, [r for r in mine if r["_day"] <= d and (not span or r["_day"] > d - span)])
            for t in view.transforms:
                v = row[t.column]
                if t.function == "ratio":
                    row[t.name] = divide(v, row[t.denominator])
                else:
                    row[t.name] = None if v is None else v.split(t.sep)
            out.append(row)
    return out


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):  # tight tolerance; nan (0/0) equals nan
        return None not in (a, b) and math.isnan(a) == math.isnan(b) and (math.isnan(a) or math.isclose(a, b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def check(view: FeatureView, events: list[dict], lookup=None, days=(None, None), key="userId") -> list[dict]:
    types = out_types(view, key, {**EVENTS, **(MOVIES if view.enrich else {})})
    event_time = None if view.static else "timestamp"
    got = compute_view(view, key, event_time, table(events, EVENTS), table(lookup, MOVIES) if view.enrich else None,
                       types, CREATED, days)
    assert got.column_names == [key, "event_timestamp", "created_timestamp", *list(types)[1:]]
    assert [got.schema.field(n).type for n in types] == list(types.values())
    want, got = reference(view, key, event_time, events, lookup, days), got.to_pylist()
    assert [(r[key], r["event_timestamp"]) for r in got] == [(r[key], r["event_timestamp"]) for r in want]
    for g, w in zip(got, want):
        bad = {c: (g[c], w[c]) for c in w if not same(g[c], w[c])}
        assert not bad, f"{key}={w[key]} at {w['event_timestamp']}: (compute_view, reference) {bad}"
    return got


# strategies
TAGS = st.none() | st.lists(st.sampled_from("ABCD"), min_size=1, max_size=3).map("|".join)
EVENT = st.fixed_dictionaries({
    "userId": st.sampled_from([1, 1, 2, 2, 3, None]), "movieId": st.integers(1, 8),
    "rating": st.none() | st.integers(1, 10).map(lambda i: i / 2), "weight": st.none() | st.integers(0, 3),
    "tags": TAGS, "day": st.integers(0, 89) | st.integers(0, 9),  # ~90 days, with a dense stretch for short windows
    "sec": st.sampled_from([0, 1, 86399]) | st.integers(0, 86399)})  # midnight, just after, just before
# Unique timestamps: the docs do not say which of two simultaneous events is the "last".
EVENT_LISTS = st.integers(0, 40).flatmap(  # sized up front: plain st.lists stays near-empty most of the time
    lambda n: st.lists(EVENT, min_size=n, max_size=n, unique_by=lambda e: (e["day"], e["sec"]))).map(
    lambda es: [{**e, "timestamp": at(e["day"], e["sec"])} for e in es])
LOOKUPS = st.lists(st.fixed_dictionaries({"movieId": st.integers(1, 8), "genres": TAGS,
                                          "year": st.none() | st.integers(1990, 1995)}),
                   max_size=8, unique_by=lambda m: m["movieId"])
DATES = st.none() | st.integers(0, 89).map(lambda i: START.date() + dt.timedelta(days=i))
FUNCTIONS = ["count", "sum", "mean", "min", "max", "last", "distinct_count", "last_n", "top_n"]


@st.composite
def views(draw, static: bool):
    enriched = draw(st.booleans())
    numeric = ["rating", "weight", "movieId"] + (["year"] if enriched else [])
    text = ["tags"] + (["genres"] if enriched else [])
    aggs, scalars, texts = [], [], []
    for i in range(draw(st.integers(1, 5))):
        f = draw(st.sampled_from(FUNCTIONS))
        window = "all" if f in ("distinct_count", "last_n") else draw(st.sampled_from(["1d", "2d", "7d", "30d", "all"]))
        column = None if f == "count" else draw(st.sampled_from(
            numeric if f in ("sum", "mean") else text if f == "top_n" else numeric + text))
        aggs.append(Aggregation(name=f"f{i}", function=f, column=column, window=window,
                                n=draw(st.integers(1, 4)) if f in ("last_n", "top_n") else None,
                                split=draw(st.sampled_from([None, "|"])) if f == "top_n" else None))
        if f in ("min", "max", "last") and column in text:
            texts.append(f"f{i}")
        elif f not in ("last_n", "top_n"):
            scalars.append(f"f{i}")
    transforms = []
    if texts and draw(st.booleans()):
        transforms.append(Transform(name="t_split", function="split", column=draw(st.sampled_from(texts)), sep="|"))
    if scalars and draw(st.booleans()):
        transforms.append(Transform(name="t_ratio", function="ratio", column=draw(st.sampled_from(scalars)),
                                    denominator=draw(st.sampled_from(scalars))))
    return FeatureView(source="ratings", entity="user", static=static, enrich=ENRICH if enriched else None,
                       aggregations=aggs, transforms=transforms)


@settings(SETTINGS, max_examples=200)
@given(view=views(static=False), events=EVENT_LISTS, lookup=LOOKUPS, first=DATES, last=DATES)
def test_random_views_match_reference(view, events, lookup, first, last):
    check(view, events, lookup, (first, last))


@settings(SETTINGS, max_examples=40)
@given(view=views(static=True), events=st.lists(EVENT, max_size=10, unique_by=lambda e: e["userId"]), lookup=LOOKUPS)
def test_static_views_one_row_per_key_at_epoch(view, events, lookup):
    rows = check(view, [{**e, "timestamp": at(e["day"], e["sec"])} for e in events], lookup)
    assert all(r["event_timestamp"] == EPOCH for r in rows)


@settings(SETTINGS, max_examples=40)
@given(events=EVENT_LISTS, lookup=LOOKUPS, first=DATES)
def test_example_project_views_match_reference(events, lookup, first):
    check(EXAMPLE["user_activity"], events, lookup, (first, None))
    check(EXAMPLE["user_genres"], events, lookup, (first, None))
    check(EXAMPLE["movie_popularity"], events, lookup, (first, None), key="movieId")


# edge cases
def ev(day, sec=43200, **values) -> dict:
    return {"userId": 1, "movieId": 1, "rating": None, "weight": None, "tags": None, "timestamp": at(day, sec),
            **values}


def view_of(*aggs: Aggregation, enrich=None) -> FeatureView:
    return FeatureView(source="ratings", entity="user", aggregations=list(aggs), enrich=enrich)


def counts(*windows: str) -> FeatureView:
    return view_of(*(Aggregation(name=f"c_{w}", function="count", window=w) for w in windows))


def test_event_at_midnight_opens_its_day():
    rows = check(counts("1d", "all"), [ev(0, 86399), ev(1, 0), ev(1, 10)])
    assert [(r["event_timestamp"], r["c_1d"], r["c_all"]) for r in rows] == [(at(1, 0), 1, 1), (at(2, 0), 2, 3)]


def test_7d_window_excludes_the_event_seven_days_before():
    view = view_of(*counts("7d", "8d").aggregations, Aggregation(name="top", function="top_n", column="tags", n=3,
                                                                 split="|", window="7d"))
    rows = check(view, [ev(0, 86399, tags="A"), ev(1, 0, tags="B"), ev(7, 0, tags="B|C")])
    assert [(r["c_7d"], r["c_8d"], r["top"]) for r in rows] == [(1, 1, ["A"]), (2, 2, ["A", "B"]), (2, 3, ["B", "C"])]


def test_days_filter_keeps_windows_looking_back():
    days = (START.date() + dt.timedelta(days=5), START.date() + dt.timedelta(days=7))
    rows = check(counts("3d", "all"), [ev(d) for d in range(10)], days=days)
    assert [(r["event_timestamp"], r["c_3d"], r["c_all"]) for r in rows] == [
        (at(6, 0), 3, 6), (at(7, 0), 3, 7), (at(8, 0), 3, 8)]


def test_enrichment_joins_lookup_before_aggregating():
    movies = [{"movieId": 1, "genres": "Drama|War", "year": 1990}, {"movieId": 2, "genres": "Comedy|Drama"}]
    rows = check(EXAMPLE["user_genres"], [ev(0, movieId=1), ev(1, movieId=2), ev(2, movieId=3), ev(400, movieId=2)],
                 movies)
    assert [r["top_genres_365d"] for r in rows] == [
        ["Drama", "War"], ["Drama", "Comedy", "War"], ["Drama", "Comedy", "War"], ["Comedy", "Drama"]]


def test_static_catalogue_view_from_the_example():
    schema = {"movieId": pa.int64(), "title": pa.string(), "year": pa.int64(), "genres": pa.string()}
    movies = table([{"movieId": 7, "title": "Heat", "year": 1995, "genres": "Action|Crime"}], schema)
    got = compute_view(EXAMPLE["movie_metadata"], "movieId", None, movies, None,
                       {**schema, "genre_list": pa.list_(pa.string())}, CREATED).to_pylist()
    assert got == [{"movieId": 7, "event_timestamp": EPOCH, "created_timestamp": CREATED, "title": "Heat",
                    "year": 1995, "genres": "Action|Crime", "genre_list": ["Action", "Crime"]}]


def test_last_n_survives_a_day_with_only_null_values():
    rows = check(view_of(Aggregation(name="recent", function="last_n", column="rating", n=3)),
                 [ev(0, rating=4.0), ev(1, rating=None)])
    assert [r["recent"] for r in rows] == [[4.0], [4.0]]


def test_event_view_on_the_epoch_day_is_stamped_at_day_end():
    view = counts("all")
    got = compute_view(view, "userId", "timestamp", table([{**ev(0), "timestamp": EPOCH + dt.timedelta(hours=5)}],
                       EVENTS), None, out_types(view, "userId", EVENTS), CREATED).to_pylist()
    assert got[0]["event_timestamp"] == EPOCH + dt.timedelta(days=1)


def test_top_n_breaks_ties_alphabetically_on_numbers_too():
    rows = check(view_of(Aggregation(name="top", function="top_n", column="movieId", n=2)),
                 [ev(0, movieId=9), ev(0, 1, movieId=10)])
    assert [r["top"] for r in rows] == [["10", "9"]]


def test_two_top_n_features_in_one_view():
    rows = check(view_of(Aggregation(name="top_7d", function="top_n", column="tags", split="|", n=2, window="7d"),
                         Aggregation(name="top_all", function="top_n", column="tags", split="|", n=2)),
                 [ev(0, tags="A|B"), ev(9, tags="B|C")])
    assert [(r["top_7d"], r["top_all"]) for r in rows] == [(["A", "B"], ["A", "B"]), (["B", "C"], ["B", "A"])]


def test_enrichment_uses_one_lookup_row_per_key():
    movies = [{"movieId": 1, "genres": "Drama", "year": 1990}, {"movieId": 1, "genres": "Drama", "year": 1990}]
    rows = check(view_of(Aggregation(name="n", function="count"), enrich=ENRICH), [ev(0, movieId=1)], movies)
    assert [r["n"] for r in rows] == [1]


def test_top_n_separator_with_a_quote_and_empty_tokens():
    view = view_of(Aggregation(name="top", function="top_n", column="tags", split="'", n=3))
    rows = check(view, [ev(0, tags="a'b"), ev(0, sec=50000, tags="b''")])
    assert [r["top"] for r in rows] == [["b", "a"]]


def test_last_breaks_same_instant_ties_like_last_n():
    view = view_of(Aggregation(name="last", function="last", column="rating"),
                   Aggregation(name="recent", function="last_n", column="rating", n=2))
    got = compute_view(view, "userId", "timestamp", table([ev(0, rating=1.0), ev(0, rating=2.0)], EVENTS), None,
                       out_types(view, "userId", EVENTS), CREATED).to_pylist()
    assert (got[0]["last"], got[0]["recent"]) == (2.0, [2.0, 1.0])
