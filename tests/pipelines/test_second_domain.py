"""A second domain end to end through `millrace nightly`, as a user runs it: the generated flights
project (tests/domains/flights) with a ';'-separated landing format and null tokens, derived
columns, conditional aggregations, composite and derived entity keys, online reads with ttl, and a
model with request-time inputs. Nothing in millrace knows this domain."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import MILLRACE, ROOT, cli_env
from tests.domains.flights_data import PROJECT, land

pytestmark = pytest.mark.slow
UTC = dt.timezone.utc


class Domain:
    def __init__(self, root: Path, state: Path, landed, proc):
        self.root, self.state, self.landed, self.proc = root, state, landed, proc

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(MILLRACE + ["--project", str(self.root), *args], capture_output=True, text=True,
                              env=cli_env(self.state, **env), timeout=600, cwd=ROOT)

    def load(self):
        import os

        from millrace.contracts.project import load_project
        from millrace.features.spec import load_features

        os.environ["MILLRACE_STATE_DIR"] = str(self.state)
        project = load_project(self.root)
        return project, load_features(project)


@pytest.fixture(scope="module")
def flights(tmp_path_factory) -> Domain:
    base = tmp_path_factory.mktemp("flights")
    root, state = base / "flights", base / "state"
    shutil.copytree(PROJECT, root)
    landed = land(state / "landing")
    proc = subprocess.run(MILLRACE + ["--project", str(root), "nightly"], capture_output=True, text=True,
                          env=cli_env(state), timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Domain(root, state, landed, proc)


@pytest.fixture
def loaded(flights, monkeypatch):
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(flights.state))
    return flights.load()


def test_landing_format_and_quarantine(flights, loaded):
    from millrace.pipelines import lake

    project, _ = loaded
    key = project.contract("flights").partitioning.key
    good = lake.read_source(project.lake, "flights", key)
    bad = lake.read_quarantine(project.quarantine, project.lake, "flights", key)
    assert good.num_rows + bad.num_rows == flights.landed.rows
    assert bad.num_rows == flights.landed.bad
    assert sorted(set(bad.column("reason").to_pylist())) == ["not_in_enum", "pattern_mismatch"]
    # NA / null / empty in nullable fields are nulls, never type_mismatch
    assert pc.sum(pc.is_null(good.column("arr_delay"))).as_py() == flights.landed.cancelled
    assert pc.sum(pc.fill_null(pc.greater(good.column("arr_delay"), 15.0), False)).as_py() == flights.landed.late
    assert set(good.column("carrier").to_pylist()) == {"AA", "DL", "UA", "WN"}  # quoted 'AA' read as AA


def test_composite_and_derived_keys_in_the_offline_store_and_feast(flights, loaded):
    from millrace.features import offline
    from millrace.features.feast_repo import feature_store

    project, features = loaded
    route = offline.read_view(project.offline, "route_delays")
    assert route.column_names[:3] == ["origin", "dest", "event_timestamp"]
    slot = offline.read_view(project.offline, "slot_delays")
    assert slot.schema.field("dep_hour").type == pa.int64()
    assert set(slot.column("dep_hour").to_pylist()) <= set(range(6, 23))
    store = feature_store(project)
    fv = store.get_feature_view("route_delays")
    assert sorted(fv.entities) == ["route__dest", "route__origin"]
    assert sorted(c.name for c in fv.entity_columns) == ["dest", "origin"]


def test_training_set_joins_on_both_key_fields(flights, loaded):
    from millrace.features import offline
    from millrace.features.training_set import training_set

    project, features = loaded
    table = offline.read_view(project.offline, "route_delays")
    spine = pa.table({"origin": ["JFK", "JFK", "LAX", "ORD", "JFK"], "dest": ["LAX", "ORD", "JFK", "ATL", "ATL"],
                      "event_timestamp": pa.array([dt.datetime(2026, 7, 10, 12, tzinfo=UTC)] * 5,
                                                  pa.timestamp("us", tz="UTC"))})
    out = training_set(project, features, spine, ["route_delays:flights_7d"]).to_pylist()
    rows = defaultdict(list)
    for r in table.to_pylist():
        rows[(r["origin"], r["dest"])].append(r)
    for got in out:
        seen = [r for r in rows[(got["origin"], got["dest"])]
                if got["event_timestamp"] - dt.timedelta(days=30) <= r["event_timestamp"] <= got["event_timestamp"]]
        want = max(seen, key=lambda r: r["event_timestamp"])["flights_7d"] if seen else None
        assert got["route_delays__flights_7d"] == want
    assert out[4]["route_delays__flights_7d"] is None  # JFK -> ATL is no route: nothing, not JFK's other routes


def test_training_set_equals_feasts_historical_features_on_a_composite_key(flights, loaded):
    from millrace.features.feast_repo import feature_store
    from millrace.features.training_set import feast_training_set, training_set

    project, features = loaded
    times = [dt.datetime(2026, 6, 20, tzinfo=UTC) + dt.timedelta(days=d, hours=h) for d in range(0, 50, 7) for h in (3, 15)]
    pairs = [("JFK", "LAX"), ("ORD", "ATL"), ("SFO", "DEN"), ("ATL", "LAX")]
    spine = pa.table({"origin": [o for o, _ in pairs for _ in times], "dest": [d for _, d in pairs for _ in times],
                      "event_timestamp": pa.array(times * len(pairs), pa.timestamp("us", tz="UTC"))})
    ours = training_set(project, features, spine, ["route_delays"]).to_pylist()
    theirs = feast_training_set(feature_store(project), spine, ["route_delays"]).to_pylist()
    key = lambda r: (r["origin"], r["dest"], r["event_timestamp"])  # noqa: E731
    by_key = {key(r): r for r in ours}
    assert theirs and len(theirs) <= len(ours)  # Feast drops rows with no earlier feature row; we keep them
    names = [f"route_delays__{n}" for n in features.feature_names("route_delays")]
    for row in theirs:
        mine = by_key[key(row)]
        assert {n: mine[n] for n in names} == pytest.approx({n: row[n] for n in names}), key(row)


def test_online_reads_by_composite_key_equal_feast_and_honour_the_ttl(flights, loaded):
    from millrace.features.feast_repo import feature_store
    from millrace.features.online import OnlineReader

    project, features = loaded
    keys = {"origin": ["JFK", "ORD", "JFK"], "dest": ["LAX", "ATL", "ATL"]}
    names = features.feature_names("route_delays")
    last_day = dt.datetime(2026, 6, 1, tzinfo=UTC) + dt.timedelta(days=flights.landed.days)
    ours = OnlineReader(project, features, clock=None).read("route_delays", keys).to_pylist()  # Feast: no ttl
    feast = feature_store(project).get_online_features(
        [f"route_delays:{n}" for n in names], [{"origin": o, "dest": d} for o, d in zip(*keys.values())]).to_dict()
    for i, row in enumerate(ours):
        assert {n: row[n] for n in names} == {n: feast[n][i] for n in names}
    assert ours[0]["flights_7d"] is not None and ours[2]["flights_7d"] is None
    fresh = OnlineReader(project, features, clock=lambda: last_day + dt.timedelta(days=2)).read("route_delays", keys)
    stale = OnlineReader(project, features, clock=lambda: last_day + dt.timedelta(days=40)).read("route_delays", keys)
    assert fresh.column("flights_7d").to_pylist()[0] is not None
    assert stale.column("flights_7d").to_pylist() == [None, None, None]  # ttl 30d
    today = OnlineReader(project, features).read("route_delays", keys)  # the default: the current time
    assert today.column("flights_7d").to_pylist() == (fresh if dt.datetime.now(UTC) < last_day + dt.timedelta(days=30)
                                                      else stale).column("flights_7d").to_pylist()


def test_features_get_takes_a_composite_key(flights):
    # the generated flights end in August 2026: against the wall clock the 30d ttl has expired them
    today = flights.cli("features", "get", "route_delays", "origin=JFK,dest=LAX")
    if dt.datetime.now(UTC) > dt.datetime(2026, 6, 1, tzinfo=UTC) + dt.timedelta(days=flights.landed.days + 30):
        assert today.returncode == 1 and "origin=JFK,dest=LAX: expired (older than the view's ttl 30d)" in today.stderr
    proc = flights.cli("features", "get", "route_delays", "origin=JFK,dest=LAX", MILLRACE_TTL_CLOCK="data")
    assert proc.returncode == 0, proc.stderr
    assert "'origin': 'JFK'" in proc.stdout and "'dest': 'LAX'" in proc.stdout and "flights_7d" in proc.stdout


def test_the_model_takes_request_time_inputs(flights, loaded):
    import onnx

    from millrace.training import bundle

    assert "will_be_delayed" in flights.proc.stdout
    manifests = list(flights.state.rglob("bundle/manifest.json"))
    assert len(manifests) == 1, manifests
    manifest = bundle.read_manifest(str(manifests[0].parent))
    part = manifest.parts["model"]
    sources = {i.name: i.source for i in part.inputs}
    assert {sources[c] for c in ("carrier", "dep_hour", "distance")} == {
        "request:carrier", "request:dep_hour", "request:distance"}
    assert sources["route_delays__flights_7d"] == "route_delays:flights_7d"
    signature = {t.name: t.datatype for t in part.signature.inputs}
    assert (signature["carrier"], signature["dep_hour"], signature["distance"]) == ("STRING", "FLOAT", "FLOAT")
    graph = onnx.load(str(manifests[0].parent / part.files["int8"]))
    assert {"carrier", "dep_hour", "distance"} <= {i.name for i in graph.graph.input}
    assert manifest.metrics["auc"] > 0.55
    card = (manifests[0].parent / "model_card.md").read_text()
    assert "Project: flights" in card and "request-time inputs (from the caller, not the online store): " \
        "carrier, dep_hour, distance" in card
    assert not any(word in card.lower() for word in ("movielens", "movie", "rating"))  # the project at hand


def test_example_land_refuses_this_project(flights):
    proc = flights.cli("example", "land")
    assert proc.returncode != 0
    assert "bundled example" in proc.stdout + proc.stderr
    assert not (flights.state / "landing" / "ratings").exists()


def test_the_nightly_releases_the_ranking_model_and_index_refuses_it(flights):
    assert "is current: will_be_delayed v1" in flights.proc.stdout
    shown = json.loads(flights.cli("release", "show", "--json").stdout)
    release = shown["release"]
    assert shown["verified"] and release["project"] == "flights" and release["indexes"] == {}
    assert {m: (r["version"], r["role"]) for m, r in release["models"].items()} == {"will_be_delayed": ("1", "ranking")}
    assert set(release["feature_views"]) == {"route_delays", "carrier_delays", "slot_delays"}
    assert set(release["contracts"]) == {"flights"}
    proc = flights.cli("index", "--model", "will_be_delayed")
    assert proc.returncode == 2 and "is tabular: it has no item encoder" in proc.stderr, proc.stderr


def test_train_json_reports_the_new_version(flights):
    """Last in this module: it registers a second version."""
    proc = flights.cli("train", "--model", "will_be_delayed", "--json")
    assert proc.returncode == 0, proc.stderr
    (outcome,) = json.loads(proc.stdout)
    assert outcome["registered_name"] == "flights.will_be_delayed" and outcome["version"] == "2"
    assert outcome["metrics"]["auc"] > 0.55 and "training" in proc.stderr  # progress and notes on stderr
