"""The bundle a registered version points at: ONNX files, a manifest with checksums, a model card.

    <bundle>/model.onnx | user_encoder.onnx, item_encoder.onnx       FP32
    <bundle>/<part>.int8.onnx                                       INT8 (served by default)
    <bundle>/mlflow/<part>/                                         MLflow ONNX flavor, with signature
    <bundle>/manifest.json                                          parts, served files, SHA-256, metrics
    <bundle>/model_card.md

This is the write side. Readers (the index builder, the inference tier) use ``training.bundle``,
which trusts manifest.json, checks each SHA-256 and imports neither torch nor MLflow; no file here
is ever unpickled.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os

import numpy as np
import onnx

from millrace.contracts.names import check_inside, check_name
from millrace.training.bundle import MANIFEST, Manifest, load_part, read_manifest, write_manifest
from millrace.training.export import signature
from millrace.training.lineage import Lineage

__all__ = ["MANIFEST", "Manifest", "load_part", "read_manifest", "write_bundle", "model_card"]


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

    from millrace.training.export import run, session

    sample = spec.sample.take(np.arange(min(spec.sample.rows, 5)))
    output = run(session(model), sample)
    mlflow.onnx.save_model(model, os.path.join(directory, "mlflow", part),
                           signature=infer_signature(dict(sample.raw), output))


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
