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
    logged = {k: client.create_logged_model(exp, name=k, source_run_id=ids[k]).model_id for k in ("dead", "alive")}
    closed = registry.close_orphans(client, exp)
    assert sorted(closed) == sorted([ids["dead"], ids["elsewhere_old"]])
    status = {k: client.get_run(i).info.status for k, i in ids.items()}
    assert status == {"dead": "FAILED", "alive": "RUNNING", "elsewhere_old": "FAILED", "elsewhere_new": "RUNNING"}
    tags = client.get_run(ids["dead"]).data.tags
    assert "ended without closing it" in tags["millrace.orphan"] and tags["millrace.error"].startswith("interrupted")
    version = registry.get_version(client, name, mv.version)
    assert version.tags[registry.RUN_TAG] == "interrupted" and not registry.gate_passed(version)
    assert {k: str(client.get_logged_model(m).status) for k, m in logged.items()} == {"dead": "FAILED",
                                                                                     "alive": "PENDING"}
    assert registry.close_orphans(client, exp) == []


def test_experiments_are_classic_ml(store, project_dir, tmp_path):
    """MLflow 3 marks an experiment's kind with the tag mlflow.experimentKind; millrace's are classic ML."""
    client = store.client
    kind = client.get_experiment(store.exp).tags[registry.KIND_TAG]
    assert kind == registry.KIND_CLASSIC == "custom_model_development"
    project = load_project(project_dir)
    older = client.create_experiment(registry.registered_name(project, "older_kind"),
                                     artifact_location=str(tmp_path / "older"))  # made before the tag existed
    assert registry.experiment_id(client, project, "older_kind") == older
    assert client.get_experiment(older).tags[registry.KIND_TAG] == registry.KIND_CLASSIC


def _log_files(store: Store) -> list:
    from pathlib import Path

    folder = Path(store.client.get_experiment(store.exp).artifact_location) / registry.LOG_FOLDER
    return sorted(folder.glob("*.json"))


def test_alias_history_is_a_checksum_chain_kept_out_of_the_ui(store):
    """The log is artifact files (the UI shows, never edits them), each chained to the one before by
    its SHA-256, the last one named by a head tag: any edit, removal or addition is reported."""
    client, name = store.client, store.name
    v1, v2 = _version(store), _version(store)
    for v in (v1, v2, v1):
        registry.move_alias(client, name, registry.CHAMPION, v, "gate passed")
    log = registry.read_log(client, name)
    assert log.problem is None and [e.version for e in log.events] == [v1, v2, v1]
    tags = client.get_registered_model(name).tags
    assert not [k for k in tags if k.startswith(registry.LOG_PREFIX)] and tags[registry.HEAD_TAG].startswith("3 ")
    files = _log_files(store)
    assert [f.name for f in files] == ["000001.json", "000002.json", "000003.json"]
    originals = {f: f.read_bytes() for f in files}

    def edited(f, **change):
        f.write_text(json.dumps({**json.loads(originals[f]), **change}, sort_keys=True))

    cases = {
        "an edited entry": (lambda: edited(files[0], version=v2), "entry 2 does not match the checksum of entry 1"),
        "an edited last entry": (lambda: edited(files[2], why="nothing to see"), "is not the one the head tag"),
        "a removed last entry": (lambda: files[2].unlink(), "is not the one the head tag"),
        "an edited head (UI)": (lambda: client.set_registered_model_tag(name, registry.HEAD_TAG, "3 0"),
                                "is not the one the head tag"),
        "a removed head (UI)": (lambda: client.delete_registered_model_tag(name, registry.HEAD_TAG), "was removed"),
    }
    for what, (tamper, expected) in cases.items():
        tamper()
        problem = registry.tampered(client, name)
        assert problem and expected in problem and "\n" not in problem and "(fix: " in problem, (what, problem)
        for f, data in originals.items():
            f.write_bytes(data)
        client.set_registered_model_tag(name, registry.HEAD_TAG, tags[registry.HEAD_TAG])
    assert registry.tampered(client, name) is None


def test_an_append_killed_before_the_head_moved_is_not_tampering(store):
    client, name = store.client, store.name
    v1, v2 = _version(store), _version(store)
    registry.move_alias(client, name, registry.CHAMPION, v1, "gate passed")
    head = client.get_registered_model(name).tags[registry.HEAD_TAG]
    registry.move_alias(client, name, registry.CHAMPION, v2, "gate passed")
    client.set_registered_model_tag(name, registry.HEAD_TAG, head)  # entry 2 written, head not moved yet
    assert registry.tampered(client, name) is None and _champion_log(store) == [v1, v2]
    assert registry.reconcile(client, name) == []
    assert client.get_registered_model(name).tags[registry.HEAD_TAG].startswith("2 ")


def test_a_log_kept_in_tags_moves_into_the_chain(store):
    """Registries written before the log moved out of registered-model tags keep their history."""
    client, name = store.client, store.name
    v1, v2 = _version(store), _version(store)
    client.set_registered_model_alias(name, registry.CHAMPION, v1)
    old = {"alias": registry.CHAMPION, "version": v1, "previous": None, "by": "bob",
           "at": "2026-11-01T00:00:00+00:00", "why": "gate passed"}
    client.set_registered_model_tag(name, f"{registry.LOG_PREFIX}000001", json.dumps(old))
    assert _champion_log(store) == [v1] and registry.tampered(client, name) is None
    registry.move_alias(client, name, registry.CHAMPION, v2, "gate passed")
    log = registry.read_log(client, name)
    assert log.problem is None and not log.legacy and [(e.seq, e.by) for e in log.events][0] == (1, "bob")
    assert _champion_log(store) == [v1, v2] and len(_log_files(store)) == 2
    assert not [k for k in client.get_registered_model(name).tags if k.startswith(registry.LOG_PREFIX)]


def test_a_version_registered_before_its_bundle_tag_still_downloads(store, tmp_path):
    """Older versions have the bundle as their source; newer ones a LoggedModel and the tag."""
    from pathlib import Path

    client, name = store.client, store.name
    old_bundle = tmp_path / "old-bundle"
    old_bundle.mkdir()
    (old_bundle / "manifest.json").write_text("{}")
    run = client.create_run(store.exp)
    old = client.create_model_version(name, str(old_bundle), run_id=run.info.run_id)
    assert registry.bundle_uri(old) == str(old_bundle)
    folder = registry.download(client, name, old.version, str(tmp_path / "got"))
    assert (Path(folder) / "manifest.json").read_text() == "{}"
