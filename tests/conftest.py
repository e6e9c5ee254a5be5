"""Shared fixtures. Service-backed tests skip with a visible reason when the service is
absent, except under CI (CI=true), where absence is a failure.

``nightly_run`` is the ONE ``millrace nightly`` of the bundled example per test session; every
end-to-end test that needs a nightly's result reads it (``nightly_run.state``) and never writes it.
A test that changes state works on its own copy (``nightly_copy``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "movielens"
GOLDEN = Path(__file__).resolve().parent / "golden"
MILLRACE = [sys.executable, "-m", "millrace.pipelines.cli"]
NIGHTLY_TIMEOUT = 1500  # seconds; measured here: 792 s on 2 cores under a load average of 7-10


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A copy of the example project with its state in the test's temp folder."""
    target = tmp_path / "project"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".millrace"))
    return target


@pytest.fixture(autouse=True)
def _isolated_state(monkeypatch, tmp_path):
    """No test may touch a developer's real state folder (nor their user data folder)."""
    for var in _env_vars():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MILLRACE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _env_vars() -> tuple[str, ...]:
    from millrace.contracts.project import ENV_VARS

    return ENV_VARS


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


REDIS_URL = os.environ.get("MILLRACE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def unavailable(service: str, url: str, exc: Exception):
    """A service a test needs does not answer: skip, saying why, but fail under CI."""
    message = f"{service} not reachable at {url}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis as a URL with a db number; skip (fail under CI) when it does not answer."""
    from urllib.parse import urlparse

    import redis

    url = REDIS_URL if urlparse(REDIS_URL).path.strip("/") else REDIS_URL.rstrip("/") + "/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        unavailable("Redis", url, exc)
    return url


def cli_env(state: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: none of the developer's MILLRACE_* settings, this state."""
    env = {k: v for k, v in os.environ.items() if k not in _env_vars()}
    env.update(MILLRACE_STATE_DIR=str(state), COLUMNS="120", **extra)
    return env


@dataclass(frozen=True)
class NightlyRun:
    state: Path       # the state folder of the run: read it, never write it (see nightly_copy)
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="session")
def nightly_run(tmp_path_factory) -> NightlyRun:
    """`millrace nightly` on the bundled example (the README's main command: it lands the example
    itself), once per session, its state in a temp folder so the example folder is not written."""
    state = tmp_path_factory.mktemp("nightly") / "state"
    started = time.perf_counter()
    proc = subprocess.run(MILLRACE + ["nightly"], capture_output=True, text=True, env=cli_env(state),
                          timeout=NIGHTLY_TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return NightlyRun(state, proc.stdout, proc.stderr, time.perf_counter() - started)


@dataclass(frozen=True)
class NightlyCopy:
    state: Path            # a private copy of the nightly's state folder, but its landing zone
    env: dict[str, str]    # MILLRACE_LANDING_URI: the nightly's own landing zone (manifests name its paths)


@pytest.fixture
def nightly_copy(nightly_run, tmp_path) -> NightlyCopy:
    """The shared nightly's state for a test that changes it: the lake, quarantine, offline and
    online stores, Feast and MLflow files copied; the landing zone shared, since runs only read it
    and the lake's manifests record its absolute paths (a copied landing zone is a changed one)."""
    target = tmp_path / "nightly-state"
    shutil.copytree(nightly_run.state, target, symlinks=True, ignore=_top_level("landing", nightly_run.state))
    return NightlyCopy(target, {"MILLRACE_LANDING_URI": str(nightly_run.state / "landing")})


def _top_level(name: str, root: Path):
    return lambda folder, names: [name] if Path(folder) == root and name in names else []


def pytest_collection_modifyitems(items):
    """A test that uses the shared nightly is end to end: it is `slow`, and the first one to ask for
    the nightly also pays for it, so its time limit covers the nightly's."""
    for item in items:
        if "nightly_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.timeout(NIGHTLY_TIMEOUT + 600))
