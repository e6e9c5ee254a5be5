"""torch -> ONNX, with the vocabulary lookups grafted in front so the graph takes raw feature values.

torch exports the network on index inputs (``<name>__index``); for each categorical input we add
a graph input ``<name>`` of the feature's type and an ONNX-ML ``LabelEncoder`` (value -> index,
unseen -> 1, "" -> 0) feeding the old index input. Inputs keep the feature names; the batch axis
(and a list's length axis) are dynamic.
"""
from __future__ import annotations

import io

import numpy as np
import onnx
from onnx import TensorProto, helper

from millrace.training.encode import FIRST, MISSING, PAD_INT, UNSEEN, Encoded, InputSpec
from millrace.training.errors import ExportMismatch

OPSET, ML_OPSET = 17, 2
PARITY_TOLERANCE = 1e-4
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "string": TensorProto.STRING}


def export(module, specs: list[InputSpec], sample: Encoded, output: str, doc: str = "") -> onnx.ModelProto:
    """The ONNX model of ``module`` (a FeatureMLP; moved to the CPU and set to eval mode) taking raw
    inputs named as ``specs``."""
    import torch

    from millrace.training.nets import tensors

    module = module.cpu().eval()
    names = [s.name if s.kind == "numeric" else f"{s.name}__index" for s in specs]
    axes = {n: ({0: "batch", 1: f"{s.name}_length"} if s.kind == "multi" else {0: "batch"})
            for n, s in zip(names, specs)}  # each list its own length axis: lists differ in length
    axes[output] = {0: "batch"}
    buffer = io.BytesIO()
    example = tuple(tensors([a[:2] for a in sample.indexed], torch.device("cpu")))
    with torch.no_grad():
        torch.onnx.export(module, example, buffer, input_names=names, output_names=[output], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    model = _graft_lookups(model, specs)
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def _graft_lookups(model: onnx.ModelProto, specs: list[InputSpec]) -> onnx.ModelProto:
    graph = model.graph
    by_name = {i.name: i for i in graph.input}
    inputs, nodes = [], []
    for spec in specs:
        if spec.kind == "numeric":
            inputs.append(by_name[spec.name])
            continue
        index_name = f"{spec.name}__index"
        shape = ["batch", f"{spec.name}_length"] if spec.kind == "multi" else ["batch"]
        inputs.append(helper.make_tensor_value_info(spec.name, _ONNX_TYPES[spec.dtype], shape))
        nodes.append(_label_encoder(spec, index_name))
    del graph.input[:]
    graph.input.extend(inputs)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    if not any(o.domain == "ai.onnx.ml" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    return model


def _label_encoder(spec: InputSpec, output: str) -> onnx.NodeProto:
    values = list(range(FIRST, FIRST + len(spec.vocabulary)))
    if spec.dtype == "string":
        keys = {"keys_strings": [""] + [str(v) for v in spec.vocabulary]}
        values = [MISSING] + values
    elif spec.kind == "multi":
        keys = {"keys_int64s": [PAD_INT] + [int(v) for v in spec.vocabulary]}
        values = [MISSING] + values
    else:
        keys = {"keys_int64s": [int(v) for v in spec.vocabulary]}
    return helper.make_node("LabelEncoder", [spec.name], [output], domain="ai.onnx.ml",
                            name=f"lookup_{spec.name}", values_int64s=values, default_int64=UNSEEN, **keys)


def session(model: onnx.ModelProto | bytes, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run(sess, encoded: Encoded, batch: int = 8192) -> np.ndarray:
    """Run an ONNX session over all rows of ``encoded`` (raw inputs), in batches."""
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in encoded.raw]
    if missing:
        raise KeyError(f"the model needs inputs {missing} that the examples do not have")
    out = []
    for start in range(0, encoded.rows, batch):
        feed = {n: encoded.raw[n][start:start + batch] for n in names}
        out.append(sess.run(None, feed)[0])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def torch_outputs(module, encoded: Encoded, batch: int = 8192) -> np.ndarray:
    import torch

    from millrace.training.nets import tensors

    module = module.cpu().eval()
    out = []
    with torch.no_grad():
        for start in range(0, encoded.rows, batch):
            part = [a[start:start + batch] for a in encoded.indexed]
            out.append(module(*tensors(part, torch.device("cpu"))).numpy())
    return np.concatenate(out)


def check_parity(module, model: onnx.ModelProto, encoded: Encoded, what: str,
                 tolerance: float = PARITY_TOLERANCE) -> float:
    """Max abs difference between torch and onnxruntime FP32 on ``encoded``; raise above tolerance."""
    expected = torch_outputs(module, encoded)
    got = run(session(model), encoded)
    diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
    if not diff <= tolerance:
        raise ExportMismatch(f"{what}: ONNX FP32 differs from torch by {diff:.3g} (> {tolerance:g}) "
                             f"on {encoded.rows} examples (fix: report this model; nothing was registered)")
    return diff


def signature(model: onnx.ModelProto) -> dict:
    """Input and output names, element types and shapes, as the inference tier will describe them."""
    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "datatype": TensorProto.DataType.Name(t.elem_type), "shape": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
