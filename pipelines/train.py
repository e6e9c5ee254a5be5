"""``millrace train``: gather a model's examples and lineage from the lake, train, print a summary.

The lake belongs to pipelines, so this is where examples are read; training only sees Arrow tables
and a lineage record (partition manifests, contract versions, feature view builds, code version).
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pyarrow as pa

from millrace.contracts.project import Project
from millrace.features import offline
from millrace.features.spec import Features
from millrace.features.training_set import resolve_refs
from millrace.pipelines import lake
from millrace.training.lineage import ContractRef, ExamplesLineage, FeatureViewLineage, Lineage, PartitionRef
from millrace.training.spec import Models


def examples_and_lineage(project: Project, features: Features, models: Models, name: str):
    spec = models.get(name)
    source = spec.examples.source
    contract = project.contract(source)
    key = contract.partitioning.key
    # one read: each partition's rows with the manifest they were read at, so the lineage names
    # exactly the commits the examples came from even when an ingest commits meanwhile
    pairs = lake.snapshot(project.lake, source, key)
    parts = [p for p, _ in pairs]
    tables = [t.append_column(key, pa.repeat(pa.scalar(p.value), t.num_rows)) for p, t in pairs]
    table = pa.concat_tables(tables) if tables else pa.table({})
    refs = spec.features or (spec.user.features + spec.item.features)
    views = resolve_refs(features, refs) if refs else {}
    snapshot = parts[0].version if parts else None  # one read: every partition at the same table version
    digest = hashlib.sha256((f"{source}@{snapshot};" + "".join(f"{p.value}:{p.manifest.run_id}:{p.manifest.rows}"
                                                               for p in parts)).encode()).hexdigest()
    contracts = {source: ContractRef(id=contract.id, version=contract.version)}
    feature_views = {}
    for view in views:
        manifest = offline.read_manifest(project.offline, view)
        view_source = features.view(view).source
        other = project.contract(view_source)
        contracts[view_source] = ContractRef(id=other.id, version=other.version)
        built = {k: getattr(manifest, k) for k in ("sha256", "run_id", "rows", "built_at", "features_yaml_sha256")} \
            if manifest else {"sha256": "", "run_id": "", "rows": 0, "built_at": "", "features_yaml_sha256": ""}
        feature_views[view] = FeatureViewLineage(uri=_uri(offline.data_path(project.offline, view)), **built)
    examples = ExamplesLineage(
        source=source, uri=_uri(lake.join(project.lake, source)), rows=table.num_rows, digest=digest,
        contract=contracts[source],
        partitions=tuple(PartitionRef(value=str(p.value), run_id=p.manifest.run_id, rows=p.manifest.rows,
                                      contract_version=p.manifest.contract.version) for p in parts),
        snapshot=snapshot)
    lineage = Lineage(examples=examples, contracts=contracts, feature_views=feature_views,
                      git_sha=git_sha(project.root))
    return table, contract.event_time, lineage


def git_sha(folder: Path) -> str:
    """The code version: the git commit of the project folder (or of millrace), '+dirty' if changed."""
    for where in (folder, Path(__file__).resolve().parent):
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                 timeout=5).stdout.strip()
            if sha:
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                return sha + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def _uri(path: str) -> str:
    return path if "://" in path else f"file://{path}"


def train_with_summary(console, project: Project, names: list[str] | None = None, quantizer=None,
                       force: bool = False, promote: bool = True) -> list:
    """Train each model (default: all of models.yaml). ``force``: move champion even when the
    current one cannot be re-scored on the new holdout. ``promote`` False: never move champion."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from millrace.features.spec import load_features
    from millrace.training.run import train
    from millrace.training.spec import load_models

    features = load_features(project)
    models = load_models(project, features)
    outcomes = []
    for name in names or models.names:
        models.get(name)
        table, time, lineage = examples_and_lineage(project, features, models, name)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} "
                      "epochs"), TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task(f"training {name}", total=models.get(name).hyperparameters.epochs, loss="-")

            def progress(epoch, epochs, loss, task=task, bar=bar):
                bar.update(task, completed=epoch, loss=f"{loss:.4f}")

            outcome = train(project, features, models, name, table, time, lineage, progress=progress,
                            quantizer=quantizer, say=console.print, force=force,
                            promote=promote)
        _summary(console, outcome)
        outcomes.append(outcome)
    return outcomes


def _summary(console, o) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in o.metrics.items())
    base = ", ".join(f"{k} {v:.4f}" for k, v in o.baseline.items())
    console.print(f"[bold]{o.registered_name}[/] version {o.version} (run {o.run_id}): {metrics}")
    console.print(f"  baseline: {base}")
    for part, lat in o.latency.items():
        if "int8_ms" in lat:
            console.print(f"  {part}: batch {lat['batch']} FP32 {lat['fp32_ms']:.2f} ms, INT8 {lat['int8_ms']:.2f} ms "
                          f"({lat['speedup']:.2f}x)")
    state = "[green]champion[/]" if o.promoted else "[yellow]challenger only, champion unchanged[/]"
    console.print(f"  {state}: {o.verdict}")
