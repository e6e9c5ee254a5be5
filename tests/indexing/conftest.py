"""A tiny project with its two_tower model trained once (v1), for index and release tests: the
training tests' synthetic project (tests/training/conftest.py), its state copied per test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.training.conftest import Tiny, TINY_MODELS, build_offline, synthetic  # noqa: F401


@pytest.fixture(scope="session")
def trained_tiny_state(tmp_path_factory) -> tuple[Path, Path]:
    """(project folder, state folder) of a tiny project whose ``retrieval`` and ``likes`` are
    trained once per session (each champion v1), and ``stars``. Read it; ``indexed_tiny`` copies it for a test."""
    import os

    import yaml

    from tests.conftest import EXAMPLE

    root = tmp_path_factory.mktemp("indexing-tiny")
    project, state = root / "project", root / "state"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".millrace"))
    (project / "models.yaml").write_text(yaml.safe_dump(TINY_MODELS))
    old = {k: os.environ.get(k) for k in ("MILLRACE_STATE_DIR", "MILLRACE_USER")}
    os.environ.update(MILLRACE_STATE_DIR=str(state), MILLRACE_USER="tester")
    try:
        ratings, movies = synthetic()
        tiny = Tiny(project, ratings, movies)
        build_offline(tiny.project, tiny.features, ratings, movies)
        for name in ("retrieval", "likes", "stars"):
            tiny.train(name)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return project, state


@pytest.fixture
def tiny_trained(trained_tiny_state, tmp_path, monkeypatch) -> Tiny:
    """A private copy of the trained tiny project (MLflow database and artifacts included)."""
    project, state = trained_tiny_state
    shutil.copytree(project, tmp_path / "project")
    shutil.copytree(state, tmp_path / "state")
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MILLRACE_USER", "tester")
    ratings, movies = synthetic()
    return Tiny(tmp_path / "project", ratings, movies)
