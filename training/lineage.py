"""The lineage record a training run carries from the lake to MLflow (``lineage.json`` in every
bundle): which partitions the examples came from, under which contract versions, which feature
view builds, which code version. Built by ``pipelines.train``, read by training and later readers.
"""
from __future__ import annotations

from typing import Final, Literal, Optional

from pydantic import Field

from millrace.training.bundle import BundleRecord

FORMAT_VERSION: Final = 2  # 2: examples.snapshot (the lake table's version read)
FILE = "lineage.json"


class ContractRef(BundleRecord):
    id: str
    version: str


class PartitionRef(BundleRecord):
    value: str = Field(description="The partition key's value (e.g. a date).")
    run_id: str = Field(description="The ingest run that committed it.")
    rows: int
    contract_version: Optional[str]


class ExamplesLineage(BundleRecord):
    source: str
    uri: str
    rows: int
    digest: str = Field(description="Over the lake table's snapshot id and the partitions' runs.")
    contract: ContractRef
    partitions: tuple[PartitionRef, ...] = ()
    snapshot: Optional[int] = Field(None, description="The lake table's version the examples were read at "
                                                      "(none in format 1).")


class FeatureViewLineage(BundleRecord):
    uri: str
    sha256: str = Field(description="Of the offline table.")
    run_id: str = Field(description="The build that wrote it.")
    rows: int
    built_at: str
    features_yaml_sha256: str


class Lineage(BundleRecord):
    format_version: Literal[1, 2] = FORMAT_VERSION
    examples: ExamplesLineage
    contracts: dict[str, ContractRef] = Field(default_factory=dict)
    feature_views: dict[str, FeatureViewLineage] = Field(default_factory=dict)
    git_sha: str = "unknown"
