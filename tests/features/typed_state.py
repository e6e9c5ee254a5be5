"""The typed test project (tests/features/typed/): every feature type the contracts produce,
string and int entity keys, nulls, a 1-day and a 0 ttl. ``typed_state`` computes its offline
tables in memory (no lake, no Beam), applies Feast and materializes with millrace's writer (byte-equal
to Feast's: tests/features/test_online_write.py)."""
from __future__ import annotations

import datetime as dt
import random
import re
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa

from millrace.contracts.arrow import arrow_schema
from millrace.contracts.project import load_project
from millrace.features import feast_repo, offline
from millrace.features.compute import compute_view
from millrace.features.materialize import materialize
from millrace.features.online import OnlineReader
from millrace.features.spec import load_features

TYPED = Path(__file__).parent / "typed"
UTC = dt.timezone.utc
ACCOUNTS = ["a1", "zoë", "with space", "x-y", "nolabel"]
USERS = [1, 2, 3, 2 ** 40, 7]


def events() -> pa.Table:
    rng = random.Random(11)
    rows = []
    base = dt.datetime(2021, 3, 1, tzinfo=UTC)
    for i in range(80):
        account = ACCOUNTS[i % len(ACCOUNTS)]
        at = base + dt.timedelta(days=rng.randint(0, 20), seconds=rng.randint(0, 86399), microseconds=rng.randint(0, 999))
        maybe = rng.random() < 0.25  # nulls in every optional column
        rows.append({"account": account, "user": USERS[i % len(USERS)],
                     "amount": None if maybe else round(rng.uniform(-5, 50), 3),
                     "flag": None if maybe else rng.random() < 0.5,
                     "label": None if maybe or account == "nolabel" else rng.choice(["red-1", "blue", "green-x-2"]),
                     "seen_at": None if maybe else at - dt.timedelta(hours=rng.randint(0, 100), microseconds=17),
                     "day": None if maybe else at.date(), "at": at})
    return pa.Table.from_pylist(rows)


def typed_project(tmp: Path, monkeypatch, prefix: str = "typed", edit_features=None, **env: str):
    """(project, features, store) of a fresh copy of the typed project: offline tables written,
    Feast applied, nothing materialized. ``edit_features(text) -> text`` changes its features.yaml."""
    root = tmp / "project"
    shutil.copytree(TYPED, root)
    path = root / "millrace.yaml"
    path.write_text(re.sub(r"(?m)^name: .*$", f"name: {prefix}_{secrets.token_hex(4)}", path.read_text()))
    if edit_features:
        (root / "features.yaml").write_text(edit_features((root / "features.yaml").read_text()))
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(tmp / "state"))
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    project = load_project(root)
    features = load_features(project)
    rows = events().cast(arrow_schema(project.contract("events")).remove_metadata())
    created = dt.datetime(2021, 4, 1, tzinfo=UTC)
    for view_name, view in features.views.items():
        table = compute_view(view, features.join_keys(view_name), "at", rows, None, features.types[view_name], created)
        offline.write_view(project.offline, view_name, table, {}, "r1")
    return project, features, feast_repo.apply(project, features)


def typed_state(tmp: Path, monkeypatch, **env: str):
    """The typed project with every view materialized."""
    project, features, store = typed_project(tmp, monkeypatch, **env)
    materialize(project, features, store=store)
    return project, features, store


def redis_or_skip(url: str):
    """A client on the test Redis; skips (fails under CI) when it is down."""
    import redis

    from tests.conftest import unavailable

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        unavailable("Redis", url, exc)
    return client


def feast_rows(store, features, view: str, keys: list) -> list[dict]:
    key = features.join_key(view)
    names = features.feature_names(view)
    got = store.get_online_features(features=[f"{view}:{n}" for n in names],
                                    entity_rows=[{key: k} for k in keys]).to_dict()
    return [{key: got[key][i], **{n: got[n][i] for n in names}} for i in range(len(keys))]


BEFORE_DATA = dt.datetime(2021, 3, 1, tzinfo=UTC)  # "now" for which no ttl has expired yet


def assert_same_reads(project, features, store) -> None:
    # Feast's get_online_features applies no ttl: compare at a "now" where ours expires nothing
    # (tests/features/test_online_ttl.py covers the expiry).
    reader = OnlineReader(project, features, clock=lambda: BEFORE_DATA)
    for view, keys in (("account_typed", ACCOUNTS + ["nobody"]), ("user_typed", USERS + [424242])):
        ours = reader.read(view, keys).to_pylist()
        assert ours == feast_rows(store, features, view, keys), view
        assert all(v is not None for v in ours[0].values()), ours[0]  # real values, not only nulls
        assert reader.read(view, keys[:1]).to_pylist() == ours[:1]  # one key: the store's single-read path
        assert ours[-1] == {features.join_key(view): keys[-1], **{n: None for n in features.feature_names(view)}}
    nulls = reader.read("account_typed", ["nolabel"]).to_pylist()[0]
    assert nulls["label_last"] is None and nulls["labels"] == [] and nulls["events_all"] > 0


def redis_db_url(url: str) -> str:
    """A Redis URL with a db number (db 0 when it names none)."""
    return url if urlparse(url).path.strip("/") else url.rstrip("/") + "/0"
