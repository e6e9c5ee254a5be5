"""Hot reload under load: a stock client loops on ModelInfer while two new releases and a corrupt
one are pushed. No call fails, every answer is one release's whole answer (its id in the response
parameters, the version and outputs that release serves), answers never go back to an older
release, and the corrupt release never serves (refused, counted in the metrics)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from millrace.indexing import release as releases
from millrace.pipelines import release
from tests.serving.conftest import ROOT, configure, metrics_url, release_tiny, start_server

pytestmark = pytest.mark.slow
INPUT_ROWS = 2


def _likes_inputs(state) -> dict:
    """Two plausible rows for every input of the released ``likes`` model."""
    checked = releases.verify(releases.release_root(str(state)))
    folder, manifest = checked.bundles["likes"]
    (part,) = manifest.parts.values()
    out = {}
    for i in part.inputs:
        if i.kind == "numeric":
            out[i.name] = ("FP32", [i.mean, i.mean + (i.std or 1)])
        elif i.kind == "categorical":
            out[i.name] = ("INT64", [1, 2]) if i.dtype == "int64" else ("BYTES", ["Movie 1", "Movie 2"])
        else:
            out[i.name] = ("INT64", [[1, 2], [3, 4]]) if i.dtype == "int64" else ("BYTES", [["Drama", ""], ["Action", "Comedy"]])
    return out


def _corrupt_copy(root: str, source_id: str) -> str:
    """A new release folder copied from ``source_id`` with one byte of a model file flipped, then
    pointed at: what a half-copied or tampered release looks like to the server."""
    new_id = releases.new_id(root)
    folder = os.path.join(root, new_id)
    shutil.copytree(os.path.join(root, source_id), folder)
    model = os.path.join(folder, "models", "likes", "model.int8.onnx")
    data = bytearray(open(model, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(model, "wb").write(bytes(data))
    document = releases.read(root, source_id).model_copy(update={"id": new_id})
    with open(os.path.join(folder, releases.DOCUMENT), "w") as f:
        f.write(document.to_json())
    releases.point(root, new_id, "tester", "a corrupt release")
    return new_id


def _wait_for(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_reload_under_load(tiny_trained, tmp_path):
    t = tiny_trained
    first = release_tiny(t)
    configure(t.root, {"reload_seconds": 0.2, "recommender": {"ranking": "likes"}})
    state = os.environ["MILLRACE_STATE_DIR"]
    root = releases.release_root(state)
    proc, address, _ = start_server(t.root, Path(state))
    stop = tmp_path / "stop"
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(_likes_inputs(state)))
    client = subprocess.Popen([sys.executable, "-m", "tests.serving.load_client", address, "likes", str(stop), "2",
                               str(inputs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        time.sleep(1.0)
        second = release.create(t.project).id
        time.sleep(1.0)
        third = release.create(t.project).id
        time.sleep(1.0)
        corrupt = _corrupt_copy(root, third)
        time.sleep(1.5)
        stop.touch()
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        result = json.loads(out)
        metrics = urllib.request.urlopen(metrics_url(proc.ready_line), timeout=10).read().decode()
    finally:
        stop.touch()
        proc.terminate()
        proc.wait(timeout=30)

    assert result["errors"] == []
    good = {first, second, third}
    order = [first, second, third]
    expected = {}
    for thread in result["answers"]:
        assert len(thread) > 20  # the loop really ran through the swaps
        positions = [order.index(a["release"]) for a in thread]  # ValueError: an answer from another release
        assert positions == sorted(positions), "an answer went back to an older release"
        for answer in thread:
            assert answer["version"] == "1"
            expected.setdefault(answer["release"], answer["outputs"])
            for name, values in answer["outputs"].items():
                np.testing.assert_allclose(values, expected[answer["release"]][name], rtol=1e-6)
    seen = {a["release"] for thread in result["answers"] for a in thread}
    assert seen == good and corrupt not in seen
    assert _sample(metrics, 'millrace_serving_reloads_total{outcome="swapped"}') == 2
    assert _sample(metrics, 'millrace_serving_reloads_total{outcome="refused"}') == 1
    assert f'millrace_serving_release_info{{release="{third}"}} 1.0' in metrics


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name}")
