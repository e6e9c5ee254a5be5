"""The base of every typed record that crosses a stage boundary: a frozen pydantic model with a
``format_version`` and one JSON round trip.

``to_json`` writes the fields in declaration order; ``from_json`` reads them back, checking each
against its annotation and refusing unknown keys, so a reader depends on a schema, not on key
spellings. Anything but a whole, well-formed record raises ``corrupt`` (``CorruptRecord`` unless a
package names its own error class with the same ``(file, problem, fix)`` signature).
"""
from __future__ import annotations

from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from millrace.contracts.errors import CorruptRecord

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    corrupt: ClassVar[type[Exception]] = CorruptRecord

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls: type[R], text: str | bytes, file: str = "", fix: str = "rebuild it with the command that wrote it") -> R:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            if not text.strip():
                problem = "empty file"
            elif first["type"] == "json_invalid":
                problem = "truncated or not JSON: " + first["msg"].removeprefix("Invalid JSON: ")
            else:
                problem = f"{where}: {first['msg'].lower()}"
            raise cls.corrupt(file or cls.__name__, f"not a valid {cls.__name__} ({problem})", fix) from None
