"""The lake: each source a Delta Lake table of committed partitions, with their manifests.

Layout (a local path or an object-store URI):

    <lake>/<source>/_delta_log/                               the table's commits (``pipelines.delta``)
    <lake>/<source>/<key>=<value>/part-<run>-00000.parquet    data files of a run
    <lake>/<source>/<key>=<value>/_manifest-<run>.json        that run's facts about the partition
    <lake>/<source>/<key>=<value>/_expectations-<run>.json    its Great Expectations result
    <quarantine>/<source>/_delta_log/, <key>=<value>/part-<run>.parquet   rejected rows, a table too

A run stages every partition (data, quarantine, results, ``PartitionManifest``) under its run id,
then commits them all at once (``commit_run``): one Delta commit replaces the run's partitions.
The snapshot decides what is committed: a partition's data file in the current snapshot names
the run, and that run's manifest holds the facts (input files with checksums, contract version,
expectations, quarantine counts). A killed run's files are in no snapshot: every reader skips
them, and the partition's next commit deletes them.

Readers run while a writer commits. A partition is read at one snapshot: when a listed file is
gone or differs from its SHA-256, the table is read again; if the partition changed (a newer
commit), it is read again at the new one; if it did not, the lake is corrupt (``CorruptFile``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import posixpath
import re
from dataclasses import dataclass

import pyarrow as pa

from millrace.contracts.storage import (  # noqa: F401  (the lake's file operations, re-exported)
    exists, is_uri, join, list_dir, read_bytes, remove_unlisted, size_of, write_atomically, write_bytes, write_parquet,
)
from millrace.contracts.storage import safe_dir as partition_dir  # noqa: F401
from millrace.pipelines import delta
from millrace.pipelines.errors import CorruptFile
from millrace.pipelines.records import PartitionManifest
from millrace.validation.quarantine import SCHEMA as QUARANTINE_SCHEMA

_ATTEMPTS = 5  # re-reads of a partition whose snapshot keeps changing under the reader
_DATA_FILE = re.compile(r"^part-(?P<run>.+)-\d{5}\.parquet$")
LEGACY_MANIFEST = "_manifest.json"  # the commit of a partition before the lake was a Delta table


def data_name(run_id: str) -> str:
    return f"part-{run_id}-00000.parquet"


def quarantine_name(run_id: str) -> str:
    return f"part-{run_id}.parquet"


def manifest_name(run_id: str) -> str:
    return f"_manifest-{run_id}.json"


@dataclass(frozen=True)
class Committed:
    value: str
    directory: str
    manifest: PartitionManifest
    version: int = -1   # the table version (snapshot id) the partition was read at


@dataclass(frozen=True)
class Unreadable:
    """A committed partition whose manifest is missing or does not parse: ingest rebuilds it,
    readers refuse it."""

    value: str
    directory: str
    error: CorruptFile


def rebuild_fix(source: str, value: str) -> str:
    """The command that rebuilds one partition from its landing files."""
    first, last = _landing_span(value)
    return f"rebuild the partition from its landing files: millrace ingest --source {source} --from {first} --to {last}"


# Local manifests already parsed: path -> ((size, modification time), manifest). A run writes a
# partition's manifest once, and each stage of a nightly scans the whole lake's manifests again:
# parsing them once per process spares a few hundred milliseconds per stage on a lake of a few
# hundred partitions. One entry per file, so a long-lived process holds no more than the lake has.
_PARSED: dict[str, tuple[tuple[int, int], PartitionManifest]] = {}


def read_manifest(directory: str, run_id: str, source: str = "") -> PartitionManifest | None:
    """The manifest a run wrote for a partition folder; None when there is none."""
    path = join(directory, manifest_name(run_id))
    stamp = None
    if not is_uri(path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_size, st.st_mtime_ns)
        if path in _PARSED and _PARSED[path][0] == stamp:
            return _PARSED[path][1]
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        manifest = PartitionManifest.from_json(data, path)
    except CorruptFile as exc:
        value = posixpath.basename(directory).split("=", 1)[-1]
        source = source or posixpath.basename(posixpath.dirname(directory))
        raise CorruptFile(path, exc.problem, rebuild_fix(source, value) + " (plain `millrace ingest` also "
                          "rebuilds it)") from None
    if stamp is not None:
        _PARSED[path] = stamp, manifest
    return manifest


def scan_partitions(lake: str, source: str, key: str) -> tuple[list[Committed], list[Unreadable]]:
    """The partitions of the current snapshot, and those whose manifest is missing or corrupt."""
    snap = _snapshot(lake, source, key)
    by_value: dict[str, list[delta.ActiveFile]] = {}
    for f in snap.files:
        by_value.setdefault(f.partition, []).append(f)
    good, bad = [], []
    for value, files in sorted(by_value.items()):
        directory = partition_dir(lake, source, key, value)
        try:
            good.append(_committed(directory, source, value, files, snap.version))
        except CorruptFile as exc:
            bad.append(Unreadable(value, directory, exc))
    return good, bad


def committed_partitions(lake: str, source: str, key: str) -> list[Committed]:
    """Every committed partition of a source; a missing or corrupt manifest raises ``CorruptFile``."""
    good, bad = scan_partitions(lake, source, key)
    if bad:
        raise bad[0].error
    return good


def read_partition(committed: Committed) -> pa.Table:
    """The rows of one partition, as of its latest commit (see ``snapshot`` for the manifest read)."""
    return _read_consistently(committed)[1]


def snapshot(lake: str, source: str, key: str) -> list[tuple[Committed, pa.Table]]:
    """Every committed partition with its rows, each read at the manifest returned beside it."""
    return [_read_consistently(c) for c in committed_partitions(lake, source, key)]


def read_source(lake: str, source: str, key: str) -> pa.Table:
    """Every committed row of a source, with the partition value as a column."""
    tables = [t.append_column(key, pa.repeat(pa.scalar(c.value), t.num_rows)) for c, t in snapshot(lake, source, key)]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_quarantine(quarantine: str, lake: str, source: str, key: str) -> pa.Table:
    """The quarantined rows of every committed partition: the files its manifest lists, which are
    the quarantine table's files of the same run (``commit_run``)."""
    tables = []
    for c in committed_partitions(lake, source, key):
        directory = partition_dir(quarantine, source, key, c.value)  # not the manifest's copy: state can move
        for _ in range(_ATTEMPTS):
            try:
                tables.extend([_parquet(join(directory, f), read_bytes(join(directory, f)), c)
                               for f in c.manifest.quarantine.files])
                break
            except FileNotFoundError as exc:
                c = _newer(c, exc.filename or directory, "is listed in the manifest but missing")
        else:
            raise CorruptFile(c.directory, f"the table changed {_ATTEMPTS} times while being read",
                              "retry when the running ingest is done")
    return pa.concat_tables(tables) if tables else QUARANTINE_SCHEMA.empty_table()


def lake_schema(data: pa.Schema, key: str) -> pa.Schema:
    return delta.table_schema(data, key)


def quarantine_schema(key: str) -> pa.Schema:
    if key in QUARANTINE_SCHEMA.names:  # the quarantine table is partitioned by the same key
        from millrace.contracts.errors import MillraceError

        raise MillraceError(f"the partition key {key!r} is also a column of the quarantine table "
                            f"({', '.join(QUARANTINE_SCHEMA.names)}) (fix: choose another customProperties.partitionKey)")
    return delta.table_schema(QUARANTINE_SCHEMA, key)


# -- internals ------------------------------------------------------------------------------------

def _read_consistently(committed: Committed) -> tuple[Committed, pa.Table]:
    c = committed
    for _ in range(_ATTEMPTS):
        tables = []
        try:
            for f in c.manifest.files:
                path = join(c.directory, f.name)
                data = read_bytes(path)
                if len(data) != f.bytes or hashlib.sha256(data).hexdigest() != f.sha256:
                    c = _newer(c, path, f"SHA-256 differs from the manifest's ({len(data):,} bytes, "
                                        f"{f.bytes:,} committed): truncated, swapped or rewritten")
                    break
                tables.append(_parquet(path, data, c))
            else:
                return c, (pa.concat_tables(tables) if tables else pa.table({}))
        except FileNotFoundError as exc:
            c = _newer(c, exc.filename or c.directory, "is listed in the manifest but missing")
    raise CorruptFile(c.directory, f"the table changed {_ATTEMPTS} times while being read",
                      "retry when the running ingest is done")


def _newer(c: Committed, path: str, problem: str) -> Committed:
    """The partition at the current snapshot when a newer commit replaced it; else ``path`` is corrupt."""
    source = c.manifest.source
    key = c.manifest.partition.key
    current = {p.value: p for p in committed_partitions(_lake_of(c.directory), source, key)}.get(c.value)
    if current is None or current.manifest == c.manifest:
        raise CorruptFile(path, problem, rebuild_fix(source, c.value))
    return current


def _lake_of(directory: str) -> str:
    return posixpath.dirname(posixpath.dirname(directory))


def _committed(directory: str, source: str, value: str, files: list[delta.ActiveFile], version: int) -> Committed:
    """A partition of the snapshot with the manifest of the run that wrote its files."""
    runs = {m.group("run") for m in (_DATA_FILE.match(f.name) for f in files) if m}
    fix = rebuild_fix(source, value)
    if len(runs) != 1 or any(not _DATA_FILE.match(f.name) for f in files):
        raise CorruptFile(join(directory, files[0].name), f"the table lists {len(files)} file(s) from "
                          f"{len(runs)} run(s) here ({', '.join(f.name for f in files[:3])}); one run's "
                          "file is expected", fix)
    (run,) = runs
    manifest = read_manifest(directory, run, source)
    if manifest is None:
        raise CorruptFile(join(directory, manifest_name(run)), "is missing: the table lists the run's data file "
                          "but not the facts about it", fix)
    if sorted(f.name for f in manifest.files) != sorted(f.name for f in files):
        raise CorruptFile(join(directory, manifest_name(run)), "lists other data files than the table", fix)
    return Committed(value, directory, manifest, version)


def _snapshot(lake: str, source: str, key: str) -> delta.Snapshot:
    root = join(lake, source)
    try:
        snap = delta.snapshot(root, key)
    except delta.TableUnreadable as exc:
        raise CorruptFile(join(root, delta.LOG), f"the table cannot be read ({' '.join(str(exc).split())[:200]})",
                          "restore the folder from a backup, or delete the source's table and rerun "
                          f"millrace ingest --source {source}") from None
    if snap is None:
        legacy = _legacy_partitions(lake, source, key)
        if legacy:
            raise CorruptFile(legacy[0], "the lake predates the table format (a partition committed by "
                              "_manifest.json)", f"convert it once: millrace ingest --source {source}")
        return delta.Snapshot(version=-1, files=[])
    return snap


def _parquet(path: str, data: bytes, c: Committed) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(pa.py_buffer(data))
    except pa.ArrowException as exc:
        raise CorruptFile(path, f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})",
                          rebuild_fix(c.manifest.source, c.value)) from None


def partition_folders(lake: str, source: str, key: str, holding: str | None = None) -> list[str]:
    """Every ``<key>=<value>`` folder of a source (committed or not), or those holding the file ``holding``."""
    root = join(lake, source)
    prefix = f"{key}="
    if is_uri(root):
        from apache_beam.io.filesystems import FileSystems

        metas = FileSystems.match([join(root, f"{prefix}*", holding or "*")])[0].metadata_list
        return sorted({posixpath.dirname(m.path) for m in metas})
    try:
        with os.scandir(root) as entries:
            return sorted(join(root, e.name) for e in entries if e.name.startswith(prefix) and e.is_dir()
                          and (holding is None or os.path.exists(join(root, e.name, holding))))
    except FileNotFoundError:
        return []


def _legacy_partitions(lake: str, source: str, key: str) -> list[str]:
    """Partition folders committed the way the lake was before it was a Delta table."""
    return partition_folders(lake, source, key, LEGACY_MANIFEST)


def _landing_span(value: str) -> tuple[str, str]:
    """First and last landing date of a partition value (YYYY, YYYY-MM or YYYY-MM-DD)."""
    import calendar

    if len(value) == 4:
        return f"{value}-01-01", f"{value}-12-31"
    if len(value) == 7 and value[:4].isdigit() and value[5:].isdigit() and 1 <= int(value[5:]) <= 12:
        return f"{value}-01", f"{value}-{calendar.monthrange(int(value[:4]), int(value[5:]))[1]:02d}"
    return value, value


def period_start(value) -> dt.date:
    """The first day of a partition value: a date, or text by day, month or year (2016-10-16, 2016-10, 2016)."""
    if isinstance(value, dt.date):
        return value
    text = str(value)[:10]
    return dt.date.fromisoformat(text + {4: "-01-01", 7: "-01"}.get(len(text), ""))
