"""``millrace index``: embed a two_tower model's item catalogue, build its FAISS index, gate its
recall on the holdout users, store it beside its manifest and log it to the version's MLflow run.

The registry, the lake and the offline store belong to the layers above indexing, so this is where
the version is resolved, the bundle fetched and the catalogue gathered; ``millrace.indexing`` only
sees a bundle folder and Arrow tables.

The catalogue is every item key the model can be asked about: the keys of its item feature views
(the offline store) and of its examples, with their features as of the build time (the newest event
when ``feature_store.ttl_clock`` is ``data``, else now). The gate's queries are the holdout users
(the latest ``split.holdout`` of the examples), with their features as of the split time, as
training evaluated them.
"""
from __future__ import annotations

import datetime as dt
import os
import tempfile
import time as clock
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.project import Project
from millrace.features.spec import Features
from millrace.indexing.errors import CatalogueError
from millrace.indexing.manifest import EncoderRef, IndexManifest
from millrace.training.spec import Models, ModelSpec

INDEX_TAG = "millrace.index"  # model version tag: the build id of its newest passing index


@dataclass(frozen=True)
class IndexOutcome:
    model: str
    registered_name: str
    version: str
    folder: str
    manifest: IndexManifest


def index_root(project: Project) -> str:
    return os.path.join(project.state_dir, "indexes")


def resolve_version(client, project: Project, name: str, version: str | None, alias: str | None) -> str:
    from millrace.training import registry
    from millrace.training.errors import UnknownModel

    reg = registry.registered_name(project, name)
    if version is not None:
        return str(registry.get_version(client, reg, version).version)
    alias = alias or registry.CHAMPION
    registry.versions(client, reg)  # an unknown model is its own one-line error
    target = registry.alias_target(client, reg, alias)
    if target is None:
        raise UnknownModel(f"'{reg}' has no version under the alias '{alias}' (fix: name one with --version, "
                           f"or train until a version passes its gates)")
    return target


def index_model(project: Project, features: Features, models: Models, name: str, examples: pa.Table, time: str,
                *, version: str | None = None, alias: str | None = None, progress=None,
                say=lambda text: None) -> IndexOutcome:
    """Build, gate and store the index of ``name`` at ``version`` (or ``alias``; default champion).
    ``examples``: the model's examples source rows; ``time`` its event-time column."""
    from millrace.indexing import build, factory
    from millrace.indexing import manifest as manifests
    from millrace.indexing.embed import ITEM_ENCODER, USER_ENCODER, Encoder
    from millrace.training import registry
    from millrace.training.bundle import read_manifest

    spec = models.get(name)
    if spec.family != "two_tower":
        two_tower = [n for n in models.names if models.get(n).family == "two_tower"]
        raise CatalogueError(f"model '{name}' is {spec.family}: it has no item encoder to index (fix: index a "
                             f"two_tower model{': ' + ', '.join(two_tower) if two_tower else ''})")
    client = registry.connect(project)
    reg = registry.registered_name(project, name)
    version = resolve_version(client, project, name, version, alias)
    mv = registry.get_version(client, reg, version)
    with tempfile.TemporaryDirectory() as tmp:
        folder = registry.download(client, reg, version, tmp)
        bundle = read_manifest(folder)
        items_encoder = Encoder(folder, bundle, ITEM_ENCODER)
        users_encoder = Encoder(folder, bundle, USER_ENCODER)
    encoder = EncoderRef(model=name, registered_name=reg, version=version, run_id=mv.run_id,
                         variant=items_encoder.variant, item_sha256=items_encoder.sha256,
                         user_sha256=users_encoder.sha256)

    as_of = _as_of(project, examples, time)
    catalogue = catalogue_table(project, features, spec, examples, time, as_of)
    if catalogue.num_rows == 0:
        raise CatalogueError(f"model '{name}': the item catalogue is empty (no item key in the examples or the item "
                             f"feature views) (fix: ingest the examples and build the features first: "
                             f"`millrace nightly`)")
    say(f"embedding {catalogue.num_rows:,} items with {reg} v{version} ({encoder.variant})")
    started = clock.perf_counter()
    vectors = items_encoder.embed(catalogue, spec.index.batch,
                                  progress and (lambda done, total: progress("embed", done, total)))
    queries = users_encoder.embed(query_table(project, features, spec, examples, time, name), spec.index.batch)
    embed_seconds = clock.perf_counter() - started
    if queries.shape[1] != vectors.shape[1]:
        raise CatalogueError(f"model '{name}' v{version}: user vectors have dimension {queries.shape[1]}, item "
                             f"vectors {vectors.shape[1]}; an inner-product index needs one dimension (fix: retrain "
                             f"the model; the two towers disagree)")
    chosen = factory.choose(len(vectors), vectors.shape[1], spec.index)
    built = build.build(vectors, chosen, factory.train_rows(len(vectors), chosen, spec.index),
                        seed=spec.hyperparameters.seed, where=str(models.path), progress=progress)
    gate = build.tune(built.index, vectors, queries, spec.recall_k, spec.index.recall.min, what=f"{reg} v{version}")
    import faiss

    fields = dict(
        build_id=manifests.new_build_id(), encoder=encoder, dim=int(vectors.shape[1]),
        metric=factory.metric(vectors, queries), factory=chosen, search=gate.params, items=len(vectors),
        item_key=spec.item.key, key_type="int64" if pa.types.is_integer(catalogue.schema.field(spec.item.key).type)
        else "string",
        recall=manifests.RecallRecord(k=gate.k, min=gate.min_recall, achieved=gate.recall, queries=gate.queries,
                                      seconds=round(gate.seconds, 3), tried=gate.tried),
        as_of=as_of.isoformat(), built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(built.train_seconds + built.add_seconds, 3), embed_seconds=round(embed_seconds, 3),
        train_rows=built.train_rows, device=built.device, gpus=built.gpus, faiss_version=faiss.__version__,
        note=built.note)
    keys = catalogue.column(spec.item.key).combine_chunks()
    stored, manifest = manifests.write(index_root(project), built.index, keys, fields)
    _log(client, reg, version, mv.run_id, stored, manifest)
    return IndexOutcome(name, reg, version, stored, manifest)


def _as_of(project: Project, examples: pa.Table, time: str) -> dt.datetime:
    if project.ttl_clock == "data" and examples.num_rows:
        newest = pc.max(examples.column(time)).as_py()
        if newest is not None:
            return newest if newest.tzinfo else newest.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc)


def catalogue_table(project: Project, features: Features, spec: ModelSpec, examples: pa.Table, time: str,
                    as_of: dt.datetime) -> pa.Table:
    """Every item key (examples and item feature views), sorted, with its item features as of ``as_of``."""
    from millrace.features.offline import read_view
    from millrace.features.training_set import resolve_refs, training_set

    key = spec.item.key
    key_type = examples.schema.field(key).type if key in examples.column_names else None
    keys = [examples.column(key).combine_chunks()] if key_type is not None else []
    for view in (resolve_refs(features, spec.item.features) if spec.item.features else {}):
        column = read_view(project.offline, view).column(features.join_key(view)).combine_chunks()
        keys.append(pc.cast(column, key_type) if key_type is not None else column)
        key_type = key_type or column.type
    if not keys:
        return pa.table({key: pa.array([], pa.int64())})
    unique = pc.unique(pa.chunked_array(keys)).drop_null()
    unique = unique.take(pc.sort_indices(unique))
    spine = pa.table({key: unique, time: pa.repeat(pa.scalar(as_of, _time_type(examples, time)), len(unique))})
    table = training_set(project, features, spine, spec.item.features, time) if spec.item.features else spine
    return table


def query_table(project: Project, features: Features, spec: ModelSpec, examples: pa.Table, time: str,
                name: str) -> pa.Table:
    """The holdout users (up to ``index.recall.queries``, spread over the key range) with their
    features as of the split time."""
    from millrace.features.expr import derive
    from millrace.features.training_set import training_set
    from millrace.training.data import split as split_examples
    from millrace.training.families import spread

    split = split_examples(derive(examples, features.derived_columns(spec.examples.source)), spec, time, name)
    users = pc.unique(split.holdout.column(spec.user.key).combine_chunks()).drop_null()
    users = users.take(pc.sort_indices(users))
    users = users.take(pa.array(spread(len(users), spec.index.recall.queries)))
    spine = pa.table({spec.user.key: users,
                      time: pa.repeat(pa.scalar(split.cut, _time_type(examples, time)), len(users))})
    refs = spec.user.features + ([spec.user.history] if spec.user.history else [])
    return training_set(project, features, spine, refs, time) if refs else spine


def _time_type(examples: pa.Table, time: str) -> pa.DataType:
    return examples.schema.field(time).type if time in examples.column_names else pa.timestamp("us", tz="UTC")


def _log(client, reg: str, version: str, run_id: str, folder: str, manifest: IndexManifest) -> None:
    """The build folder as artifacts of the version's run, and the version tagged with the build."""
    client.log_artifacts(run_id, folder, f"index/{manifest.build_id}")
    client.set_model_version_tag(reg, version, INDEX_TAG, manifest.build_id)
    client.set_model_version_tag(reg, version, f"{INDEX_TAG}.recall",
                                 f"recall@{manifest.recall.k} {manifest.recall.achieved:.4f} >= {manifest.recall.min:g}")


def latest_index(project: Project, registered_name: str, version: str) -> str | None:
    """The newest stored (so passing) index build of a version, or None."""
    from millrace.indexing.manifest import builds

    found = builds(index_root(project), registered_name, version)
    return found[-1] if found else None


def index_with_summary(console, project: Project, name: str, version: str | None = None,
                       alias: str | None = None) -> IndexOutcome:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from millrace.features.spec import load_features
    from millrace.pipelines.train import examples_and_lineage
    from millrace.training.spec import load_models

    features = load_features(project)
    models = load_models(project, features)
    models.get(name)
    examples, time, _ = examples_and_lineage(project, features, models, name)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(_PHASES.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        outcome = index_model(project, features, models, name, examples, time, version=version, alias=alias,
                              progress=progress, say=console.print)
    summary(console, outcome)
    return outcome


_PHASES = {"embed": "embedding items", "train": "training the index", "add": "adding vectors"}


def summary(console, o: IndexOutcome) -> None:
    m = o.manifest
    console.print(f"[bold]{o.registered_name}[/] version {o.version}: {m.factory} index of {m.items:,} items, "
                  f"dim {m.dim}, {m.metric.replace('_', ' ')}, built on {m.device} in {m.build_seconds:.1f} s")
    params = ", ".join(f"{k}={v}" for k, v in m.search.items()) or "exact search"
    console.print(f"  recall@{m.recall.k} {m.recall.achieved:.4f} (gate {m.recall.min:g}) on {m.recall.queries:,} "
                  f"holdout users at {params}")
    console.print(f"  stored: {o.folder}")
