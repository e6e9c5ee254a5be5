"""Quarantine records: each rejected row with its reason, where it came from and its original bytes."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

FORMAT_VERSION = 1  # bump with the schema; tests/golden/validation/quarantine.v<N>.parquet holds each version

SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("partition", pa.string(), nullable=False),
    pa.field("file", pa.string(), nullable=False),
    pa.field("line", pa.int64(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),     # a code of validation.reasons
    pa.field("field", pa.string()),                      # the field the reason is about, if any
    pa.field("payload", pa.large_binary()),              # the original bytes of the record
    pa.field("run_id", pa.string(), nullable=False),
], metadata={"millrace.format": "quarantine", "millrace.format_version": str(FORMAT_VERSION)})


def records(source: str, partition: str, file: str, line, reason, field, payload, run_id: str) -> pa.Table:
    n = len(reason)
    const = lambda v: pa.repeat(pa.scalar(v, pa.string()), n)  # noqa: E731
    return pa.table([
        const(source), const(partition), const(file), pa.array(line, pa.int64()), reason, field,
        payload, const(run_id),
    ], schema=SCHEMA)


def counts_by_reason(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(table.column("reason"))
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}


def empty() -> pa.Table:
    return SCHEMA.empty_table()
