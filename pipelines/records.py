"""The typed records ingest writes and reads: partition manifests, partition reports, run summaries,
landing problems and lock holders.

Each is a ``contracts.records.Record`` (frozen pydantic, a ``format_version``, one JSON round trip);
``tests/golden/pipelines/`` holds one file per record and format version. A record that does not
parse (truncated, emptied, wrong shape) raises ``CorruptFile`` naming the file.
"""
from __future__ import annotations

from typing import Literal, Optional

from millrace.contracts.records import Record as _Base
from millrace.pipelines.errors import CorruptFile


class Record(_Base):
    corrupt = CorruptFile


# -- pieces ---------------------------------------------------------------------------------------

class InputFile(Record):
    """One landing file a partition was built from."""

    path: str
    landing_date: str
    bytes: int = 0
    mtime: float = 0.0
    records: int = 0
    sha256: str = ""
    error: Optional[str] = None     # set when the file could not be read: the partition is then rejected


class DataFile(Record):
    name: str                       # relative to the partition folder
    rows: int
    bytes: int
    sha256: str                     # readers check it against the bytes they read


class QuarantineInfo(Record):
    rows: int
    by_reason: dict[str, int]
    directory: str
    files: list[str]


class ContractRef(Record):
    id: str
    version: str
    path: str = ""


class PartitionRef(Record):
    key: str
    value: str


class ExpectationsInfo(Record):
    success: bool
    failed_blocking: list[str]
    failed_warnings: list[str]
    data_docs: str
    results: Optional[str] = None   # file name of the result beside the data (committed partitions only)


# -- stage records --------------------------------------------------------------------------------

class PartitionManifest(Record):
    """``<lake>/<source>/<key>=<value>/_manifest-<run>.json``: what a run committed in one
    partition; it counts once the table's snapshot holds the run's data file (``pipelines.lake``)."""

    format_version: Literal[1] = 1
    source: str
    partition: PartitionRef
    rows: int
    files: list[DataFile]
    quarantine: QuarantineInfo
    duplicates_resolved: int
    contract: ContractRef
    run_id: str
    committed_at: str
    inputs: list[InputFile]
    expectations: Optional[ExpectationsInfo] = None


COMMITTED, REJECTED, STAGED = "committed", "rejected", "staged"


class PartitionReport(Record):
    """``<state>/runs/<source>/<run>/partitions/<key>=<value>.json``: what a run did with one partition."""

    format_version: Literal[1] = 1
    source: str
    partition: str
    key: str
    run_id: str
    status: Literal["committed", "rejected", "staged"]   # staged: written, waiting for the run's commit
    records: int
    good: int
    quarantined: int
    by_reason: dict[str, int]
    duplicates_resolved: int
    inputs: list[InputFile]
    expectations: Optional[ExpectationsInfo] = None
    manifest: Optional[str] = None              # staged or committed: the manifest's path
    problem: Optional[str] = None               # rejected: why
    rejected_quarantine: Optional[str] = None   # rejected: where its quarantined rows were kept
    seconds: float = 0.0


class LandingProblem(Record):
    """A landing entry that is not read: every one is reported, and the run refuses to start."""

    path: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.path}: {self.problem} (fix: {self.fix})"


class IngestSummary(Record):
    """``<state>/runs/<source>/<run>/summary.json``: the whole run."""

    format_version: Literal[1] = 1
    source: str
    run_id: str
    selection: str
    seconds: float
    records: int
    good: int
    quarantined: int
    duplicates_resolved: int
    by_reason: dict[str, int]
    committed: list[str]
    rejected: dict[str, str]


class LockHolder(Record):
    """Written inside ``<state>/locks/<source>.lock`` by the process holding it."""

    format_version: Literal[1] = 1
    pid: int
    host: str
    command: str
    started_at: str


FORMATS: dict[str, type[Record]] = {  # golden file stem -> record; one golden file per format version
    "partition-manifest": PartitionManifest, "partition-report": PartitionReport,
    "ingest-summary": IngestSummary, "lock-holder": LockHolder,
}
