"""`millrace models ...` and `millrace train --force` in process, on a registry built by hand
(no training): champion at a date, rollback, reconciliation before any answer."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from millrace.contracts.project import load_project
from millrace.training import registry
from millrace.training.errors import NothingToRollBackTo
from tests.training.conftest import TINY_MODELS
from tests.training.test_registry import leave_intent


@pytest.fixture
def cli(project_dir, monkeypatch):
    from millrace.pipelines.cli import app

    monkeypatch.setenv("MILLRACE_USER", "tester")
    (project_dir / "models.yaml").write_text(yaml.safe_dump(TINY_MODELS))
    project = load_project(project_dir)
    client = registry.connect(project)
    name = registry.registered_name(project, "likes")
    registry.ensure_registered(client, name)
    exp = registry.experiment_id(client, project, "likes")

    def version(gate: str, auc: float) -> str:
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "auc", auc)
        client.set_terminated(run.info.run_id, "FINISHED")
        v = str(client.create_model_version(name, str(project_dir), run_id=run.info.run_id,
                                            tags={registry.GATE_TAG: gate}).version)
        registry.move_alias(client, name, registry.CHALLENGER, v, "registered")
        return v

    def invoke(*args):
        return CliRunner().invoke(app, ["--project", str(project_dir), *args])

    return client, name, version, invoke


def test_show_at_never_names_a_version_that_failed_its_gate(cli):
    client, name, version, invoke = cli
    v1 = version("passed", 0.7)
    registry.move_alias(client, name, registry.CHAMPION, v1, "gate passed")
    version("failed", 0.6)  # registered, challenger, never champion
    out = invoke("models", "show", "likes", "--at", "2999-01-01")
    assert out.exit_code == 0 and out.stdout.strip().endswith(f": {v1}"), out.stdout


def test_rollback_goes_where_the_registry_says(cli):
    client, name, version, invoke = cli
    v1 = version("passed", 0.7)
    registry.move_alias(client, name, registry.CHAMPION, v1, "gate passed")
    out = invoke("models", "rollback", "likes", "--reason", "x")
    assert isinstance(out.exception, NothingToRollBackTo) and "no earlier champion" in str(out.exception)
    v2 = version("passed", 0.8)
    registry.move_alias(client, name, registry.CHAMPION, v2, "gate passed")
    out = invoke("models", "rollback", "likes", "--reason", "bad release")
    assert out.exit_code == 0 and f"champion v{v2} -> v{v1}" in out.stdout
    assert registry.history(client, name)[-1].why == "rollback: bad release"


def test_models_commands_reconcile_an_interrupted_move_first(cli):
    client, name, version, invoke = cli
    v1, v2 = version("passed", 0.7), version("passed", 0.8)
    registry.move_alias(client, name, registry.CHAMPION, v1, "gate passed")
    leave_intent(client, name, v2, v1, "gate passed: y")
    client.set_registered_model_alias(name, registry.CHAMPION, v2)  # then the process was killed
    out = invoke("models", "show", "likes", "--at", "2999-01-01")
    assert out.stdout.strip().endswith(f": {v2}"), out.stdout


def test_train_has_force():
    from millrace.pipelines.cli import app

    out = CliRunner().invoke(app, ["train", "--help"])
    assert out.exit_code == 0 and "--force" in out.stdout and "re-scored" in out.stdout


def test_show_reports_an_altered_history_in_one_line(cli, project_dir):
    import json
    from pathlib import Path

    client, name, version, invoke = cli
    v1, v2 = version("passed", 0.7), version("passed", 0.8)
    for v in (v1, v2):
        registry.move_alias(client, name, registry.CHAMPION, v, "gate passed")
    location = Path(client.get_experiment_by_name(name).artifact_location) / registry.LOG_FOLDER
    entries = {f: json.loads(f.read_text()) for f in sorted(location.glob("*.json"))}
    first, entry = next((f, e) for f, e in entries.items() if e["alias"] == registry.CHAMPION)
    first.write_text(json.dumps({**entry, "at": "2000-01-01T00:00:00+00:00"}, sort_keys=True))  # backdated
    out = invoke("models", "show", "likes", "--at", "2001-01-01")
    assert out.exit_code == 1 and out.stdout.strip().endswith(f": {v1}"), out.stdout  # still answers
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "alias history of movielens.likes was altered" in lines[0], lines
    assert f"entry {entry['seq'] + 1} does not match the checksum of entry {entry['seq']}" in lines[0]
