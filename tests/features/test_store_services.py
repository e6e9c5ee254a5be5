"""The feature platform against real services: Redis as the online store, PostgreSQL as Feast's SQL
registry. Each test skips with a visible reason when its service is absent, except under CI
(CI=true), where absence is a failure.

Every run uses its own Feast project name (mrt_<random>), so runs never see each other's data:
Feast suffixes every Redis key with the project name, and the SQL registry keys every row by
project. Both are removed afterwards (only this project's keys and rows; other projects in the
same Redis db or registry are left alone)."""
from __future__ import annotations

import os
import secrets
import shutil

import pytest
import yaml

from millrace.features import feast_repo, stores
from millrace.features.materialize import materialize
from millrace.features.online import OnlineReader
from tests.conftest import unavailable
from tests.features.test_feast_and_online import (VIEWS, all_keys, by_view, clone_state, copy_project,
                                                  expected_values, feast_online, make_state, online, open_state)

POSTGRES_URL = os.environ.get("MILLRACE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MISSING_KEY = 424242


@pytest.fixture(scope="module")
def postgres_url() -> str:
    import psycopg

    try:
        psycopg.connect(_libpq(POSTGRES_URL), connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", POSTGRES_URL, exc)
    return POSTGRES_URL


def _libpq(url: str) -> str:
    """SQLAlchemy URL -> libpq URL (postgresql+psycopg://... -> postgresql://...)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """A landed, ingested and built project under a Feast project name unique to this run."""
    with pytest.MonkeyPatch.context() as mp:
        return make_state(mp, tmp_path_factory.mktemp("services"), name=f"mrt_{secrets.token_hex(5)}")


def _feast_config(e) -> dict:
    return yaml.safe_load((e.state / "feast" / "feature_store.yaml").read_text())


# -- Redis -----------------------------------------------------------------------------------------

def _project_keys(client, project: str) -> list[bytes]:
    return list(client.scan_iter(match=b"*" + project.encode(), count=1000))


@pytest.fixture(scope="module")
def redis_client(redis_url, lake):
    """A client on the test db; at the end this project's keys (and only those) are deleted."""
    import redis

    client = redis.Redis.from_url(redis_url)
    assert _project_keys(client, lake.project.name) == []
    yield client
    keys = _project_keys(client, lake.project.name)
    if keys:
        client.delete(*keys)
    assert _project_keys(client, lake.project.name) == []
    client.close()


@pytest.fixture(scope="module")
def redis_module(redis_url, lake, redis_client, tmp_path_factory):
    """The lake applied with Redis as the online store and materialized once."""
    with pytest.MonkeyPatch.context() as mp:
        e = clone_state(mp, lake, tmp_path_factory.mktemp("redis") / "state", MILLRACE_ONLINE_STORE=redis_url)
        store = feast_repo.apply(e.project, e.features)
        reports = materialize(e.project, e.features, store=store)
        yield e, reports


@pytest.fixture
def redis_env(redis_module, redis_url, monkeypatch):
    """The module's Redis state, with MILLRACE_ONLINE_STORE set again for this test (tests/conftest.py
    clears every MILLRACE_* variable before each test): the store configured at use time is used."""
    monkeypatch.setenv("MILLRACE_ONLINE_STORE", redis_url)
    return redis_module


@pytest.mark.redis
def test_redis_materialize_writes_every_entity(redis_env, redis_url, redis_client):
    e, reports = redis_env
    config = _feast_config(e)
    assert config["online_store"]["type"] == "redis"
    assert config["online_store"]["connection_string"] == stores.redis_connection_string(redis_url)
    assert by_view(reports) == {v: len(all_keys(e, v)) for v in VIEWS}
    # one Redis hash per entity key (a user, a movie), suffixed with the project name, and the marker
    keys = _project_keys(redis_client, e.project.name)
    entity_keys = [k for k in keys if not k.startswith(b"millrace.marker:")]
    assert len(entity_keys) == len(all_keys(e, "user_activity")) + len(all_keys(e, "movie_metadata"))
    assert set(keys) - set(entity_keys) == {f"millrace.marker:{e.project.name}".encode()}


@pytest.mark.redis
def test_redis_feast_get_online_features_equal_offline_latest(redis_env):
    e, _ = redis_env
    fresh = feast_repo.feature_store(e.project)  # a new FeatureStore reads what materialize wrote
    for view in VIEWS:
        keys = all_keys(e, view) + [MISSING_KEY]
        assert feast_online(fresh, e, view, keys) == expected_values(e, view, keys), view


@pytest.mark.redis
def test_redis_online_reader_equals_offline_latest(redis_env):
    e, _ = redis_env
    for view in VIEWS:
        keys = all_keys(e, view) + [MISSING_KEY]
        assert online(e, view, keys) == expected_values(e, view, keys), view
    wanted = ["last_rating", "recent_movies"]
    table = OnlineReader(e.project, e.features).read("user_activity", [1, 2], wanted)
    assert table.column_names == ["userId", *wanted]
    assert wanted == ["last_rating", "recent_movies"]  # the caller's list is left alone


@pytest.mark.redis
def test_redis_materialize_again_writes_nothing_and_full_rewrites_the_same(redis_env):
    e, _ = redis_env
    assert by_view(materialize(e.project, e.features)) == {v: 0 for v in VIEWS}
    assert by_view(materialize(e.project, e.features, full=True)) == {v: len(all_keys(e, v)) for v in VIEWS}
    store = feast_repo.feature_store(e.project)
    for view in VIEWS:
        keys = all_keys(e, view)
        assert feast_online(store, e, view, keys) == expected_values(e, view, keys), view


@pytest.mark.redis
def test_switching_the_online_store_to_redis_fills_it(lake, redis_url, tmp_path, monkeypatch):
    """Materialized into SQLite first, then MILLRACE_ONLINE_STORE=redis://... and a new build/apply:
    the next materialize must fill Redis (the entities written to SQLite are not in Redis)."""
    import redis

    name = f"mrt_{secrets.token_hex(5)}"  # a project of its own: nothing of redis_env's is visible
    root = copy_project(tmp_path, name)
    for part in ("landing", "lake", "offline"):
        shutil.copytree(lake.state / part, tmp_path / "state" / part)
    e = open_state(monkeypatch, root, tmp_path / "state")
    assert by_view(materialize(e.project, e.features, store=feast_repo.apply(e.project, e.features))) == {
        v: len(all_keys(e, v)) for v in VIEWS}
    client = redis.Redis.from_url(redis_url)
    try:
        monkeypatch.setenv("MILLRACE_ONLINE_STORE", redis_url)
        store = feast_repo.apply(e.project, e.features)
        assert _feast_config(e)["online_store"]["type"] == "redis"
        reports = materialize(e.project, e.features, store=store)
        for view in VIEWS:
            keys = all_keys(e, view)
            assert feast_online(store, e, view, keys) == expected_values(e, view, keys), view
        assert by_view(reports) == {v: len(all_keys(e, v)) for v in VIEWS}
    finally:
        keys = _project_keys(client, name)
        if keys:
            client.delete(*keys)
        client.close()


# -- PostgreSQL registry ------------------------------------------------------------------------------

def _registry_rows(url: str, project: str) -> dict[str, int]:
    """Rows this project has in the Feast SQL registry tables (absent tables count as 0)."""
    import psycopg

    out = {}
    with psycopg.connect(_libpq(url), connect_timeout=3) as conn:
        for table in ("projects", "entities", "data_sources", "feature_views"):
            exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
            out[table] = conn.execute(f"SELECT count(*) FROM {table} WHERE project_id = %s",
                                      (project,)).fetchone()[0] if exists else 0
    return out


@pytest.fixture
def sql_registry_project(postgres_url, lake):
    """This run's project in the SQL registry, deleted afterwards (never ``FeatureStore.teardown()``:
    it deletes every project of the registry, not only its own)."""
    name = lake.project.name
    assert sum(_registry_rows(postgres_url, name).values()) == 0
    yield name
    try:
        from feast.errors import ProjectNotFoundException
        from feast.infra.registry.sql import SqlRegistry, SqlRegistryConfig

        registry = SqlRegistry(SqlRegistryConfig(registry_type="sql", path=postgres_url, cache_ttl_seconds=0),
                               name, None)
        try:
            registry.delete_project(name)
        except ProjectNotFoundException:
            pass
    finally:
        assert sum(_registry_rows(postgres_url, name).values()) == 0


@pytest.mark.postgres
def test_sql_registry_on_postgres(postgres_url, lake, sql_registry_project, tmp_path, monkeypatch):
    from feast import FeatureStore

    e = clone_state(monkeypatch, lake, tmp_path / "state", MILLRACE_REGISTRY=postgres_url)
    feast_repo.apply(e.project, e.features)
    config = _feast_config(e)
    assert config["registry"]["registry_type"] == "sql" and config["registry"]["path"] == postgres_url
    assert config["online_store"]["type"] == "sqlite"
    assert not (e.state / "feast" / "registry.db").exists()

    fresh = FeatureStore(repo_path=str(e.state / "feast"))  # nothing cached: read from PostgreSQL
    assert {fv.name for fv in fresh.list_feature_views()} == set(VIEWS)
    assert {en.name for en in fresh.list_entities()} == {"user", "movie"}
    rows = _registry_rows(postgres_url, sql_registry_project)
    assert (rows["projects"], rows["data_sources"], rows["feature_views"]) == (1, len(VIEWS), len(VIEWS))
    assert rows["entities"] >= 2  # ours, and Feast's own placeholder entity

    feast_repo.apply(e.project, e.features)  # applying again adds nothing
    assert _registry_rows(postgres_url, sql_registry_project)["feature_views"] == len(VIEWS)

    reports = materialize(e.project, e.features)  # records materialization intervals in the registry
    assert by_view(reports) == {v: len(all_keys(e, v)) for v in VIEWS}
    again = FeatureStore(repo_path=str(e.state / "feast"))
    assert again.get_feature_view("user_activity").materialization_intervals
    for view in VIEWS:
        keys = all_keys(e, view)
        assert feast_online(again, e, view, keys) == expected_values(e, view, keys), view
        assert online(e, view, keys) == expected_values(e, view, keys), view
