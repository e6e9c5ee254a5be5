"""What scripts rely on: --version, --json with the same data as the table, shell completion, one
line for a bad argument, a non-zero exit for an unknown entity, and no wrapping when piped."""
from __future__ import annotations

import json
import subprocess

import pytest

from millrace.contracts.project import load_project
from millrace.pipelines import lake
from tests.conftest import EXAMPLE, MILLRACE
from tests.pipelines.test_cli import run


def test_version_and_completion(tmp_path):
    from importlib.metadata import version

    out = run(["--version"], tmp_path).stdout
    assert out.strip() == f"millrace {version('millrace')}"
    script = run(["--show-completion", "bash"], tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1").stdout
    assert "_millrace_completion" in script and "complete " in script


def test_piped_output_is_not_wrapped(monkeypatch, capsys):
    from millrace.pipelines.cli import common

    monkeypatch.delenv("COLUMNS", raising=False)
    line = "partition " * 40
    common.console().print(line)
    assert capsys.readouterr().out == line + "\n"  # one line, as printed
    monkeypatch.setenv("COLUMNS", "60")
    common.console().print(line)
    assert len(capsys.readouterr().out.splitlines()) > 1  # COLUMNS set: the width asked for


@pytest.mark.slow
def test_json_output_is_the_tables_data(nightly_run):
    state = nightly_run.state
    listed = json.loads(run(["lake", "ls", "--source", "ratings", "--json"], state).stdout)
    project = load_project(EXAMPLE)
    parts = lake.committed_partitions(str(state / "lake"), "ratings", "month")
    assert [p["value"] for p in listed["partitions"]] == [p.value for p in parts]
    assert listed["rows"] == sum(p.manifest.rows for p in parts) and project.name == "movielens"
    assert listed["partitions"][0]["quarantine"]["rows"] == parts[0].manifest.quarantine.rows
    quarantined = json.loads(run(["lake", "quarantine", "--source", "ratings", "--limit", "3", "--json"], state).stdout)
    assert len(quarantined["rows"]) == 3 and {"reason", "line", "payload"} <= set(quarantined["rows"][0])
    got = json.loads(run(["features", "get", "user_activity", "1", "--json"], state).stdout)
    assert got[0]["userId"] == 1 and got[0]["rating_count_all"] == 20 and got[0]["_status"] == "found"
    linted = json.loads(run(["contracts", "lint", str(EXAMPLE / "contracts" / "ratings.yaml"), "--json"], state).stdout)
    assert linted == [{"path": str(EXAMPLE / "contracts" / "ratings.yaml"), "ok": True, "id": "urn:millrace:movielens:ratings",
                       "version": linted[0]["version"], "fields": 4, "key": ["userId", "movieId"], "warnings": []}]


@pytest.mark.slow
def test_models_json(nightly_run):
    state = nightly_run.state
    listed = {m["model"]: m for m in json.loads(run(["models", "list", "--json"], state).stdout)}
    assert set(listed) == {"movie_retrieval", "will_like"}
    assert listed["will_like"]["champion"] == "1" and listed["will_like"]["primary"] == "auc"
    shown = json.loads(run(["models", "show", "will_like", "--json"], state).stdout)
    assert shown["version"] == "1" and "champion" in shown["aliases"] and shown["metrics"]["auc"] > 0.6
    assert shown["mlflow_model"].startswith("models:/")
    assert {e["alias"] for e in shown["alias_history"]} == {"challenger", "champion"}  # v1 was both


@pytest.mark.slow
def test_unknown_entities_and_bad_keys(nightly_run):
    state = nightly_run.state
    proc = run(["features", "get", "user_activity", "1", "99999999"], state, check=False)
    assert proc.returncode == 1
    assert proc.stdout.count("{") == 1 and "'userId': 1" in proc.stdout  # the known one is printed
    assert proc.stderr.strip() == ("error: user_activity: 99999999: not in the online store (unknown, or not "
                                   "materialized yet)")
    proc = run(["features", "get", "user_activity", "abc"], state, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "not all are int64" in proc.stderr


def test_json_goes_alone_on_stdout_when_progress_is_drawn(tmp_path):
    """--json keeps stdout one JSON document even where a command draws progress (to stderr)."""
    proc = subprocess.run(MILLRACE + ["contracts", "lint", str(EXAMPLE / "contracts" / "movies.yaml"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["ok"] is True
