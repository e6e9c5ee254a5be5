"""``millrace ingest``: landing files -> decoded under contract -> validated -> committed partitions.

The pipeline is three named transforms on Arrow tables::

    Create((partition, landing files)) | Reshuffle | DecodeUnderContract | WritePartitions | SaveReports

then the driver commits every staged partition in one commit of the source's table
(``pipelines.commit``): a run is one snapshot of the lake, whatever runner did the work.

Only file names cross the shuffle; a partition's Arrow tables are built and written by one
worker, in fused steps, so they are never serialized between stages. A partition's files are
decoded together, and a worker validates the partitions it holds together (``write_partitions``),
so a run of many small files and partitions pays the fixed costs once, not per file or partition.

Every Beam pipeline option passes through (``--runner``, ``--direct_running_mode``...).
"""
from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from millrace.contracts.model import Contract
from millrace.contracts.project import Project
from millrace.pipelines import commit, lake, landing
from millrace.pipelines.decode import DecodeUnderContract, LandingFile
from millrace.pipelines.errors import LandingInvalid, NothingToIngest, RunFailed
from millrace.pipelines.lock import source_lock
from millrace.pipelines.records import (
    COMMITTED, REJECTED, IngestSummary, LandingProblem, PartitionReport,
)
from millrace.pipelines.write import Locations, WritePartitions


@dataclass
class IngestResult:
    source: str
    run_id: str
    selection: str
    reports: list[PartitionReport] = field(default_factory=list)
    seconds: float = 0.0
    data_docs: str | None = None   # the project's GX Data Docs index, when this run published results
    version: int | None = None     # the lake table's version this run committed (its snapshot id)

    def total(self, key: str) -> int:
        return sum(getattr(r, key) for r in self.reports)

    @property
    def rejected(self) -> list[PartitionReport]:
        return [r for r in self.reports if r.status == REJECTED]

    @property
    def committed(self) -> list[PartitionReport]:
        return [r for r in self.reports if r.status == COMMITTED]

    @property
    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.reports:
            for reason, n in r.by_reason.items():
                out[reason] = out.get(reason, 0) + n
        return dict(sorted(out.items()))

    def summary(self) -> IngestSummary:
        return IngestSummary(source=self.source, run_id=self.run_id, selection=self.selection, seconds=self.seconds,
                             records=self.total("records"), good=self.total("good"),
                             quarantined=self.total("quarantined"),
                             duplicates_resolved=self.total("duplicates_resolved"), by_reason=self.by_reason,
                             committed=[r.partition for r in self.committed],
                             rejected={r.partition: r.problem or "" for r in self.rejected})


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class Plan:
    contract: Contract
    files: list[LandingFile]
    selection: str
    problems: list[LandingProblem]


def plan(project: Project, source: str, start: dt.date | None = None, end: dt.date | None = None,
         changed_only: bool = False, partitions: frozenset[str] | None = None) -> Plan:
    """The landing files to read (whole partitions), a description of the selection, and the
    landing entries that break the entry rule (the run must not start when there are any).
    Without a range: the partitions with new or changed files; with one, all of its partitions,
    or with ``changed_only`` those of them with new or changed files. ``partitions``: only these
    partition values (a scheduler's one task per partition)."""
    contract = project.contract(source)
    found = landing.scan(project.landing, source, contract)
    files = found.files
    if partitions is not None:
        files = [f for f in files if str(f.partition) in partitions]
        if not files and not found.problems:
            raise NothingToIngest(f"no landing files of partition(s) {', '.join(sorted(partitions))} for source "
                                  f"'{source}' under {lake.join(project.landing, source)}")
    if start is not None or end is not None:
        if start and end and start > end:
            raise NothingToIngest(f"--from {start} is after --to {end} (fix: swap them)")
        chosen = landing.select(files, start, end)
        selection = f"{start or 'first'}..{end or 'last'}"
        if not chosen and not found.problems:
            raise NothingToIngest(f"no landing files for source '{source}' between {start or 'the first day'} "
                                  f"and {end or 'the last day'} under {lake.join(project.landing, source)}")
        if changed_only:
            chosen = _changed(project, source, contract, chosen)
            selection += ", new or changed files"
    else:
        chosen = _changed(project, source, contract, files)
        selection = "new or changed files"
    return Plan(contract, chosen, selection, found.problems)


def _changed(project: Project, source: str, contract: Contract, files: list[LandingFile]) -> list[LandingFile]:
    # A partition whose manifest is corrupt counts as never committed: it is rebuilt.
    committed, _corrupt = lake.scan_partitions(project.lake, source, contract.partitioning.key)
    return landing.pending(files, {c.value: c.manifest for c in committed}, contract)


def ingest(project: Project, source: str, start: dt.date | None = None, end: dt.date | None = None,
           beam_args: list[str] | None = None, validate: bool = True, progress=None,
           changed_only: bool = False, partitions: frozenset[str] | None = None,
           lock_wait: float = 0.0) -> IngestResult:
    """``changed_only``, ``partitions``: which partitions of the range (``plan``). ``lock_wait``:
    seconds to wait for another writer of the source to finish. Hold the source's write lock (``SourceBusy``, exit 75, if another run holds it) for the
    whole run: planning reads the committed manifests, and a commit's cleanup deletes files no
    snapshot lists, so two writers of one source must never overlap."""
    with source_lock(project.state_dir, source, wait=lock_wait):
        # first what a killed run left behind (or a lake from before the table format)
        commit.prepare(project.lake, project.quarantine, source, project.contract(source))
        return _ingest(project, source, start, end, beam_args, validate, progress, changed_only, partitions)


def _ingest(project: Project, source: str, start, end, beam_args, validate: bool, progress,
            changed_only: bool, partitions: frozenset[str] | None) -> IngestResult:
    chosen = plan(project, source, start, end, changed_only, partitions)
    contract, files = chosen.contract, chosen.files
    run_id = new_run_id()
    if chosen.problems:  # nothing is read until every entry is one the run can read
        raise LandingInvalid(chosen.problems)
    result = IngestResult(source, run_id, chosen.selection)
    if not files:
        return result
    where = Locations(project.lake, project.quarantine, project.state_dir)
    reports_dir = lake.join(project.state_dir, "runs", source, run_id)
    now_us = int(time.time() * 1_000_000)
    args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={project.config.pipeline.runner}")
    options = PipelineOptions(list(project.config.pipeline.options) + args)
    started = time.time()
    groups: dict[str, list] = {}
    for f in files:
        groups.setdefault(f.partition, []).append(f)
    watcher = _Watcher(reports_dir, len(groups), progress) if progress else None
    with beam.Pipeline(runner=local_runner(options), options=options) as pipeline:
        _ = (pipeline
             | "LandingFilesByPartition" >> beam.Create(sorted(groups.items()))
             | "Spread" >> beam.Reshuffle()
             | "DecodeUnderContract" >> DecodeUnderContract(contract, source, now_us, run_id)
             | "WritePartitions" >> WritePartitions(contract, source, where, run_id, validate)
             | "SaveReports" >> beam.Map(_save_report, reports_dir))
    if watcher:
        watcher.stop()
    if validate:  # before the reports are checked: what was committed links to built pages
        result.data_docs = _publish_docs(project, source, contract, run_id)
    reports = sorted(_load_reports(reports_dir), key=lambda r: r.partition)
    missing = sorted(set(groups) - {r.partition for r in reports})
    if missing:  # never commit, nor report "nothing to ingest", when some partition's outcome is unknown
        raise RunFailed(f"{source}: no report for {len(missing)} of {len(groups)} partition(s) under "
                        f"{lake.join(reports_dir, 'partitions')}, e.g. {missing[0]} (fix: rerun the ingest)")
    result.reports, result.version = commit.commit_reports(project.lake, project.quarantine, source, contract,
                                                           run_id, reports)
    for r in result.reports:
        if r.status == COMMITTED:
            _save_report(r, reports_dir)
    result.seconds = time.time() - started
    lake.write_bytes(lake.join(reports_dir, "summary.json"), result.summary().to_json().encode())
    return result


def local_runner(options: PipelineOptions):
    """For the DirectRunner, Beam's batch engine (FnApiRunner) itself; None for any other runner.

    Beam's DirectRunner first tries the Prism runner, which downloads a binary at run time, and
    falls back to this engine when it cannot: choosing it directly keeps runs offline and the
    same everywhere. ``--direct_running_mode`` and ``--direct_num_workers`` still apply."""
    from apache_beam.options.pipeline_options import StandardOptions

    if options.view_as(StandardOptions).runner not in (None, "DirectRunner"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def _save_report(report: PartitionReport, reports_dir: str) -> None:
    lake.write_bytes(lake.join(reports_dir, "partitions", f"{report.key}={report.partition}.json"),
                     report.to_json().encode())


def _load_reports(reports_dir: str) -> list[PartitionReport]:
    return [PartitionReport.from_json(lake.read_bytes(p), p) for p in lake.list_dir(lake.join(reports_dir, "partitions"))
            if p.endswith(".json")]


class _Watcher:
    """Reports progress by counting partition reports as the pipeline writes them."""

    def __init__(self, reports_dir: str, total: int, progress):
        self.reports_dir, self.total, self.progress = reports_dir, total, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.5):
            self.progress(len(lake.list_dir(lake.join(self.reports_dir, "partitions"))), self.total)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.progress(len(lake.list_dir(lake.join(self.reports_dir, "partitions"))), self.total)


def _publish_docs(project: Project, source: str, contract: Contract, run_id: str) -> str | None:
    """The run's results into the project's GX context and its Data Docs site, built once for the
    run (``validation.data_docs.publish``); the site's index.html, or None when nothing was staged."""
    from millrace.validation import data_docs
    from millrace.validation.expectations import build_suite

    return data_docs.publish(project.state_dir, source, run_id, build_suite(contract))
