"""The registry flow with MLflow's PostgreSQL backend. Each run gets its own database (created and
dropped here), so MLflow's schema migrations and rows never touch anything else. Skips with a
visible reason when PostgreSQL is absent, except under CI (CI=true), where absence is a failure."""
from __future__ import annotations

import os
import secrets
from urllib.parse import urlparse

import pytest

from tests.conftest import in_ci
from tests.training.test_train import registry_flow

POSTGRES_URL = os.environ.get("MILLRACE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def mlflow_database(monkeypatch):
    import psycopg

    server = urlparse(POSTGRES_URL.replace("+psycopg", ""))
    admin = server._replace(path="/postgres").geturl()
    name = f"mrt_mlflow_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        message = f"PostgreSQL not reachable at {admin}: {type(exc).__name__}: {str(exc).strip()[:200]}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    url = urlparse(POSTGRES_URL)._replace(path=f"/{name}").geturl()
    monkeypatch.setenv("MILLRACE_MLFLOW_URI", url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_registry_flow_on_postgres(tiny, mlflow_database):
    from millrace.training import registry

    assert registry.tracking_uri(tiny.project) == mlflow_database
    registry_flow(tiny)
    client = registry.connect(tiny.project)
    assert client.get_registered_model(registry.registered_name(tiny.project, "likes")).name == "movielens.likes"


def test_unreachable_store_is_one_clear_error(tiny, monkeypatch):
    from millrace.training import registry
    from millrace.training.errors import RegistryUnavailable

    monkeypatch.setenv("MILLRACE_MLFLOW_URI", "postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(RegistryUnavailable, match="cannot reach the MLflow store") as exc:
        registry.connect(tiny.project)
    assert "\n" not in str(exc.value)


def test_unreachable_is_retryable_and_a_bad_uri_is_not(project_dir, monkeypatch):
    """Which one is decided by contracts.errors.is_unreachable, the one check for every store."""
    from millrace.contracts.errors import EXIT_BAD_INPUT, EXIT_RETRYABLE, exit_code
    from millrace.contracts.project import load_project
    from millrace.training import registry
    from millrace.training.errors import RegistryError, RegistryUnavailable

    project = load_project(project_dir)
    monkeypatch.setenv("MILLRACE_MLFLOW_URI", "postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(RegistryUnavailable) as down:
        registry.connect(project)
    assert exit_code(down.value) == EXIT_RETRYABLE
    monkeypatch.setenv("MILLRACE_MLFLOW_URI", "nosuchscheme://somewhere/db")
    with pytest.raises(RegistryError) as bad:
        registry.connect(project)
    assert not isinstance(bad.value, RegistryUnavailable) and exit_code(bad.value) == EXIT_BAD_INPUT
    assert "cannot use the MLflow store" in str(bad.value) and "\n" not in str(bad.value)
