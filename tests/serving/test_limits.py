"""The server's limits end to end, with the stock client (tritonclient.grpc) in another process: a message
over ``max_message_bytes``, backpressure from a full batching queue, client deadlines (the expired work is
dropped, not run), dynamic batching that never mixes answers up, parallel runs of one model, graceful
drain on SIGTERM, and malformed requests each refused with a status and a message naming the input.

One server per configuration, each on its own copy of the project file (its ``serving:`` block written
before the start); they share one released copy of the tiny trained project."""
from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from millrace.indexing import release as releases
from tests.serving.conftest import configure, metrics_url, release_tiny, start_server, stock_client

pytestmark = pytest.mark.slow
MODEL = "stars"  # the tiny project's regression model: an FP32 input and a BYTES list input
ROWS = 3
GENRES = ("Action", "Drama", "Comedy", "Horror", "Romance", "")


# ---- the served release and its servers (shared with test_auth_tls.py)


@dataclass(frozen=True)
class Released:
    project: Path
    state: Path
    release: str


@dataclass
class Server:
    """A running ``python -m millrace.serving``; its stderr is read as it comes (a full pipe would stall it)."""

    proc: subprocess.Popen
    address: str
    project: Path
    _stderr: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._reader = threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of the server's Prometheus metrics, by (name, sorted labels)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(metrics_url(self.proc.ready_line), timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def metric(self, name: str, **labels) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def requests(self, model: str, status: str) -> float:
        """``millrace_serving_requests_total`` of ``model`` with ``status``, whatever its version label."""
        return sum(value for (name, labels), value in self.metrics().items()
                   if name == "millrace_serving_requests_total" and ("model", model) in labels
                   and ("status", status) in labels)

    def stop(self) -> str:
        """SIGTERM, wait for the exit; everything the server wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.stderr()

    def stderr(self) -> str:
        if self.proc.poll() is not None:
            self._reader.join(timeout=10)
        return "".join(self._stderr)


def released_copy(trained_tiny_state, tmp_path_factory) -> Released:
    """A private copy of the trained tiny project with its retrieval model indexed and a release made."""
    from tests.training.conftest import Tiny, synthetic

    project, state = trained_tiny_state
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(project, root / "project")
    shutil.copytree(state, root / "state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MILLRACE_STATE_DIR", str(root / "state"))
        mp.setenv("MILLRACE_USER", "tester")
        ratings, movies = synthetic()
        made = release_tiny(Tiny(root / "project", ratings, movies))
    return Released(root / "project", root / "state", made)


def serve(released: Released, folder: Path, serving: dict, *extra: str, env: dict | None = None,
          files: dict | None = None) -> Server:
    """A server of ``released`` whose millrace.yaml has the ``serving:`` block ``serving``; the project
    file is copied to ``folder`` first (with ``files``: name -> text beside it), ``env`` added to its environment."""
    shutil.copytree(released.project, folder)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    configure(folder, serving)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        proc, address, _ = start_server(folder, released.state, *extra)
    return Server(proc, address, folder)


@pytest.fixture(scope="module")
def released(trained_tiny_state, tmp_path_factory) -> Released:
    return released_copy(trained_tiny_state, tmp_path_factory)


@pytest.fixture(scope="module")
def server_of(released, tmp_path_factory):
    """``server_of(serving, *extra)``: a server started for this module, stopped at its end."""
    started: list[Server] = []

    def make(serving: dict, *extra: str, **kwargs) -> Server:
        server = serve(released, tmp_path_factory.mktemp("project") / "project", serving, *extra, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# ---- requests


def model_part(released: Released, name: str = MODEL):
    """The bundle part (its inputs' kinds and statistics) behind the served model ``name``."""
    checked = releases.verify(releases.release_root(str(released.state)))
    bundle, _, part = name.partition(".")
    _, manifest = checked.bundles[bundle]
    return manifest.parts[part] if part else next(iter(manifest.parts.values()))


def inputs_for(part, rows: int = ROWS, seed: int = 0) -> dict[str, tuple[str, list]]:
    """Plausible inputs for every input of a bundle part: name -> (protocol datatype, nested values)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in part.inputs:
        if i.kind == "numeric":
            out[i.name] = ("FP32", rng.normal(i.mean, i.std or 1, rows).astype(np.float32).tolist())
        elif i.kind == "categorical":
            out[i.name] = ("INT64", rng.integers(1, 40, rows).tolist()) if i.dtype == "int64" else \
                ("BYTES", [f"Movie {n}" for n in rng.integers(1, 40, rows)])
        elif i.dtype == "int64":
            out[i.name] = ("INT64", rng.integers(1, 60, (rows, 4)).tolist())
        else:
            out[i.name] = ("BYTES", [[str(g) for g in rng.choice(GENRES, 3)] for _ in range(rows)])
    return out


def infer(inputs, model: str = MODEL, **options) -> dict:
    return {"do": "infer", "model": model, "inputs": inputs, **options}


def first_output(answer: dict) -> np.ndarray:
    assert "error" not in answer, answer
    (values, shape), = answer["outputs"].values()
    return np.array(values, np.float32).reshape(shape)


def code(answer) -> str:
    return answer["error"] if isinstance(answer, dict) and "error" in answer else "OK"


def _input_of(part, datatype: str) -> str:
    names = [n for n, (t, _) in inputs_for(part).items() if t == datatype]
    assert names, f"{MODEL} has no {datatype} input"
    return names[0]


# ---- message size and malformed requests: one server with a 64 KiB limit


@pytest.fixture(scope="module")
def small_messages(server_of) -> Server:
    return server_of({"max_message_bytes": 65536})


def test_a_message_over_max_message_bytes_is_resource_exhausted_and_the_server_still_answers(released,
                                                                                           small_messages):
    part = model_part(released)
    good = inputs_for(part)
    fp32 = _input_of(part, "FP32")
    big = {**good, fp32: ("FP32", np.zeros(20_000, np.float32).tolist())}  # 80 kB of raw input
    assert len(np.zeros(20_000, np.float32).tobytes()) > 65536
    oversized, normal = stock_client(small_messages.address, infer(big), infer(good))
    assert code(oversized) == "StatusCode.RESOURCE_EXHAUSTED", oversized
    assert "65536" in oversized["message"]  # gRPC's own refusal names the limit
    assert first_output(normal).shape[0] == ROWS


def test_malformed_requests_are_refused_with_a_message_naming_the_input(released, small_messages):
    part = model_part(released)
    good = inputs_for(part)
    fp32, text = _input_of(part, "FP32"), _input_of(part, "BYTES")
    shaped = {n: (t, v, list(np.array(v, dtype=object).shape)) for n, (t, v) in good.items()}
    emptied = {n: (t, [], s) for n, (t, v, s) in shaped.items()}

    def raw(fp32_bytes: bytes, text_bytes: bytes) -> list[str]:  # one raw content per input, in order
        return [base64.b64encode(fp32_bytes if n == fp32 else text_bytes).decode() for n in shaped]

    floats = np.zeros(ROWS, np.float32).tobytes()
    elements = int(np.prod(shaped[text][2]))
    cut_prefix = b"".join(struct.pack("<I", 1) + b"a" for _ in range(elements - 1)) + b"\x01\x00"
    not_utf8 = b"".join(struct.pack("<I", 1) + b"\xff" for _ in range(elements))
    answers = stock_client(
        small_messages.address,
        infer(good, version="2"),
        infer({**good, fp32: ("BYTES", ["1.0", "2.0", "3.0"])}),
        infer({**good, "no_such_input": ("FP32", [1.0, 2.0, 3.0])}),
        infer(good, outputs=["no_such_output"]),
        {"do": "infer_typed", "model": MODEL, "inputs": emptied, "raw": raw(floats, cut_prefix)},
        {"do": "infer_typed", "model": MODEL, "inputs": emptied, "raw": raw(floats, not_utf8)},
        {"do": "infer_typed", "model": MODEL, "inputs": {**shaped, fp32: ("FP32", [], [-3])}},
        infer(good))
    codes = [code(a) for a in answers]
    assert codes == ["StatusCode.NOT_FOUND"] + ["StatusCode.INVALID_ARGUMENT"] * 6 + ["OK"], answers
    messages = [a["message"] for a in answers[:-1]]
    assert f"model '{MODEL}' has no version '2'" in messages[0] and "serves version 1" in messages[0]
    assert f"input '{fp32}': datatype BYTES, the model takes FP32" in messages[1]
    assert "no input 'no_such_input'" in messages[2] and fp32 in messages[2]
    assert "no output 'no_such_output'" in messages[3]
    assert f"input '{text}': raw BYTES content ends inside a length prefix" in messages[4]
    assert f"input '{text}': a BYTES element is not UTF-8 text" in messages[5]
    assert f"input '{fp32}': shape [-3] has a negative dimension" in messages[6]
    assert all("\n" not in m and "Traceback" not in m for m in messages)


def test_request_metrics_are_labelled_with_the_version_served(small_messages, released):
    # metrics.py: label values come from what the server serves, never from a caller's text. A stock
    # client names no version (model_version ""), yet the answer is version 1's and is counted as such.
    good = inputs_for(model_part(released))
    before = small_messages.metric("millrace_serving_requests_total", model=MODEL, version="1", status="OK")
    answers = stock_client(small_messages.address, infer(good), infer(good, version="1"))
    assert [a["version"] for a in answers] == ["1", "1"]
    samples = small_messages.metrics()
    assert samples.get(("millrace_serving_requests_total",
                        (("model", MODEL), ("status", "OK"), ("version", "1")))) == before + 2
    assert not [key for key in samples if ("version", "") in key[1]], "a series labelled with no version"


# ---- calls that wait in the queue
#
# A lone request may run at once (the model idle, nothing queued); requests that arrive while the model
# runs wait in its queue for the next run. To have calls queued whatever the machine's load, two long
# calls are sent together (millions of rows of zeros with the list input empty: gzip makes them a few kB
# on the wire, and cheap to decode; about half a second each to run here): when the first is answered
# the second is running or about to, and the calls meant to wait are sent then (``after_any``), in a
# window of one whole model run.

LONG_ROWS = 4_000_000
BIG_MESSAGES = 64 << 20  # room for a long call (16 MB each way)
LONG = [0, 1]  # the long calls' indexes in a concurrent step; the calls sent behind them follow


def long_call(part, rows: int = LONG_ROWS) -> dict:
    inputs = {name: (datatype, {"zeros": [rows] + [0] * (np.array(value, dtype=object).ndim - 1)})
              for name, (datatype, value) in inputs_for(part).items()}
    return infer(inputs, shapes_only=True, timeout=60, compress="gzip")  # zeros: a few kB on the wire


def behind_long_calls(part, *calls: dict) -> dict:
    """A concurrent step: the two long calls, then ``calls``, each sent once the first long call is answered
    (plus its own ``delay``)."""
    return {"do": "concurrent", "calls": [long_call(part), long_call(part), *[{**c, "after_any": LONG} for c in calls]]}


def long_answers_ok(burst: dict) -> None:
    for answer in burst["answers"][:len(LONG)]:
        assert code(answer) == "OK" and answer["shapes"], answer


# ---- backpressure: a queue of one


def test_a_full_queue_refuses_with_resource_exhausted_and_the_rest_answer_right(released, server_of):
    server = server_of({"workers": 32, "max_message_bytes": BIG_MESSAGES,
                        "batching": {"max_queue": 1, "max_queue_delay_ms": 300, "max_batch_size": 64}})
    part = model_part(released)
    good = inputs_for(part)
    calls = 20
    alone, burst = stock_client(server.address, infer(good),
                                behind_long_calls(part, *[infer(good, timeout=30)] * calls))
    # The long calls: both answered, or the second refused when it came while the first one waited.
    assert {code(a) for a in burst["answers"][:len(LONG)]} <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}
    want = first_output(alone)
    answers = burst["answers"][len(LONG):]
    codes = [code(a) for a in answers]
    refused = [a for a in answers if code(a) == "StatusCode.RESOURCE_EXHAUSTED"]
    answered = [a for a in answers if code(a) == "OK"]
    assert len(refused) + len(answered) == calls, codes  # no other error
    assert refused and answered, codes
    assert all("batching.max_queue" in a["message"] for a in refused)
    for answer in answered:
        np.testing.assert_array_equal(first_output(answer), want)
    # The server counted the same refusals (Observed, one place for every status).
    all_refused = sum(code(a) == "StatusCode.RESOURCE_EXHAUSTED" for a in burst["answers"])
    assert server.requests(MODEL, "RESOURCE_EXHAUSTED") == all_refused
    assert server.requests(MODEL, "OK") == 1 + len(burst["answers"]) - all_refused


# ---- deadlines: the expired call is answered DEADLINE_EXCEEDED and its work dropped


def test_a_call_past_its_deadline_is_deadline_exceeded_and_not_run(released, server_of):
    server = server_of({"max_message_bytes": BIG_MESSAGES, "batching": {"max_queue_delay_ms": 500}})
    part = model_part(released)
    good = inputs_for(part)
    burst, patient = stock_client(server.address, behind_long_calls(part, infer(good, timeout=0.1)), infer(good))
    long_answers_ok(burst)
    late, = burst["answers"][len(LONG):]
    assert code(late) == "StatusCode.DEADLINE_EXCEEDED", late
    sent = min(burst["ended"][:len(LONG)])
    assert burst["ended"][len(LONG)] - sent < 0.1 + 0.15  # at its deadline, not when the model got to it
    assert first_output(patient).shape[0] == ROWS
    time.sleep(0.6)  # the worker reaches the expired call after the queue delay, and drops it
    assert server.requests(MODEL, "DEADLINE_EXCEEDED") == 1 and server.requests(MODEL, "OK") == 3
    # The model ran the long calls and the patient one; the expired one was dropped before any run.
    assert server.metric("millrace_serving_batch_size_count", model=MODEL) == 3
    assert server.metric("millrace_serving_batch_size_sum", model=MODEL) == 2 * LONG_ROWS + ROWS


# ---- dynamic batching end to end


def test_concurrent_calls_are_batched_and_each_gets_its_own_answer(released, server_of):
    server = server_of({"max_message_bytes": BIG_MESSAGES, "batching": {"max_queue_delay_ms": 50,
                                                                        "max_batch_size": 16}}, "--variant", "fp32")
    part = model_part(released)
    inputs = [inputs_for(part, rows=2, seed=seed) for seed in range(8)]
    answers = stock_client(server.address, *[infer(i) for i in inputs],
                           behind_long_calls(part, *[infer(i, timeout=30) for i in inputs]))
    alone, burst = answers[:-1], answers[-1]
    long_answers_ok(burst)
    wants = [first_output(a) for a in alone]
    assert len({w.tobytes() for w in wants}) == len(wants)  # different inputs, different answers
    for want, got in zip(wants, burst["answers"][len(LONG):]):
        np.testing.assert_allclose(first_output(got), want, rtol=0, atol=1e-5)
    batches = server.metric("millrace_serving_batch_size_count", model=MODEL)
    rows = server.metric("millrace_serving_batch_size_sum", model=MODEL)
    requests = 2 * len(inputs) + len(LONG)
    assert rows == 2 * 2 * len(inputs) + len(LONG) * LONG_ROWS  # every row run once
    assert batches < requests, "no batch held more than one request"


def test_parallel_runs_keep_every_batcher_worker_alive(released, server_of):
    # Two runners: both long calls run at once in their callers and a small call queues behind them; when
    # the long calls end, both runners' workers wake and wait for company on the same queue. The first
    # takes it; the other must go back to waiting, not die on the empty queue (a runner lost, a traceback).
    server = server_of({"max_message_bytes": BIG_MESSAGES,
                        "batching": {"parallel_runs": 2, "max_queue_delay_ms": 3000, "max_batch_size": 64}})
    part = model_part(released)
    good = inputs_for(part)
    # Small calls while both long calls run, whose queue delay outlasts both runs.
    smalls = [infer(good, timeout=10, delay=delay) for delay in (0.3, 0.45, 0.6)]
    rounds = [stock_client(server.address, {"do": "concurrent", "calls": [long_call(part), long_call(part),
                                                                          *smalls]})[0] for _ in range(2)]
    for burst in rounds:
        long_answers_ok(burst)
        for answer in burst["answers"][len(LONG):]:
            assert first_output(answer).shape[0] == ROWS
    stderr = server.stderr()
    assert "Traceback" not in stderr, stderr[stderr.index("Traceback"):][:1500]


# ---- graceful drain


def test_sigterm_drains_the_calls_in_flight_then_exits_0(released, tmp_path):
    server = serve(released, tmp_path / "project", {"max_message_bytes": BIG_MESSAGES,
                                                     "batching": {"max_queue_delay_ms": 1500}})
    try:
        part = model_part(released)
        good = inputs_for(part)
        queued = 4
        burst_step = behind_long_calls(part, *[infer(good, timeout=30)] * queued,
                                       {"do": "signal", "pid": server.pid, "signal": "SIGTERM", "delay": 0.15},
                                       {"do": "health_v1", "service": "", "delay": 0.3, "timeout": 3})
        alone, burst = stock_client(server.address, infer(good), burst_step)
        answers, ended = burst["answers"], burst["ended"]
        first = len(LONG)
        sent = answers[first + queued]
        exit_code = server.proc.wait(timeout=max(0.1, 15 - (time.time() - sent)))
        long_answers_ok(burst)  # in flight too
        want = first_output(alone)
        for answer in answers[first:first + queued]:  # every call in flight answered, and right
            np.testing.assert_array_equal(first_output(answer), want)
        health = answers[first + queued + 1]
        # Right after SIGTERM (within serving.drain_notice_seconds) health says NOT_SERVING.
        assert health == "NOT_SERVING", health
        assert ended[first + queued + 1] < min(ended[first:first + queued])  # asked while calls were in flight
        assert exit_code == 0, server.stderr()
        logs = [json.loads(line) for line in server.stderr().splitlines() if line.startswith("{")]
        draining = [line["in_flight"] for line in logs if line["msg"] == "draining"]
        assert len(draining) == 1 and queued <= draining[0] <= queued + 1, draining  # (+ the second long call)
        after, = stock_client(server.address, infer(good, timeout=5))
        assert code(after) == "StatusCode.UNAVAILABLE", after
    finally:
        server.stop()
