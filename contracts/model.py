"""The compiled view of one ODCS contract: what the pipelines need, nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any

# ODCS logical types this platform can ingest, and how their values are held in Arrow.
SUPPORTED_LOGICAL_TYPES = ("string", "integer", "number", "boolean", "timestamp", "date")
# physicalType of a timestamp in the landing files.
TIMESTAMP_ENCODINGS = ("epoch_seconds", "epoch_millis", "iso8601")
GRANULARITIES = ("day", "month", "year")


@dataclass(frozen=True)
class Field:
    name: str
    logical_type: str
    physical_type: str | None = None
    required: bool = False
    primary_key_position: int | None = None
    minimum: Any = None
    maximum: Any = None
    exclusive_minimum: Any = None
    exclusive_maximum: Any = None
    enum: tuple = ()
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    description: str = ""

    @property
    def is_key(self) -> bool:
        return self.primary_key_position is not None


@dataclass(frozen=True)
class Partitioning:
    """How rows map to lake partitions.

    ``field`` is the event-time field (None: partition by landing date only).
    Landing folders are dated; a partition covers the landing dates of its period.
    """

    key: str
    granularity: str
    field: str | None = None


@dataclass(frozen=True)
class LandingFormat:
    """How the source's text files are spelled: CSV delimiter and quote, and the cell texts read as
    null in every text-carrying format (an empty cell is always null)."""

    csv_delimiter: str = ","
    csv_quote: str = '"'
    null_tokens: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class TableCheck:
    """A dataset-level quality rule from the contract (rowCount, nullValues...), checked by Great Expectations."""

    metric: str
    column: str | None
    operator: str
    value: Any
    unit: str | None = None
    blocking: bool = True
    name: str = ""


@dataclass(frozen=True)
class Contract:
    path: str
    id: str
    name: str
    version: str
    fields: tuple[Field, ...]
    partitioning: Partitioning
    event_time: str | None
    quarantine_threshold: float
    future_tolerance_seconds: int
    table_checks: tuple[TableCheck, ...] = ()
    landing: LandingFormat = LandingFormat()
    raw: dict = dc_field(default_factory=dict, compare=False, repr=False)

    @property
    def major_version(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def key_fields(self) -> tuple[str, ...]:
        keyed = sorted((f for f in self.fields if f.is_key), key=lambda f: f.primary_key_position)
        return tuple(f.name for f in keyed)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)
