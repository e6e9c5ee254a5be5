"""Shared fixtures. Service-backed tests skip with a visible reason when the service is
absent, except under CI (CI=true), where absence is a failure."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "movielens"
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A copy of the example project with its state in the test's temp folder."""
    target = tmp_path / "project"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".millrace"))
    return target


@pytest.fixture(autouse=True)
def _isolated_state(monkeypatch, tmp_path):
    """No test may touch a developer's real state folder."""
    from millrace.contracts.project import ENV_VARS

    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(tmp_path / "state"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
