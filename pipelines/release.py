"""``millrace release``: bind the champions, their indexes and the feature builds into one release.

Only a version under the ``champion`` alias can be released, and a retrieval (two_tower) champion
only with an index that passed its recall gate and was built from exactly its encoder files. The
registry and the offline store are read here; ``indexing.release`` writes the release and swaps
the pointer. Bundles are copied into the release (the ONNX files and manifest, not the MLflow
flavor), index files hard-linked where the filesystem allows: a release reads nothing outside
its folder, so the inference tier needs neither MLflow nor the state it came from.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import tempfile

from millrace.contracts.project import Project
from millrace.indexing import release as releases
from millrace.indexing.errors import ReleaseRefused

ROLE = {"two_tower": "retrieval", "tabular": "ranking"}
BUNDLE_EXTRAS = ("model_card.md", "lineage.json")


def release_root(project: Project) -> str:
    return releases.release_root(project.state_dir)


def create(project: Project, names: list[str] | None = None, say=lambda text: None) -> releases.Release:
    """Release the champions of ``names`` (default: every model of models.yaml)."""
    from millrace.features.spec import load_features
    from millrace.indexing.manifest import MANIFEST, IndexManifest, check_binding
    from millrace.pipelines.index import latest_index
    from millrace.pipelines.train import git_sha
    from millrace.training import registry
    from millrace.training.bundle import read_manifest
    from millrace.training.spec import load_models

    features = load_features(project)
    models = load_models(project, features)
    names = names or models.names
    client = registry.connect(project)
    release_id = releases.new_id(release_root(project))
    refs, index_refs, sources = {}, {}, set()
    work = tempfile.mkdtemp(prefix="millrace-release-")
    staged: dict[str, tuple[str, str | None]] = {}  # model -> (downloaded bundle, index folder)
    try:
        for name in names:
            spec = models.get(name)
            reg = registry.registered_name(project, name)
            registry.versions(client, reg)  # unknown model: one line
            registry.reconcile(client, reg)
            version = registry.alias_target(client, reg, registry.CHAMPION)
            if version is None:
                raise ReleaseRefused(f"{reg} has no champion: only a version under the champion alias can be released "
                                     f"(fix: train until a version passes its gates, `millrace train --model {name}`, "
                                     f"or promote one: `millrace models promote {name} V --reason TEXT`)")
            mv = registry.get_version(client, reg, version)
            bundle = registry.download(client, reg, version, os.path.join(work, name))
            bundle_manifest = read_manifest(bundle)
            ref = releases.ModelRef(model=name, registered_name=reg, version=version, run_id=mv.run_id,
                                    family=spec.family, role=ROLE[spec.family], bundle=f"models/{name}",
                                    bundle_sha256=_sha_file(os.path.join(bundle, "manifest.json")))
            index_folder = None
            if spec.family == "two_tower":
                index_folder = latest_index(project, reg, version)
                if index_folder is None:
                    raise ReleaseRefused(f"{reg} version {version} (champion) has no index that passed its recall gate "
                                         f"(fix: `millrace index --model {name}`, then release again)")
                path = os.path.join(index_folder, MANIFEST)
                with open(path, "rb") as f:
                    data = f.read()
                manifest = IndexManifest.from_json(data, path)
                # the binding now, before anything is staged; every file is verified at commit
                check_binding(index_folder, manifest.encoder, releases.served_encoder(ref, bundle_manifest))
                index_refs[name] = releases.index_ref(name, f"indexes/{name}", manifest, data)
            refs[name] = ref
            staged[name] = (bundle, index_folder)
            sources.add(spec.examples.source)
            sources.update(features.view(view).source for view in _views(features, spec))
        views = _feature_views(project, features, models, names)
        contracts = {s: releases.ContractRef(id=project.contract(s).id, version=project.contract(s).version)
                     for s in sorted(sources)}
        document = releases.Release(
            id=release_id, created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            created_by=registry.actor(), project=project.name, git_sha=git_sha(project.root), models=refs,
            indexes=index_refs, feature_views=views, contracts=contracts)

        def stage(folder: str) -> None:
            for name, (bundle, index_folder) in staged.items():
                _copy_bundle(bundle, os.path.join(folder, refs[name].bundle))
                if index_folder:
                    _link_tree(index_folder, os.path.join(folder, index_refs[name].folder))

        root = release_root(project)
        os.makedirs(root, exist_ok=True)
        releases.commit(root, document, stage, by=registry.actor(),
                        reason="created: " + ", ".join(f"{r.model} v{r.version}" for r in refs.values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"release {release_id} is current")
    return document


def _feature_views(project: Project, features, models, names: list[str]) -> dict:
    """The offline build of every view the models read, and what the online store last got from it."""
    from millrace.features import offline

    views = {}
    for name in names:
        for view in _views(features, models.get(name)):
            manifest = offline.read_manifest(project.offline, view)
            if manifest is None:
                raise ReleaseRefused(f"feature view '{view}' has no offline build (fix: `millrace features build`)")
            store, at = _materialized(project, view)
            views[view] = releases.FeatureViewRef(sha256=manifest.sha256, run_id=manifest.run_id, rows=manifest.rows,
                                                  built_at=manifest.built_at, online_store=store, materialized_at=at)
    return dict(sorted(views.items()))


def _views(features, spec) -> list[str]:
    """The feature views a model reads (either tower's, and the user history's)."""
    from millrace.features.training_set import resolve_refs

    refs = spec.features or (spec.user.features + spec.item.features + ([spec.user.history] if spec.user.history else []))
    return list(resolve_refs(features, refs)) if refs else []


def _materialized(project: Project, view: str) -> tuple[str, str]:
    """(online store, written at) of the view's last materialization, from its store record."""
    import pyarrow.parquet as pq

    from millrace.contracts import storage
    from millrace.features import stores
    from millrace.features.records import StoreRecord

    path = stores.record_path(project, view)
    if not storage.exists(path):
        return "", ""
    meta = (pq.read_schema(io.BytesIO(storage.read_bytes(path))).metadata or {}).get(b"millrace.store_record")
    if not meta:
        return "", ""
    record = StoreRecord.from_json(meta, path)
    return record.store, record.written_at


def _copy_bundle(source: str, target: str) -> None:
    """The manifest, every ONNX file it names, the card and the lineage."""
    from millrace.training.bundle import read_manifest

    os.makedirs(target)
    manifest = read_manifest(source)
    names = {"manifest.json", *BUNDLE_EXTRAS}
    for part in manifest.parts.values():
        names.update(part.files.values())
    for name in sorted(names):
        if os.path.exists(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))


def _link_tree(source: str, target: str) -> None:
    os.makedirs(target)
    for name in os.listdir(source):
        try:
            os.link(os.path.join(source, name), os.path.join(target, name))
        except OSError:  # another filesystem, or links not allowed: copy
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))


def _sha_file(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rollback(project: Project, to: str | None = None) -> releases.Pointer:
    """Point ``CURRENT`` at ``to`` (default: the release before the current one), verified first."""
    from millrace.training.registry import actor

    root = release_root(project)
    target = releases.rollback_target(root, to)
    releases.verify(root, target)
    before = releases.current(root)
    return releases.point(root, target, by=actor(),
                          reason=f"rollback from {before.release if before else 'none'}")


def describe(release: releases.Release, current_id: str | None) -> list[str]:
    """A release as a few lines (``release show``)."""
    mark = " (current)" if release.id == current_id else ""
    lines = [f"release {release.id}{mark}: created {release.created_at} by {release.created_by}, project "
             f"{release.project}, code {release.git_sha[:12]}"]
    for ref in release.models.values():
        lines.append(f"  {ref.role:<9} {ref.model}: {ref.registered_name} v{ref.version} ({ref.alias}), run {ref.run_id}")
    for name, ref in release.indexes.items():
        lines.append(f"  index     {name}: {ref.factory}, {ref.items:,} items, recall@{ref.k} {ref.recall:.4f}, "
                     f"build {ref.build_id}")
    for view, ref in release.feature_views.items():
        online = f", online {ref.online_store} at {ref.materialized_at}" if ref.online_store else ""
        lines.append(f"  view      {view}: {ref.rows:,} rows, build {ref.run_id}{online}")
    lines.append("  contracts " + ", ".join(f"{s} {c.version}" for s, c in release.contracts.items()))
    return lines
