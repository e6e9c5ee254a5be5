"""Where data lives: URIs and the few file operations millrace needs, through Beam FileSystems.

Any Beam FileSystems URI works (local paths, gs://, s3://, hdfs://). ``write_atomically`` is the
commit primitive: write beside, then rename over (atomic on POSIX, one object put on stores).
"""
from __future__ import annotations

import hashlib
import io
import posixpath
import re

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_SAFE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def join(*parts: str) -> str:
    base = parts[0]
    return FileSystems.join(base, *parts[1:]) if "://" in base else posixpath.join(*parts)


def safe_name(part: str) -> str:
    """A path component from data or config, refused if it could leave its folder."""
    if not _SAFE.match(part) or part in (".", ".."):
        raise ValueError(f"unsafe path component {part!r}")
    return part


def safe_dir(root: str, source: str, key: str, value: str) -> str:
    return join(root, safe_name(source), f"{safe_name(key)}={safe_name(value)}")


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




def exists(path: str) -> bool:
    return FileSystems.exists(path)
