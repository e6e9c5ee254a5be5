"""Checks of the values a contract states (bounds, enum entries, counts), done once at load time.

A contract value that the data path cannot hold (an integer beyond int64, ``inf``, a timestamp
bound that is not a time, an enum entry of another type than its field) would otherwise fail
deep inside Arrow or Great Expectations on the first partition, as a traceback. Each check here
returns the value in the form the rules compare with, or raises one ContractError line.
"""
from __future__ import annotations

import math
from datetime import date, datetime, timezone
from pathlib import Path

from millrace.contracts.errors import ContractError

INT64_MAX = 2**63 - 1
LENGTH_MAX = 2**31 - 1          # Arrow's utf8_length is int32
SECONDS_MAX = 36500 * 86400     # a hundred years: any tolerance beyond is a typo


def number(value: object, file: str | Path, field: str, integer: bool = False) -> int | float:
    """A finite number (an int within int64 when ``integer``); bool is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(file, field, f"{value!r} is not a number", "write a plain number, e.g. 1 or 0.5")
    if isinstance(value, float) and not math.isfinite(value):
        raise ContractError(file, field, f"{value!r} is not a finite number", "write a finite number")
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        if integer:
            raise ContractError(file, field, f"{_short(value)} does not fit a 64-bit integer",
                                f"use a value between {-INT64_MAX - 1} and {INT64_MAX}")
        try:
            return float(value)
        except OverflowError:
            raise ContractError(file, field, f"{_short(value)} is too large for a 64-bit float",
                                "write a number below 1.7e308") from None
    if integer and isinstance(value, float):
        if not value.is_integer() or abs(value) > INT64_MAX:
            raise ContractError(file, field, f"{value!r} is not a whole number", "write a whole number, e.g. 1")
        return int(value)
    return value


def count(value: object, file: str | Path, field: str, maximum: int, minimum: int = 0) -> int:
    """A whole number in [minimum, maximum] (lengths, seconds, positions)."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        shown = _short(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)[:60]
        raise ContractError(file, field, f"{shown} is not a whole number in [{minimum}, {maximum}]",
                            f"write a whole number from {minimum} to {maximum}")
    return value


def moment(value: object, file: str | Path, field: str, logical_type: str):
    """A timestamp bound as an aware UTC ``datetime`` (naive times are UTC), a date bound as ``date``."""
    if isinstance(value, datetime):  # YAML may already have parsed it
        parsed = value
    elif isinstance(value, date) and logical_type == "date":
        return value
    elif isinstance(value, str):
        try:
            parsed = date.fromisoformat(value) if logical_type == "date" else datetime.fromisoformat(value)
        except ValueError:
            parsed = None
    else:
        parsed = None
    if parsed is None:
        example = "2020-01-31" if logical_type == "date" else "2020-01-31T00:00:00Z"
        raise ContractError(file, field, f"{value!r} is not an ISO 8601 {logical_type}", f"write e.g. '{example}'")
    if isinstance(parsed, datetime):
        if logical_type == "date":
            return parsed.date()
        parsed = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    return parsed


def bound(value: object, file: str | Path, field: str, logical_type: str):
    """A minimum/maximum in the form the rules compare with (number, aware datetime or date)."""
    if value is None:
        return None
    if logical_type in ("timestamp", "date"):
        return moment(value, file, field, logical_type)
    # A fractional bound on an integer field is meaningful (minimum 0.5 admits 1, 2, ...): Arrow
    # compares int64 columns with floats, so any finite number will do.
    return number(value, file, field)


def enum_value(value: object, file: str | Path, field: str, logical_type: str):
    """One allowed value, of the field's own type (a mixed or wrongly typed list would not compare)."""
    if logical_type in ("integer", "number"):
        return number(value, file, field, integer=logical_type == "integer")
    if logical_type == "string":
        if not isinstance(value, str):
            raise ContractError(file, field, f"{value!r} is not text but the field is a string",
                                f"quote it: '{value}'")
        return value
    if logical_type == "boolean":
        if not isinstance(value, bool):
            raise ContractError(file, field, f"{value!r} is not true or false", "write true or false")
        return value
    raise ContractError(file, field, f"enum is not supported on {logical_type} fields",
                        "use minimum/maximum for time ranges")


def describe(value: object) -> str:
    """What a configuration value is, for a one-line message: "a list", "the number 5", "empty"."""
    if value is None:
        return "empty"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {_short(value) if isinstance(value, int) else value}"
    return f"the text {str(value)[:60]!r}"


def _short(value: int) -> str:
    if value.bit_length() > 100:  # str() of a huge int is slow, and refused past 4300 digits
        return f"a {value.bit_length()}-bit integer"
    return str(value)
