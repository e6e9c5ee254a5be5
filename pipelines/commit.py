"""A run's commit: the partitions one ingest run staged become the lake's next snapshot.

The steps, each a crash point of the kill tests (``contracts.faults.INGEST_POINTS``):

1. ``before_commit``: every partition is staged (data, quarantine, results and manifest, all
   under the run id), nothing is in a snapshot.
2. The quarantine table gains the run's quarantine files (an append) -> ``after_quarantine_commit``.
3. The lake table replaces the run's partitions with the run's data files, in one commit (an
   overwrite filtered by partition value): the commit point -> ``after_commit``.
4. The quarantine table drops the replaced runs' files, and the partition folders lose every
   file no snapshot lists (the replaced run's, a killed run's) -> ``after_cleanup``.

millrace's readers take a partition's quarantine from the manifest of its committed run, so they
are exact after every step. A stock reader of the quarantine table sees a killed run's rows (after
2) or a replaced run's (after 3) until the source's next writer reconciles (``reconcile``): good +
quarantined = input holds for the lake table at every step, for the quarantine table between runs.
"""
from __future__ import annotations

import json
import posixpath

from millrace.contracts.arrow import arrow_schema
from millrace.contracts.faults import checkpoint
from millrace.contracts.model import Contract
from millrace.pipelines import delta, lake
from millrace.pipelines.records import COMMITTED, STAGED, PartitionManifest, PartitionReport


def commit_reports(lake_root: str, quarantine_root: str, source: str, contract: Contract, run_id: str,
                   reports: list[PartitionReport]) -> tuple[list[PartitionReport], int | None]:
    """Commit the staged partitions of ``reports`` in one commit; returns the reports (the staged
    ones now committed) and the lake table's new version (None when nothing was staged)."""
    staged = [r for r in reports if r.status == STAGED]
    if not staged:
        return reports, None
    manifests = [PartitionManifest.from_json(lake.read_bytes(r.manifest), r.manifest) for r in staged]
    version = commit_run(lake_root, quarantine_root, source, contract, manifests, run_id)
    return [r.model_copy(update={"status": COMMITTED}) if r.status == STAGED else r for r in reports], version


def commit_run(lake_root: str, quarantine_root: str, source: str, contract: Contract,
               manifests: list[PartitionManifest], run_id: str) -> int:
    """Commit the staged partitions of a run (steps 2-4 above); returns the lake table's new version."""
    key = contract.partitioning.key
    values = [m.partition.value for m in manifests]
    properties = {"millrace.run_id": run_id, "millrace.source": source,
                  "millrace.contract": f"{contract.id}@{contract.version}",
                  "millrace.partitions": json.dumps(values)}
    checkpoint("before_commit")
    quarantine_files = [_quarantine_file(quarantine_root, source, key, m, name)
                        for m in manifests for name in m.quarantine.files]
    delta.append(lake.join(quarantine_root, source), lake.quarantine_schema(key), key, quarantine_files,
                 {**properties, "millrace.step": "quarantine"})
    checkpoint("after_quarantine_commit")
    data_files = [delta.NewFile(m.partition.value, f.name, f.bytes, f.rows) for m in manifests for f in m.files]
    version = delta.replace_partitions(lake.join(lake_root, source), lake.lake_schema(arrow_schema(contract), key),
                                       key, data_files, values, {**properties, "millrace.step": "commit"})
    checkpoint("after_commit")
    reconcile(lake_root, quarantine_root, source, key, only=set(values))
    checkpoint("after_cleanup")
    return version


def prepare(lake_root: str, quarantine_root: str, source: str, contract: Contract) -> None:
    """Before a writer plans: convert a lake from before the table format, then ``reconcile``."""
    key = contract.partitioning.key
    if not delta.exists(lake.join(lake_root, source)) and lake.partition_folders(lake_root, source, key,
                                                                                 lake.LEGACY_MANIFEST):
        convert_legacy(lake_root, source, contract)
    if delta.exists(lake.join(lake_root, source)):
        reconcile(lake_root, quarantine_root, source, key)


def convert_legacy(lake_root: str, source: str, contract: Contract) -> int:
    """Commit the partitions of a lake written before the table format (each committed by its
    ``_manifest.json``) as the table's first version, with no data file rewritten. ``reconcile``
    then builds the quarantine table from the manifests."""
    key = contract.partitioning.key
    manifests = []
    for directory in lake.partition_folders(lake_root, source, key, lake.LEGACY_MANIFEST):
        path = lake.join(directory, lake.LEGACY_MANIFEST)
        data = lake.read_bytes(path)
        m = PartitionManifest.from_json(data, path)
        lake.write_bytes(lake.join(directory, lake.manifest_name(m.run_id)), data)
        manifests.append(m)
    files = [delta.NewFile(m.partition.value, f.name, f.bytes, f.rows) for m in manifests for f in m.files]
    # the contract's schema, so a changed contract makes planning rebuild the partitions it changed
    version = delta.replace_partitions(lake.join(lake_root, source), lake.lake_schema(arrow_schema(contract), key),
                                       key, files, [], {"millrace.step": "convert", "millrace.source": source})
    for m in manifests:
        directory = lake.partition_dir(lake_root, source, key, m.partition.value)
        lake.remove_unlisted(directory, {f.name for f in m.files} | {lake.manifest_name(m.run_id)}
                             | ({m.expectations.results} if m.expectations and m.expectations.results else set()))
    return version


def reconcile(lake_root: str, quarantine_root: str, source: str, key: str, only: set[str] | None = None) -> None:
    """Make the quarantine table and the partition folders match the lake's snapshot: the
    quarantine table holds exactly the committed runs' quarantine files, and a partition folder
    exactly its committed run's files. Run by the source's writer (it holds the lock) after its
    commit, for its partitions (``only``), and before planning, for all (a killed run's leftovers)."""
    committed, unreadable = lake.scan_partitions(lake_root, source, key)
    keep = {c.value: c for c in committed if only is None or c.value in only}
    skip = {u.value for u in unreadable}  # a damaged partition is left for its rebuild to replace
    q_root = lake.join(quarantine_root, source)
    q_snap = delta.snapshot(q_root, key)
    active = q_snap.files if q_snap else []
    listed = {(c.value, name) for c in keep.values() for name in c.manifest.quarantine.files}
    stale = [f for f in active if (f.partition, f.name) not in listed and f.partition not in skip
             and (only is None or f.partition in only)]
    # files the committed runs list but the quarantine table lacks (a deleted table, one older
    # than the lake's commits); files gone from the disk stay out (``read_quarantine`` reports them)
    missing = [(value, name) for value, name in sorted(listed - {(f.partition, f.name) for f in active})
               if lake.exists(lake.join(lake.partition_dir(quarantine_root, source, key, value), name))]
    delta.remove(q_root, key, stale, {"millrace.step": "reconcile"})
    if missing:
        files = [_quarantine_file(quarantine_root, source, key, keep[value].manifest, name) for value, name in missing]
        delta.append(q_root, lake.quarantine_schema(key), key, files, {"millrace.step": "reconcile"})
    for value, directory in _partition_folders(lake_root, source, key, only):
        if value in skip:
            continue
        c = keep.get(value)
        lake.remove_unlisted(directory, _lake_files(c) if c else set())
        q_dir = lake.partition_dir(quarantine_root, source, key, value)
        lake.remove_unlisted(q_dir, set(c.manifest.quarantine.files) if c else set())


def _lake_files(c: lake.Committed) -> set[str]:
    m = c.manifest
    names = {f.name for f in m.files} | {lake.manifest_name(m.run_id)}
    if m.expectations and m.expectations.results:
        names.add(m.expectations.results)
    return names


def _quarantine_file(quarantine_root: str, source: str, key: str, m: PartitionManifest, name: str) -> delta.NewFile:
    path = lake.join(lake.partition_dir(quarantine_root, source, key, m.partition.value), name)
    if len(m.quarantine.files) == 1:
        rows = m.quarantine.rows
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(pa.BufferReader(lake.read_bytes(path))).metadata.num_rows
    return delta.NewFile(m.partition.value, name, lake.size_of(path), rows)


def _partition_folders(lake_root: str, source: str, key: str, only: set[str] | None) -> list[tuple[str, str]]:
    """(value, folder) of every partition folder of the lake (committed or not), or of ``only``."""
    if only is not None:
        return [(v, lake.partition_dir(lake_root, source, key, v)) for v in sorted(only)]
    return [(posixpath.basename(d).split("=", 1)[1], d) for d in lake.partition_folders(lake_root, source, key)]
