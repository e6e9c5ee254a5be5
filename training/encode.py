"""From training-set columns (Arrow) to model inputs, and the recipe that does it again at serving.

Each model input is one feature column (or an entity key), typed by the feature's Arrow type:

    numeric      int/float/bool feature     float32 [batch]           NaN = missing; mean-imputed and
                                                                       standardized inside the graph
    categorical  string or integer feature  string|int64 [batch]      vocabulary lookup inside the graph
    multi        list<string|int> feature   string|int64 [batch, len] "" / PAD_INT pads; embeddings averaged

The vocabulary lookup (ONNX-ML ``LabelEncoder``) and the normalization live in the exported graph,
so a client sends raw feature values and nothing has to be kept in sync beside the model. Index 0
means missing/padding (a zero embedding), 1 an unseen value, 2.. the vocabulary.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.arrow import is_stringish
from millrace.training.errors import TrainingError
from millrace.training.feeds import PAD_INT, floats, list_positions, raw_column

MISSING, UNSEEN, FIRST = 0, 1, 2


@dataclass(frozen=True)
class InputSpec:
    name: str
    kind: str  # numeric | categorical | multi
    dtype: str  # float32 | int64 | string (the ONNX input's element type)
    mean: float = 0.0
    std: float = 1.0
    vocabulary: tuple = field(default=())
    source: str = ""  # 'view:feature', 'request:<column>' or 'key:<column>' (see bundle.InputInfo)

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + FIRST

    def describe(self) -> dict:
        d = asdict(self)
        d["vocabulary"] = len(self.vocabulary)
        return d


def fit_inputs(table: pa.Table, columns: list[str], max_vocabulary: int) -> list[InputSpec]:
    """One InputSpec per column, with statistics and vocabularies from ``table`` (the training part)."""
    return [_fit(name, table.column(name), max_vocabulary) for name in columns]


def _fit(name: str, column: pa.ChunkedArray, max_vocabulary: int) -> InputSpec:
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        values = floats(column)
        ok = values[~np.isnan(values)]
        mean = float(ok.mean()) if ok.size else 0.0
        std = float(ok.std()) if ok.size else 1.0
        return InputSpec(name, "numeric", "float32", mean, std if std > 1e-12 else 1.0)
    if is_stringish(t):
        return InputSpec(name, "categorical", "string", vocabulary=_vocabulary(column, max_vocabulary))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = pc.list_flatten(column)
        if pa.types.is_integer(t.value_type):
            return InputSpec(name, "multi", "int64", vocabulary=_vocabulary(pc.cast(flat, pa.int64()), max_vocabulary))
        if not is_stringish(t.value_type):
            raise TrainingError(f"feature '{name}' is {t}; list features must hold text or integers "
                                f"(fix: use a list<string> or list<int64> feature, or a scalar one)")
        return InputSpec(name, "multi", "string", vocabulary=_vocabulary(flat, max_vocabulary))
    raise TrainingError(f"feature '{name}' has type {t}, which no model input takes "
                        f"(fix: use numeric, text or list<text> features)")


def key_input(table: pa.Table, key: str, max_vocabulary: int) -> InputSpec:
    """An entity key as a categorical input (its id embedding)."""
    column = table.column(key)
    if pa.types.is_integer(column.type):
        return InputSpec(key, "categorical", "int64", vocabulary=_vocabulary(pc.cast(column, pa.int64()),
                                                                             max_vocabulary))
    if is_stringish(column.type):
        return InputSpec(key, "categorical", "string", vocabulary=_vocabulary(column, max_vocabulary))
    raise TrainingError(f"key '{key}' is {column.type}; keys must be integers or text")


def _vocabulary(values, limit: int) -> tuple:
    counts = pc.value_counts(pc.drop_null(_whole(values)))
    vals, n = counts.field("values"), counts.field("counts").to_numpy()
    order = np.lexsort((np.arange(len(n)), -n))[:limit]  # most frequent first; stable on ties
    out = vals.take(pa.array(order)).to_pylist()
    return tuple(v for v in out if v != "" and v != PAD_INT)  # reserved for padding


@dataclass
class Encoded:
    """Model inputs for a set of rows: ``raw`` feeds onnxruntime, ``indexed`` feeds torch."""
    raw: dict[str, np.ndarray]
    indexed: list[np.ndarray]
    rows: int

    def take(self, rows: np.ndarray) -> "Encoded":
        return Encoded({k: v[rows] for k, v in self.raw.items()}, [a[rows] for a in self.indexed], len(rows))


def encode(table: pa.Table, specs: list[InputSpec]) -> Encoded:
    raw, indexed = {}, []
    for spec in specs:
        column = table.column(spec.name)
        if spec.kind == "numeric":
            values = floats(column).astype(np.float32)
            raw[spec.name] = values
            indexed.append(values)
        elif spec.kind == "categorical":
            values, idx = _categorical(column, spec)
            raw[spec.name] = values
            indexed.append(idx)
        else:
            values, idx = _multi(column, spec)
            raw[spec.name] = values
            indexed.append(idx)
    return Encoded(raw, indexed, table.num_rows)


def _whole(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _indices(values, spec: InputSpec) -> np.ndarray:
    value_set = pa.array(list(spec.vocabulary), type=pa.int64() if spec.dtype == "int64" else pa.string())
    found = pc.index_in(values, value_set=value_set)
    pad = "" if spec.dtype == "string" else PAD_INT
    missing = pc.or_(pc.is_null(values), pc.fill_null(pc.equal(values, pad), True))
    idx = pc.if_else(missing, MISSING, pc.add(pc.fill_null(found, UNSEEN - FIRST), FIRST))
    return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)


def _categorical(column: pa.ChunkedArray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    column = column.combine_chunks()
    if spec.dtype == "int64":
        column = pc.cast(column, pa.int64())
        if column.null_count:
            raise TrainingError(f"key '{spec.name}' has null values (fix: drop those examples)")
        return raw_column(column, spec.kind, spec.dtype), _indices(column, spec)
    return raw_column(column, spec.kind, spec.dtype), _indices(pc.cast(column, pa.string()), spec)


def _multi(column: pa.ChunkedArray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    column = column.combine_chunks()
    rows, cols, lengths, width = list_positions(column)
    flat = pc.cast(pc.list_flatten(column), pa.string() if spec.dtype == "string" else pa.int64())
    idx = np.zeros((len(lengths), width), dtype=np.int64)
    idx[rows, cols] = _indices(flat, spec)
    return raw_column(column, spec.kind, spec.dtype), idx
