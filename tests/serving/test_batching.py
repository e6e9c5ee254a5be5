"""The dynamic batcher with a model that records its calls: a lone request runs at once in its
caller; requests arriving while the model runs share the next run and each gets its own rows back; a full queue refuses at once; work past a deadline is dropped, not
done; requests of different shapes are run apart; a failing run fails every caller of its batch."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from millrace.serving.batching import Batcher
from millrace.serving.errors import DeadlineExceeded, Overloaded


class Recorder:
    """Doubles its input, taking ``seconds`` a run; ``gate`` holds a run until the test lets it go."""

    def __init__(self, gate: threading.Event | None = None, seconds: float = 0.0):
        self.calls: list[int] = []
        self.gate, self.seconds = gate, seconds

    def __call__(self, feed):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.seconds)
        self.calls.append(len(feed["x"]))
        return {"y": feed["x"] * 2, "n": np.full(len(feed["x"]), len(feed["x"]))}


def test_concurrent_requests_share_a_run_and_get_their_own_rows():
    model = Recorder(seconds=0.05)  # requests arriving while it runs queue up for the next run
    batcher = Batcher("m", model, max_batch_size=64)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: batcher.infer({"x": np.array([[i, i + 0.5]], np.float32)}), range(8)))
    finally:
        batcher.close()
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["y"], [[2 * i, 2 * i + 1]])
    assert sum(model.calls) == 8 and len(model.calls) < 8  # fewer runs than requests
    assert max(a["n"][0] for a in answers) > 1


def test_a_batch_never_exceeds_the_maximum():
    model = Recorder(seconds=0.02)
    batcher = Batcher("m", model, max_batch_size=4, max_queue_delay_ms=50)
    try:
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda i: batcher.infer({"x": np.array([[i]], np.float32)}), range(10)))
    finally:
        batcher.close()
    assert sum(model.calls) == 10 and max(model.calls) <= 4


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()
    model = Recorder(gate)
    batcher = Batcher("m", model, max_batch_size=1, max_queue=2)
    pool = ThreadPoolExecutor(3)
    try:
        running = pool.submit(batcher.infer, {"x": np.ones((1, 1), np.float32)})  # held inside the model
        time.sleep(0.1)
        queued = [pool.submit(batcher.infer, {"x": np.ones((1, 1), np.float32)}) for _ in range(2)]
        time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(Overloaded, match="max_queue"):
            batcher.infer({"x": np.ones((1, 1), np.float32)})
        assert time.monotonic() - started < 0.5
        gate.set()
        for future in [running, *queued]:
            np.testing.assert_array_equal(future.result(10)["y"], [[2]])
    finally:
        gate.set()
        pool.shutdown()
        batcher.close()


def test_work_past_its_deadline_is_dropped_not_done():
    gate = threading.Event()
    model = Recorder(gate)
    batcher = Batcher("m", model, max_batch_size=1)
    pool = ThreadPoolExecutor(2)
    try:
        first = pool.submit(batcher.infer, {"x": np.ones((1, 1), np.float32)})  # occupies the model
        time.sleep(0.1)
        with pytest.raises(DeadlineExceeded):
            batcher.infer({"x": np.full((1, 1), 7, np.float32)}, deadline=time.monotonic() + 0.1)
        gate.set()
        first.result(10)
        later = batcher.infer({"x": np.full((1, 1), 3, np.float32)})
        np.testing.assert_array_equal(later["y"], [[6]])
    finally:
        gate.set()
        pool.shutdown()
        batcher.close()
    assert model.calls == [1, 1]  # the expired request never ran


def test_requests_of_different_shapes_run_apart():
    model = Recorder(seconds=0.02)
    batcher = Batcher("m", model, max_batch_size=64, max_queue_delay_ms=100)
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda w: batcher.infer({"x": np.ones((1, w), np.float32)}), [2, 3, 2, 3]))
    finally:
        batcher.close()
    assert [a["y"].shape for a in answers] == [(1, 2), (1, 3), (1, 2), (1, 3)]
    assert sum(model.calls) == 4


def test_a_failing_run_fails_every_caller_of_its_batch():
    def broken(feed):
        raise RuntimeError("model exploded")

    batcher = Batcher("m", broken, max_batch_size=8, max_queue_delay_ms=50)
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(batcher.infer, {"x": np.ones((1, 1), np.float32)}) for _ in range(3)]
            for future in futures:
                with pytest.raises(RuntimeError, match="exploded"):
                    future.result(10)
    finally:
        batcher.close()


def test_a_lone_request_runs_in_its_callers_thread():
    threads = []
    batcher = Batcher("m", lambda feed: threads.append(threading.current_thread()) or {"y": feed["x"]})
    try:
        batcher.infer({"x": np.ones((1, 1), np.float32)})
    finally:
        batcher.close()
    assert threads == [threading.current_thread()]
