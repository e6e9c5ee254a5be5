"""The models a release serves, as onnxruntime sessions with their protocol metadata.

Each bundle part is one model: a one-part bundle under the model's name (``will_like``), a
two_tower bundle's towers as ``<model>.user_encoder`` and ``<model>.item_encoder``. The version is
the registered version the release names; the metadata comes from the bundle's signature (ONNX
element types in the protocol's spelling, a dynamic axis as -1). The release is verified
(``indexing.release.verify``: every SHA-256, every index bound to its encoder) before a session is
made, so a damaged release is refused here and never serves.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from millrace.indexing.embed import ITEM_ENCODER, USER_ENCODER
from millrace.indexing.embed import session as onnx_session
from millrace.indexing.release import Release, verify
from millrace.serving.batching import Batcher
from millrace.serving.errors import InvalidInput, ModelNotFound, ReleaseRefused
from millrace.serving.tensors import DATATYPES, FROM_ONNX, TensorSpec
from millrace.training.bundle import load_part

PLATFORM = "onnxruntime_onnx"
log = logging.getLogger("millrace.serving")


class ServedModel:
    """One ONNX part, run through its dynamic batcher."""

    def __init__(self, name: str, version: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 session, variant: str, batching=None, metrics=None):
        self.name, self.version, self.inputs, self.outputs = name, version, inputs, outputs
        self.session, self.variant = session, variant
        self._names = [o.name for o in outputs]
        if batching is None:
            self.batcher = None
        else:
            self.batcher = Batcher(name, self._run, batching.max_batch_size, batching.max_queue_delay_ms,
                                   batching.max_queue, metrics, batching.parallel_runs)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self.session.run(self._names, feed)))

    def run_batched(self, feed: dict[str, np.ndarray], deadline: float | None = None) -> np.ndarray:
        """The first output for ``feed`` (the part's embedding or score)."""
        return self.run_all(feed, deadline)[self._names[0]]

    def run_all(self, feed: dict[str, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
        return self._run(feed) if self.batcher is None else self.batcher.infer(feed, deadline)

    def infer(self, feed: dict[str, np.ndarray], wanted: list[str] | None = None,
              deadline: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        unknown = [w for w in (wanted or []) if w not in self._names]
        if unknown:
            raise InvalidInput(f"model '{self.name}' has no output {unknown[0]!r} (it has {self._names})")
        outputs = self.run_all(feed, deadline)
        return {n: outputs[n] for n in (wanted or self._names)}, {}

    def warm(self) -> None:
        """One run on a row of zeros / empty strings: the first run of a session pays its set-up."""
        feed = {}
        for spec in self.inputs:
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            dtype = DATATYPES[spec.datatype][0]
            feed[spec.name] = np.full(shape, "", dtype=object) if spec.datatype == "BYTES" else np.zeros(shape, dtype)
        self._run(feed)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


@dataclass
class Repository:
    release: Release
    folder: str
    models: dict[str, object]  # ServedModel | Recommender
    load_seconds: float = 0.0

    def get(self, name: str, version: str = ""):
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"no model '{name}' in release {self.release.id} (models: {sorted(self.models)})")
        if version and version != model.version:
            raise ModelNotFound(f"model '{name}' has no version {version!r} in release {self.release.id} "
                                f"(it serves version {model.version})")
        return model

    def warm(self, requests: int = 1) -> None:
        for _ in range(requests):
            for model in self.models.values():
                model.warm()

    def close(self) -> None:
        """Stop the batchers once in-flight requests are answered (a replaced release)."""
        for model in self.models.values():
            model.close()


def load(root: str, release_id: str | None = None, variant: str | None = None, threads: int = 0, *,
         project=None, config=None, metrics=None) -> Repository:
    """The release ``release_id`` (default: the current one) of the release folder ``root``,
    verified, every model part loaded. ``variant``: fp32 | int8 (default: what each bundle serves).
    With ``project`` (a contracts Project) and ``config`` (its ServingConfig), parts are batched
    and a release with a retrieval model and its index also serves the composite ``recommender``."""
    started = time.perf_counter()
    checked = verify(root, release_id)
    batching = config.batching if config is not None else None
    models, parts = {}, {}
    for name, (folder, manifest) in checked.bundles.items():
        ref = checked.release.models[name]
        for part, entry in manifest.parts.items():
            kind = variant if variant in entry.files else entry.served
            served_name = name if len(manifest.parts) == 1 else f"{name}.{part}"
            onnx = load_part(folder, manifest, part, kind)
            models[served_name] = ServedModel(
                name=served_name, version=ref.version, inputs=_specs(entry.signature.inputs),
                outputs=_specs(entry.signature.outputs), session=onnx_session(onnx, threads, spin=False), variant=kind,
                batching=batching, metrics=metrics)
            parts[(name, part)] = (models[served_name], entry.inputs)
            if metrics is not None:
                metrics.model_loaded(served_name, ref.version, time.perf_counter() - started)
    repository = Repository(checked.release, checked.folder, models)
    if project is not None and config is not None:
        try:
            recommender = _recommender(checked, parts, project, config, metrics)
        except ReleaseRefused as exc:  # the release's own models still serve; say why the composite does not
            log.warning("%s; serving the release's models without it", exc)
            recommender = None
        except BaseException:
            repository.close()
            raise
        if recommender is not None:
            models[recommender.name] = recommender
    repository.load_seconds = time.perf_counter() - started
    return repository


def _recommender(checked, parts, project, config, metrics):
    """The composite model, when the release has a retrieval model with its index."""
    from millrace.features.online import OnlineReader
    from millrace.features.spec import load_features
    from millrace.serving import recommender

    models = checked.release.models
    chosen = config.recommender
    retrieval = chosen.retrieval or _only(models, "retrieval", checked.indexes)
    if retrieval is None:
        return None
    if retrieval not in checked.indexes:
        raise ReleaseRefused(f"recommender: release {checked.release.id} has no index for '{retrieval}' "
                             f"(fix: `millrace index --model {retrieval}` and release again)")
    ranking = chosen.ranking or _only(models, "ranking")
    if ranking is not None and ranking not in models:
        raise ReleaseRefused(f"recommender: release {checked.release.id} has no model '{ranking}' "
                             f"(serving.recommender.ranking; models: {sorted(models)})")
    user_model, user_inputs = parts[(retrieval, USER_ENCODER)]
    ranker = None
    if ranking is not None:
        (model, inputs), = [v for (name, _), v in parts.items() if name == ranking]
        ranker = recommender.Part(model, inputs)
    features = load_features(project)
    return recommender.build(
        version=checked.release.id, user=recommender.Part(user_model, user_inputs),
        item_inputs=parts[(retrieval, ITEM_ENCODER)][1], index=checked.indexes[retrieval], ranker=ranker,
        reader=OnlineReader(project, features), features=features, config=chosen, offline=project.offline,
        metrics=metrics, batching=config.batching)


def _only(models, role: str, among=None) -> str | None:
    names = [n for n, ref in models.items() if ref.role == role and (among is None or n in among)]
    if len(names) > 1:
        raise ReleaseRefused(f"recommender: the release has {len(names)} {role} models {sorted(names)} "
                             f"(fix: name one in serving.recommender.{role})")
    return names[0] if names else None


def _specs(tensors) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, FROM_ONNX.get(t.datatype, t.datatype),
                            tuple(d if isinstance(d, int) and d > 0 else -1 for d in t.shape)) for t in tensors)
