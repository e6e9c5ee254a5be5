"""Training runs on tiny data: both families, export parity, the INT8 gate, bad input, seeds,
and the registry flow (challenger, champion, failed gates, promote, rollback, history) on SQLite."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import onnx
import pyarrow as pa
import pytest

from millrace.training import bundle, registry
from millrace.training.errors import DivergedTraining, EmptyTrainingSet, QuantizationRefused, TrainingError
from tests.training.test_mlflow_model import check_tabular, check_two_tower

SEED_TOLERANCE = 1e-6  # same seed, same data, same machine: metrics agree to float rounding


def _client(tiny):
    return registry.connect(tiny.project)


def _versions(tiny, name):
    from millrace.training.errors import UnknownModel

    try:
        return registry.versions(_client(tiny), registry.registered_name(tiny.project, name))
    except UnknownModel:
        return []


def test_two_tower_trains_exports_and_registers(tiny, tmp_path):
    out = tiny.train("retrieval")
    assert out.metrics["recall_at_10"] > out.baseline["recall_at_10"]  # the synthetic users have one taste each
    assert out.version == "1" and out.promoted
    client = _client(tiny)
    reg = registry.registered_name(tiny.project, "retrieval")
    assert registry.alias_target(client, reg, registry.CHAMPION) == "1"
    assert registry.alias_target(client, reg, registry.CHALLENGER) == "1"
    folder = registry.download(client, reg, "1", str(tmp_path))
    manifest = bundle.read_manifest(folder)
    assert set(manifest.parts) == {"user_encoder", "item_encoder"}
    for part in ("user_encoder", "item_encoder"):
        entry = manifest.parts[part]
        assert entry.files == {"fp32": f"{part}.onnx", "int8": f"{part}.int8.onnx"} and entry.served == "int8"
        model = onnx.load_from_string(bundle.load_part(folder, manifest, part))  # checksum checked
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        mlmodel = (tmp_path / "bundle" / "mlflow" / part / "MLmodel").read_text()
        assert "signature:" in mlmodel and "onnx" in mlmodel
    names = [i.name for i in manifest.parts["user_encoder"].signature.inputs]
    assert names == ["userId", "user_activity__rating_mean_all", "user_genres__top_genres_365d",
                     "user_activity__recent_movies"]
    run = client.get_run(out.run_id)
    assert run.data.metrics["parity_max_abs_diff.user_encoder"] <= 1e-4
    assert run.data.tags["millrace.contract.ratings"] == "ratings@1.0.0"
    assert run.data.tags["millrace.feature_view.user_activity"].endswith(" run test-run")  # the view's build
    assert "user_activity:rating_mean_all" in json.loads(run.data.params["features"])["user"]
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs if i.tags}
    assert {"training", "holdout"} <= contexts
    assert (tmp_path / "bundle" / "model_card.md").read_text().startswith("# retrieval")
    check_two_tower(tiny, out, tmp_path / "mlflow")


def test_tabular_classifier_and_regressor(tiny, tmp_path):
    likes = tiny.train("likes")
    assert 0.5 < likes.metrics["auc"] <= 1 and likes.promoted
    check_tabular(tiny, likes, tmp_path / "mlflow")
    stars = tiny.train("stars")
    assert stars.metrics["rmse"] > 0 and stars.promoted
    folder = registry.download(_client(tiny), registry.registered_name(tiny.project, "stars"), "1", str(tmp_path))
    manifest = bundle.read_manifest(folder)
    assert manifest.parts["model"].files == {"fp32": "model.onnx"}  # quantization: none
    assert manifest.parts["model"].output == "prediction"


def test_same_seed_same_metrics(tiny):
    a, b = tiny.train("likes"), tiny.train("likes")
    for metric in a.metrics:
        assert abs(a.metrics[metric] - b.metrics[metric]) <= SEED_TOLERANCE, metric


def _broken(model, method, calibration):
    """Quantize, then scramble every INT8 weight: a quantizer bug the gate must catch."""
    from millrace.training.quantize import quantize

    out = quantize(model, method, calibration)
    rng = np.random.default_rng(0)
    for init in out.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2:
            arr = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(rng.integers(-127, 127, arr.shape).astype(np.int8), init.name))
    return out


def test_broken_quantization_is_refused_and_nothing_registered(tiny):
    with pytest.raises(QuantizationRefused, match="INT8 loses"):
        tiny.train("likes", quantizer=_broken)
    assert _versions(tiny, "likes") == []
    runs = _client(tiny).search_runs([registry.experiment_id(_client(tiny), tiny.project, "likes")])
    assert runs[0].info.status == "FAILED" and "INT8 loses" in runs[0].data.tags["millrace.error"]


def test_empty_training_set(tiny):
    with pytest.raises(EmptyTrainingSet, match="no committed rows"):
        tiny.train("likes", examples=tiny.ratings.slice(0, 0))
    head = tiny.ratings.slice(0, 10)
    same_instant = head.set_column(3, "timestamp", pa.repeat(head.column("timestamp")[0], 10))
    with pytest.raises(EmptyTrainingSet, match="period is empty"):
        tiny.train("likes", examples=same_instant)
    assert _versions(tiny, "likes") == []


def test_missing_labels(tiny):
    no_labels = tiny.ratings.set_column(2, "rating", pa.nulls(tiny.ratings.num_rows, pa.float64()))
    with pytest.raises(EmptyTrainingSet, match="lacks its label"):
        tiny.train("likes", examples=no_labels)
    with pytest.raises(TrainingError, match="no label column"):
        tiny.train("likes", examples=tiny.ratings.drop_columns(["rating"]))
    assert _versions(tiny, "likes") == []


def test_nan_loss_stops_the_run(tiny):
    tiny.models(lambda m: m["likes"]["hyperparameters"].update(learning_rate=1e30))
    with pytest.raises(DivergedTraining, match="learning_rate"):
        tiny.train("likes")
    assert _versions(tiny, "likes") == []


def test_registry_flow_on_sqlite(tiny):
    registry_flow(tiny)


def registry_flow(tiny):
    """v1 champion; v2 fails the improvement gate (registered, challenger, champion stays); manual
    promote; rollback; the alias history answers "which version was champion at time X"."""
    client = _client(tiny)
    reg = registry.registered_name(tiny.project, "likes")
    first = tiny.train("likes")
    assert first.promoted and registry.alias_target(client, reg, registry.CHAMPION) == first.version
    before_second = dt.datetime.now(dt.timezone.utc)
    tiny.models(lambda m: m["likes"]["gates"].update(min_improvement=0.5))
    second = tiny.train("likes")
    assert not second.promoted and "FAIL" in second.verdict and f"champion v{first.version}" in second.verdict
    assert "re-scored on this holdout" in second.verdict
    assert registry.alias_target(client, reg, registry.CHAMPION) == first.version
    assert registry.alias_target(client, reg, registry.CHALLENGER) == second.version
    assert registry.get_version(client, reg, second.version).tags["millrace.gate"] == "failed"

    registry.move_alias(client, reg, registry.CHAMPION, second.version, "promoted by hand: test", by="alice")
    assert registry.alias_target(client, reg, registry.CHAMPION) == second.version
    registry.move_alias(client, reg, registry.CHAMPION, first.version, "rollback: test")
    history = [e for e in registry.history(client, reg) if e.alias == registry.CHAMPION]
    assert [e.version for e in history] == [first.version, second.version, first.version]
    assert history[1].by == "alice" and history[1].previous == first.version and "by hand" in history[1].why
    assert history[0].by == "tester" and history[0].why.startswith("gate passed")
    assert registry.alias_at(client, reg, registry.CHAMPION, before_second) == first.version
    assert registry.alias_at(client, reg, registry.CHAMPION, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)) is None
    json.dumps([e.__dict__ for e in history])  # the log is plain data


def test_a_champion_that_cannot_be_rescored_is_not_compared_unless_forced(tiny):
    """v1's inputs no longer exist after a features change, so it cannot be scored on v2's holdout;
    comparing its own-holdout metric with v2's would compare two different holdouts."""
    client = _client(tiny)
    reg = registry.registered_name(tiny.project, "stars")
    first = tiny.train("stars")
    assert first.promoted
    tiny.models(lambda m: m["stars"].update(features=["user_activity:rating_mean_all"]))  # genre_list input gone
    second = tiny.train("stars")
    assert not second.promoted and "cannot be re-scored on this holdout" in second.verdict
    assert "needs inputs ['movie_metadata__genre_list']" in second.verdict and "--force" in second.verdict
    assert registry.alias_target(client, reg, registry.CHAMPION) == first.version
    tags = client.get_run(second.run_id).data.tags
    assert "from another holdout" in tags["millrace.gate.incomparable"] and "FAIL" in tags["millrace.gate"]
    assert registry.get_version(client, reg, second.version).tags["millrace.gate"] == "failed"
    forced = tiny.train("stars", force=True)
    assert forced.promoted and "forced: champion v1 cannot be re-scored" in forced.verdict
    assert registry.alias_target(client, reg, registry.CHAMPION) == forced.version
