"""The compiled view of one ODCS contract: what the pipelines need, nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any

# ODCS logical types this platform can ingest, and how their values are held in Arrow.
SUPPORTED_LOGICAL_TYPES = ("string", "integer", "number", "boolean", "timestamp", "date")
# How a timestamp is written in the landing files: the property's customProperty ``landingEncoding``
# (older contracts put it in ``physicalType``, which stock ODCS tools read as the stored type).
TIMESTAMP_ENCODINGS = ("epoch_seconds", "epoch_millis", "iso8601")
# ``physicalType``: the type the lake stores for each logical type, in the spellings stock ODCS tools
# map to it (datacontract-cli's DuckDB names); the first is the one millrace suggests.
STORED_TYPES = {
    "string": ("string", "varchar", "text"),
    "integer": ("int64", "bigint", "long"),
    "number": ("double",),
    "boolean": ("boolean",),
    "timestamp": ("timestamp", "timestamp_tz"),
    "date": ("date",),
}
# Older physicalType spellings still read, each with a ``contracts lint`` warning: Arrow's name of the
# stored float, which stock tools do not know (the landing encodings of a timestamp are the others).
LEGACY_STORED_TYPES = {"number": {"float64": "double"}}
GRANULARITIES = ("day", "month", "year")


@dataclass(frozen=True)
class Field:
    name: str
    logical_type: str
    # A timestamp's landing encoding (one of TIMESTAMP_ENCODINGS; None reads as iso8601). The stored
    # type follows from the logical type (contracts/arrow.py), so it is not kept here.
    landing_encoding: str | None = None
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

    @property
    def encoding(self) -> str | None:
        """The landing encoding the decoder applies: a timestamp's, iso8601 by default; None otherwise."""
        if self.logical_type != "timestamp":
            return None
        return self.landing_encoding or "iso8601"

    @property
    def physical_type(self) -> str | None:
        """Deprecated name of ``landing_encoding`` (from when the contract's physicalType held it)."""
        return self.landing_encoding


@dataclass(frozen=True)
class ContractWarning:
    """Something a contract should change but millrace still reads (a deprecated spelling): one line
    naming the file, the field and the fix, as a ContractError does."""

    file: str
    field: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.problem} (fix: {self.fix})"


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
    # Deprecated spellings read anyway (``contracts lint`` prints them); not part of what the contract says.
    warnings: tuple[ContractWarning, ...] = dc_field(default=(), compare=False, repr=False)

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
