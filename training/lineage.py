"""The lineage record a training run carries from the lake to MLflow (``lineage.json`` in every
bundle): which partitions the examples came from, under which contract versions, which feature
view builds, which code version. Built by ``pipelines.train``, read by training and later readers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from millrace.training.records import from_json, to_json

FORMAT_VERSION: Final = 1
FILE = "lineage.json"


@dataclass(frozen=True)
class ContractRef:
    id: str
    version: str


@dataclass(frozen=True)
class PartitionRef:
    value: str                        # the partition key's value (e.g. a date)
    run_id: str                       # the ingest run that committed it
    rows: int
    contract_version: str | None


@dataclass(frozen=True)
class ExamplesLineage:
    source: str
    uri: str
    rows: int
    digest: str                       # over the partition manifests the examples came from
    contract: ContractRef
    partitions: tuple[PartitionRef, ...] = ()


@dataclass(frozen=True)
class FeatureViewLineage:
    uri: str
    sha256: str                       # of the offline table
    run_id: str                       # the build that wrote it
    rows: int
    built_at: str
    features_yaml_sha256: str


@dataclass(frozen=True, kw_only=True)
class Lineage:
    format_version: Literal[1] = FORMAT_VERSION
    examples: ExamplesLineage
    contracts: dict[str, ContractRef] = field(default_factory=dict)
    feature_views: dict[str, FeatureViewLineage] = field(default_factory=dict)
    git_sha: str = "unknown"

    def to_json(self) -> str:
        return to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes, file: str = FILE) -> Lineage:
        return from_json(cls, text, file)
