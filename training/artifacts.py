"""The bundle a registered version points at: ONNX files, a manifest with checksums, a model card.

    <bundle>/model.onnx | user_encoder.onnx, item_encoder.onnx       FP32
    <bundle>/<part>.int8.onnx                                       INT8 (served by default)
    <bundle>/mlflow/<part>/                                         MLflow ONNX flavor, with signature
    <bundle>/manifest.json                                          parts, served files, SHA-256, metrics
    <bundle>/model_card.md

This is the write side. Readers (the index builder, the inference tier) use ``training.bundle``,
which trusts manifest.json, checks each SHA-256 and imports neither torch nor MLflow; no file here
is ever unpickled.

``log_model`` logs the version's MLflow model (an MLflow 3 LoggedModel, ONNX flavor, with signature
and input example): the served file of a one-part bundle as it is, or for a two_tower bundle both
towers' served files in one graph that scores (user, item) pairs (see ``pair_model``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os

import numpy as np
import onnx

from millrace.contracts.names import check_inside, check_name
from millrace.training.bundle import MANIFEST, Manifest, load_part, read_manifest, write_manifest
from millrace.training.export import run, session, signature
from millrace.training.lineage import Lineage

__all__ = ["MANIFEST", "Manifest", "load_part", "read_manifest", "write_bundle", "model_card", "served_model",
           "pair_model", "log_model"]

SCORE = "score"
EXAMPLE_ROWS = 5


def write_bundle(directory: str, parts: dict, fp32: dict, int8: dict, info: dict) -> Manifest:
    """Write every part's files and the manifest; returns the manifest."""
    manifest = {**info, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "parts": {}}
    for part, model in fp32.items():
        check_name(part, MANIFEST, "parts")
        files = {"fp32": _save(directory, f"{part}.onnx", model)}
        if part in int8:
            files["int8"] = _save(directory, f"{part}.int8.onnx", int8[part])
        served = "int8" if "int8" in files else "fp32"
        _save_flavor(directory, part, model, parts[part])
        manifest["parts"][part] = {
            "files": {kind: name for kind, (name, _) in files.items()},
            "sha256": {name: digest for name, digest in files.values()},
            "served": served, "output": parts[part].output, "signature": signature(model),
            "inputs": [s.describe() for s in parts[part].specs]}
    typed = Manifest.model_validate(manifest)
    write_manifest(directory, typed)
    return typed


def _save(directory: str, name: str, model: onnx.ModelProto) -> tuple[str, str]:
    data = model.SerializeToString()
    with open(check_inside(directory, name, MANIFEST, "parts"), "wb") as f:
        f.write(data)
    return name, hashlib.sha256(data).hexdigest()


def _save_flavor(directory: str, part: str, model: onnx.ModelProto, spec) -> None:
    """The FP32 part as an MLflow ONNX model (MLmodel with the input/output signature)."""
    import mlflow.onnx
    from mlflow.models import infer_signature

    sample = spec.sample.take(np.arange(min(spec.sample.rows, EXAMPLE_ROWS)))
    output = run(session(model), sample)
    mlflow.onnx.save_model(model, os.path.join(directory, "mlflow", part), pip_requirements=_requirements(),
                           signature=infer_signature(dict(sample.raw), output))


def _requirements() -> list[str]:
    """onnx and onnxruntime pinned: all a loader needs (MLflow would otherwise infer them in a subprocess)."""
    import onnxruntime

    return [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]


def served_model(directory: str, manifest: Manifest) -> onnx.ModelProto:
    """What ``models:/<name>@<alias>`` loads: the served file of each part, read through its checksum;
    one part as it is, two_tower's two towers as one pair-scoring graph (``pair_model``)."""
    towers = {p: onnx.load_from_string(load_part(directory, manifest, p)) for p in manifest.parts}
    if len(towers) == 1:
        return next(iter(towers.values()))
    return pair_model(towers)


def output_name(part: str, output: str) -> str:
    """A tower's output in the pair graph: user_encoder's embedding is ``user_embedding``."""
    return f"{part.removesuffix('_encoder')}_{output}"


def pair_model(towers: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """Two towers in one graph: a row is a (user, item) pair; outputs each tower's embedding and
    ``score``, their dot product (what the inner-product index ranks by). An input both towers
    take (a request-time column) is fed once. Internal names get the part as a prefix; the towers'
    nodes are copied unchanged, so each embedding equals its tower's run on the same rows. The
    towers' inferred shapes (value_info) are left out: their symbolic axes would clash."""
    from onnx import helper

    if len(towers) != 2:
        raise ValueError(f"a pair model joins two towers, got {sorted(towers)}")
    inputs: dict[str, onnx.ValueInfoProto] = {}
    nodes, initializers, outputs, embeddings = [], [], [], []
    opsets: dict[str, int] = {}
    for part, model in towers.items():
        graph = model.graph
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
               for a in n.attribute) or graph.sparse_initializer or len(graph.output) != 1:
            raise ValueError(f"{part}: only flat one-output graphs can be joined")
        keep = {i.name for i in graph.input}
        for i in graph.input:
            if i.name in inputs and inputs[i.name].type != i.type:
                raise ValueError(f"input '{i.name}' has different types in the two towers")
            inputs.setdefault(i.name, i)

        def rename(name: str, part=part, keep=keep) -> str:
            return name if not name or name in keep else f"{part}/{name}"

        for i, node in enumerate(graph.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [rename(n) for n in node.input]
            copy.output[:] = [rename(n) for n in node.output]
            copy.name = f"{part}/{node.name or i}"
            nodes.append(copy)
        for init in graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename(init.name)
            initializers.append(copy)
        out = graph.output[0]
        name = output_name(part, out.name)
        nodes.append(helper.make_node("Identity", [rename(out.name)], [name], name=f"{part}/output"))
        final = onnx.ValueInfoProto()
        final.CopyFrom(out)
        final.name = name
        outputs.append(final)
        embeddings.append(name)
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    initializers.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "score/axes"))
    nodes += [helper.make_node("Mul", embeddings, ["score/product"], name="score/mul"),
              helper.make_node("ReduceSum", ["score/product", "score/axes"], [SCORE], keepdims=0, name="score/sum")]
    outputs.append(helper.make_tensor_value_info(SCORE, onnx.TensorProto.FLOAT, ["batch"]))
    graph = helper.make_graph(nodes, "pair", list(inputs.values()), outputs, initializers)
    joined = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                               ir_version=max(m.ir_version for m in towers.values()))
    joined.doc_string = "; ".join(m.doc_string for m in towers.values() if m.doc_string)
    onnx.checker.check_model(joined)
    return joined


def example(model: onnx.ModelProto, parts: dict) -> tuple[dict, dict]:
    """The first rows of each part's holdout sample as the model's inputs (two towers: row i of
    each, a pair), and the model's outputs on them."""
    rows = min(EXAMPLE_ROWS, *(p.sample.rows for p in parts.values()))
    feed = {}
    for part in parts.values():
        feed.update({k: v[:rows] for k, v in part.sample.raw.items()})
    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    feed = {n: feed[n] for n in names}
    return feed, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def log_model(directory: str, manifest: Manifest, parts: dict, name: str, tags: dict[str, str]):
    """Log the served model as the active run's MLflow LoggedModel (ONNX flavor, signature, input
    example; MLflow links the run's metrics to it); returns MLflow's ModelInfo (``model_id``)."""
    import mlflow.onnx
    from mlflow.models import infer_signature

    model = served_model(directory, manifest)
    inputs, outputs = example(model, parts)
    return mlflow.onnx.log_model(model, name=name, signature=infer_signature(inputs, outputs), input_example=inputs,
                                 pip_requirements=_requirements(), onnx_execution_providers=["CPUExecutionProvider"],
                                 save_as_external_data=False, model_type=manifest.family, tags=tags)


def _request_inputs(part) -> str:
    """The inputs a caller passes itself (the rest come from the online store)."""
    names = [i.name for i in part.inputs if i.source.startswith("request:")]
    return f"; request-time inputs (from the caller, not the online store): {', '.join(names)}" if names else ""


def model_card(name: str, spec, manifest: Manifest, metrics: dict, verdict_text: str, lineage: Lineage, *,
               project: str, dropped_unlabelled: int) -> str:
    """The card speaks of the project at hand (any domain), and counts the examples left out."""
    rows = ["| variant | " + " | ".join(spec.metrics) + " |", "|---|" + "---|" * len(spec.metrics)]
    for variant in ("torch", "fp32", "int8", "baseline"):
        if variant in metrics:
            rows.append(f"| {variant} | " + " | ".join(f"{metrics[variant].get(m, float('nan')):.4f}"
                                                        for m in spec.metrics) + " |")
    lat = [f"- {part}: {v['fp32_ms']:.3f} ms FP32, {v.get('int8_ms', float('nan')):.3f} ms INT8 at batch "
           f"{v['batch']} ({v.get('speedup', float('nan')):.2f}x)" for part, v in metrics.get("latency", {}).items()]
    parts = [f"- `{p}`: inputs " + ", ".join(f"`{i.name}` {i.datatype}{list(i.shape)}" for i in e.signature.inputs)
             + f"; output `{e.output}`; serves {e.served.upper()}" + _request_inputs(e) for p, e in manifest.parts.items()]
    examples = lineage.examples
    return "\n".join([
        f"# {name}", "", spec.description or "", "",
        f"Project: {project}",
        f"Family: {spec.family}" + (f" ({spec.task})" if spec.family == "tabular" else ""),
        f"Label: {spec.label.column} {spec.label.op or ''} {'' if spec.label.value is None else spec.label.value}",
        f"Examples: {examples.rows} rows of `{spec.examples.source}` (contract "
        f"{examples.contract.id} {examples.contract.version}); "
        f"holdout: the latest {spec.split.holdout:.0%} by event time, from {manifest.split_at}",
        f"Dropped: {dropped_unlabelled} rows without a label or an event time (not trained on, not in the holdout)",
        "", "## Metrics on the holdout", "", *rows, "",
        f"Gates: {verdict_text}", "", "## Parts", "", *parts, "", "## Latency (onnxruntime, 2 threads)", "", *lat,
        "", "## Intended use and limits", "",
        f"Trained on the historical examples of project '{project}' only; scores reflect past behaviour. "
        "Check the drift reports before trusting it on a changed population.", ""])
