"""Where data lives: URIs and the few file operations millrace needs.

Local paths go through ``os``/``shutil`` (no Beam import: the serving tier reads the online store
and bundles through this module). A URI with a scheme (``gs://``, ``s3://``, ``hdfs://``, ``file://``)
goes through Beam's ``FileSystems``, imported on first use of such a URI only.

``write_atomically`` is the commit primitive: write beside, then rename over (atomic on POSIX, one
object put on stores). Failures other than "this folder is not there" raise ``StorageError`` with
the path; a listing never turns an error into "no files".
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re

import pyarrow as pa

from millrace.contracts.errors import StorageError, is_unreachable

_SAFE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """True for a location with a scheme (``gs://...``): it goes through Beam FileSystems."""
    return bool(_SCHEME.match(str(path)))


def _beam():
    from apache_beam.io.filesystems import FileSystems  # only for URIs with a scheme: ~1.7 s to import

    return FileSystems


def _uncompressed():
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


def _fail(path: str, what: str, exc: BaseException) -> StorageError:
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    details = getattr(exc, "exception_details", None) or {}  # Beam's BeamIOError keeps causes here
    unreachable = is_unreachable(exc) or any(isinstance(e, BaseException) and is_unreachable(e)
                                             for e in details.values())
    return StorageError(path, f"cannot {what}: {detail}", retryable=unreachable)


def join(*parts: str) -> str:
    base = parts[0]
    return _beam().join(base, *parts[1:]) if is_uri(base) else posixpath.join(*parts)


def safe_name(part: str) -> str:
    """A path component from data or config, refused if it could leave its folder."""
    if not _SAFE.match(part) or part in (".", ".."):
        raise ValueError(f"unsafe path component {part!r}")
    return part


def safe_dir(root: str, source: str, key: str, value: str) -> str:
    return join(root, safe_name(source), f"{safe_name(key)}={safe_name(value)}")


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, creating local parent folders."""
    try:
        if is_uri(path):
            with _beam().create(path, compression_type=_uncompressed()) as fh:
                fh.write(data)
            return
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise _fail(path, "write", exc) from exc


def read_bytes(path: str) -> bytes:
    """The bytes of ``path``. A missing file raises ``FileNotFoundError`` (callers check ``exists``)."""
    if is_uri(path):
        with _beam().open(path, compression_type=_uncompressed()) as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()


def write_atomically(path: str, data: bytes, run_id: str) -> None:
    """Write to a temporary name, then rename over ``path`` (atomic on POSIX; one object put on stores)."""
    tmp = f"{path}.tmp-{run_id}"
    write_bytes(tmp, data)
    try:
        if is_uri(path):
            fs = _beam()
            if fs.exists(path):
                fs.delete([path])  # object stores: rename is copy+delete and refuses to overwrite
            fs.rename([tmp], [path])
        else:
            os.replace(tmp, path)
    except Exception as exc:  # BeamIOError or OSError: either way the commit did not happen
        raise _fail(path, "commit (rename over)", exc) from exc


def write_parquet(path: str, table: pa.Table) -> dict:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    write_bytes(path, data)
    return {"path": path, "rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def list_dir(directory: str) -> list[str]:
    """Files directly in ``directory`` (not folders), sorted. A folder that does not exist has no
    files; any other failure (permission, unreachable store, a file where the folder should be)
    raises ``StorageError``, so "nothing to do" is never the answer to "could not look"."""
    if is_uri(directory):
        try:
            matched = _beam().match([join(directory, "*")])[0].metadata_list
        except Exception as exc:  # BeamIOError wraps the store's own error
            raise _fail(directory, "list the folder", exc) from exc
        return sorted(m.path for m in matched)
    try:
        with os.scandir(directory) as entries:
            return sorted(join(directory, e.name) for e in entries if e.is_file())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _fail(directory, "list the folder", exc) from exc


def remove_unlisted(directory: str, keep: set[str]) -> None:
    """Delete what a committed manifest does not list: older runs' files and killed runs' leftovers."""
    stale = [p for p in list_dir(directory) if posixpath.basename(p) not in keep]
    if not stale:
        return
    if is_uri(directory):
        try:
            _beam().delete(stale)
        except Exception as exc:
            raise _fail(directory, "delete stale files", exc) from exc
        return
    for path in stale:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass  # already gone: the goal of this call
        except OSError as exc:
            raise _fail(path, "delete a stale file", exc) from exc


def size_of(path: str) -> int:
    """The size of a file in bytes; a missing file raises ``FileNotFoundError``."""
    if is_uri(path):
        matched = _beam().match([path])[0].metadata_list
        if not matched:
            raise FileNotFoundError(path)
        return matched[0].size_in_bytes
    return os.stat(path).st_size


def exists(path: str) -> bool:
    return _beam().exists(path) if is_uri(path) else os.path.exists(path)
