"""The server with the stock client (tritonclient.grpc) in another process: liveness, readiness,
metadata, health and reflection; inference on every ONNX model of the release, raw and typed, equal
to onnxruntime on the same inputs; malformed requests; a damaged release is refused at start."""
from __future__ import annotations

import base64
import os

import numpy as np
import pytest

from millrace.indexing import release as releases
from millrace.training.bundle import load_part
from millrace.training.feeds import PAD_INT
from tests.serving.conftest import start_server, stock_client

pytestmark = pytest.mark.slow
ROWS = 3


def _inputs(part, seed: int = 0) -> dict[str, tuple[str, list]]:
    """Plausible inputs for every input of a bundle part: (protocol datatype, nested values)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in part.inputs:
        if i.kind == "numeric":
            out[i.name] = ("FP32", rng.normal(i.mean, i.std or 1, ROWS).astype(np.float32).tolist())
        elif i.kind == "categorical":
            out[i.name] = ("INT64", rng.integers(1, 40, ROWS).tolist()) if i.dtype == "int64" else \
                ("BYTES", [f"Movie {n}" for n in rng.integers(1, 40, ROWS)])
        else:
            if i.dtype == "int64":
                values = rng.integers(1, 60, (ROWS, 4))
                values[0, 2:] = PAD_INT
                out[i.name] = ("INT64", values.tolist())
            else:
                out[i.name] = ("BYTES", [["Action", "Drama", ""], ["Comedy", "", ""], ["Horror", "Action", "Drama"]])
    return out


def _expected(folder, manifest, part_name, inputs):
    import onnxruntime as ort

    session = ort.InferenceSession(load_part(folder, manifest, part_name), providers=["CPUExecutionProvider"])
    feed = {n: np.array(v, dtype=object) if t == "BYTES" else np.array(v, dtype={"FP32": np.float32,
                                                                                   "INT64": np.int64}[t])
            for n, (t, v) in inputs.items()}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def _models(served):
    checked = releases.verify(releases.release_root(str(served.state)))
    for name, (folder, manifest) in checked.bundles.items():
        for part_name, part in manifest.parts.items():
            yield (name if len(manifest.parts) == 1 else f"{name}.{part_name}"), folder, manifest, part_name, part, \
                checked.release.models[name].version


def test_health_metadata_reflection_and_start_up(served):
    health, ready, meta, unknown, health_v1, reflection = stock_client(
        served.address, {"do": "health"}, {"do": "ready", "model": "likes"},
        {"do": "metadata", "model": "retrieval.user_encoder"}, {"do": "ready", "model": "nope"},
        {"do": "health_v1", "service": "inference.GRPCInferenceService"}, {"do": "reflection"})
    assert health["live"] and health["ready"] and health["server"]["name"] == "millrace"
    assert ready is True and unknown is False
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert {t["name"]: t["datatype"] for t in meta["inputs"]}["userId"] == "INT64"
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert health_v1 == "SERVING"
    assert "inference.GRPCInferenceService" in reflection["services"] and "grpc.health.v1.Health" in reflection["services"]
    assert reflection["methods"] == sorted(["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                            "ModelMetadata", "ModelInfer"])
    assert served.ready_seconds < 15  # the process start included; the example's figure is in the notes


def test_every_model_answers_as_onnxruntime_raw_and_typed(served):
    models = list(_models(served))
    assert {m[0] for m in models} == {"retrieval.user_encoder", "retrieval.item_encoder", "likes", "stars"}
    steps, expected = [], []
    for name, folder, manifest, part_name, part, version in models:
        inputs = _inputs(part)
        expected.append((name, version, _expected(folder, manifest, part_name, inputs)))
        steps.append({"do": "infer", "model": name, "inputs": inputs})
        shaped = {n: (t, v, list(np.array(v, dtype=object).shape)) for n, (t, v) in inputs.items()}
        steps.append({"do": "infer_typed", "model": name, "version": version, "inputs": shaped})
    answers = stock_client(served.address, *steps)
    for (name, version, want), raw, typed in zip(expected, answers[0::2], answers[1::2]):
        assert "error" not in raw and "error" not in typed, (name, raw, typed)
        assert raw["parameters"] == {"release": served.release} and raw["version"] == version
        assert typed["raw_outputs"] == 0  # typed in, typed out
        for output, array in want.items():
            for got in (raw["outputs"][output], typed["outputs"][output]):
                np.testing.assert_allclose(np.array(got[0], np.float32).reshape(got[1]), array, rtol=1e-6, atol=1e-6)


def test_malformed_requests_get_invalid_argument_or_not_found(served):
    (name, _, _, _, part, _), *_ = [m for m in _models(served) if m[0] == "stars"]
    good = _inputs(part)
    first = part.inputs[0].name
    wrong_type = {**good, first: ("INT64", [1, 2, 3])}
    wrong_shape = {**good, first: ("FP32", [[1.0], [2.0], [3.0]])}
    shaped = {n: (t, v, list(np.array(v, dtype=object).shape)) for n, (t, v) in good.items()}
    short = {k: (t, [], s) for k, (t, v, s) in shaped.items()}  # typed contents emptied
    raw = [base64.b64encode(np.zeros(2, np.float32).tobytes()).decode()] * len(shaped)  # 8 bytes for 3 elements
    missing = dict(list(good.items())[1:])
    big = {**good, first: ("FP32", np.zeros(1_400_000, np.float32).tolist())}  # 5.6 MB: over the 4 MiB limit
    answers = stock_client(
        served.address,
        {"do": "infer", "model": name, "inputs": wrong_type}, {"do": "infer", "model": name, "inputs": wrong_shape},
        {"do": "infer_typed", "model": name, "inputs": short},
        {"do": "infer_typed", "model": name, "inputs": {k: (t, [], s) for k, (t, v, s) in shaped.items()}, "raw": raw},
        {"do": "infer", "model": name, "inputs": missing}, {"do": "infer", "model": "nope", "inputs": good},
        {"do": "infer", "model": name, "version": "9", "inputs": good},
        {"do": "infer", "model": name, "inputs": big})
    codes = [a["error"] for a in answers]
    assert codes == ["StatusCode.INVALID_ARGUMENT"] * 5 + ["StatusCode.NOT_FOUND"] * 2 + ["StatusCode.RESOURCE_EXHAUSTED"]
    messages = [a["message"] for a in answers]
    assert f"input '{first}': datatype INT64, the model takes FP32" in messages[0]
    assert "shape [3, 1], the model takes [-1]" in messages[1]
    assert "0 elements in contents.fp32_contents, shape [3] holds 3" in messages[2]
    assert "8 raw bytes for 3 FP32 elements (12 expected)" in messages[3]
    assert f"needs inputs ['{first}']" in messages[4]
    assert "no model 'nope'" in messages[5] and "no version '9'" in messages[6]
    assert all("\n" not in m for m in messages)


def test_a_damaged_release_is_refused_at_start(served):
    served.proc.terminate()
    served.proc.wait(timeout=30)
    root = releases.release_root(str(served.state))
    onnx = os.path.join(root, served.release, "models", "likes", "model.int8.onnx")
    data = bytearray(open(onnx, "rb").read())
    data[100] ^= 0xFF
    open(onnx, "wb").write(bytes(data))
    with pytest.raises(AssertionError) as err:
        start_server(served.project, served.state)
    assert "SHA-256 does not match" in str(err.value)
