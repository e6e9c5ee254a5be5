"""A served release of the tiny trained project (tests/indexing/conftest.py): its retrieval model
indexed and released, the server started in its own process on a free port."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.indexing.conftest import tiny_trained, trained_tiny_state  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    project: Path
    state: Path
    release: str
    address: str
    proc: subprocess.Popen
    ready_seconds: float


def start_server(project: Path, state: Path, *extra: str, timeout: float = 60) -> tuple[subprocess.Popen, str, float]:
    """``python -m millrace.serving`` on a free port; returns the process, its address and the
    seconds it took to say it is ready (from the process start)."""
    env = {**os.environ, "MILLRACE_STATE_DIR": str(state)}
    env.pop("MILLRACE_KILL_AT", None)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "millrace.serving", "--project", str(project), "--port", "0",
                             "--metrics-port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    if " on 127.0.0.1:" not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line}{proc.stderr.read()}")
    proc.ready_line = line  # metrics_url(proc.ready_line): where its metrics are
    return proc, address_of(line), time.perf_counter() - started


def address_of(line: str) -> str:
    """HOST:PORT of the server's ready line ("serving release ... on HOST:PORT, ready in ...")."""
    return re.search(r" on (\S+:\d+), ready", line).group(1)


def metrics_url(line: str) -> str:
    """The Prometheus URL the ready line names ("; metrics on :PORT/metrics")."""
    return "http://127.0.0.1" + re.search(r"metrics on (:\d+/metrics)", line).group(1)


def release_tiny(t) -> str:
    """Index the tiny project's retrieval model and release its champions; the release id."""
    from millrace.pipelines import index, release

    index.index_model(t.project, t.features, t.models(), "retrieval", t.ratings, "timestamp")
    return release.create(t.project).id


def configure(project: Path, serving: dict) -> None:
    """Add a ``serving:`` block to the project's millrace.yaml (read by the server at start)."""
    import yaml

    path = project / "millrace.yaml"
    config = yaml.safe_load(path.read_text())
    config["serving"] = {**config.get("serving", {}), **serving}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def materialize_tiny(t) -> None:
    """Fill the tiny project's online store with each view's newest rows, written by the writer
    materialization uses (without Feast's registry, which these tests do not need)."""
    import datetime as dt

    from millrace.features import offline
    from millrace.features.materialize import latest_per_key
    from millrace.features.online_write import OnlineWriter

    writer = OnlineWriter(t.project, t.features)
    try:
        for name, view in t.features.views.items():
            if view.online:
                writer.ensure(name)
                latest = latest_per_key(offline.read_view(t.project.offline, name), t.features.join_keys(name),
                                        dt.datetime.now(dt.timezone.utc))
                writer.write(name, latest)
    finally:
        writer.close()


@pytest.fixture
def served(tiny_trained):  # noqa: F811
    t = tiny_trained
    made = release_tiny(t)
    state = Path(os.environ["MILLRACE_STATE_DIR"])
    proc, address, seconds = start_server(t.root, state)
    yield Served(t.root, state, made, address, proc, seconds)
    proc.terminate()
    proc.wait(timeout=30)


def stock_client(address: str, *steps: dict, timeout: float = 120) -> list:
    """Run ``steps`` with tritonclient.grpc in another process (tests/serving/stock_client.py):
    stock clients carry their own copy of the protocol's messages, which cannot share a process
    with the server's."""
    import json

    proc = subprocess.run([sys.executable, "-m", "tests.serving.stock_client", address], input=json.dumps(list(steps)),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)
