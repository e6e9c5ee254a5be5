"""Registry logic on SQLite without training: which version was champion when, where a rollback
goes, finishing an interrupted alias move, closing runs whose process died."""
from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

from millrace.contracts.project import load_project
from millrace.training import registry
from millrace.training.errors import NothingToRollBackTo, UnknownModel

@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One MLflow database for this module (creating one takes seconds); each test its own model."""
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder}/mlflow.db", str(folder / "artifacts")


@dataclass
class Store:
    client: object
    exp: str
    name: str
    tmp: str


@pytest.fixture
def store(project_dir, tmp_path, monkeypatch, database, request) -> Store:
    monkeypatch.setenv("MILLRACE_USER", "tester")
    monkeypatch.setenv("MILLRACE_MLFLOW_URI", database[0])
    monkeypatch.setenv("MILLRACE_MLFLOW_ARTIFACTS", database[1])
    project = load_project(project_dir)
    client = registry.connect(project)
    model = request.node.name.removeprefix("test_")[:40]
    name = registry.registered_name(project, model)
    registry.ensure_registered(client, name)
    return Store(client, registry.experiment_id(client, project, model), name, str(tmp_path))


def _version(store: Store, gate="passed") -> str:
    run = store.client.create_run(store.exp)
    store.client.set_terminated(run.info.run_id, "FINISHED")
    mv = store.client.create_model_version(store.name, store.tmp, run_id=run.info.run_id,
                                           tags={registry.GATE_TAG: gate})
    return str(mv.version)


def leave_intent(client, name: str, version: str, previous: str, why: str) -> registry.AliasEvent:
    """The intent tag a process writes just before it moves ``champion`` (see registry.move_alias)."""
    intent = registry.AliasEvent(99, registry.CHAMPION, version, previous, "tester", "2026-12-01T00:00:00+00:00", why)
    client.set_registered_model_tag(name, registry.PENDING_PREFIX + registry.CHAMPION, json.dumps(intent.__dict__))
    return intent


def _champion_log(store: Store):
    return [e.version for e in registry.history(store.client, store.name) if e.alias == registry.CHAMPION]


def test_champion_at_a_time_counts_only_champion_moves(store):
    """Every registered version, a failed one too, becomes challenger; the champion at a time must
    never be one the gate refused."""
    client, name = store.client, store.name
    v1 = _version(store)
    registry.move_alias(client, name, registry.CHALLENGER, v1, "registered")
    registry.move_alias(client, name, registry.CHAMPION, v1, "gate passed")
    v2 = _version(store, gate="failed")
    registry.move_alias(client, name, registry.CHALLENGER, v2, "registered")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    assert registry.alias_at(client, name, registry.CHAMPION, later) == v1
    assert registry.alias_at(client, name, registry.CHALLENGER, later) == v2
    assert not registry.gate_passed(registry.get_version(client, name, v2))


def test_rollback_target(store):
    client, name = store.client, store.name
    v1, v2, v3 = _version(store), _version(store, gate="failed"), _version(store)
    with pytest.raises(NothingToRollBackTo, match="no earlier champion"):
        registry.rollback_target(client, name)
    for v, why in ((v1, "gate passed"), (v2, "promoted by hand (--force)"), (v3, "gate passed")):
        registry.move_alias(client, name, registry.CHAMPION, v, why)
    assert registry.rollback_target(client, name) == v1  # v2 was champion only by force
    assert registry.rollback_target(client, name, "2") == v2  # named: it goes there
    with pytest.raises(NothingToRollBackTo, match="already champion"):
        registry.rollback_target(client, name, v3)
    with pytest.raises(UnknownModel, match="has no version 9"):
        registry.rollback_target(client, name, "9")
    registry.move_alias(client, name, registry.CHAMPION, v1, "rollback")
    assert registry.rollback_target(client, name) == v3  # back again: the champion before the current one
    client.delete_model_version(name, v3)
    with pytest.raises(NothingToRollBackTo):
        registry.rollback_target(client, name)  # v3 is gone, v2 failed its gate


def test_reconcile_finishes_a_move_killed_before_its_log_entry(store):
    client, name = store.client, store.name
    v1, v2 = _version(store), _version(store)
    registry.move_alias(client, name, registry.CHAMPION, v1, "gate passed")
    # what a process killed at after_alias_move leaves: the intent, the alias moved, no log entry
    intent = leave_intent(client, name, v2, v1, "gate passed: x")
    client.set_registered_model_alias(name, registry.CHAMPION, v2)
    assert _champion_log(store) == [v1]  # the inconsistency: the log says v1, the alias v2
    written = registry.reconcile(client, name)
    assert [(e.version, e.at, e.why) for e in written] == [(v2, intent.at, intent.why)]
    assert _champion_log(store) == [v1, v2]
    assert not any(k.startswith(registry.PENDING_PREFIX) for k in client.get_registered_model(name).tags)
    assert registry.reconcile(client, name) == []  # idempotent


def test_reconcile_drops_a_move_that_never_happened_and_logs_one_made_outside(store):
    client, name = store.client, store.name
    v1, v2 = _version(store), _version(store)
    registry.move_alias(client, name, registry.CHAMPION, v1, "gate passed")
    leave_intent(client, name, v2, v1, "never moved")
    assert registry.reconcile(client, name) == [] and _champion_log(store) == [v1]
    client.set_registered_model_alias(name, registry.CHALLENGER, v2)  # e.g. in the MLflow UI
    written = registry.reconcile(client, name)
    assert [(e.alias, e.version, e.by) for e in written] == [(registry.CHALLENGER, v2, "millrace")]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_close_orphans(store):
    client, exp, tmp, name = store.client, store.exp, store.tmp, store.name
    host = socket.gethostname()
    old = int((dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).timestamp() * 1000)
    runs = {
        "dead": client.create_run(exp, tags={"millrace.host": host, "millrace.pid": str(_dead_pid())}),
        "alive": client.create_run(exp, tags=registry.process_tags()),
        "elsewhere_old": client.create_run(exp, start_time=old, tags={"millrace.host": "other", "millrace.pid": "1"}),
        "elsewhere_new": client.create_run(exp, tags={"millrace.host": "other", "millrace.pid": "1"}),
    }
    ids = {k: r.info.run_id for k, r in runs.items()}
    mv = client.create_model_version(name, str(tmp), run_id=ids["dead"], tags={registry.GATE_TAG: "passed"})
    closed = registry.close_orphans(client, exp)
    assert sorted(closed) == sorted([ids["dead"], ids["elsewhere_old"]])
    status = {k: client.get_run(i).info.status for k, i in ids.items()}
    assert status == {"dead": "FAILED", "alive": "RUNNING", "elsewhere_old": "FAILED", "elsewhere_new": "RUNNING"}
    tags = client.get_run(ids["dead"]).data.tags
    assert "ended without closing it" in tags["millrace.orphan"] and tags["millrace.error"].startswith("interrupted")
    version = registry.get_version(client, name, mv.version)
    assert version.tags[registry.RUN_TAG] == "interrupted" and not registry.gate_passed(version)
    assert registry.close_orphans(client, exp) == []
