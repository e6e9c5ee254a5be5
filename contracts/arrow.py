"""Compile a contract to Arrow: the lake schema, and vectorized coercion of text columns.

Landing files are read as text (CSV cells, JSON values rendered as text) so that a
wrong type in one row never fails a whole file; each column is then coerced here,
all rows at once, with a mask of the rows that did not coerce.
"""
from __future__ import annotations

import functools

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
_INTEGER = r"^[+-]?\d+$"
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_TIME = r"[T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?"
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)"
_ISO_TS = rf"^\d{{4}}-\d{{2}}-\d{{2}}({_TIME}{_ZONE}?)?$"
_ZONED = rf"{_TIME}{_ZONE}$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]
_INT64_MAX = "9223372036854775807"
_INT64_MIN_MAGNITUDE = "9223372036854775808"
# Timestamps and dates hold years 0001..9999 (ISO 8601's four digits, and what Python, pandas'
# non-nanosecond units and Parquet readers can all hold); epoch values are bounded the same way.
_FIRST_SECOND, _LAST_SECOND = -62135596800, 253402300799


@functools.cache
def _timestamp_bounds() -> tuple[pa.Scalar, pa.Scalar]:
    # Built on first use: casting a scalar at import time pulls pandas into every importer.
    first = pa.scalar(_FIRST_SECOND * 1_000_000, pa.int64()).cast(pa.timestamp("us")).cast(TIMESTAMP)
    last = pa.scalar(_LAST_SECOND * 1_000_000 + 999_999, pa.int64()).cast(pa.timestamp("us")).cast(TIMESTAMP)
    return first, last


def arrow_type(field: Field) -> pa.DataType:
    return _ARROW_TYPES[field.logical_type]


def arrow_schema(contract: Contract) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, arrow_type(f), nullable=not f.required) for f in contract.fields],
        metadata={"contract.id": contract.id, "contract.version": contract.version},
    )


def coerce(field: Field, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Coerce a text column to the field's type: ``(values, failed)``.

    Never raises for a cell: a present cell that does not coerce is ``failed`` (the caller
    quarantines that row as ``type_mismatch``); empty cells become nulls and are not failures.
    So for every input row exactly one holds: a value, a failure, or an empty cell.

    Accepted spellings (surrounding whitespace is ignored everywhere):

    - integer: optional sign (``+5`` is 5), decimal digits, leading zeros allowed, within int64;
      no hex (``0x10``), exponents (``1e3``), separators or fractions.
    - number: optional sign, digits with an optional point, optional exponent (``+.5e+3``); a
      value beyond float64 (``1e400``) and ``nan``/``inf`` spellings fail.
    - boolean: true/t/yes/y/1 and false/f/no/n/0, any case.
    - date: ``YYYY-MM-DD``, a real calendar day (``2021-02-29`` fails) in years 0001..9999.
    - timestamp, iso8601: ``YYYY-MM-DD``, optionally ``[T ]HH[:MM[:SS[.fraction]]]`` and a zone
      ``Z``/``±HH``/``±HHMM``/``±HH:MM`` (offsets Arrow refuses, such as ``+25:00``, fail), as
      Arrow's ISO 8601 parser reads them; naive times are UTC; fractions beyond microseconds are
      truncated; the instant must fall in years 0001..9999 UTC; no leap second (``:60``) or
      ``24:00``.
    - timestamp, epoch_seconds / epoch_millis: an integer as above, within years 0001..9999.
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks != 1 else text.chunk(0)
    text = text.cast(pa.string())
    fast = _fast_numeric(field, text)
    if fast is not None:
        return fast
    text = pc.utf8_trim_whitespace(text)
    present = pc.fill_null(pc.and_kleene(pc.is_valid(text), pc.not_equal(text, "")), False)
    kind = field.logical_type
    if kind == "string":
        return pc.if_else(present, text, pa.scalar(None, pa.string())), _none(len(text))
    if kind == "integer":
        values, ok = _integers(text, present)
        return values, _failed(present, ok)
    if kind == "number":
        values, ok = _numbers(text, present)
        return values, _failed(present, ok)
    if kind == "boolean":
        lower = pc.utf8_lower(text)
        is_true, is_false = pc.is_in(lower, pa.array(_TRUE)), pc.is_in(lower, pa.array(_FALSE))
        ok = pc.and_(present, pc.or_(is_true, is_false))
        return pc.if_else(ok, is_true, pa.scalar(None, pa.bool_())), _failed(present, ok)
    if kind == "date":
        return _dates(text, present)
    if kind == "timestamp":
        return _coerce_timestamp(field, text, present)
    raise ValueError(f"unsupported logical type {kind}")


def _fast_numeric(field: Field, text: pa.Array):
    """The common case, a clean numeric column, in one cast. Any cell that is empty, padded, not a
    number, NaN, infinite, hexadecimal (Arrow's integer cast reads ``0x10``) or out of range makes
    the cast fail or is caught here, and the caller takes the exact path instead."""
    target = {"integer": pa.int64(), "number": pa.float64()}.get(field.logical_type)
    if field.encoding in ("epoch_seconds", "epoch_millis"):
        target = pa.int64()
    if target is None or text.null_count:
        return None
    try:
        values = text.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if target == pa.int64() and not pc.all(pc.ascii_is_decimal(text)).as_py() and (
            pc.any(pc.match_substring(text, "x")).as_py() or pc.any(pc.match_substring(text, "X")).as_py()):
        return None  # (the digits-only test is the cheap one; signed columns pay for the search)
    if target == pa.float64() and not pc.all(pc.is_finite(values)).as_py() and len(values):
        return None
    if field.logical_type == "timestamp":
        scale = 1_000_000 if field.encoding == "epoch_seconds" else 1_000
        low, high = pc.min_max(values).values()
        if len(values) and (low.as_py() < _FIRST_SECOND * 1_000_000 // scale
                            or high.as_py() > (_LAST_SECOND + 1) * 1_000_000 // scale - 1):
            return None
        values = pc.multiply(values, scale).cast(pa.timestamp("us")).cast(TIMESTAMP)
    return values, _none(len(text))


def _none(n: int) -> pa.Array:
    return pa.repeat(pa.scalar(False), n)


def _failed(present: pa.Array, ok: pa.Array) -> pa.Array:
    return pc.and_(present, pc.invert(ok))


def _null_unless(ok: pa.Array, values: pa.Array) -> pa.Array:
    return pc.if_else(ok, values, pa.scalar(None, values.type))


def _cast_cells(text: pa.Array, to: pa.DataType, shape: str | None = None) -> pa.Array:
    """``text.cast(to)`` with a null for each cell Arrow refuses, instead of one exception for
    the whole column. The whole column is tried first (the usual case); on a refusal, cells not
    matching the regular expression ``shape`` are dropped, and then the array is halved and each
    half retried, so a few impossible cells (``2021-02-29``) cost a few dozen small casts, never
    a Python loop over every row."""
    try:
        return text.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        pass
    if shape is not None:
        text = _null_unless(pc.fill_null(pc.match_substring_regex(text, shape), False), text)
        return _cast_cells(text, to)
    if len(text) <= 1:
        return pa.nulls(len(text), to)
    mid = len(text) // 2
    return pa.concat_arrays([_cast_cells(text.slice(0, mid), to), _cast_cells(text.slice(mid), to)])


def _split(text: pa.Array, present: pa.Array, plain) -> tuple[np.ndarray, np.ndarray]:
    """Cells in the usual spelling (a cheap character-class test), and the indices of the other
    present cells (signs, exponents, garbage), which are few and get the full checks."""
    ok = pc.and_(present, pc.fill_null(plain(text), False)).to_numpy(zero_copy_only=False).copy()
    return ok, np.flatnonzero(present.to_numpy(zero_copy_only=False) & ~ok)


def _plain_integer(text: pa.Array) -> pa.Array:
    return pc.and_(pc.ascii_is_decimal(text), pc.less_equal(pc.binary_length(text), 18))


def _integers(text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array]:
    """int64 values and which cells gave one (see ``coerce`` for the spellings)."""
    ok, suspects = _split(text, present, _plain_integer)
    if len(suspects):
        odd = text.take(suspects)
        shaped = pc.fill_null(pc.match_substring_regex(odd, _INTEGER), False)
        ok[suspects] = pc.and_(shaped, _fits_int64(odd)).to_numpy(zero_copy_only=False)
        if pc.any(pc.starts_with(odd, "+")).as_py():
            text = pc.utf8_ltrim(text, characters="+")  # Arrow's cast does not read a leading '+'
    ok = pa.array(ok)
    values = _cast_cells(_null_unless(ok, text), pa.int64())
    ok = pc.and_(ok, pc.is_valid(values))
    return _null_unless(ok, values), ok


def _fits_int64(text: pa.Array) -> pa.Array:
    """For cells shaped like integers: does the value fit int64? Compared as digit strings, so
    no cast can overflow."""
    negative = pc.starts_with(text, "-")
    magnitude = pc.utf8_ltrim(pc.utf8_ltrim(text, characters="+-"), characters="0")
    digits = pc.utf8_length(magnitude)
    limit = pc.if_else(negative, _INT64_MIN_MAGNITUDE, _INT64_MAX)
    same_length = pc.and_(pc.equal(digits, 19), pc.less_equal(magnitude, limit))
    return pc.fill_null(pc.or_(pc.less(digits, 19), same_length), False)


def _plain_decimal(text: pa.Array) -> pa.Array:
    return pc.ascii_is_decimal(pc.replace_substring(text, ".", "", max_replacements=1))


def _numbers(text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array]:
    """float64 values and which cells gave a finite one."""
    ok, suspects = _split(text, present, _plain_decimal)
    if len(suspects):
        ok[suspects] = pc.fill_null(pc.match_substring_regex(text.take(suspects), _NUMBER), False).to_numpy(
            zero_copy_only=False)
    ok = pa.array(ok)
    values = _cast_cells(_null_unless(ok, text), pa.float64())
    ok = pc.and_(ok, pc.fill_null(pc.is_finite(values), False))  # 1e400 reads as inf: not a float64
    return _null_unless(ok, values), ok


def _matches(text: pa.Array, regex: str, present: pa.Array) -> pa.Array:
    return pc.and_(present, pc.fill_null(pc.match_substring_regex(text, regex), False))


def _dates(text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array]:
    # Arrow's date cast reads exactly YYYY-MM-DD and refuses impossible days, but takes year 0000.
    values = _cast_cells(_null_unless(present, text), pa.date32(), _DATE)
    year_zero = pc.fill_null(pc.starts_with(text, "0000"), False)
    ok = pc.and_(pc.is_valid(values), pc.invert(year_zero))
    return _null_unless(ok, values), _failed(present, ok)


def _coerce_timestamp(field: Field, text: pa.Array, present: pa.Array) -> tuple[pa.Array, pa.Array]:
    encoding = field.encoding
    if encoding in ("epoch_seconds", "epoch_millis"):
        numbers, ok = _integers(text, present)
        scale = 1_000_000 if encoding == "epoch_seconds" else 1_000
        low, high = _FIRST_SECOND * 1_000_000 // scale, (_LAST_SECOND + 1) * 1_000_000 // scale - 1
        ok = pc.and_(ok, pc.fill_null(pc.and_(pc.greater_equal(numbers, low), pc.less_equal(numbers, high)), False))
        micros = pc.multiply(_null_unless(ok, numbers), scale)  # bounded above, so it cannot overflow
        return micros.cast(pa.timestamp("us")).cast(TIMESTAMP), _failed(present, ok)
    values = _iso_uniform(_null_unless(present, text))
    if values is None:
        values = _iso_mixed(_null_unless(_matches(text, _ISO_TS, present), text))
    first, last = _timestamp_bounds()
    in_range = pc.and_(pc.greater_equal(values, first), pc.less_equal(values, last))
    ok = pc.fill_null(pc.and_(present, in_range), False)
    return _null_unless(ok, values), _failed(present, ok)


def _iso_uniform(candidates: pa.Array) -> pa.Array | None:
    """The usual file: every time with a zone, or every time without one, in one cast."""
    for target in (TIMESTAMP, pa.timestamp("us")):
        try:
            values = candidates.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return values if target == TIMESTAMP else pc.assume_timezone(values, "UTC")
    return None


def _iso_mixed(candidates: pa.Array) -> pa.Array:
    """Cells shaped like ISO 8601 (``_ISO_TS``), some with a zone and some without, or a few
    that Arrow refuses (an impossible day or offset): each kind cast apart, refusals null."""
    if pc.any(pc.match_substring(candidates, ".")).as_py():
        candidates = pc.replace_substring_regex(candidates, r"(\.\d{6})\d+", r"\1")  # beyond microseconds
    has_zone = pc.fill_null(pc.match_substring_regex(candidates, _ZONED), False)
    nothing = pa.scalar(None, pa.string())
    # Naive times are read as UTC; times with an offset are converted to UTC.
    zoned = _cast_cells(pc.if_else(has_zone, candidates, nothing), TIMESTAMP)
    naive = pc.assume_timezone(_cast_cells(pc.if_else(has_zone, nothing, candidates), pa.timestamp("us")), "UTC")
    return pc.coalesce(zoned, naive)
