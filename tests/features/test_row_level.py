"""The flights domain's views (tests/domains/flights/features.yaml) computed by compute_view against a
plain-Python reference: composite and derived keys, derived columns, conditional aggregations."""
import datetime as dt
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from millrace.contracts.project import load_project
from millrace.features.compute import compute_view
from millrace.features.errors import FeatureSpecError
from millrace.features.spec import load_features
from tests.domains.flights_data import PROJECT

UTC = dt.timezone.utc
CREATED = dt.datetime(2026, 9, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def features():
    return load_features(load_project(PROJECT))


def _events(n: int = 600, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = dt.datetime(2026, 6, 1, tzinfo=UTC)
    airports = ["JFK", "LAX", "ORD"]
    rows = []
    for i in range(n):
        cancelled = bool(rng.random() < 0.1)
        rows.append({
            "flight_id": f"F{i}", "carrier": ["AA", "DL", "UA"][int(rng.integers(3))],
            "origin": airports[int(rng.integers(3))], "dest": airports[int(rng.integers(3))],
            "dep_time": start + dt.timedelta(minutes=int(rng.integers(0, 60 * 24 * 50))),
            "distance": float(rng.integers(100, 2000)),
            "air_time": None if cancelled else int(rng.integers(30, 300)),
            "arr_delay": None if cancelled or rng.random() < 0.05 else float(rng.integers(-20, 90)),
            "cancelled": None if i % 97 == 0 else cancelled})
    schema = pa.schema([("flight_id", pa.string()), ("carrier", pa.string()), ("origin", pa.string()),
                        ("dest", pa.string()), ("dep_time", pa.timestamp("us", tz="UTC")), ("distance", pa.float64()),
                        ("air_time", pa.int64()), ("arr_delay", pa.float64()), ("cancelled", pa.bool_())])
    return pa.Table.from_pylist(rows, schema)


def _compute(features, name: str, events: pa.Table) -> list[dict]:
    view = features.view(name)
    table = compute_view(view, features.join_keys(name), "dep_time", events, None, features.types[name], CREATED,
                         derived=features.derived_columns("flights"))
    assert table.column_names[:len(features.join_keys(name)) + 2] == features.join_keys(name) + [
        "event_timestamp", "created_timestamp"]
    return table.to_pylist()


def _window(rows: list[dict], day: dt.date, days: int | None) -> list[dict]:
    return [r for r in rows if r["dep_time"].date() <= day and (days is None or r["dep_time"].date() > day - dt.timedelta(days))]


def test_route_delays_composite_key_and_conditional_aggregations(features):
    events = _events()
    ours = _compute(features, "route_delays", events)
    rows = events.to_pylist()
    by_route = defaultdict(list)
    for r in rows:
        by_route[(r["origin"], r["dest"])].append(r)
    expected = {}
    for route, mine in by_route.items():
        for day in sorted({r["dep_time"].date() for r in mine}):
            w7, w30 = _window(mine, day, 7), _window(mine, day, 30)
            late30 = [r for r in w30 if r["arr_delay"] is not None and r["arr_delay"] > 15]
            expected[(route, day)] = {
                "flights_7d": len(w7),
                "delayed_7d": sum(1 for r in w7 if r["arr_delay"] is not None and r["arr_delay"] > 15),
                "delayed_share_30d": len(late30) / len(w30),
                "arrivals_30d": sum(1 for r in w30 if r["arr_delay"] is not None),
                "mean_delay_30d": sum(r["arr_delay"] or 0 for r in w30) / len(w30),
                "weekend_flights_30d": sum(1 for r in w30 if r["dep_time"].weekday() >= 5)}
    got = {((r["origin"], r["dest"]), (r["event_timestamp"] - dt.timedelta(days=1)).date()): r for r in ours}
    assert set(got) == set(expected)
    for k, want in expected.items():
        for name, value in want.items():
            assert got[k][name] == pytest.approx(value), (k, name)


def test_a_derived_key_field_and_a_condition_on_a_nullable_flag(features):
    events = _events()
    ours = _compute(features, "slot_delays", events)
    assert features.key_types("slot_delays") == {"origin": pa.string(), "dep_hour": pa.int64()}
    by_slot = defaultdict(list)
    for r in events.to_pylist():
        by_slot[(r["origin"], r["dep_time"].hour)].append(r)
    got = {((r["origin"], r["dep_hour"]), r["event_timestamp"]): r for r in ours}
    assert {k for k, _ in got} == set(by_slot)
    for (slot, stamp), row in got.items():
        seen = _window(by_slot[slot], (stamp - dt.timedelta(days=1)).date(), None)
        late = [r for r in seen if r["arr_delay"] is not None and r["arr_delay"] > 15]
        flown = [r["arr_delay"] for r in seen if r["cancelled"] is False and r["arr_delay"] is not None]
        assert row["delayed_share_all"] == pytest.approx(len(late) / len(seen))
        assert row["worst_delay_all"] == (max(flown) if flown else None)  # cancelled null: not "not cancelled"


def test_rows_with_a_null_key_field_are_not_an_entity(features):
    events = _events(50)
    dest = events.column("dest").to_pylist()
    dest[0] = None
    events = events.set_column(events.schema.get_field_index("dest"), "dest", pa.array(dest))
    ours = _compute(features, "route_delays", events)
    routes = {(r["origin"], r["dest"]) for r in events.to_pylist()[1:]}
    assert {(r["origin"], r["dest"]) for r in ours} == routes  # no (origin, None) entity
    assert sum(1 for r in ours if r["dest"] is None) == 0


@pytest.mark.parametrize("edit, words", [
    ({"derived": {"flights": {"late": "arr_delay > 'x'"}}}, "derived.flights.late: `arr_delay > 'x'` compares"),
    ({"derived": {"flights": {"carrier": "1"}}}, "already a column"),
    ({"derived": {"nowhere": {"x": "1"}}}, "unknown source 'nowhere'"),
    ({"where": "arr_delay + 1"}, "is double, not a condition"),
    ({"where": "gate > 1"}, "unknown column 'gate'"),
    ({"function": "share", "where": None}, "share takes a condition"),
    ({"entity_keys": ["origin", "origin"]}, "repeats a field"),
    ({"entity_keys": ["origin", "speed_mph"]}, "key 'speed_mph' is double"),
])
def test_spec_errors_name_the_place(tmp_path, edit, words):
    import shutil

    import yaml

    root = tmp_path / "flights"
    shutil.copytree(PROJECT, root)
    spec = yaml.safe_load((root / "features.yaml").read_text())
    if "derived" in edit:
        spec["derived"].update(edit["derived"])
    elif "entity_keys" in edit:
        spec["entities"]["route"]["join_keys"] = edit["entity_keys"]
    else:
        agg = spec["feature_views"]["carrier_delays"]["aggregations"][0]
        agg.update({k: v for k, v in edit.items()})
        agg.pop("where") if agg.get("where") is None else None
    (root / "features.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(FeatureSpecError) as exc:
        load_features(load_project(root))
    assert words in str(exc.value) and "\n" not in str(exc.value)
