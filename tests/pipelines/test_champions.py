"""The champions' facts (version, newest training event) are read from MLflow only when its
registry changed since they were last read; a registry on a server is always read."""
from __future__ import annotations

import os

import pytest

from millrace.contracts.project import load_project
from millrace.pipelines import drift
from millrace.training import registry
from tests.conftest import EXAMPLE

MODELS = ["movie_retrieval", "will_like"]


class _Connected(Exception):
    pass


def _refuse_connect(project):
    raise _Connected


def test_facts_come_from_mlflow_once_then_from_the_copy_until_the_registry_changes(nightly_copy, monkeypatch):
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(nightly_copy.state))
    for key, value in nightly_copy.env.items():
        monkeypatch.setenv(key, value)
    project = load_project(EXAMPLE)
    facts = drift.champion_facts(project, MODELS)  # this copy's registry: read from MLflow
    assert facts["will_like"].champion == "1" and facts["will_like"].seen.startswith("2016-"), facts
    assert all(f.champion or f.why for f in facts.values()), facts

    monkeypatch.setattr(registry, "connect", _refuse_connect)
    assert drift.champion_facts(project, MODELS) == facts  # unchanged registry: no connection

    db = nightly_copy.state / "mlflow.db"
    st = db.stat()
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # as any write to it would
    with pytest.raises(_Connected):
        drift.champion_facts(project, MODELS)


def test_a_registry_on_a_server_is_always_read(nightly_copy, monkeypatch):
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(nightly_copy.state))
    monkeypatch.setenv("MILLRACE_MLFLOW_URI", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    project = load_project(EXAMPLE)
    monkeypatch.setattr(registry, "connect", _refuse_connect)
    with pytest.raises(_Connected):
        drift.champion_facts(project, MODELS)
