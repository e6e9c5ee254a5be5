"""The portable-runner path (the one Flink, Spark and Dataflow take): Beam's ``PortableRunner``
submits the example's real ingest and feature build to a local job service, whose SDK workers
run in other processes, started by an external worker pool. The lake and offline tables end equal
to the in-process runner's (the shared nightly's)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MILLRACE, ROOT, cli_env
from tests.pipelines.tables import assert_same_contents, committed_contents


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {seconds} s: {log.read_text()}")


@pytest.fixture
def job_service_and_workers(tmp_path):
    """A Beam job service and an external worker pool, each its own process. The pool starts
    each SDK worker as `python -c ...` from PATH: this interpreter's folder goes first, as a
    worker image's Python would have millrace installed."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    services, ports = [], {}
    for name, module, flag in (("jobs", "apache_beam.runners.portability.local_job_service_main", "--port"),
                               ("workers", "apache_beam.runners.worker.worker_pool_main", "--service_port")):
        ports[name] = _free_port()
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", module, f"{flag}={ports[name]}"], env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        services.append((proc, log))
        _wait_for_port(ports[name], proc, log)
    yield ports, tmp_path / "workers.log"
    for proc, _ in services:
        proc.terminate()
        proc.wait(timeout=30)


def test_ingest_and_feature_build_through_the_portable_runner_match_the_in_process_runner(
        nightly_run, job_service_and_workers, tmp_path):
    ports, worker_log = job_service_and_workers
    state = tmp_path / "state"
    portable = ["--runner=PortableRunner", f"--job_endpoint=localhost:{ports['jobs']}",
                "--environment_type=EXTERNAL", f"--environment_config=localhost:{ports['workers']}"]
    proc = subprocess.run(MILLRACE + ["nightly", "--stages", "ingest,features", *portable], capture_output=True,
                          text=True, env=cli_env(state), timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert worker_log.read_text().count("Starting worker with command") >= 2  # a worker per pipeline, elsewhere

    example = ROOT / "examples" / "movielens"
    assert_same_contents(committed_contents(example, state), committed_contents(example, nightly_run.state))
