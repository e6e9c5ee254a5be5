"""The landing zone: ``<landing>/<source>/<YYYY-MM-DD>/<file>.{csv,jsonl,parquet}``.

A run picks partitions, not files: the range (or, with no range, whatever changed
since the last commit) names partitions, and each picked partition is rebuilt from
all of its landing files, so a rerun or a backfill is always complete and idempotent.
"""
from __future__ import annotations

import datetime as dt
import posixpath
import re

from apache_beam.io.filesystems import FileSystems

from millrace.contracts.model import Contract
from millrace.pipelines import lake
from millrace.pipelines.decode import LandingFile, partition_of_date
from millrace.pipelines.errors import LandingMissing, NothingToIngest
from millrace.pipelines.readers import format_of

_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_date(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise NothingToIngest(f"{option} {text!r} is not a date (fix: write YYYY-MM-DD)") from None


def discover(landing_root: str, source: str, contract: Contract) -> tuple[list[LandingFile], list[str]]:
    """All landing files of a source, and the paths that were skipped (unknown format or folder)."""
    root = lake.join(landing_root, source)
    if not FileSystems.exists(root):
        raise LandingMissing(f"landing folder {root} does not exist (fix: land files there, "
                             f"e.g. `millrace example land`, or set storage.landing in millrace.yaml)")
    found, skipped = [], []
    for meta in FileSystems.match([lake.join(root, "*", "*")])[0].metadata_list:
        folder = posixpath.basename(posixpath.dirname(meta.path))
        name = posixpath.basename(meta.path)
        if name.startswith((".", "_")):
            continue
        if not _DATE_DIR.match(folder) or format_of(meta.path) is None:
            skipped.append(meta.path)
            continue
        found.append(LandingFile(meta.path, folder, partition_of_date(contract, folder), meta.size_in_bytes,
                                 meta.last_updated_in_seconds))
    return sorted(found, key=lambda f: f.path), skipped


def select(files: list[LandingFile], start: dt.date | None, end: dt.date | None) -> list[LandingFile]:
    """The files of every partition that has a landing date in [start, end]."""
    lo, hi = (start.isoformat() if start else ""), (end.isoformat() if end else "9999")
    picked = {f.partition for f in files if lo <= f.landing_date <= hi}
    return [f for f in files if f.partition in picked]


def pending(files: list[LandingFile], committed: dict[str, dict], contract: Contract) -> list[LandingFile]:
    """The files of partitions never committed, whose landing files changed since their commit,
    or that were committed under another version of the contract."""
    by_partition: dict[str, list[LandingFile]] = {}
    for f in files:
        by_partition.setdefault(f.partition, []).append(f)
    out = []
    for partition, group in by_partition.items():
        manifest = committed.get(partition)
        if (manifest is None or _fingerprint(group) != _recorded(manifest)
                or manifest.get("contract", {}).get("version") != contract.version):
            out.extend(group)
    return out


def _fingerprint(group: list[LandingFile]) -> set[tuple]:
    return {(f.path, f.size, round(f.mtime, 3)) for f in group}


def _recorded(manifest: dict) -> set[tuple]:
    return {(i["path"], i.get("bytes"), round(i.get("mtime", -1), 3)) for i in manifest.get("inputs", [])}
