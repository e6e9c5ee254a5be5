"""Decode landing files under a contract: text -> typed Arrow columns, good rows and quarantine.

``decode_file`` (one file) and ``decode_files`` (a partition's files together) are pure functions
of the file bytes, so the batch pipeline, a streaming pipeline and the tests call the same code;
``DecodeUnderContract`` is their Beam wrapper, one partition's landing files per element, Arrow
tables out.
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
    """Decoded landing files of one partition (one file, or all of them decoded together)."""

    partition: str
    good: pa.Table         # contract schema + provenance columns
    quarantine: pa.Table   # validation.quarantine.SCHEMA
    inputs: list[InputFile]

    @property
    def input(self) -> InputFile:
        """The input of a single decoded file."""
        if len(self.inputs) != 1:
            raise ValueError(f"{len(self.inputs)} files decoded together have no single input")
        return self.inputs[0]


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
    return decode_files(contract, source, landing.partition, [(landing, data)], now_us, run_id, file_index,
                        keep_unreadable=False)


def decode_files(contract: Contract, source: str, partition: str, files: list[tuple[LandingFile, bytes]],
                 now_us: int, run_id: str, first_index: int = 0, keep_unreadable: bool = True) -> Decoded:
    """Decode the landing files of one partition together: each file is read on its own (text
    columns, line numbers, raw bytes), then their rows are typed and judged in one pass, so many
    small files cost one coercion and one set of rules, not one per file. A file that cannot be
    read at all is kept as an input with its error (its partition is then rejected), unless
    ``keep_unreadable`` is False: then its error is raised."""
    read, inputs, index = [], [], []
    for i, (landing, data) in enumerate(files):
        try:
            records = read_records(landing.path, data, contract.field_names, contract.landing)
        except (pa.ArrowException, UnreadableFile) as exc:
            if not keep_unreadable:
                raise
            inputs.append(_unreadable_input(landing, exc))
            continue
        n = records.text.num_rows
        read.append((landing, records, first_index + i))
        index.append(np.full(n, first_index + i, dtype=np.int32))
        inputs.append(InputFile(path=landing.path, sha256=records.sha256, bytes=records.size, mtime=landing.mtime,
                                records=n, landing_date=landing.landing_date))
    if not read:
        return Decoded(partition, _empty_good(contract), Q.empty(), inputs)
    text = pa.concat_tables([r.text for _, r, _ in read]) if len(read) > 1 else read[0][1].text
    verdicts = Verdicts(_concat([r.reason for _, r, _ in read]), _concat([r.field for _, r, _ in read]))
    columns = {}
    for f in contract.fields:
        values, failed = coerce(f, text.column(f.name))
        verdicts.flag(failed, R.TYPE_MISMATCH, f.name)
        columns[f.name] = values
    typed = pa.table(columns)
    apply_field_rules(contract, typed, verdicts)
    flag_future_event_times(contract, typed, now_us, verdicts)
    if contract.event_time is not None:
        start, end = partition_bounds(contract, partition)
        event = typed.column(contract.event_time)
        outside = pc.or_(pc.less(event, start), pc.greater_equal(event, end))
        verdicts.flag(outside, R.LATE_EVENT, contract.event_time)
    ok = verdicts.ok
    lines = np.concatenate([r.line for _, r, _ in read]).astype(np.int64)
    file_of = np.concatenate(index)
    good = typed.filter(ok).cast(arrow_schema(contract))
    good = good.append_column("_file", pa.array(file_of, pa.int32()).filter(ok))
    good = good.append_column("_line", pa.array(lines, pa.int64()).filter(ok))
    quarantine = _quarantined(source, partition, read, file_of, lines, verdicts, ok, run_id)
    return Decoded(partition, good, quarantine, inputs)


def _quarantined(source, partition, read, file_of, lines, verdicts, ok, run_id) -> pa.Table:
    """Quarantine records of the rejected rows, file by file (only files that have some)."""
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if not len(bad):
        return Q.empty()
    starts = np.cumsum([0] + [r.text.num_rows for _, r, _ in read])
    out = []
    for k, (landing, records, _i) in enumerate(read):
        rows = bad[(bad >= starts[k]) & (bad < starts[k + 1])]
        if not len(rows):
            continue
        taken = pa.array(rows, pa.int64())
        out.append(Q.records(source, partition, landing.path, lines[rows], verdicts.reason.take(taken),
                             verdicts.field.take(taken), _payloads(records.raw, rows - starts[k]), run_id))
    return pa.concat_tables(out)


def _concat(arrays: list[pa.Array]) -> pa.Array:
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _empty_good(contract: Contract) -> pa.Table:
    return arrow_schema(contract).append(pa.field("_file", pa.int32())).append(pa.field("_line", pa.int64())).empty_table()


def _unreadable_input(landing: LandingFile, exc: Exception) -> InputFile:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputFile(path=landing.path, bytes=landing.size, mtime=landing.mtime, landing_date=landing.landing_date,
                     error=message)


def unreadable(contract: Contract, landing: LandingFile, exc: Exception) -> Decoded:
    return Decoded(landing.partition, _empty_good(contract), Q.empty(), [_unreadable_input(landing, exc)])


def _payloads(raw, index: np.ndarray) -> pa.Array:
    taken = raw.take(index)
    return pa.array([strip_terminator(p) for p in taken.to_pylist()], pa.large_binary())


class _DecodeFn(beam.DoFn):
    def __init__(self, contract: Contract, source: str, now_us: int, run_id: str):
        self.contract, self.source, self.now_us, self.run_id = contract, source, now_us, run_id

    def process(self, element):
        from millrace.pipelines.lake import read_bytes

        partition, files = element
        read = []
        for landing in sorted(files, key=lambda f: f.path):
            try:
                read.append((landing, read_bytes(landing.path)))
            except OSError as exc:
                # The partition is then rejected by WritePartitions, naming the file and the error.
                read.append((landing, exc))
        decoded, batch = [], []
        for index, (landing, data) in enumerate(read):
            if isinstance(data, OSError):
                decoded.append(unreadable(self.contract, landing, data))
            else:
                batch.append((index, landing, data))
        # Consecutive readable files are decoded together; file positions stay those of the sorted list.
        for group in _runs(batch):
            decoded.extend(self._decode(partition, group))
        for _ in read:
            checkpoint("after_decode")
        yield partition, decoded


    def _decode(self, partition: str, group: list) -> list[Decoded]:
        try:
            return [decode_files(self.contract, self.source, partition, [(f, d) for _, f, d in group],
                                 self.now_us, self.run_id, group[0][0])]
        except pa.ArrowException as exc:
            if len(group) == 1:
                return [unreadable(self.contract, group[0][1], exc)]
            # One file's rows broke the joint pass: decode file by file, so only that file is unreadable.
            return [d for item in group for d in self._decode(partition, [item])]


def _runs(batch: list) -> list[list]:
    """``(index, file, data)`` items split where the indices are not consecutive."""
    runs: list[list] = []
    for item in batch:
        if runs and runs[-1][-1][0] + 1 == item[0]:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


class DecodeUnderContract(beam.PTransform):
    """(partition, landing files) -> (partition, [Decoded]): typed good rows and quarantined rows
    of each file. Only file names travel between workers; the Arrow tables stay in the worker
    that writes the partition (the next, fused, step)."""

    def __init__(self, contract: Contract, source: str, now_us: int, run_id: str):
        super().__init__()
        self.contract, self.source, self.now_us, self.run_id = contract, source, now_us, run_id

    def expand(self, partitions):
        return partitions | "Decode" >> beam.ParDo(_DecodeFn(self.contract, self.source, self.now_us, self.run_id))
