"""Compile a contract to Arrow: the lake schema, and vectorized coercion of text columns.

Landing files are read as text (CSV cells, JSON values rendered as text) so that a
wrong type in one row never fails a whole file; each column is then coerced here,
all rows at once, with a mask of the rows that did not coerce.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.model import Contract, Field

TIMESTAMP = pa.timestamp("us", tz="UTC")  # every event time in the lake, offline and online stores


def is_stringish(t: pa.DataType) -> bool:
    """Text in any Arrow spelling: string, large_string, string_view, or a dictionary of those."""
    if pa.types.is_dictionary(t):
        return is_stringish(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)

_ARROW_TYPES = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "timestamp": TIMESTAMP,
    "date": pa.date32(),
}
_INTEGER = r"^\s*[+-]?\d{1,18}\s*$"
_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?\s*$"
_ISO_TS = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]


def arrow_type(field: Field) -> pa.DataType:
    return _ARROW_TYPES[field.logical_type]


def arrow_schema(contract: Contract) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, arrow_type(f), nullable=not f.required) for f in contract.fields],
        metadata={"contract.id": contract.id, "contract.version": contract.version},
    )


def coerce(field: Field, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Coerce a text column to the field's type. Returns (values, failed) where ``failed``
    marks present-but-uncoercible cells; empty cells become nulls and are not failures."""
    text = text.cast(pa.string())
    fast = _fast_numeric(field, text)
    if fast is not None:
        return fast
    text = pc.utf8_trim_whitespace(text)
    present = pc.and_kleene(pc.is_valid(text), pc.not_equal(text, ""))
    present = pc.fill_null(present, False)
    kind = field.logical_type
    if kind == "string":
        return pc.if_else(present, text, pa.scalar(None, pa.string())), _none(len(text))
    if kind == "integer":
        ok = _valid(text, present, _INTEGER, _plain_integer)
        return _cast_where(text, ok, pa.int64()), pc.and_(present, pc.invert(ok))
    if kind == "number":
        ok = _valid(text, present, _NUMBER, _plain_decimal)
        return _cast_where(text, ok, pa.float64()), pc.and_(present, pc.invert(ok))
    if kind == "boolean":
        lower = pc.utf8_lower(text)
        is_true, is_false = pc.is_in(lower, pa.array(_TRUE)), pc.is_in(lower, pa.array(_FALSE))
        ok = pc.and_(present, pc.or_(is_true, is_false))
        return pc.if_else(ok, is_true, pa.scalar(None, pa.bool_())), pc.and_(present, pc.invert(ok))
    if kind == "date":
        ok = _matches(text, _DATE, present)
        values = pc.strptime(pc.if_else(ok, text, pa.scalar(None, pa.string())), format="%Y-%m-%d", unit="s", error_is_null=True)
        values = values.cast(pa.date32())
        ok = pc.and_(ok, pc.is_valid(values))
        return values, pc.and_(present, pc.invert(ok))
    if kind == "timestamp":
        return _coerce_timestamp(field, text, present)
    raise ValueError(f"unsupported logical type {kind}")


def _fast_numeric(field: Field, text: pa.Array):
    """The common case, a clean numeric column, in one cast. Any cell that is empty, padded, not a
    number, NaN or infinite makes the cast fail or is caught here, and the caller takes the
    exact path (regex per cell) instead."""
    target = {"integer": pa.int64(), "number": pa.float64()}.get(field.logical_type)
    if field.logical_type == "timestamp" and field.physical_type in ("epoch_seconds", "epoch_millis"):
        target = pa.int64()
    if target is None or text.null_count:
        return None
    try:
        values = text.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if target == pa.float64() and (pc.any(pc.is_nan(values)).as_py() or pc.any(pc.is_inf(values)).as_py()):
        return None
    if field.logical_type == "timestamp":
        scale = 1_000_000 if field.physical_type == "epoch_seconds" else 1_000
        if (pc.max(pc.abs(values)).as_py() or 0) > 9_000_000_000_000_000_000 // scale:
            return None
        values = pc.multiply(values, scale).cast(pa.timestamp("us")).cast(TIMESTAMP)
    return values, _none(len(text))


def _none(n: int) -> pa.Array:
    return pa.repeat(pa.scalar(False), n)


def _plain_integer(text: pa.Array) -> pa.Array:
    return pc.and_(pc.ascii_is_decimal(text), pc.less_equal(pc.binary_length(text), 18))


def _plain_decimal(text: pa.Array) -> pa.Array:
    return pc.ascii_is_decimal(pc.replace_substring(text, ".", "", max_replacements=1))


def _valid(text: pa.Array, present: pa.Array, regex: str, plain) -> pa.Array:
    """Which present cells parse: a cheap character-class test for the usual spelling ("42",
    "4.5"), and the full regular expression only for the cells that fail it (signs, exponents,
    garbage), which are few."""
    ok = pc.and_(present, pc.fill_null(plain(text), False)).to_numpy(zero_copy_only=False)
    suspects = np.flatnonzero(present.to_numpy(zero_copy_only=False) & ~ok)
    if len(suspects):
        ok[suspects] = pc.fill_null(pc.match_substring_regex(text.take(suspects), regex), False).to_numpy(
            zero_copy_only=False)
    return pa.array(ok)


def _matches(text: pa.Array, regex: str, present: pa.Array) -> pa.Array:
    return pc.and_(present, pc.fill_null(pc.match_substring_regex(text, regex), False))


def _cast_where(text: pa.Array, ok: pa.Array, to: pa.DataType) -> pa.Array:
    return pc.if_else(ok, text, pa.scalar(None, pa.string())).cast(to)


def _coerce_timestamp(field: Field, text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array]:
    encoding = field.physical_type or "iso8601"
    if encoding in ("epoch_seconds", "epoch_millis"):
        ok = _valid(text, present, _INTEGER, _plain_integer)
        numbers = _cast_where(text, ok, pa.int64())
        scale = 1_000_000 if encoding == "epoch_seconds" else 1_000
        # Bound to years 1677..2262 so the microsecond product cannot overflow.
        limit = 9_000_000_000_000_000_000 // scale
        ok = pc.and_(ok, pc.fill_null(pc.less_equal(pc.abs(numbers), limit), False))
        micros = pc.multiply(pc.if_else(ok, numbers, pa.scalar(None, pa.int64())), scale)
        return micros.cast(pa.timestamp("us")).cast(TIMESTAMP), pc.and_(present, pc.invert(ok))
    ok = _matches(text, _ISO_TS, present)
    candidates = pc.if_else(ok, text, pa.scalar(None, pa.string()))
    has_zone = pc.fill_null(pc.match_substring_regex(candidates, r"(Z|[+-]\d{2}:?\d{2})$"), False)
    # Naive times are read as UTC; times with an offset are converted to UTC.
    zoned = _parse_iso(pc.if_else(has_zone, candidates, pa.scalar(None, pa.string())), True)
    naive = _parse_iso(pc.if_else(has_zone, pa.scalar(None, pa.string()), candidates), False)
    values = pc.coalesce(zoned, naive)
    ok = pc.and_(ok, pc.is_valid(values))
    return values, pc.and_(present, pc.invert(ok))


def _parse_iso(text: pa.Array, zoned: bool) -> pa.Array:
    target = TIMESTAMP if zoned else pa.timestamp("us")
    try:
        parsed = text.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # A regex-shaped but impossible value (month 13...): fall back to element-wise parsing
        # of this array only; real files take the vectorized path above.
        parsed = pa.array([_try_cast(v, target) for v in text.to_pylist()], type=target)
    return parsed if zoned else pc.assume_timezone(parsed, "UTC")


def _try_cast(value, target):
    if value is None:
        return None
    try:
        return pa.array([value]).cast(target)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
