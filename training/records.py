"""Typed records that cross a stage boundary: frozen dataclasses with one JSON round trip.

``to_json`` writes a record's fields in declaration order; ``from_json`` reads them back,
checking every field against its annotation, so a reader depends on a schema, not on key
spellings. Standard library only: the inference tier reads these without torch or MLflow.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, TypeVar, Union

from millrace.training.errors import RecordError

T = TypeVar("T")


def to_dict(record) -> dict:
    return dataclasses.asdict(record)


def to_json(record) -> str:
    return json.dumps(to_dict(record), indent=1) + "\n"


def from_json(cls: type[T], text: str | bytes, file: str) -> T:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(file, "(file)", f"is not JSON ({exc})", "the file is truncated or corrupt; "
                          "write it again") from None
    return from_dict(cls, data, file)


def from_dict(cls: type[T], data: Any, file: str, where: str = "") -> T:
    if not isinstance(data, dict):
        raise RecordError(file, where or "(top level)", f"is {type(data).__name__}, not an object",
                          f"write a {cls.__name__} object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # T is a dataclass
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecordError(file, _join(where, unknown[0]), "unknown field", f"use some of {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _value(hints[name], data[name], file, _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(file, _join(where, name), "is missing", "the file is incomplete; write it again")
    return cls(**values)


def _value(tp, value, file: str, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, file, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return _value(arm, value, file, where)
            except RecordError:
                continue
        raise _wrong(file, where, value, " or ".join(getattr(a, "__name__", str(a)) for a in args))
    if origin is Literal:
        if value not in args:
            raise RecordError(file, where, f"{value!r} is not one of {list(args)}",
                              "this reader knows only those; upgrade it or write a supported value")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(file, where, value, "object")
        return {str(k): _value(args[1], v, file, _join(where, str(k))) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise _wrong(file, where, value, "list")
        return tuple(_value(args[0], v, file, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise _wrong(file, where, value, getattr(tp, "__name__", str(tp)))


def _wrong(file: str, where: str, value, expected: str) -> RecordError:
    return RecordError(file, where, f"is {type(value).__name__}, not {expected}", "the file is corrupt; write it again")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
