"""Row rules from a contract, evaluated on whole Arrow columns (no per-row Python).

Each row gets at most one reason: rules run in a fixed order and the first failing
rule names it, together with the field it is about.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.model import Contract, Field
from millrace.validation import reasons as R


class Verdicts:
    """One reason (or null) per row; ``flag`` only sets rows that have no reason yet."""

    def __init__(self, reason: pa.Array, field: pa.Array):
        self.reason, self.field = reason, field

    @classmethod
    def empty(cls, n: int) -> "Verdicts":
        return cls(pa.nulls(n, pa.string()), pa.nulls(n, pa.string()))

    def flag(self, mask: pa.Array, code: str, field: str | None = None) -> None:
        new = pc.and_(pc.is_null(self.reason), pc.fill_null(mask, False))
        if not pc.any(new).as_py():
            return
        self.reason = pc.if_else(new, pa.scalar(code), self.reason)
        self.field = pc.if_else(new, pa.scalar(field, pa.string()), self.field)

    @property
    def ok(self) -> pa.Array:
        return pc.is_null(self.reason)


def apply_field_rules(contract: Contract, table: pa.Table, verdicts: Verdicts) -> None:
    """Required, range, enum, pattern and length rules for every field, in contract order."""
    for f in contract.fields:
        col = table.column(f.name)
        if f.required:
            verdicts.flag(pc.is_null(col), R.MISSING_REQUIRED, f.name)
    for f in contract.fields:
        col = table.column(f.name)
        out = _out_of_range(f, col)
        if out is not None:
            verdicts.flag(out, R.OUT_OF_RANGE, f.name)
        if f.enum:
            allowed = pa.array(list(f.enum)).cast(col.type) if not pa.types.is_timestamp(col.type) else pa.array(list(f.enum))
            verdicts.flag(pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, allowed))), R.NOT_IN_ENUM, f.name)
        if f.pattern is not None and pa.types.is_string(col.type):
            verdicts.flag(pc.invert(pc.match_substring_regex(col, f.pattern)), R.PATTERN_MISMATCH, f.name)
        if (f.min_length is not None or f.max_length is not None) and pa.types.is_string(col.type):
            length = pc.utf8_length(col)
            bad = pa.repeat(pa.scalar(False), len(col))
            if f.min_length is not None:
                bad = pc.or_(bad, pc.less(length, f.min_length))
            if f.max_length is not None:
                bad = pc.or_(bad, pc.greater(length, f.max_length))
            verdicts.flag(bad, R.BAD_LENGTH, f.name)


def _bound(f: Field, col: pa.Array, value):
    if pa.types.is_timestamp(col.type):
        return pa.scalar(value).cast(col.type)
    return value


def _out_of_range(f: Field, col: pa.Array):
    checks = []
    if f.minimum is not None:
        checks.append(pc.less(col, _bound(f, col, f.minimum)))
    if f.exclusive_minimum is not None:
        checks.append(pc.less_equal(col, _bound(f, col, f.exclusive_minimum)))
    if f.maximum is not None:
        checks.append(pc.greater(col, _bound(f, col, f.maximum)))
    if f.exclusive_maximum is not None:
        checks.append(pc.greater_equal(col, _bound(f, col, f.exclusive_maximum)))
    if not checks:
        return None
    out = checks[0]
    for c in checks[1:]:
        out = pc.or_kleene(out, c)
    return out


def flag_future_event_times(contract: Contract, table: pa.Table, now_us: int, verdicts: Verdicts) -> None:
    """Event times later than the run time plus the contract's tolerance."""
    if contract.event_time is None:
        return
    limit = pa.scalar(now_us + contract.future_tolerance_seconds * 1_000_000, pa.timestamp("us", tz="UTC"))
    verdicts.flag(pc.greater(table.column(contract.event_time), limit), R.FUTURE_EVENT_TIME, contract.event_time)
