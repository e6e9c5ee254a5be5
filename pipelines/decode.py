"""Decode landing files under a contract: text -> typed Arrow columns, good rows and quarantine.

``decode_file`` is a pure function of the file bytes, so the batch pipeline, a
streaming pipeline and the tests call the same code; ``DecodeUnderContract`` is its
Beam wrapper, one landing file per element, Arrow tables out.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.arrow import TIMESTAMP, arrow_schema, coerce
from millrace.contracts.model import Contract
from millrace.contracts.faults import checkpoint
from millrace.pipelines.readers import UnreadableFile, read_records, strip_terminator
from millrace.pipelines.records import InputFile
from millrace.validation import quarantine as Q
from millrace.validation import reasons as R
from millrace.validation.rules import Verdicts, apply_field_rules, flag_future_event_times

PROVENANCE = ("_file", "_line")  # kept on good rows until duplicates are resolved


@dataclass(frozen=True)
class LandingFile:
    path: str
    landing_date: str      # YYYY-MM-DD, the landing folder
    partition: str         # the partition this file feeds
    size: int = 0
    mtime: float = 0.0


@dataclass
class Decoded:
    partition: str
    good: pa.Table         # contract schema + provenance columns
    quarantine: pa.Table   # validation.quarantine.SCHEMA
    input: InputFile


def partition_of_date(contract: Contract, landing_date: str) -> str:
    return {"day": landing_date, "month": landing_date[:7], "year": landing_date[:4]}[contract.partitioning.granularity]


def partition_bounds(contract: Contract, value: str) -> tuple[pa.Scalar, pa.Scalar]:
    """[start, end) of a partition as UTC timestamps: comparing against them is far cheaper
    than formatting every row's event time."""
    granularity = contract.partitioning.granularity
    start = dt.date.fromisoformat({"day": value, "month": value + "-01", "year": value + "-01-01"}[granularity])
    if granularity == "day":
        end = start + dt.timedelta(days=1)
    elif granularity == "month":
        end = dt.date(start.year + start.month // 12, start.month % 12 + 1, 1)
    else:
        end = dt.date(start.year + 1, 1, 1)
    as_ts = lambda d: pa.scalar(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc), TIMESTAMP)  # noqa: E731
    return as_ts(start), as_ts(end)


def decode_file(contract: Contract, source: str, landing: LandingFile, data: bytes, now_us: int, run_id: str,
                file_index: int = 0) -> Decoded:
    """Decode one landing file. ``file_index`` is its position among its partition's files (the
    provenance kept on good rows so that duplicates can be traced back to their line)."""
    records = read_records(landing.path, data, contract.field_names, contract.landing)
    n = records.text.num_rows
    verdicts = Verdicts(records.reason, records.field)
    columns = {}
    for f in contract.fields:
        values, failed = coerce(f, records.text.column(f.name))
        verdicts.flag(failed, R.TYPE_MISMATCH, f.name)
        columns[f.name] = values
    typed = pa.table(columns)
    apply_field_rules(contract, typed, verdicts)
    flag_future_event_times(contract, typed, now_us, verdicts)
    if contract.event_time is not None:
        start, end = partition_bounds(contract, landing.partition)
        event = typed.column(contract.event_time)
        outside = pc.or_(pc.less(event, start), pc.greater_equal(event, end))
        verdicts.flag(outside, R.LATE_EVENT, contract.event_time)
    ok = verdicts.ok
    good = typed.filter(ok).cast(arrow_schema(contract))
    good = good.append_column("_file", pa.repeat(pa.scalar(file_index, pa.int32()), good.num_rows))
    good = good.append_column("_line", pa.array(records.line, pa.int64()).filter(ok))
    bad_idx = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    quarantine = Q.records(
        source, landing.partition, landing.path, records.line[bad_idx],
        verdicts.reason.take(bad_idx), verdicts.field.take(bad_idx),
        _payloads(records.raw, bad_idx), run_id)
    info = InputFile(path=landing.path, sha256=records.sha256, bytes=records.size, mtime=landing.mtime, records=n,
                     landing_date=landing.landing_date)
    return Decoded(landing.partition, good, quarantine, info)


def unreadable(contract: Contract, landing: LandingFile, exc: Exception) -> Decoded:
    schema = arrow_schema(contract).append(pa.field("_file", pa.int32())).append(pa.field("_line", pa.int64()))
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return Decoded(landing.partition, schema.empty_table(), Q.empty(),
                   InputFile(path=landing.path, bytes=landing.size, mtime=landing.mtime,
                             landing_date=landing.landing_date, error=message))


def _payloads(raw, index: np.ndarray) -> pa.Array:
    taken = raw.take(index)
    return pa.array([strip_terminator(p) for p in taken.to_pylist()], pa.large_binary())


class _DecodeFn(beam.DoFn):
    def __init__(self, contract: Contract, source: str, now_us: int, run_id: str):
        self.contract, self.source, self.now_us, self.run_id = contract, source, now_us, run_id

    def process(self, element):
        from millrace.pipelines.lake import read_bytes

        partition, files = element
        decoded = []
        for index, landing in enumerate(sorted(files, key=lambda f: f.path)):
            try:
                data = read_bytes(landing.path)
                decoded.append(decode_file(self.contract, self.source, landing, data, self.now_us, self.run_id, index))
            except (OSError, pa.ArrowException, UnreadableFile) as exc:
                # The partition is then rejected by WritePartitions, naming the file and the error.
                decoded.append(unreadable(self.contract, landing, exc))
            checkpoint("after_decode")
        yield partition, decoded


class DecodeUnderContract(beam.PTransform):
    """(partition, landing files) -> (partition, [Decoded]): typed good rows and quarantined rows
    of each file. Only file names travel between workers; the Arrow tables stay in the worker
    that writes the partition (the next, fused, step)."""

    def __init__(self, contract: Contract, source: str, now_us: int, run_id: str):
        super().__init__()
        self.contract, self.source, self.now_us, self.run_id = contract, source, now_us, run_id

    def expand(self, partitions):
        return partitions | "Decode" >> beam.ParDo(_DecodeFn(self.contract, self.source, self.now_us, self.run_id))
