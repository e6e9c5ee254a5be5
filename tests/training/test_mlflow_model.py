"""What MLflow itself sees after a tiny training run: ``models:/<name>@champion`` loads with
``mlflow.pyfunc.load_model`` and ``mlflow.onnx.load_model`` and predicts what the bundle's served
ONNX files predict; the version has a signature and a LoggedModel of its run.

The checks after training run inside test_train.py's training tests (``check_two_tower``,
``check_tabular``), so no model is trained twice for them."""
from __future__ import annotations

import hashlib
import json

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import pytest
from mlflow.models import Model

from millrace.training import artifacts, bundle, export, registry

TOLERANCE = 1e-5


def _champion(tiny, model: str, tmp_path):
    client = registry.connect(tiny.project)
    reg = registry.registered_name(tiny.project, model)
    mv = client.get_model_version_by_alias(reg, registry.CHAMPION)
    folder = registry.download(client, reg, mv.version, str(tmp_path / "bundle"))
    return client, reg, mv, folder, bundle.read_manifest(folder)


def _example(uri: str, tmp_path) -> dict:
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    return Model.load(local).load_input_example(local)


def _bundle_outputs(folder, manifest, inputs: dict) -> dict:
    """Each part's served file run alone by onnxruntime on its own inputs."""
    out = {}
    for part, entry in manifest.parts.items():
        sess = export.session(bundle.load_part(folder, manifest, part))
        out[part] = sess.run(None, {i.name: inputs[i.name] for i in entry.signature.inputs})[0]
    return out


def _predict_both(uri: str, inputs: dict) -> tuple[dict, dict]:
    pyfunc = mlflow.pyfunc.load_model(uri).predict(inputs)
    sess = export.session(mlflow.onnx.load_model(uri))
    return pyfunc, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))


def check_two_tower(tiny, out, tmp_path) -> None:
    """The champion of the tiny two_tower model loads as one pair model (both towers, ``score``)."""
    client, reg, mv, folder, manifest = _champion(tiny, "retrieval", tmp_path)
    uri = f"models:/{reg}@{registry.CHAMPION}"
    inputs = _example(uri, tmp_path)
    user_inputs = [i.name for i in manifest.parts["user_encoder"].signature.inputs]
    item_inputs = [i.name for i in manifest.parts["item_encoder"].signature.inputs]
    assert sorted(inputs) == sorted(user_inputs + item_inputs) and len(inputs["userId"]) > 1
    expected = _bundle_outputs(folder, manifest, inputs)  # the served INT8 towers, each on its own
    for got in _predict_both(uri, inputs):
        assert set(got) == {"user_embedding", "item_embedding", artifacts.SCORE}
        assert np.allclose(got["user_embedding"], expected["user_encoder"], atol=TOLERANCE)
        assert np.allclose(got["item_embedding"], expected["item_encoder"], atol=TOLERANCE)
        dot = (expected["user_encoder"] * expected["item_encoder"]).sum(axis=1)
        assert np.allclose(got[artifacts.SCORE], dot, atol=TOLERANCE)
    info = mlflow.models.get_model_info(uri)
    assert [i["name"] for i in info.signature.inputs.to_dict()] == list(inputs)
    assert {o["name"] for o in info.signature.outputs.to_dict()} == {"user_embedding", "item_embedding", "score"}
    _assert_logged_model(client, reg, mv, out)


def check_tabular(tiny, out, tmp_path) -> None:
    """The champion of the tiny classifier is the bundle's served (INT8) file, as MLflow loads it."""
    client, reg, mv, folder, manifest = _champion(tiny, "likes", tmp_path)
    uri = f"models:/{reg}/{mv.version}"
    inputs = _example(uri, tmp_path)
    assert sorted(inputs) == sorted(i.name for i in manifest.parts["model"].signature.inputs)
    expected = _bundle_outputs(folder, manifest, inputs)["model"]
    for got in _predict_both(uri, inputs):
        assert np.allclose(got["probability"], expected, atol=TOLERANCE)
    entry = manifest.parts["model"]  # the served INT8 file, the one the serving tier loads, byte for byte
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "again"))
    with open(f"{local}/model.onnx", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == entry.sha256[entry.files[entry.served]]
    assert mlflow.models.get_model_info(uri).signature.outputs.to_dict()[0]["name"] == "probability"
    _assert_logged_model(client, reg, mv, out)


def _assert_logged_model(client, reg, mv, out) -> None:
    assert mv.source.startswith("models:/m-") and mv.run_id == out.run_id
    model_id = mv.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == out.run_id and logged.tags[registry.BUNDLE_TAG] == registry.bundle_uri(mv)
    assert {"name": reg, "version": str(mv.version)} in json.loads(logged.tags["mlflow.modelVersions"])
    assert model_id in [o.model_id for o in client.get_run(out.run_id).outputs.model_outputs]
    assert set(out.metrics) <= {m.key for m in logged.metrics}  # the run's metrics, linked by MLflow


@pytest.mark.parametrize("shared", [False, True])
def test_pair_model_joins_two_towers(shared):
    """A request-time input both towers take is fed once; internal names never collide."""
    from onnx import TensorProto, helper

    def tower(key: str, extra: str) -> onnx.ModelProto:
        w = onnx.numpy_helper.from_array(np.full((2, 3), 0.5 if key == "u" else 2.0, np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("Concat", [key, extra], ["x"], axis=1),
             helper.make_node("MatMul", ["x", "w"], ["embedding"])],
            key, [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1]) for n in (key, extra)],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    joined = artifacts.pair_model({"user_encoder": tower("u", "hour" if shared else "a"),
                                   "item_encoder": tower("i", "hour" if shared else "b")})
    names = [i.name for i in joined.graph.input]
    assert names == (["u", "hour", "i"] if shared else ["u", "a", "i", "b"])
    feed = {n: np.full((4, 1), k + 1.0, np.float32) for k, n in enumerate(names)}
    got = dict(zip(["user_embedding", "item_embedding", "score"], export.session(joined).run(None, feed)))
    hour = feed["hour"] if shared else None
    user = np.hstack([feed["u"], hour if shared else feed["a"]]) @ np.full((2, 3), 0.5, np.float32)
    item = np.hstack([feed["i"], hour if shared else feed["b"]]) @ np.full((2, 3), 2.0, np.float32)
    assert np.allclose(got["user_embedding"], user) and np.allclose(got["item_embedding"], item)
    assert np.allclose(got["score"], (user * item).sum(axis=1))
