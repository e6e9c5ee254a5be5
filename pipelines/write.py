"""WritePartitions: resolve duplicates, apply the quarantine threshold and the expectation
suite, then stage each partition (data, quarantine, results and manifest under the run id) for
the run's one commit (``pipelines.commit``, by the driver once every partition is staged).

A worker buffers the partitions it receives (up to ``BUNDLE_RECORDS`` records or
``BUNDLE_PARTITIONS`` partitions) and writes them together: the suite validates them in one pass
(``SuiteRunner.validate_many``), and each partition still gets its own verdict and commit."""
from __future__ import annotations

import time
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.arrow import arrow_schema
from millrace.contracts.model import Contract
from millrace.pipelines import lake
from millrace.contracts.faults import checkpoint
from millrace.pipelines.decode import PROVENANCE, Decoded
from millrace.pipelines.records import (
    COMMITTED, REJECTED, STAGED, ContractRef, DataFile, ExpectationsInfo, InputFile, PartitionManifest, PartitionRef,
    PartitionReport, QuarantineInfo,
)
from millrace.validation import quarantine as Q
from millrace.validation import reasons as R

@dataclass(frozen=True)
class Locations:
    lake: str
    quarantine: str
    state_dir: str


def resolve_duplicates(contract: Contract, good: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Keep the latest row per key (by event time, then landing order) and return
    (kept, superseded), the kept rows in event-time order for the lake.

    Only rows whose key occurs more than once are ranked: duplicates are rare, and sorting
    every row on five columns would cost more than the rest of the write."""
    keys = list(contract.key_fields)
    rows = good.append_column("_row", pa.array(np.arange(good.num_rows, dtype=np.int64)))
    counts = rows.select(keys).group_by(keys).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1)).select(keys)
    lose = np.zeros(good.num_rows, dtype=bool)
    if repeated.num_rows:
        candidates = rows.join(repeated, keys, join_type="left semi")
        rank = ([contract.event_time] if contract.event_time else []) + list(PROVENANCE)
        order = [(k, "ascending") for k in keys] + [(k, "descending") for k in rank]
        ranked = candidates.take(pc.sort_indices(candidates, sort_keys=order))
        same = np.ones(ranked.num_rows - 1, dtype=bool)
        for k in keys:
            col = ranked.column(k).to_numpy()
            same &= col[1:] == col[:-1]
        lose[ranked.column("_row").to_numpy()[1:][same]] = True
    kept = np.flatnonzero(~lose)
    if contract.event_time:  # stable: ties keep landing order, so reruns write identical files
        kept = kept[pc.sort_indices(good.column(contract.event_time).take(kept)).to_numpy()]
    return good.take(kept), good.take(np.flatnonzero(lose))


BUNDLE_RECORDS = 1_000_000   # records buffered before a worker validates and commits what it holds
BUNDLE_PARTITIONS = 512      # ... or partitions (a run of many small ones)


class _WriteFn(beam.DoFn):
    """Buffers the partitions a worker receives and writes them together (``write_partitions``):
    the expectation suite then runs once over many small partitions instead of once for each."""

    def __init__(self, contract: Contract, source: str, where: Locations, run_id: str, validate: bool = True):
        self.contract, self.source, self.where, self.run_id, self.validate = contract, source, where, run_id, validate
        self._suite = None
        self._pending: list = []
        self._records = 0

    def setup(self):
        if self.validate:
            from millrace.validation.expectations import SuiteRunner

            self._suite = SuiteRunner(self.contract)

    def start_bundle(self):
        self._pending, self._records = [], 0

    def process(self, element):
        partition, decoded = element
        decoded = list(decoded)
        self._pending.append((partition, decoded))
        self._records += sum(i.records for d in decoded for i in d.inputs)
        if self._records >= BUNDLE_RECORDS or len(self._pending) >= BUNDLE_PARTITIONS:
            yield from self._flush()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        for report in self._flush():
            yield GlobalWindows.windowed_value(report)

    def _flush(self):
        pending, self._pending, self._records = self._pending, [], 0
        return write_partitions(self.contract, self.source, pending, self.where, self.run_id, self._suite,
                                commit=False) if pending else []  # the driver commits the whole run


def write_partition(contract: Contract, source: str, partition: str, decoded: list[Decoded],
                    where: Locations, run_id: str, suite=None) -> PartitionReport:
    """Resolve, check and commit one partition from its decoded files; returns the run report."""
    return write_partitions(contract, source, [(partition, decoded)], where, run_id, suite)[0]


def write_partitions(contract: Contract, source: str, items: list[tuple[str, list[Decoded]]], where: Locations,
                     run_id: str, suite=None, commit: bool = True) -> list[PartitionReport]:
    """Resolve, check and stage several partitions, each on its own: the threshold and the
    expectations judge each partition (the suite validates them together, ``validate_many``).
    With ``commit``, the staged partitions are then committed together (one commit, under the
    caller's source lock); without, they wait for the caller's commit (``pipelines.commit``).
    Returns one report per partition, in the order given."""
    started = time.time()
    if len({p for p, _ in items}) != len(items):
        raise ValueError(f"{source}: a partition given twice to one write (each must come with all its files)")
    merged = {p: _merge(contract, source, p, decoded, run_id) for p, decoded in items}
    problems = {p: _problem(contract, decoded, merged[p]) for p, decoded in items}
    verdicts, docs = {}, {}
    if suite is not None:
        checked = {p: merged[p].good for p, _ in items if problems[p] is None}
        bundle = suite.validate_many(checked) if checked else None
        if bundle is not None:
            verdicts = bundle.partitions
            docs = _stage_docs(contract, source, where, run_id, bundle)
    spent = (time.time() - started) / max(len(items), 1)  # shared work, split evenly
    reports = []
    for partition, decoded in items:
        started = time.time()
        m, problem, suite_result, expectations = merged[partition], problems[partition], verdicts.get(partition), None
        if suite_result is not None:
            expectations = ExpectationsInfo(success=suite_result.success, failed_blocking=suite_result.failed_blocking,
                                            failed_warnings=suite_result.failed_warnings, data_docs=docs[partition])
            if not suite_result.success:
                problem = "blocking expectations failed: " + ", ".join(suite_result.failed_blocking)
        if problem is None:
            outcome = _stage(contract, source, partition, m, suite_result, expectations, where, run_id)
            expectations = outcome.pop("expectations")
        else:
            outcome = _reject(source, contract.partitioning.key, partition, m.quarantine, problem, where, run_id)
        reports.append(PartitionReport(
            source=source, partition=partition, key=contract.partitioning.key, run_id=run_id, records=m.records,
            good=m.good.num_rows, quarantined=m.quarantine.num_rows, by_reason=m.by_reason,
            duplicates_resolved=m.duplicates_resolved, inputs=m.inputs, expectations=expectations,
            seconds=spent + time.time() - started, **outcome))
    if commit:
        from millrace.pipelines.commit import commit_reports

        reports, _version = commit_reports(where.lake, where.quarantine, source, contract, run_id, reports)
    return reports


def _stage_docs(contract: Contract, source: str, where: Locations, run_id: str, bundle) -> dict[str, str]:
    """Data Docs pages, by partition, staged for the run's publish (``validation.data_docs``). A
    partition with a failed expectation (blocking or warning), or validated alone, gets a page of
    its own; the others share the page of the validation of all the rows together."""
    from millrace.validation import data_docs

    key = contract.partitioning.key
    pages, shared = {}, None
    for partition, result in bundle.partitions.items():
        if bundle.whole is None or result.failed_blocking or result.failed_warnings:
            pages[partition] = data_docs.stage(where.state_dir, source, run_id, f"{key}={partition}",
                                               result.report.great_expectations, key, [partition])
            continue
        if shared is None:
            names = sorted(bundle.partitions)
            shared = data_docs.stage(where.state_dir, source, run_id, f"{key}={names[0]}..{names[-1]}",
                                     bundle.whole.report.great_expectations, key, names)
        pages[partition] = shared
    return pages


@dataclass(frozen=True)
class _Merged:
    good: pa.Table
    quarantine: pa.Table
    records: int
    duplicates_resolved: int
    by_reason: dict
    inputs: list[InputFile]


def _merge(contract: Contract, source: str, partition: str, decoded: list[Decoded], run_id: str) -> _Merged:
    """All files of the partition as one good table (duplicates resolved) and one quarantine table."""
    inputs = [i for d in decoded for i in d.inputs]  # in file order: ``_file`` indexes this list
    records = sum(i.records for i in inputs)
    good, superseded = resolve_duplicates(contract, pa.concat_tables([d.good for d in decoded]))
    quarantine = pa.concat_tables([d.quarantine for d in decoded])
    if superseded.num_rows:
        paths = [i.path for i in inputs]
        quarantine = pa.concat_tables([quarantine, _superseded_records(contract, source, partition, superseded,
                                                                        paths, run_id)])
    good = good.drop_columns(list(PROVENANCE)).cast(arrow_schema(contract))
    if good.num_rows + quarantine.num_rows != records:
        raise RuntimeError(f"{source} {partition}: {good.num_rows} good + {quarantine.num_rows} quarantined "
                           f"!= {records} records in; refusing to commit")
    return _Merged(good, quarantine, records, superseded.num_rows, Q.counts_by_reason(quarantine),
                   inputs)


def _problem(contract: Contract, decoded: list[Decoded], merged: _Merged) -> str | None:
    """Why the partition must not be committed, before expectations run; None if nothing."""
    unreadable = [i for d in decoded for i in d.inputs if i.error]
    if unreadable:
        return "unreadable input: " + "; ".join(f"{i.path}: {i.error}" for i in unreadable)
    # Superseded duplicates are resolved, not bad data: they do not count toward the threshold.
    rejected = merged.quarantine.num_rows - merged.duplicates_resolved
    share = rejected / merged.records if merged.records else 0.0
    if share > contract.quarantine_threshold:
        return (f"quarantine share {share:.1%} is above the contract's threshold "
                f"{contract.quarantine_threshold:.1%}")
    return None


def _reject(source: str, key: str, partition: str, quarantine: pa.Table, problem: str, where: Locations,
            run_id: str) -> dict:
    """Leave the last commit as it is; keep the rows that were rejected where they can be read."""
    kept = None
    if quarantine.num_rows:
        kept = lake.join(where.quarantine, source, "_rejected", run_id, f"{key}={partition}.parquet")
        lake.write_parquet(kept, quarantine)
    return {"status": REJECTED, "problem": problem, "rejected_quarantine": kept}


def _stage(contract: Contract, source: str, partition: str, merged: _Merged, suite_result,
           expectations: ExpectationsInfo | None, where: Locations, run_id: str) -> dict:
    """Data, quarantine, results and manifest under run-specific names: nothing is replaced, and
    nothing is visible until the run's commit puts the data file in the table's snapshot."""
    key = contract.partitioning.key
    part_dir = lake.partition_dir(where.lake, source, key, partition)
    q_dir = lake.partition_dir(where.quarantine, source, key, partition)
    data_name, q_name = lake.data_name(run_id), lake.quarantine_name(run_id)
    data_file = lake.write_parquet(lake.join(part_dir, data_name), merged.good)
    checkpoint("after_data_files")
    lake.write_parquet(lake.join(q_dir, q_name), merged.quarantine)
    checkpoint("after_quarantine")
    if suite_result is not None:
        results_name = f"_expectations-{run_id}.json"
        lake.write_bytes(lake.join(part_dir, results_name), suite_result.to_json())
        expectations = expectations.model_copy(update={"results": results_name})
    manifest = PartitionManifest(
        source=source, partition=PartitionRef(key=key, value=partition), rows=merged.good.num_rows,
        files=[DataFile(name=data_name, rows=data_file["rows"], bytes=data_file["bytes"], sha256=data_file["sha256"])],
        quarantine=QuarantineInfo(rows=merged.quarantine.num_rows, by_reason=merged.by_reason, directory=q_dir,
                                  files=[q_name]),
        duplicates_resolved=merged.duplicates_resolved,
        contract=ContractRef(id=contract.id, version=contract.version, path=str(contract.path)),
        run_id=run_id, committed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        inputs=merged.inputs, expectations=expectations)
    path = lake.join(part_dir, lake.manifest_name(run_id))
    lake.write_bytes(path, manifest.to_json().encode())
    return {"status": STAGED, "manifest": path, "expectations": expectations}


def _superseded_records(contract: Contract, source: str, partition: str, rows: pa.Table, paths: list[str],
                        run_id: str) -> pa.Table:
    """Quarantine records for superseded duplicates, with their original bytes read back from
    their landing files (rare: only files that hold such rows are read again)."""
    from millrace.pipelines.readers import payloads_at

    out = []
    lines = rows.column("_line").to_numpy()
    for index in pc.unique(rows.column("_file")).to_pylist():
        picked = lines[pc.equal(rows.column("_file"), index).to_numpy(zero_copy_only=False)]
        path = paths[index]
        payloads = payloads_at(path, lake.read_bytes(path), picked)
        n = len(picked)
        out.append(Q.records(source, partition, path, picked, pa.repeat(pa.scalar(R.DUPLICATE_KEY), n),
                             pa.repeat(pa.scalar(",".join(contract.key_fields)), n),
                             pa.array(payloads, pa.large_binary()), run_id))
    return pa.concat_tables(out)


class WritePartitions(beam.PTransform):
    """(partition, [Decoded]) -> one PartitionReport per partition (staged or rejected)."""

    def __init__(self, contract: Contract, source: str, where: Locations, run_id: str, validate: bool = True):
        super().__init__()
        self.contract, self.source, self.where, self.run_id, self.validate = contract, source, where, run_id, validate

    def expand(self, decoded):
        return decoded | "Commit" >> beam.ParDo(_WriteFn(self.contract, self.source, self.where, self.run_id,
                                                         self.validate))
