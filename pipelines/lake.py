"""The lake: committed partitions, their manifests, atomic commit and readers.

Layout (a local path or any Beam FileSystems URI):

    <lake>/<source>/<key>=<value>/part-<run>-00000.parquet   data files of the committed run
    <lake>/<source>/<key>=<value>/_expectations-<run>.json    Great Expectations result
    <lake>/<source>/<key>=<value>/_manifest.json              the commit: written last, by rename
    <quarantine>/<source>/<key>=<value>/part-<run>.parquet    rows rejected from that partition

Readers trust only ``_manifest.json`` (a ``PartitionManifest``): files it does not list (a killed
run's leftovers, a replaced run's files) are invisible, and the next commit deletes them.

Readers run while a writer commits. A partition is read at one manifest: when a listed file is
gone or differs from its SHA-256, the manifest is read again; if it changed (a newer commit), the
partition is read again at the new one; if it did not, the lake is corrupt (``CorruptFile``).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa

from millrace.contracts.storage import (  # noqa: F401  (the lake's file operations, re-exported)
    exists, is_uri, join, list_dir, read_bytes, remove_unlisted, write_atomically, write_bytes, write_parquet,
)
from millrace.contracts.storage import safe_dir as partition_dir  # noqa: F401
from millrace.pipelines.errors import CorruptFile
from millrace.pipelines.records import PartitionManifest
from millrace.validation.quarantine import SCHEMA as QUARANTINE_SCHEMA

MANIFEST = "_manifest.json"
_ATTEMPTS = 5  # re-reads of a partition whose manifest keeps changing under the reader


@dataclass(frozen=True)
class Committed:
    value: str
    directory: str
    manifest: PartitionManifest


@dataclass(frozen=True)
class Unreadable:
    """A partition folder whose manifest does not parse: ingest rebuilds it, readers refuse it."""

    value: str
    directory: str
    error: CorruptFile


def rebuild_fix(source: str, value: str) -> str:
    """The command that rebuilds one partition from its landing files."""
    first, last = _landing_span(value)
    return f"rebuild the partition from its landing files: millrace ingest --source {source} --from {first} --to {last}"


def read_manifest(directory: str, source: str = "") -> PartitionManifest | None:
    """The manifest of a partition folder; None when there is none (never committed)."""
    path = join(directory, MANIFEST)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        return PartitionManifest.from_json(data, path)
    except CorruptFile as exc:
        value = posixpath.basename(directory).split("=", 1)[-1]
        source = source or posixpath.basename(posixpath.dirname(directory))
        raise CorruptFile(path, exc.problem, rebuild_fix(source, value) + " (plain `millrace ingest` also "
                          "rebuilds it)") from None


def scan_partitions(lake: str, source: str, key: str) -> tuple[list[Committed], list[Unreadable]]:
    """Committed partitions and those whose manifest is corrupt, by partition value."""
    good, bad = [], []
    for directory in _partition_dirs(lake, source, key):
        value = posixpath.basename(directory).split("=", 1)[1]
        try:
            manifest = read_manifest(directory, source)
        except CorruptFile as exc:
            bad.append(Unreadable(value, directory, exc))
            continue
        if manifest is not None:
            good.append(Committed(value, directory, manifest))
    return sorted(good, key=lambda c: c.value), sorted(bad, key=lambda u: u.value)


def committed_partitions(lake: str, source: str, key: str) -> list[Committed]:
    """Every committed partition of a source; a corrupt manifest raises ``CorruptFile``."""
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
    """The quarantined rows of every committed partition."""
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
            raise CorruptFile(c.directory, f"the manifest changed {_ATTEMPTS} times while being read",
                              "retry when the running ingest is done")
    return pa.concat_tables(tables) if tables else QUARANTINE_SCHEMA.empty_table()


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
    raise CorruptFile(c.directory, f"the manifest changed {_ATTEMPTS} times while being read",
                      "retry when the running ingest is done")


def _newer(c: Committed, path: str, problem: str) -> Committed:
    """The partition at its current manifest when that is a newer commit; else ``path`` is corrupt."""
    source = c.manifest.source
    current = read_manifest(c.directory, source)
    if current is None or current == c.manifest:
        raise CorruptFile(path, problem, rebuild_fix(source, c.value))
    return Committed(c.value, c.directory, current)


def _parquet(path: str, data: bytes, c: Committed) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(pa.py_buffer(data))
    except pa.ArrowException as exc:
        raise CorruptFile(path, f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})",
                          rebuild_fix(c.manifest.source, c.value)) from None


def _partition_dirs(lake: str, source: str, key: str) -> list[str]:
    root = join(lake, source)
    prefix = f"{key}="
    if is_uri(root):
        from apache_beam.io.filesystems import FileSystems

        metas = FileSystems.match([join(root, f"{prefix}*", MANIFEST)])[0].metadata_list
        return sorted(posixpath.dirname(m.path) for m in metas)
    try:
        with os.scandir(root) as entries:
            return sorted(join(root, e.name) for e in entries if e.name.startswith(prefix) and e.is_dir())
    except FileNotFoundError:
        return []


def _landing_span(value: str) -> tuple[str, str]:
    """First and last landing date of a partition value (YYYY, YYYY-MM or YYYY-MM-DD)."""
    import calendar

    if len(value) == 4:
        return f"{value}-01-01", f"{value}-12-31"
    if len(value) == 7 and value[:4].isdigit() and value[5:].isdigit() and 1 <= int(value[5:]) <= 12:
        return f"{value}-01", f"{value}-{calendar.monthrange(int(value[:4]), int(value[5:]))[1]:02d}"
    return value, value
