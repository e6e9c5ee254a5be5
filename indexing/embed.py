"""A bundle's encoder as a batched embedding function over Arrow tables (onnxruntime).

The ONNX bytes come through ``training.bundle.load_part`` (name checked, SHA-256 checked) and the
feeds through ``training.feeds`` (the encoding training used), so the vectors here are the ones
the training run evaluated. Batches are slices of the table, each padded on its own: a list
input's mean ignores padding, so the width of a batch does not change a row's vector.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from millrace.indexing.errors import CatalogueError
from millrace.training.bundle import Manifest, load_part
from millrace.training.feeds import raw_inputs

Progress = Callable[[int, int], None]  # (rows done, rows in all)
ITEM_ENCODER, USER_ENCODER = "item_encoder", "user_encoder"


class Encoder:
    """One part of a bundle (``item_encoder``, ``user_encoder``) in the variant the bundle serves."""

    def __init__(self, folder: str, manifest: Manifest, part: str, variant: str | None = None, threads: int = 0):
        if part not in manifest.parts:
            raise CatalogueError(f"model '{manifest.model}' ({manifest.family}) has no {part} (parts: "
                                 f"{', '.join(sorted(manifest.parts))}; fix: index a two_tower model)")
        entry = manifest.parts[part]
        self.part, self.variant = part, variant or entry.served
        data = load_part(folder, manifest, part, self.variant)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.inputs = entry.inputs
        self.session = session(data, threads)
        shape = entry.signature.outputs[0].shape
        self.dim = shape[-1] if shape and isinstance(shape[-1], int) else None

    def embed(self, table: pa.Table, batch: int = 4096, progress: Progress | None = None) -> np.ndarray:
        """float32 [rows, dim]: the encoder's output for every row of ``table``, ``batch`` rows a call."""
        names = [i.name for i in self.session.get_inputs()]
        inputs = [i for i in self.inputs if i.name in names]
        missing = [n for n in names if n not in {i.name for i in inputs}]
        if missing:
            raise CatalogueError(f"{self.part} takes inputs {missing} that its manifest does not describe "
                                 f"(fix: retrain the model with this millrace)")
        out = []
        for start in range(0, table.num_rows, batch):
            feed = raw_inputs(table.slice(start, batch), inputs)
            out.append(np.asarray(self.session.run(None, feed)[0], dtype=np.float32))
            if progress:
                progress(min(start + batch, table.num_rows), table.num_rows)
        if not out:
            return np.zeros((0, self.dim or 0), np.float32)
        vectors = np.ascontiguousarray(np.concatenate(out))
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise CatalogueError(f"{self.part} returned vectors of dimension {vectors.shape[1]}, its signature says "
                                 f"{self.dim} (fix: retrain the model; the bundle is inconsistent)")
        return vectors

    def embed_rows(self, table: pa.Table) -> np.ndarray:
        """The same vectors, one session call per row: the reference ``bench/indexing.py`` compares with."""
        return self.embed(table, batch=1)


def session(data: bytes, threads: int = 0, spin: bool = True):
    """An onnxruntime CPU session on ONNX bytes (``threads`` 0: onnxruntime's default). ``spin``
    False: idle pool threads sleep instead of spinning (a server with many small calls)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
