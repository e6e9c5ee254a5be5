"""The models a release serves, as onnxruntime sessions with their protocol metadata.

Each bundle part is one model: a one-part bundle under the model's name (``will_like``), a
two_tower bundle's towers as ``<model>.user_encoder`` and ``<model>.item_encoder``. The version is
the registered version the release names; the metadata comes from the bundle's signature (ONNX
element types in the protocol's spelling, a dynamic axis as -1). The release is verified
(``indexing.release.verify``: every SHA-256, every index bound to its encoder) before a session is
made, so a damaged release is refused here and never serves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from millrace.indexing.embed import session as onnx_session
from millrace.indexing.release import Release, verify
from millrace.serving.errors import InvalidInput, ModelNotFound
from millrace.serving.tensors import FROM_ONNX, TensorSpec
from millrace.training.bundle import load_part

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    session: object
    variant: str

    def infer(self, feed: dict[str, np.ndarray], wanted: list[str] | None = None) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        unknown = [w for w in (wanted or []) if w not in names]
        if unknown:
            raise InvalidInput(f"model '{self.name}' has no output {unknown[0]!r} (it has {names})")
        chosen = wanted or names
        return dict(zip(chosen, self.session.run(chosen, feed)))


@dataclass(frozen=True)
class Repository:
    release: Release
    folder: str
    models: dict[str, ServedModel]

    def get(self, name: str, version: str = "") -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"no model '{name}' in release {self.release.id} (models: {sorted(self.models)})")
        if version and version != model.version:
            raise ModelNotFound(f"model '{name}' has no version {version!r} in release {self.release.id} "
                                f"(it serves version {model.version})")
        return model


def load(root: str, release_id: str | None = None, variant: str | None = None, threads: int = 0) -> Repository:
    """The release ``release_id`` (default: the current one) of the release folder ``root``,
    verified, every model part loaded. ``variant``: fp32 | int8 (default: what each bundle serves)."""
    checked = verify(root, release_id)
    models = {}
    for name, (folder, manifest) in checked.bundles.items():
        ref = checked.release.models[name]
        for part, entry in manifest.parts.items():
            kind = variant if variant in entry.files else entry.served
            served_name = name if len(manifest.parts) == 1 else f"{name}.{part}"
            onnx = load_part(folder, manifest, part, kind)
            models[served_name] = ServedModel(
                name=served_name, version=ref.version, inputs=_specs(entry.signature.inputs),
                outputs=_specs(entry.signature.outputs), session=onnx_session(onnx, threads), variant=kind)
    return Repository(checked.release, checked.folder, models)


def _specs(tensors) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, FROM_ONNX.get(t.datatype, t.datatype),
                            tuple(d if isinstance(d, int) and d > 0 else -1 for d in t.shape)) for t in tensors)
