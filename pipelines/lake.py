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

import json
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from millrace.contracts.storage import (  # noqa: F401  (the lake's file operations, re-exported)
    exists, join, list_dir, read_bytes, remove_unlisted, write_atomically, write_bytes, write_parquet,
)
from millrace.contracts.storage import safe_dir as partition_dir  # noqa: F401

MANIFEST = "_manifest.json"


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
    tables = [pq.read_table(pa.py_buffer(read_bytes(join(committed.directory, f["name"])))) for f in committed.manifest["files"]]
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
            tables.append(pq.read_table(pa.py_buffer(read_bytes(join(directory, f)))))
    return pa.concat_tables(tables) if tables else pa.table({})
