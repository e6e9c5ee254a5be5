"""Where a stream's files lie and how they are named: its landing files (one per partition and
micro-batch, ``<landing>/<source>/<first day>/stream-<first id>_<last id>.jsonl``) and its own
quarantine (``<quarantine>/<source>/_stream/<first id>_<last id>.parquet``: rows too late for their
window or with no usable event time, outside any partition). Light: ``millrace lake quarantine``
reads the stream's quarantine without loading the consumer."""
from __future__ import annotations

import os

import pyarrow as pa

from millrace.pipelines import lake
from millrace.validation import quarantine as Q

STREAM_FILE_PREFIX = "stream-"


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def stream_quarantine_dir(quarantine_root: str, source: str) -> str:
    """Rows the stream quarantined itself (too late, or no usable event time), outside any partition."""
    return lake.join(quarantine_root, source, "_stream")


def read_stream_quarantine(quarantine_root: str, source: str) -> pa.Table:
    import pyarrow.parquet as pq

    tables = [pq.read_table(pa.BufferReader(lake.read_bytes(p))) for p in lake.list_dir(
        stream_quarantine_dir(quarantine_root, source)) if p.endswith(".parquet")]
    return pa.concat_tables(tables) if tables else Q.empty()


def put(path: str, data: bytes) -> None:
    """Whole or not at all, under a name the landing scan ignores until the rename."""
    if lake.is_uri(path):
        lake.write_bytes(path, data)  # one object put
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "_" + name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_stream_file(path: str) -> bool:
    return os.path.basename(path).startswith(STREAM_FILE_PREFIX)


def last_entry(path: str) -> str:
    """The last entry id a stream file holds (``stream-<first>_<last>.jsonl``, ``<first>_<last>.parquet``)."""
    return os.path.splitext(os.path.basename(path))[0].split("_")[-1]


def remove_unfinished(landing_root: str, quarantine_root: str, source: str, landed_until: str) -> None:
    """Files of a batch killed before the stream's state recorded it: that batch lands again (its
    entries were never acknowledged), perhaps cut differently, so these must go. Also a write cut
    short before its rename."""
    done = id_key(landed_until)
    root = lake.join(landing_root, source)
    if lake.exists(root) and not lake.is_uri(root):
        for day in sorted(os.listdir(root)):
            folder = os.path.join(root, day)
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if name.startswith("_" + STREAM_FILE_PREFIX):
                    os.remove(os.path.join(folder, name))
                elif is_stream_file(name) and name.endswith(".jsonl") and id_key(last_entry(name)) > done:
                    os.remove(os.path.join(folder, name))
    for path in lake.list_dir(stream_quarantine_dir(quarantine_root, source)):
        if path.endswith(".parquet") and id_key(last_entry(path)) > done:
            os.remove(path)
