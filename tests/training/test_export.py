"""Encoding, ONNX export with in-graph lookups, parity with torch, INT8 and signatures (no MLflow)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from millrace.training import export, quantize
from millrace.training.encode import MISSING, UNSEEN, encode, fit_inputs, key_input
from millrace.training.errors import ExportMismatch
from millrace.training.nets import FeatureMLP


def _table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return pa.table({
        "userId": pa.array(rng.integers(1, 50, n), pa.int64()),
        "score": pa.array([None if i % 7 == 0 else float(x) for i, x in enumerate(rng.normal(3, 2, n))], pa.float64()),
        "count": pa.array(rng.integers(0, 100, n), pa.int64()),
        "kind": pa.array([None if i % 11 == 0 else ["a", "b", "c"][i % 3] for i in range(n)], pa.string()),
        "tags": pa.array([None if i % 5 == 0 else ["x", "y", "z"][: i % 4] for i in range(n)], pa.list_(pa.string())),
        "recent": pa.array([[int(v) for v in rng.integers(1, 30, i % 6)] for i in range(n)], pa.list_(pa.int64())),
    })


def _model(table):
    specs = [key_input(table, "userId", 1000)] + fit_inputs(table, ["score", "count", "kind", "tags", "recent"], 1000)
    return specs, encode(table, specs), FeatureMLP(specs, [16], 4, 3).eval()


def test_inputs_are_named_and_typed_from_the_features():
    table = _table()
    specs, enc, net = _model(table)
    sig = export.signature(export.export(net, specs, enc, "embedding"))
    got = {i["name"]: (i["datatype"], i["shape"]) for i in sig["inputs"]}
    assert got == {"userId": ("INT64", ["batch"]), "score": ("FLOAT", ["batch"]), "count": ("FLOAT", ["batch"]),
                   "kind": ("STRING", ["batch"]), "tags": ("STRING", ["batch", "tags_length"]),
                   "recent": ("INT64", ["batch", "recent_length"])}
    assert sig["outputs"] == [{"name": "embedding", "datatype": "FLOAT", "shape": ["batch", 4]}]


def test_onnx_matches_torch_on_any_batch_size_and_unseen_values():
    table = _table()
    specs, enc, net = _model(table)
    model = export.export(net, specs, enc, "embedding")
    assert export.check_parity(net, model, enc, "tiny") <= export.PARITY_TOLERANCE
    other = encode(_table(n=37, seed=9).set_column(0, "userId", pa.array(np.arange(1000, 1037), pa.int64())), specs)
    assert (other.indexed[0] == UNSEEN).all()  # ids never seen in training map to "unseen"
    assert export.check_parity(net, model, other, "unseen") <= export.PARITY_TOLERANCE
    one = enc.take(np.array([3]))
    assert export.run(export.session(model), one).shape == (1, 4)


def test_missing_values_map_to_the_padding_index():
    table = _table()
    specs, enc, _ = _model(table)
    kind = [s.name for s in specs].index("kind")
    assert (enc.indexed[kind][np.array(table.column("kind").is_null())] == MISSING).all()
    tags = [s.name for s in specs].index("tags")
    assert (enc.indexed[tags][0] == MISSING).all()  # row 0: a null list


def test_parity_check_fails_loudly_when_graphs_differ():
    table = _table()
    specs, enc, net = _model(table)
    model = export.export(net, specs, enc, "embedding")
    other = FeatureMLP(specs, [16], 4, 3).eval()  # different weights
    with pytest.raises(ExportMismatch, match="differs from torch"):
        export.check_parity(other, model, enc, "tiny")


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_stays_close_and_keeps_the_signature(method):
    table = _table()
    specs, enc, net = _model(table)
    model = export.export(net, specs, enc, "embedding")
    int8 = quantize.quantize(model, method, enc)
    assert export.signature(int8) == export.signature(model)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DequantizeLinear") for n in int8.graph.node)
    a, b = export.run(export.session(model), enc), export.run(export.session(int8), enc)
    assert np.abs(a - b).max() < 0.1 * (np.abs(a).max() + 1e-6) + 0.05
    lat = quantize.latency(export.session(int8, 1), enc, 32, seconds=0.05)
    assert lat["batch"] == 32 and lat["ms"] > 0
