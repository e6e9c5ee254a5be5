"""The landing zone: ``<landing>/<source>/<YYYY-MM-DD>/<file>.{csv,jsonl,parquet}``.

A run picks partitions, not files: the range (or, with no range, whatever changed
since the last commit) names partitions, and each picked partition is rebuilt from
all of its landing files, so a rerun or a backfill is always complete and idempotent.

The entry rule: only regular files in real folders are read; a folder is named by a real
calendar date not after tomorrow (UTC); a symlink is followed only when its target stays inside
the landing zone; names starting with '.' or '_' (``_SUCCESS``, ``.tmp``) are ignored. Every other
entry (a FIFO, a dangling symlink, a folder inside a date folder, a file of unknown format, a name
that is not UTF-8, ...) is a ``LandingProblem``: reported, never opened, and the run does not start.
"""
from __future__ import annotations

import datetime as dt
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field

from millrace.contracts.model import Contract
from millrace.pipelines import lake
from millrace.pipelines.decode import LandingFile, partition_of_date
from millrace.pipelines.errors import LandingMissing, NothingToIngest
from millrace.pipelines.readers import FORMATS, format_of
from millrace.pipelines.records import LandingProblem, PartitionManifest

_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_KNOWN = ", ".join(FORMATS)


@dataclass
class LandingScan:
    files: list[LandingFile] = field(default_factory=list)
    problems: list[LandingProblem] = field(default_factory=list)


def parse_date(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise NothingToIngest(f"{option} {text!r} is not a date (fix: write YYYY-MM-DD)") from None


def discover(landing_root: str, source: str, contract: Contract) -> tuple[list[LandingFile], list[str]]:
    """All landing files of a source, and the paths that are not read (see ``scan`` for why)."""
    found = scan(landing_root, source, contract)
    return found.files, [p.path for p in found.problems]


def scan(landing_root: str, source: str, contract: Contract, today: dt.date | None = None) -> LandingScan:
    """The landing files of a source and every entry that breaks the entry rule, with its fix."""
    root = lake.join(landing_root, source)
    if not lake.exists(root):
        raise LandingMissing(f"landing folder {root} does not exist (fix: land files there, "
                             f"e.g. `millrace example land`, or set storage.landing in millrace.yaml)")
    latest = (today or dt.datetime.now(dt.timezone.utc).date()) + dt.timedelta(days=1)
    out = LandingScan()
    if lake.is_uri(root):
        _scan_store(root, contract, latest, out)
    else:
        _scan_local(landing_root, root, contract, latest, out)
    out.files.sort(key=lambda f: f.path)
    out.problems.sort(key=lambda p: p.path)
    return out


def _date_problem(name: str, latest: dt.date) -> str | None:
    if not _DATE_DIR.match(name):
        return "not a YYYY-MM-DD landing date folder"
    try:
        day = dt.date.fromisoformat(name)
    except ValueError:
        return "folder name is not a real calendar date"
    if day > latest:
        return f"landing date {name} is in the future"
    return None


# -- local paths: lstat every entry, never open anything but regular files ------------------------

def _scan_local(zone: str, root: str, contract: Contract, latest: dt.date, out: LandingScan) -> None:
    zone_real = os.path.realpath(zone)
    for name, path, kind in _followed(root, zone_real, out):
        if kind != "dir":
            _report(out, path, f"{kind} directly in the source folder", "move it into a YYYY-MM-DD folder")
            continue
        bad_date = _bad_name(name) or _date_problem(name, latest)
        for file_name, file_path, file_kind in _followed(path, zone_real, out):
            if bad_date:
                _report(out, file_path, f"in a folder that is {bad_date}",
                        "move it into a folder named by its landing date, YYYY-MM-DD")
            elif file_kind == "dir":
                _report(out, file_path, "a folder inside a landing date folder", "move its files up into the date folder")
            elif file_kind != "file":
                _report(out, file_path, f"a {file_kind}, not a regular file", "land regular files only")
            elif _bad_name(file_name) or format_of(file_name) is None:
                _report(out, file_path, _bad_name(file_name) or "unknown file format",
                        f"rename it (UTF-8, one of {_KNOWN}), or prefix it with '_' to keep it out")
            else:
                st = os.stat(file_path)
                out.files.append(LandingFile(file_path, name, partition_of_date(contract, name), st.st_size,
                                             st.st_mtime))
        if bad_date and not any(p.path.startswith(_show(path) + "/") for p in out.problems):
            _report(out, path, f"folder name: {bad_date}", "rename it to its landing date, YYYY-MM-DD, or remove it")


def _followed(directory: str, zone_real: str, out: LandingScan):
    """(name, path, kind) of the entries not ignored by name, symlinks followed where allowed."""
    for name, path in _entries(directory):
        if _ignored(name):
            continue
        kind, refused = _kind(path, zone_real, out)
        if not refused:
            yield name, path, kind


def _report(out: LandingScan, path: str, problem: str, fix: str) -> None:
    out.problems.append(LandingProblem(path=_show(path), problem=problem, fix=fix))


def _entries(directory: str) -> list[tuple[str, str]]:
    try:
        with os.scandir(directory) as it:
            return sorted((e.name, os.path.join(directory, e.name)) for e in it)
    except OSError as exc:
        from millrace.contracts.errors import StorageError

        raise StorageError(directory, f"cannot list the landing folder: {exc.strerror or exc}") from exc


def _kind(path: str, zone_real: str, out: LandingScan) -> tuple[str, bool]:
    """What ``path`` is once an allowed symlink is followed; records a problem and returns True if
    it must not be followed."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        if not os.path.exists(target):
            _report(out, path, "a dangling symlink", "remove it, or point it at a file inside the landing zone")
            return "", True
        if target != zone_real and not target.startswith(zone_real + os.sep):
            _report(out, path, f"a symlink to {_show(target)}, outside the landing zone",
                    "copy the data into the landing zone instead")
            return "", True
        info = os.stat(path)
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return "dir", False
    if stat.S_ISREG(mode):
        return "file", False
    return ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device file"), False


def _ignored(name: str) -> bool:
    return name.startswith((".", "_"))


def _bad_name(name: str) -> str | None:
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return "a name that is not valid UTF-8"


def _show(path: str) -> str:
    """A path for a message, readable even when its bytes are not UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# -- object stores: no symlinks or FIFOs, only names to check -------------------------------------

def _scan_store(root: str, contract: Contract, latest: dt.date, out: LandingScan) -> None:
    from apache_beam.io.filesystems import FileSystems

    for meta in FileSystems.match([lake.join(root, "*", "*")])[0].metadata_list:
        folder = posixpath.basename(posixpath.dirname(meta.path))
        name = posixpath.basename(meta.path)
        if _ignored(name) or _ignored(folder):
            continue
        problem = _date_problem(folder, latest) or (None if format_of(name) else "unknown file format")
        if problem:
            out.problems.append(LandingProblem(path=meta.path, problem=problem,
                                               fix=f"land it as <source>/YYYY-MM-DD/<name> with one of {_KNOWN}"))
            continue
        out.files.append(LandingFile(meta.path, folder, partition_of_date(contract, folder), meta.size_in_bytes,
                                     meta.last_updated_in_seconds))


# -- choosing partitions --------------------------------------------------------------------------

def select(files: list[LandingFile], start: dt.date | None, end: dt.date | None) -> list[LandingFile]:
    """The files of every partition that has a landing date in [start, end]."""
    lo, hi = (start.isoformat() if start else ""), (end.isoformat() if end else "9999")
    picked = {f.partition for f in files if lo <= f.landing_date <= hi}
    return [f for f in files if f.partition in picked]


def pending(files: list[LandingFile], committed: dict[str, PartitionManifest], contract: Contract
            ) -> list[LandingFile]:
    """The files of partitions never committed, whose landing files changed since their commit,
    or that were committed under another version of the contract."""
    by_partition: dict[str, list[LandingFile]] = {}
    for f in files:
        by_partition.setdefault(f.partition, []).append(f)
    out = []
    for partition, group in by_partition.items():
        manifest = committed.get(partition)
        if (manifest is None or _fingerprint(group) != _recorded(manifest)
                or manifest.contract.version != contract.version):
            out.extend(group)
    return out


def _fingerprint(group: list[LandingFile]) -> set[tuple]:
    return {(f.path, f.size, round(f.mtime, 3)) for f in group}


def _recorded(manifest: PartitionManifest) -> set[tuple]:
    return {(i.path, i.bytes, round(i.mtime, 3)) for i in manifest.inputs}
