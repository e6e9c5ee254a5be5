"""The lake: committed partitions, their manifests, atomic commit and readers.

Layout (any Beam FileSystems URI):

    <lake>/<source>/<key>=<value>/part-<run>-00000.parquet   data files of the committed run
    <lake>/<source>/<key>=<value>/_expectations-<run>.json    Great Expectations result
    <lake>/<source>/<key>=<value>/_manifest.json              the commit: written last, by rename
    <quarantine>/<source>/<key>=<value>/part-<run>.parquet    rows rejected from that partition

Readers trust only ``_manifest.json``: files it does not list (a killed run's
leftovers, a replaced run's files) are invisible, and the next commit deletes them.
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

MANIFEST = "_manifest.json"
_SAFE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def join(*parts: str) -> str:
    base = parts[0]
    return FileSystems.join(base, *parts[1:]) if "://" in base else posixpath.join(*parts)


def partition_dir(root: str, source: str, key: str, value: str) -> str:
    for part in (source, key, value):
        if not _SAFE.match(part) or part in (".", ".."):
            raise ValueError(f"unsafe path component {part!r}")
    return join(root, source, f"{key}={value}")


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(data)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return fh.read()


def write_atomically(path: str, data: bytes, run_id: str) -> None:
    """Write to a temporary name, then rename over ``path`` (atomic on POSIX; one object put on stores)."""
    tmp = f"{path}.tmp-{run_id}"
    write_bytes(tmp, data)
    if FileSystems.exists(path) and "://" in path:
        FileSystems.delete([path])  # object stores: rename is copy+delete and refuses to overwrite
    FileSystems.rename([tmp], [path])


def write_parquet(path: str, table: pa.Table) -> dict:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    write_bytes(path, data)
    return {"path": path, "rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def list_dir(directory: str) -> list[str]:
    """Files directly in ``directory`` (not folders)."""
    try:
        return [m.path for m in FileSystems.match([join(directory, "*")])[0].metadata_list]
    except Exception:
        return []


def remove_unlisted(directory: str, keep: set[str]) -> None:
    """Delete what a committed manifest does not list: older runs' files and killed runs' leftovers."""
    stale = [p for p in list_dir(directory) if posixpath.basename(p) not in keep]
    if stale:
        FileSystems.delete(stale)


def read_manifest(directory: str) -> dict | None:
    path = join(directory, MANIFEST)
    if not FileSystems.exists(path):
        return None
    return json.loads(read_bytes(path))


@dataclass(frozen=True)
class Committed:
    value: str
    directory: str
    manifest: dict


def committed_partitions(lake: str, source: str, key: str) -> list[Committed]:
    pattern = join(lake, source, f"{key}=*", MANIFEST)
    out = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        directory = posixpath.dirname(meta.path)
        value = posixpath.basename(directory).split("=", 1)[1]
        out.append(Committed(value, directory, json.loads(read_bytes(meta.path))))
    return sorted(out, key=lambda c: c.value)


def read_partition(committed: Committed) -> pa.Table:
    tables = [pq.read_table(io.BytesIO(read_bytes(join(committed.directory, f["name"])))) for f in committed.manifest["files"]]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_source(lake: str, source: str, key: str) -> pa.Table:
    """Every committed row of a source, with the partition value as a column."""
    tables = []
    for c in committed_partitions(lake, source, key):
        t = read_partition(c)
        tables.append(t.append_column(key, pa.repeat(pa.scalar(c.value), t.num_rows)))
    return pa.concat_tables(tables) if tables else pa.table({})


def read_quarantine(quarantine: str, lake: str, source: str, key: str) -> pa.Table:
    """The quarantined rows of every committed partition."""
    tables = []
    for c in committed_partitions(lake, source, key):
        directory = partition_dir(quarantine, source, key, c.value)  # not the manifest's copy: state can move
        for f in c.manifest["quarantine"]["files"]:
            tables.append(pq.read_table(io.BytesIO(read_bytes(join(directory, f)))))
    return pa.concat_tables(tables) if tables else pa.table({})
