"""One training run, end to end: fit, export, check parity, quantize, gate INT8, log, register, promote.

Every check that can refuse a model runs before anything is registered: a run that fails (bad
data, NaN loss, export mismatch, INT8 loss over the gate) is logged to MLflow as FAILED with the
reason, and no version is created. A version that registers gets the ``challenger`` alias; it
becomes ``champion`` only if it passes the metric gates and beats the champion on the same holdout;
when the champion cannot be re-scored on this holdout the gate refuses unless ``force``.

Each run first reconciles the registry (alias moves and runs a killed process left half done, see
``registry``), and names its crash points (``after_run_start``, ``after_register``,
``after_alias_move``) so the kill test can stop it there.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from dataclasses import dataclass

import pyarrow as pa

from millrace.contracts.faults import checkpoint
from millrace.contracts.project import Project
from millrace.features.expr import derive
from millrace.features.spec import Features
from millrace.training import artifacts, export, gates, registry
from millrace.training.data import split as split_examples
from millrace.training.errors import QuantizationRefused, RecordError, TrainingError
from millrace.training.lineage import FILE as LINEAGE_FILE
from millrace.training.lineage import Lineage
from millrace.training.spec import Models, ModelSpec

LATENCY_BATCH, LATENCY_THREADS = 256, 2


@dataclass
class Outcome:
    model: str
    registered_name: str
    run_id: str
    version: str
    metrics: dict
    baseline: dict
    promoted: bool
    verdict: str
    latency: dict
    sizes: dict


def train(project: Project, features: Features, models: Models, name: str, examples: pa.Table, time: str,
          lineage: Lineage, *, progress=None, quantizer=None, say=lambda text: None, force: bool = False,
          promote: bool = True) -> Outcome:
    """Train model ``name`` on ``examples`` (rows of its examples source; ``time`` is the event time).
    ``force``: move champion even when the current one cannot be re-scored on this holdout.
    ``promote`` False: register the version (challenger) with its gate verdict, never move champion
    (a backfill's training)."""
    import mlflow

    from millrace.training import quantize

    spec = models.get(name)
    quantizer = quantizer or quantize.quantize
    # derived columns first: labels, keys and request inputs may be derived from the row
    split = split_examples(derive(examples, features.derived_columns(spec.examples.source)), spec, time, name)
    client = registry.connect(project)
    reg_name = registry.registered_name(project, name)
    exp = registry.experiment_id(client, project, name)
    for event in registry.reconcile(client, reg_name):
        say(f"{reg_name}: alias log completed after an interrupted move: {event.alias} -> v{event.version}")
    for run_id in registry.close_orphans(client, exp):
        say(f"{reg_name}: run {run_id} was left RUNNING by a process that ended; closed as FAILED")
    started = dt.datetime.now(dt.timezone.utc)
    with mlflow.start_run(experiment_id=exp, run_name=f"{name}-{started:%Y%m%dT%H%M%S}",
                          tags=registry.process_tags()) as run:
        checkpoint("after_run_start")
        try:
            _log_inputs(spec, split, lineage, time)
            say(f"training {name} ({spec.family}) on {split.train.num_rows:,} examples, "
                f"holdout {split.holdout.num_rows:,} from {split.cut}")
            fitted = family(spec).fit(project, features, spec, split, time, name, progress)
            for epoch, loss in enumerate(fitted.losses, 1):
                mlflow.log_metric("train_loss", loss, step=epoch)
            mlflow.log_params({f"size.{k}": v for k, v in fitted.sizes.items()})

            fp32 = {p: export.export(part.module, part.specs, part.sample, part.output, f"{reg_name} {p}")
                    for p, part in fitted.parts.items()}
            for p, part in fitted.parts.items():
                mlflow.log_metric(f"parity_max_abs_diff.{p}", export.check_parity(part.module, fp32[p], part.sample, p))
            results = {"torch": fitted.evaluate(_torch_runner(fitted)), "fp32": fitted.evaluate(_onnx_runner(fp32)),
                       "baseline": fitted.baseline}
            int8 = {}
            if spec.quantization.method != "none":
                int8 = {p: quantizer(fp32[p], spec.quantization.method, fitted.calibration.get(p)) for p in fp32}
                results["int8"] = fitted.evaluate(_onnx_runner(int8))
                drop = gates.int8_drop(spec, results["fp32"], results["int8"])
                mlflow.log_metric("int8_drop", drop)
                if drop > spec.quantization.max_metric_drop:
                    raise QuantizationRefused(
                        f"model '{name}': INT8 loses {drop:.4f} {spec.primary} against FP32 "
                        f"({results['int8'][spec.primary]:.4f} vs {results['fp32'][spec.primary]:.4f}), over the gate "
                        f"{spec.quantization.max_metric_drop:g} (fix: try quantization.method static/dynamic, or "
                        f"none; nothing was registered)")
            served = results["int8" if int8 else "fp32"]
            latency = _latency(fitted, fp32, int8)
            results["latency"] = latency
            _log_metrics(results, latency)

            champion = _champion(client, reg_name, spec, fitted)
            verdict = gates.judge(spec, served, fitted.baseline, champion, force=force)
            if verdict.incomparable:
                mlflow.set_tag("millrace.gate.incomparable", verdict.incomparable[:4000])
                say(f"{reg_name}: {verdict.incomparable}: " + ("champion moves anyway (--force)" if force else
                    "champion stays (fix: train with --force to move it anyway)"))
            with tempfile.TemporaryDirectory() as bundle:
                info = {"model": name, "registered_name": reg_name, "family": spec.family, "task": spec.task,
                        "primary": spec.primary, "metrics": served, "run_id": run.info.run_id,
                        "split_at": str(split.cut), "time_column": time}
                manifest = artifacts.write_bundle(bundle, fitted.parts, fp32, int8, info)
                card = artifacts.model_card(name, spec, manifest, results, verdict.summary, lineage,
                                            project=project.name, dropped_unlabelled=split.dropped_unlabelled)
                with open(os.path.join(bundle, "model_card.md"), "w") as f:
                    f.write(card)
                with open(os.path.join(bundle, LINEAGE_FILE), "w") as f:
                    f.write(lineage.to_json())
                mlflow.log_artifacts(bundle, "bundle")
                bundle_uri = f"{run.info.artifact_uri}/bundle"
                logged = artifacts.log_model(bundle, manifest, fitted.parts, name,
                                             {registry.BUNDLE_TAG: bundle_uri, "millrace.registered_name": reg_name})
            mlflow.set_tag("mlflow.note.content", card)
            version = _register(client, reg_name, spec, run.info.run_id, logged.model_id, bundle_uri, verdict)
            promoted = verdict.passed and promote
            if verdict.passed and not promote:
                say(f"{reg_name} v{version}: gates passed; champion not moved (a backfill promotes only with --promote)")
            if promoted:
                registry.move_alias(client, reg_name, registry.CHAMPION, version, f"gate passed: {verdict.summary}")
            mlflow.set_tags({"millrace.version": version, "millrace.promoted": str(promoted),
                             "millrace.gate": verdict.summary[:4000]})
        except TrainingError as exc:
            mlflow.set_tag("millrace.error", str(exc)[:4000])
            raise
    return Outcome(name, reg_name, run.info.run_id, version, served, fitted.baseline, promoted, verdict.summary,
                   latency, fitted.sizes)


def family(spec: ModelSpec):
    """The module that fits ``spec``'s family (``two_tower`` or ``tabular``)."""
    if spec.family == "two_tower":
        from millrace.training import two_tower
        return two_tower
    from millrace.training import tabular
    return tabular


def _torch_runner(fitted):
    return lambda part, encoded: export.torch_outputs(fitted.parts[part].module, encoded)


def _onnx_runner(models: dict):
    sessions = {p: export.session(m) for p, m in models.items()}
    return lambda part, encoded: export.run(sessions[part], encoded)


def _latency(fitted, fp32: dict, int8: dict, rounds: int = 3) -> dict:
    """FP32 and INT8 timed in alternation; the speedup is the median of the paired ratios, so a
    load swing on a shared machine does not land on one variant only (bench/training.py does more)."""
    import numpy as np

    from millrace.training.quantize import latency

    out = {}
    for p, part in fitted.parts.items():
        a_sess = export.session(fp32[p], LATENCY_THREADS)
        b_sess = export.session(int8[p], LATENCY_THREADS) if p in int8 else None
        a_ms, b_ms = [], []
        for _ in range(rounds if b_sess else 1):
            a_ms.append(latency(a_sess, part.sample, LATENCY_BATCH, seconds=0.3)["ms"])
            if b_sess:
                b_ms.append(latency(b_sess, part.sample, LATENCY_BATCH, seconds=0.3)["ms"])
        entry = {"batch": LATENCY_BATCH, "fp32_ms": float(np.median(a_ms))}
        if b_sess:
            entry.update(int8_ms=float(np.median(b_ms)), speedup=float(np.median(np.divide(a_ms, b_ms))))
        out[p] = entry
    return out


def _log_metrics(results: dict, latency: dict) -> None:
    import mlflow

    flat = {}
    for variant in ("torch", "fp32", "int8", "baseline"):
        for metric, value in results.get(variant, {}).items():
            flat[f"{variant}.{metric}"] = value
    served = results.get("int8") or results["fp32"]
    flat.update(served)
    for part, entry in latency.items():
        for key in ("fp32_ms", "int8_ms", "speedup"):
            if key in entry:
                flat[f"latency.{part}.{key}"] = entry[key]
    mlflow.log_metrics({k: float(v) for k, v in flat.items() if v == v})  # NaN (undefined) is left out


def _log_inputs(spec: ModelSpec, split, lineage: Lineage, time: str) -> None:
    import mlflow
    import pyarrow.compute as pc
    from mlflow.data.meta_dataset import MetaDataset

    # the newest event the model saw (training or holdout): drift compares what came after it
    ends = [pc.max(t.column(time)).as_py() for t in (split.train, split.holdout) if t.num_rows]
    until = max((e for e in ends if e is not None), default=None)

    params = {"family": spec.family, "task": spec.task, "examples.source": spec.examples.source,
              "label": f"{spec.label.column} {spec.label.op or ''} {spec.label.value if spec.label.op else ''}".strip(),
              "split.holdout": spec.split.holdout, "split.at": str(split.cut), "primary": spec.primary,
              "split.until": str(until) if until is not None else "",
              "quantization.method": spec.quantization.method,
              "quantization.max_metric_drop": spec.quantization.max_metric_drop,
              "features": json.dumps(spec.features or {"user": spec.user.features, "item": spec.item.features})[:6000],
              "examples.train": split.train.num_rows, "examples.holdout": split.holdout.num_rows,
              "examples.dropped_unlabelled": split.dropped_unlabelled}
    params.update({f"hp.{k}": v for k, v in spec.hyperparameters.model_dump().items()})
    mlflow.log_params(params)
    examples = lineage.examples
    source = _source(examples.uri)
    for context, table in (("training", split.train), ("holdout", split.holdout)):
        digest = f"{examples.digest}:{context}:{table.num_rows}"
        mlflow.log_input(MetaDataset(source, name=f"{spec.examples.source}.{context}", digest=_short(digest)),
                         context=context)
    for view, info in lineage.feature_views.items():
        mlflow.log_input(MetaDataset(_source(info.uri), name=f"feature_view.{view}",
                                     digest=info.sha256[:36]), context="features")
    tags = {"millrace.git_sha": lineage.git_sha}
    for source_name, contract in lineage.contracts.items():
        tags[f"millrace.contract.{source_name}"] = f"{contract.id}@{contract.version}"
    for view, info in lineage.feature_views.items():
        tags[f"millrace.feature_view.{view}"] = f"{info.sha256[:16]} run {info.run_id}"
    mlflow.set_tags(tags)


def _source(uri: str):
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():  # "file://" matches two equivalent source classes; either will do
        warnings.simplefilter("ignore")
        return resolve_dataset_source(uri)


def _short(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _champion(client, reg_name: str, spec: ModelSpec, fitted) -> dict | None:
    """The champion's primary metric on this run's holdout (re-scored from its ONNX files), or, marked
    not comparable, its logged metric when it cannot be re-scored (its inputs no longer exist)."""
    from mlflow.exceptions import MlflowException

    from millrace.training.errors import UnknownModel

    try:
        version = registry.alias_target(client, reg_name, registry.CHAMPION)
    except MlflowException:
        return None
    if version is None:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = registry.download(client, reg_name, version, tmp)
            manifest = artifacts.read_manifest(folder)
            sessions = {p: export.session(artifacts.load_part(folder, manifest, p)) for p in fitted.parts}
            result = fitted.evaluate(lambda part, encoded: export.run(sessions[part], encoded))
            return {"version": version, "metric": result[spec.primary], "how": "re-scored on this holdout",
                    "comparable": True}
    except (KeyError, ValueError, OSError, RecordError, UnknownModel, MlflowException) as exc:
        logged = client.get_run(client.get_model_version(reg_name, version).run_id).data.metrics.get(spec.primary)
        return {"version": version, "metric": math.nan if logged is None else logged,
                "how": f"cannot re-score: {str(exc).strip(chr(39))}"[:300], "comparable": False}


def _register(client, reg_name: str, spec: ModelSpec, run_id: str, model_id: str, bundle_uri: str, verdict) -> str:
    registry.ensure_registered(client, reg_name, spec.description)
    mv = registry.register(client, reg_name, model_id, run_id, bundle_uri,
                           {registry.GATE_TAG: "passed" if verdict.passed else "failed"}, verdict.summary[:4000])
    checkpoint("after_register")
    registry.move_alias(client, reg_name, registry.CHALLENGER, mv.version, f"registered by run {run_id}")
    return str(mv.version)
