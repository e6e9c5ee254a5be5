"""The typed records of the feature platform: build reports, offline manifests, materialize
reports and the record of what an online store holds.

Each is a frozen pydantic model with a ``format_version`` and one JSON round trip (``to_json`` /
``from_json``); ``tests/golden/features/`` holds one file per record and format version. A record
that does not parse (truncated, emptied, another shape) is a ``CorruptTable`` naming the file.
"""
from __future__ import annotations

from typing import Literal, Optional

from millrace.contracts.records import Record as _Base
from millrace.features.errors import CorruptTable


class Record(_Base):
    corrupt = CorruptTable


class LakeInput(Record):
    """One committed lake partition a feature table was built from."""

    partition: str                  # "<key>=<value>"
    run_id: str
    contract_version: str
    rows: int


class OfflineManifest(Record):
    """``<offline>/<view>/_manifest.json``: what the committed table is and what it was built from."""

    format_version: Literal[1] = 1
    view: str
    rows: int
    bytes: int
    sha256: str                     # of data.parquet: every read checks it
    run_id: str
    built_at: str                   # ISO 8601, UTC
    entities: int
    inputs: list[LakeInput] = []
    features_yaml_sha256: str = ""
    range: tuple[Optional[str], Optional[str]] = (None, None)   # the days rebuilt (None: open end)
    generated_by: str = ""          # set by tools that write tables without a build (bench, tests)


class ViewBuildReport(Record):
    """What one view's build did (``millrace features build``)."""

    format_version: Literal[1] = 1
    view: str
    status: Literal["built", "skipped"]
    rows: int = 0                   # rows of the committed table
    entities: int = 0
    rebuilt_rows: int = 0           # rows computed by this build (a ranged build keeps the others)
    seconds: float = 0.0
    problem: Optional[str] = None   # why it was skipped


class MaterializeReport(Record):
    """What one view's materialization wrote (``millrace features materialize``)."""

    format_version: Literal[1] = 1
    view: str
    entities: int                   # entities with a value up to `until`
    written: int
    skipped_unchanged: int
    refilled: bool = False          # the store had lost what the record said it holds: all rewritten
    until: str                      # ISO 8601, UTC
    seconds: float = 0.0


class StoreRecord(Record):
    """Metadata of ``<state>/feast/materialized/<store>/<view>.parquet``, the keys and event times
    last written to one online store. ``token`` is also written into the store itself: a record
    whose token the store does not hold (file deleted, Redis flushed) is not trusted."""

    format_version: Literal[1] = 1
    view: str
    store: str                      # the online store: 'sqlite' or the Redis URL without password
    token: str
    entities: int
    written_at: str                 # ISO 8601, UTC


FORMATS: dict[str, type[Record]] = {
    "offline-manifest": OfflineManifest, "view-build-report": ViewBuildReport,
    "materialize-report": MaterializeReport, "store-record": StoreRecord,
}
