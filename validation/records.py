"""Typed records validation writes for later readers (see ``millrace.contracts.records``).

``FORMATS`` maps each record's file stem to its class; ``tests/golden/validation/`` holds one file
per record and format version. The quarantine table's format is its Arrow schema
(``validation.quarantine.SCHEMA``, versioned in the schema metadata).
"""
from __future__ import annotations

from typing import Any, Literal

from millrace.contracts.records import Record


class ExpectationsReport(Record):
    """``_expectations-<run>.json`` beside a committed partition: what the contract's Great
    Expectations suite said about the partition's rows, and GE's own result document."""

    format_version: Literal[1] = 1
    suite: str                              # "<contract name>-<contract version>"
    success: bool                           # False when any blocking expectation failed
    evaluated: int                          # expectations run
    failed_blocking: tuple[str, ...]        # "expect_...(column=..., ...)" labels
    failed_warnings: tuple[str, ...]        # failed, but marked severity warning/info in the contract
    great_expectations: dict[str, Any]      # GE's JSON result, kept whole for Data Docs and audits


FORMATS: dict[str, type[Record]] = {"expectations-report": ExpectationsReport}
