"""The bundle format, read side: a typed manifest and checksummed ONNX bytes.

    <bundle>/manifest.json     parts, the file of each variant, SHA-256 of every file, signatures
    <bundle>/<part>.onnx       FP32;  <bundle>/<part>.int8.onnx  INT8 (served by default)

The index builder and the inference tier read bundles through this module only. It imports the
standard library and millrace's bottom layer, never torch, MLflow, onnx, Beam or Feast (checked by
import-linter and by tests/training/test_bundle.py), so a reader starts in milliseconds. The write
side (ONNX serialization, the MLflow flavor, the model card) is ``training.artifacts``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Final, Literal

from millrace.contracts.names import check_inside
from millrace.training.errors import RecordError
from millrace.training.records import from_dict, from_json, to_json

MANIFEST = "manifest.json"
FORMAT_VERSION: Final = 1


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str                     # ONNX element type name: FLOAT, INT64, STRING
    shape: tuple[int | str, ...]      # a str is a dynamic axis ("batch")


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class InputInfo:
    """How a model input was fitted (the lookup and normalization live in the graph)."""

    name: str
    kind: Literal["numeric", "categorical", "multi"]
    dtype: str
    mean: float
    std: float
    vocabulary: int                   # vocabulary size (the values themselves are in the graph)


@dataclass(frozen=True)
class Part:
    files: dict[str, str]             # variant (fp32 | int8) -> file name in the bundle
    sha256: dict[str, str]            # file name -> SHA-256 of its bytes
    served: Literal["fp32", "int8"]
    output: str
    signature: Signature
    inputs: tuple[InputInfo, ...]


@dataclass(frozen=True, kw_only=True)
class Manifest:
    format_version: Literal[1] = FORMAT_VERSION
    model: str
    registered_name: str
    family: str
    task: str
    primary: str
    metrics: dict[str, float]         # the served variant's metrics on the holdout
    run_id: str
    split_at: str
    time_column: str
    created_at: str
    parts: dict[str, Part] = field(default_factory=dict)


def write_manifest(directory: str, manifest: Manifest) -> None:
    path = os.path.join(directory, MANIFEST)
    with open(path + ".tmp", "w") as f:
        f.write(to_json(manifest))
    os.replace(path + ".tmp", path)


def read_manifest(directory: str) -> Manifest:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise RecordError(path, "(file)", f"cannot be read ({exc.strerror or exc})",
                          "point at a bundle folder (it holds manifest.json)") from None
    return parse_manifest(text, path)


def parse_manifest(text: str | bytes, file: str = MANIFEST) -> Manifest:
    import json

    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return from_json(Manifest, text, file)  # the same one-line error
    if isinstance(data, dict) and "format" in data and "format_version" not in data:
        data["format_version"] = data.pop("format")  # bundles written before the key was renamed
    return from_dict(Manifest, data, file)


def load_part(directory: str, manifest: Manifest, part: str, kind: str | None = None) -> bytes:
    """The bytes of a part's ONNX file (``kind``: fp32 | int8; default the served one), returned
    only after the file name is checked to stay in the bundle and its SHA-256 matches."""
    where = os.path.join(directory, MANIFEST)
    if part not in manifest.parts:
        raise RecordError(where, "parts", f"no part '{part}'", f"use one of {sorted(manifest.parts)}")
    entry = manifest.parts[part]
    kind = kind or entry.served
    if kind not in entry.files:
        raise RecordError(where, f"parts.{part}.files", f"no '{kind}' file", f"use one of {sorted(entry.files)}")
    name = entry.files[kind]
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise RecordError(where, f"parts.{part}.files.{kind}", f"bad file name {name!r}",
                          "a bundle names files inside itself only")
    path = check_inside(directory, name, where, f"parts.{part}.files.{kind}")
    if name not in entry.sha256:
        raise RecordError(where, f"parts.{part}.sha256", f"no checksum for {name}", "write the bundle again")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RecordError(path, "(file)", f"cannot be read ({exc.strerror or exc})", "the bundle is incomplete; "
                          "download it again") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256[name]:
        raise RecordError(path, "(file)", f"SHA-256 does not match {MANIFEST}", "the bundle is corrupt; "
                          "download it again")
    return data
