"""Arrow columns -> the raw ONNX inputs a bundle's graph takes (vocabulary lookup and
normalization are inside the graph, so only the element type and the padding are decided here).

    numeric      float32 [batch]            null -> NaN (the graph imputes the mean)
    categorical  int64 | object [batch]     null -> PAD_INT | ""
    multi        int64 | object [batch, n]  padded with PAD_INT | "" to the longest list

Training (``encode``), the index builder and the inference tier feed models through this module,
so the three cannot disagree on an encoding. It imports numpy and pyarrow only.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD_INT = -(2**63)  # pads integer lists (and marks a missing integer); never a vocabulary entry


def raw_column(column: pa.Array | pa.ChunkedArray, kind: str, dtype: str) -> np.ndarray:
    """One input's values as onnxruntime takes them. ``kind``: numeric | categorical | multi;
    ``dtype``: float32 | int64 | string (the ONNX input's element type)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if kind == "numeric":
        return floats(column).astype(np.float32)
    if kind == "categorical":
        if dtype == "int64":
            return pc.fill_null(pc.cast(column, pa.int64()), PAD_INT).to_numpy().astype(np.int64)
        text = pc.fill_null(pc.cast(column, pa.string()), "")
        return text.to_numpy(zero_copy_only=False).astype(object, copy=False)
    if kind == "multi":
        return _padded(column, dtype == "string")
    raise ValueError(f"unknown input kind {kind!r}")


def raw_inputs(table: pa.Table, inputs) -> dict[str, np.ndarray]:
    """The feed of a bundle part for the rows of ``table``: ``inputs`` are its ``InputInfo``s (or
    ``InputSpec``s), each naming its column of ``table``."""
    missing = [i.name for i in inputs if i.name not in table.column_names]
    if missing:
        raise KeyError(f"the model needs columns {missing} that the table does not have")
    return {i.name: raw_column(table.column(i.name), i.kind, i.dtype) for i in inputs}


def floats(column) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.fill_null(pc.cast(column, pa.float64()), float("nan")).to_numpy(zero_copy_only=False)


def list_positions(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Row, position and list length of each flattened element, and the padded width (at least 1)."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    width = max(1, int(lengths.max()) if len(lengths) else 1)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, np.arange(int(lengths.sum())) - starts, lengths, width


def _padded(column: pa.Array, text: bool) -> np.ndarray:
    rows, cols, lengths, width = list_positions(column)
    flat = pc.cast(pc.list_flatten(column), pa.string() if text else pa.int64())
    raw = np.full((len(lengths), width), "" if text else PAD_INT, dtype=object if text else np.int64)
    if text:
        raw[rows, cols] = pc.fill_null(flat, "").to_numpy(zero_copy_only=False)
    else:
        raw[rows, cols] = pc.fill_null(flat, PAD_INT).to_numpy()
    return raw
