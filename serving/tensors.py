"""Open Inference Protocol tensors <-> numpy, checked against a model's metadata.

Both representations of the protocol are read and written: typed ``contents`` (the field that
matches the datatype) and ``raw_input_contents`` (little-endian row-major bytes; BYTES elements
each prefixed by a 4-byte little-endian length). A response uses the representation its request
used. Every mismatch (unknown input, datatype, rank or size, element count against bytes) is an
``InvalidInput`` naming the input, what was sent and what the model takes.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from millrace.serving.errors import InvalidInput

# protocol datatype -> (numpy dtype, InferTensorContents field)
DATATYPES = {
    "BOOL": (np.bool_, "bool_contents"), "INT8": (np.int8, "int_contents"), "INT16": (np.int16, "int_contents"),
    "INT32": (np.int32, "int_contents"), "INT64": (np.int64, "int64_contents"), "UINT8": (np.uint8, "uint_contents"),
    "UINT16": (np.uint16, "uint_contents"), "UINT32": (np.uint32, "uint_contents"),
    "UINT64": (np.uint64, "uint64_contents"), "FP32": (np.float32, "fp32_contents"),
    "FP64": (np.float64, "fp64_contents"), "BYTES": (np.object_, "bytes_contents"),
}
# ONNX element type (a bundle signature's spelling) -> protocol datatype
FROM_ONNX = {"FLOAT": "FP32", "DOUBLE": "FP64", "INT64": "INT64", "INT32": "INT32", "INT16": "INT16",
             "INT8": "INT8", "UINT8": "UINT8", "BOOL": "BOOL", "STRING": "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str                 # protocol datatype
    shape: tuple[int, ...]        # -1: any size
    optional: bool = False        # a request may leave it out


def decode(tensor, raw: bytes | None, spec: TensorSpec) -> np.ndarray:
    """One request input as a numpy array of the model's type, checked against ``spec``."""
    where = f"input '{tensor.name}'"
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"{where}: datatype {tensor.datatype or '(none)'}, the model takes {spec.datatype}")
    shape = tuple(int(d) for d in tensor.shape)
    _check_shape(where, shape, spec.shape)
    count = math.prod(shape)
    dtype, field = DATATYPES[spec.datatype]
    if raw is not None:
        values = _from_raw(where, raw, spec.datatype, dtype, count)
    else:
        values = list(getattr(tensor.contents, field))
        if len(values) != count:
            raise InvalidInput(f"{where}: {len(values)} elements in contents.{field}, shape {list(shape)} holds {count}")
        values = np.array([_text(where, v) for v in values], dtype=object) if spec.datatype == "BYTES" \
            else np.asarray(values, dtype=dtype)
    return values.reshape(shape)


def encode(tensor, array: np.ndarray, datatype: str, raw: bool) -> bytes | None:
    """Fill the response tensor ``tensor`` from ``array``; returns its raw bytes when ``raw``."""
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    dtype, field = DATATYPES[datatype]
    flat = array.reshape(-1)
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
        if raw:
            return b"".join(struct.pack("<I", len(v)) + v for v in items)
        getattr(tensor.contents, field).extend(items)
        return None
    flat = flat.astype(dtype, copy=False)
    if raw:
        return flat.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()
    getattr(tensor.contents, field).extend(flat.tolist())
    return None


def _check_shape(where: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{where}: shape {list(shape)} has a negative dimension")
    if len(shape) != len(expected) or any(e >= 0 and e != d for d, e in zip(shape, expected)):
        raise InvalidInput(f"{where}: shape {list(shape)}, the model takes {list(expected)} (-1: any size)")


def _from_raw(where: str, raw: bytes, datatype: str, dtype, count: int) -> np.ndarray:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidInput(f"{where}: raw BYTES content ends inside a length prefix")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise InvalidInput(f"{where}: raw BYTES element of {size} bytes runs past the content")
            items.append(_text(where, raw[offset:offset + size]))
            offset += size
        if len(items) != count:
            raise InvalidInput(f"{where}: {len(items)} BYTES elements in the raw content, the shape holds {count}")
        return np.array(items, dtype=object)
    size = np.dtype(dtype).itemsize
    if len(raw) != count * size:
        raise InvalidInput(f"{where}: {len(raw)} raw bytes for {count} {datatype} elements ({count * size} expected)")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)


def _text(where: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: a BYTES element is not UTF-8 text") from None
