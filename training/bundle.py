"""The bundle format, read side: a typed manifest and checksummed ONNX bytes.

    <bundle>/manifest.json     parts, the file of each variant, SHA-256 of every file, signatures
    <bundle>/<part>.onnx       FP32;  <bundle>/<part>.int8.onnx  INT8 (served by default)

The index builder and the inference tier read bundles through this module only. It imports
pydantic and millrace's bottom layer, never torch, MLflow, onnx, Beam or Feast (checked by
import-linter and by tests/training/test_bundle.py), so a reader starts in a fraction of a second.
The write side (ONNX serialization, the MLflow flavor, the model card) is ``training.artifacts``.
"""
from __future__ import annotations

import hashlib
import os
from typing import ClassVar, Final, Literal

from pydantic import ConfigDict, Field, model_validator

from millrace.contracts.names import check_inside
from millrace.contracts.records import Record
from millrace.training.errors import RecordError

MANIFEST = "manifest.json"
FORMAT_VERSION: Final = 2  # 2: each input names its source (InputInfo.source)
_FIX = "the bundle is corrupt or incomplete; download or train it again"


class BundleRecord(Record):
    """A record stored in a bundle (the manifest, the lineage): corrupt is a RecordError."""

    corrupt: ClassVar[type[Exception]] = RecordError


class Tensor(BundleRecord):
    name: str
    datatype: str = Field(description="ONNX element type name: FLOAT, INT64, STRING.")
    shape: tuple[int | str, ...] = Field(description="A str is a dynamic axis ('batch').")


class Signature(BundleRecord):
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


class InputInfo(BundleRecord):
    """How a model input was fitted (the lookup and normalization live in the graph)."""

    name: str
    kind: Literal["numeric", "categorical", "multi"]
    dtype: str
    mean: float
    std: float
    vocabulary: int = Field(description="Vocabulary size (the values themselves are in the graph).")
    source: str = Field("", description="Where serving gets the value: 'view:feature' (the online store), "
                                        "'request:<column>' (the request itself: a column of the example row) "
                                        "or 'key:<column>' (an entity key). Empty in bundles written before it.")


class Part(BundleRecord):
    files: dict[str, str] = Field(description="Variant (fp32 | int8) -> file name in the bundle.")
    sha256: dict[str, str] = Field(description="File name -> SHA-256 of its bytes.")
    served: Literal["fp32", "int8"]
    output: str
    signature: Signature
    inputs: tuple[InputInfo, ...]


class Manifest(BundleRecord):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # an undefined metric (AUC of one class) is NaN

    format_version: Literal[1, 2] = FORMAT_VERSION
    model: str
    registered_name: str
    family: str
    task: str
    primary: str
    metrics: dict[str, float] = Field(description="The served variant's metrics on the holdout.")
    run_id: str
    split_at: str
    time_column: str
    created_at: str
    parts: dict[str, Part] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _first_spelling(cls, data):
        """Bundles written before the manifest was typed spell the version ``format``."""
        if isinstance(data, dict) and "format" in data and "format_version" not in data:
            data = {"format_version": data["format"], **{k: v for k, v in data.items() if k != "format"}}
        return data


def write_manifest(directory: str, manifest: Manifest) -> None:
    path = os.path.join(directory, MANIFEST)
    with open(path + ".tmp", "w") as f:
        f.write(manifest.to_json())
    os.replace(path + ".tmp", path)


def read_manifest(directory: str) -> Manifest:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise RecordError(path, f"cannot be read ({exc.strerror or exc})",
                          "point at a bundle folder (it holds manifest.json)") from None
    return Manifest.from_json(text, path, _FIX)


def load_part(directory: str, manifest: Manifest, part: str, kind: str | None = None) -> bytes:
    """The bytes of a part's ONNX file (``kind``: fp32 | int8; default the served one), returned
    only after the file name is checked to stay in the bundle and its SHA-256 matches."""
    where = os.path.join(directory, MANIFEST)
    if part not in manifest.parts:
        raise RecordError(where, f"parts: no part '{part}'", f"use one of {sorted(manifest.parts)}")
    entry = manifest.parts[part]
    kind = kind or entry.served
    if kind not in entry.files:
        raise RecordError(where, f"parts.{part}.files: no '{kind}' file", f"use one of {sorted(entry.files)}")
    name = entry.files[kind]
    field = f"parts.{part}.files.{kind}"
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise RecordError(where, f"{field}: bad file name {name!r}", "a bundle names files inside itself only")
    path = check_inside(directory, name, where, field)
    if name not in entry.sha256:
        raise RecordError(where, f"parts.{part}.sha256: no checksum for {name}", _FIX)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RecordError(path, f"cannot be read ({exc.strerror or exc})", _FIX) from None
    if hashlib.sha256(data).hexdigest() != entry.sha256[name]:
        raise RecordError(path, f"SHA-256 does not match {MANIFEST}", _FIX)
    return data
