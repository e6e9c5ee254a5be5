"""`millrace serve` on the example's nightly release, as a user starts it: ready, answering the
stock client, stopped by SIGTERM with exit 0; an unknown release is one line and exit 2."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.conftest import MILLRACE, ROOT, cli_env
from tests.serving.conftest import address_of, stock_client

pytestmark = pytest.mark.slow


def test_serve_the_nightly_release(nightly_run):
    started = time.perf_counter()
    proc = subprocess.Popen(MILLRACE + ["serve", "--port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(nightly_run.state), cwd=ROOT)
    try:
        line = proc.stdout.readline()
        seconds = time.perf_counter() - started
        assert "serving release r0001-" in line and "will_like" in line, line + proc.stderr.read()
        address = address_of(line)
        health, meta = stock_client(address, {"do": "health"},
                                    {"do": "metadata", "model": "movie_retrieval.item_encoder"})
        assert health["ready"] and meta["versions"] == ["1"]
        assert meta["outputs"][0]["shape"] == ["-1", "64"]
        assert seconds < 20, seconds  # the CLI and the server started in turn; the figure is in the notes
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_an_unknown_release_is_one_line(nightly_run):
    proc = subprocess.run(MILLRACE + ["serve", "--port", "0", "--release", "r0042"], capture_output=True, text=True,
                          env=cli_env(nightly_run.state), cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no release 'r0042'" in lines[0] and "fix" in lines[0], proc.stderr
